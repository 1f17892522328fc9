"""Every bad input gets a typed answer, fast: malformed frames, oversized messages, floods, absurd sizes.

Real RpcServer/RpcClient pairs over TCP on random ports, and raw DEALER sockets that send what
no well-behaved client would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
import pytest
import zmq
import zmq.asyncio
from pydantic import ValidationError
from zmq.utils.monitor import parse_monitor_message

from wire.base import Array, Message
from wire.codec import encode, peek_request_id
from wire.errors import Busy, MessageTooLarge, RequestTimeout
from wire.generate import GenActive, GenBuildPool, GenDots, GenSynthesize
from wire.messages import Ok, Ping, Pong
from wire.model import ExportVersion, Ingest, Status
from wire.stim import PresentBlock, TrialSpec
from wire.transport import RpcClient, RpcServer


class Echo(Message):
    kind: Literal["t.echo"] = "t.echo"
    a: Array


class Echoed(Message):
    kind: Literal["t.echoed"] = "t.echoed"
    a: Array


class Grow(Message):
    """Ask for a reply of ``n`` bytes."""

    kind: Literal["t.grow"] = "t.grow"
    n: int


class Hold(Message):
    """Wait until the test opens the gate."""

    kind: Literal["t.hold"] = "t.hold"


async def echo(cmd: Echo) -> Echoed:
    return Echoed(a=np.asarray(cmd.a) * 2)


async def grow(cmd: Grow) -> Echoed:
    return Echoed(a=np.zeros(cmd.n, np.uint8))


LIMIT = 1 << 20


@pytest.fixture
async def server() -> AsyncIterator[RpcServer]:
    async with RpcServer("tcp://127.0.0.1:0", {Echo: echo, Grow: grow}, name="limits", max_bytes=LIMIT) as srv:
        yield srv


async def _raw(endpoint: str, frames: list[bytes], timeout: float = 5.0) -> list[bytes]:
    """Send ``frames`` on a fresh DEALER and return the reply's frames."""
    sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        async with asyncio.timeout(timeout):
            return await sock.recv_multipart()
    finally:
        sock.close(0)


def _hdr(obj: Any) -> bytes:
    return json.dumps(obj).encode()


ARRAY = {"__nd__": 0, "dtype": "<f8", "shape": [1]}
MALFORMED: list[tuple[str, list[bytes], str, str | None]] = [
    ("truncated JSON", [b'{"v":1,"id":"r1","msg":{"kind":"t.echo","a":'], "decode", "r1"),
    ("bytes that are not UTF-8", [b'{"v":1,"id":"r1","msg":"\xff\xfe\xfd"}'], "decode", "r1"),
    ("nested 100,000 deep", [b'{"v":1,"id":"r1","msg":' + b"[" * 100_000 + b"]" * 100_000 + b"}"], "decode", "r1"),
    ("nested 900 deep in the message", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": json.loads(
        "[" * 900 + "]" * 900)}})], "decode", "r1"),
    ("wrong envelope version", [_hdr({"v": 2, "id": "r1", "msg": {"kind": "ping"}})], "decode", "r1"),
    ("no message", [_hdr({"v": 1, "id": "r1"})], "decode", "r1"),
    ("a JSON list", [b'[1, 2, {"id": "r1"}]'], "decode", None),
    ("unknown kind", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.nope"}})], "unknown_command", "r1"),
    ("kind that is not a string", [_hdr({"v": 1, "id": "r1", "msg": {"kind": ["t.echo"] * 3}})], "unknown_command",
     "r1"),
    ("a number of 5,000 digits", [b'{"v":1,"id":"r1","msg":{"kind":"t.grow","n":' + b"9" * 5000 + b"}}"], "decode",
     "r1"),
    ("message that is a number", [_hdr({"v": 1, "id": "r1", "msg": 5})], "decode", "r1"),
    ("missing field", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo"}})], "decode", "r1"),
    ("extra field", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": ARRAY, "x": 1}}), bytes(8)],
     "decode", "r1"),
    ("wrong field type", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.grow", "n": "many"}})], "decode", "r1"),
    ("an array frame too few", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": ARRAY}})], "decode", "r1"),
    ("an array frame too many", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": ARRAY}}), bytes(8),
                                 bytes(8)], "decode", "r1"),
    ("frame of the wrong size", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": ARRAY}}), bytes(7)],
     "decode", "r1"),
    ("pickle dtype", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {**ARRAY, "dtype": "|O"}}}),
                      bytes(8)], "decode", "r1"),
    ("negative shape", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {**ARRAY, "shape": [-1]}}}),
                        bytes(8)], "decode", "r1"),
    ("numeric id", [_hdr({"v": 1, "id": 7, "msg": {"kind": "ping"}})], "decode", None),
    ("id of 10,000 characters", [_hdr({"v": 1, "id": "x" * 10_000, "msg": {"kind": "ping"}})], "decode", None),
    ("empty frame", [b""], "decode", None),
    ("binary garbage", [bytes(range(256)) * 4, b"\x00" * 3], "decode", None),
    ("frames over the limit together", [_hdr({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {
        "__nd__": 0, "dtype": "|u1", "shape": [700_000]}}}), bytes(700_000), bytes(700_000)], "too_large", "r1"),
]


@pytest.mark.parametrize("frames,code,rid", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_malformed_messages_get_a_typed_reply_with_their_id(server: RpcServer, frames: list[bytes],
                                                                  code: str, rid: str | None) -> None:
    t0 = time.monotonic()
    reply = json.loads((await _raw(server.endpoint, frames))[0])
    assert time.monotonic() - t0 < 2.0
    assert reply["msg"]["kind"] == "error", reply
    assert reply["msg"]["code"] == code, reply
    assert reply["id"] == rid
    assert len(reply["msg"]["message"]) <= 4100
    async with RpcClient(server.endpoint) as client:  # and the server is still serving
        assert isinstance(await client.ping(), Pong)


def test_request_ids_are_read_leniently() -> None:
    assert peek_request_id(b'{"v":1,"id":"abc","msg":{}}') == "abc"
    assert peek_request_id(b'{"v":1,"id":"a\\"b","msg":{') == 'a"b'
    assert peek_request_id(b'{"v": 1, "id" : "r-9", "msg": {"kind": "\xff') == "r-9"
    assert peek_request_id(b'{"v":1,"id":5}') is None
    assert peek_request_id(b"garbage") is None
    assert peek_request_id(b'{"id":"' + b"x" * 300 + b'"}') is None


async def test_oversized_frame_is_refused_by_the_socket_before_buffering(server: RpcServer) -> None:
    """ZeroMQ's MAXMSGSIZE: the server never receives the message; ZeroMQ drops the sender's
    connection (no reply: the sender times out) and the server keeps serving everyone."""
    assert server._sock is not None
    monitor = server._sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        received = server.stats["received"]
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(server.endpoint)
        try:
            big = encode(Echo(a=np.zeros(64 << 20, np.uint8)), "big-1")  # 64 MiB against a 1 MiB limit
            await sock.send_multipart(big, copy=False)
            async with asyncio.timeout(10):  # the server drops the connection...
                event = parse_monitor_message(await monitor.recv_multipart())
            assert event["event"] == zmq.EVENT_DISCONNECTED
            with pytest.raises(TimeoutError):  # ...and the sender gets no reply
                async with asyncio.timeout(0.5):
                    await sock.recv_multipart()
            assert server.stats["received"] == received  # nothing reached the application
            async with RpcClient(server.endpoint, timeout=5) as other:  # another client is served
                assert isinstance(await other.ping(), Pong)
            await sock.send_multipart(encode(Ping(), "after"))  # the same socket reconnects by itself
            async with asyncio.timeout(5):
                reply = json.loads((await sock.recv_multipart())[0])
            assert reply["id"] == "after" and reply["msg"]["kind"] == "pong"
        finally:
            sock.close(0)
    finally:
        server._sock.disable_monitor()
        monitor.close(0)


async def test_client_sees_a_timeout_for_an_oversized_request_and_goes_on(server: RpcServer) -> None:
    async with RpcClient(server.endpoint, timeout=1.0) as client:  # its own limit is the default 1 GiB
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout):
            await client.request(Echo(a=np.zeros(4 << 20, np.uint8)), Echoed)
        assert time.monotonic() - t0 < 3
        r = await client.request(Echo(a=np.arange(3, dtype=np.int32)), Echoed)  # reconnected by ZeroMQ
        assert r.a.tolist() == [0, 2, 4]


async def test_client_refuses_to_send_beyond_its_own_limit(server: RpcServer) -> None:
    received = server.stats["received"]
    async with RpcClient(server.endpoint, max_bytes=LIMIT) as client:
        with pytest.raises(MessageTooLarge, match="not sent"):
            await client.request(Echo(a=np.zeros(2 * LIMIT, np.uint8)), Echoed)
        assert isinstance(await client.ping(), Pong)
    assert server.stats["received"] == received + 1  # only the ping


async def test_reply_over_the_limit_becomes_a_typed_error(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        with pytest.raises(MessageTooLarge, match="reply"):
            await client.request(Grow(n=2 * LIMIT), Echoed)
        assert (await client.request(Grow(n=10), Echoed)).a.shape == (10,)


async def test_client_refuses_oversized_replies_at_its_socket() -> None:
    async with RpcServer("tcp://127.0.0.1:0", {Grow: grow}, name="big") as srv, \
            RpcClient(srv.endpoint, timeout=1.0, max_bytes=LIMIT) as client:
        with pytest.raises(RequestTimeout):
            await client.request(Grow(n=2 * LIMIT), Echoed)
        assert (await client.request(Grow(n=10), Echoed)).a.shape == (10,)


async def test_a_flood_gets_busy_replies_never_a_hang() -> None:
    gate = asyncio.Event()

    async def hold(_cmd: Hold) -> Ok:
        await gate.wait()
        return Ok()

    async with RpcServer("tcp://127.0.0.1:0", {Hold: hold, Status: hold}, name="flood", max_concurrent=4) as srv:
        clients = [RpcClient(srv.endpoint, timeout=10) for _ in range(10)]
        for c in clients:
            c.connect()
        try:
            t0 = time.monotonic()
            tasks = [asyncio.create_task(c.request(Hold(), Ok)) for c in clients for _ in range(5)]  # 50 at once
            busy = 0
            async with asyncio.timeout(5):
                while busy < 46:
                    await asyncio.wait([t for t in tasks if not t.done()] or tasks,
                                       return_when=asyncio.FIRST_COMPLETED)
                    busy = sum(1 for t in tasks if t.done() and isinstance(t.exception(), Busy))
            assert time.monotonic() - t0 < 5
            assert srv.in_flight == 4 and srv.stats["busy"] == 46
            assert sum(not t.done() for t in tasks) == 4
            with pytest.raises(Busy, match="max_concurrent=4"):
                await clients[0].request(Hold(), Ok)
            assert isinstance(await clients[0].ping(timeout=2), Pong)  # ping is always admitted
            status = asyncio.create_task(clients[1].request(Status(), Ok))  # so is model.status (always_admitted)
            gate.set()
            async with asyncio.timeout(5):
                results = await asyncio.gather(*[t for t in tasks if not isinstance(t.exception() if t.done()
                                                                                     else None, Busy)])
                await status
            assert len(results) == 4 and all(isinstance(r, Ok) for r in results)
            assert srv.in_flight == 0
            assert isinstance(await clients[2].request(Hold(), Ok), Ok)  # served again once below the bound
        finally:
            for c in clients:
                await c.close()


ABSURD: list[tuple[str, dict[str, Any]]] = [
    ("synthesis steps", {"kind": "gen.synthesize", "model": "m", "neurons": [0], "steps": 10**9}),
    ("images per neuron", {"kind": "gen.synthesize", "model": "m", "neurons": [0], "per_neuron": 10**6}),
    ("neurons", {"kind": "gen.synthesize", "model": "m", "neurons": list(range(20_000))}),
    ("active k", {"kind": "gen.active", "ensemble": "e", "pool": "p", "k": 10**9}),
    ("active candidates", {"kind": "gen.active", "ensemble": "e", "pool": "p", "k": 1, "candidates": 10**12}),
    ("dots per condition", {"kind": "gen.dots", "per_condition": 10**9}),
    ("pool crops", {"kind": "gen.build_pool", "pool": "p", "crops": 10**12}),
    ("pool name", {"kind": "gen.build_pool", "pool": "p" * 1000}),
    ("export name", {"kind": "model.export", "name": "x" * 10_000}),
    ("trial repeats", {"kind": "stim.present", "block_id": "b", "trials": [
        {"image_id": "i", "on_frames": 1, "off_frames": 1, "repeats": 10**9}]}),
    ("trial frames", {"kind": "stim.present", "block_id": "b", "trials": [
        {"image_id": "i", "on_frames": 10**9, "off_frames": 1}]}),
    ("training epochs", {"kind": "model.train", "max_epochs": 10**12}),
]


@pytest.mark.parametrize("msg", [m[1] for m in ABSURD], ids=[m[0] for m in ABSURD])
async def test_absurd_sizes_are_refused_by_validation(msg: dict[str, Any]) -> None:
    async def never(_cmd: Any) -> Ok:
        raise AssertionError("an absurd request reached its handler")

    from wire.generate import GENERATE_COMMANDS
    from wire.model import COMMANDS as MODEL_COMMANDS
    from wire.stim import STIM_COMMANDS

    table = {cls: never for cls in (*GENERATE_COMMANDS, *MODEL_COMMANDS, *STIM_COMMANDS)}
    async with RpcServer("tcp://127.0.0.1:0", table, name="absurd") as srv:
        reply = json.loads((await _raw(srv.endpoint, [_hdr({"v": 1, "id": "a1", "msg": msg})]))[0])
    assert reply["id"] == "a1" and reply["msg"]["code"] == "decode", reply
    assert "less than or equal" in reply["msg"]["message"] or "at most" in reply["msg"]["message"]


def test_absurd_sizes_are_refused_when_the_message_is_made() -> None:
    with pytest.raises(ValidationError):
        GenSynthesize(model="m", neurons=[0], steps=10**9)
    with pytest.raises(ValidationError):
        GenActive(ensemble="e", pool="p", k=10**9)
    with pytest.raises(ValidationError):
        GenDots(per_condition=10**9)
    with pytest.raises(ValidationError):
        GenBuildPool(pool="p", crops=10**12)
    with pytest.raises(ValidationError):
        TrialSpec(image_id="i", on_frames=1, off_frames=1, repeats=10**9)
    with pytest.raises(ValidationError):
        PresentBlock(block_id="b", trials=[TrialSpec(image_id="i", on_frames=1, off_frames=1)] * 100_001)
    with pytest.raises(ValidationError):
        Ingest(session="s" * 65, image_ids=[], counts=np.zeros((0, 1)))
    with pytest.raises(ValidationError):
        ExportVersion(name="x" * 129)
    # the sizes the controller uses stay valid
    GenSynthesize(model="m", neurons=list(range(33)), per_neuron=5, steps=200)
    GenActive(ensemble="e", pool="p", k=40, candidates=10_000, exclude=[f"{i:032x}" for i in range(5000)])


async def test_stimserver_refuses_blocks_beyond_its_limits(tmp_path: Any) -> None:
    """Within the wire bounds a block can still be absurd (100,000 specs x 10,000 repeats): the
    stimserver refuses it by its trial count and duration estimate, before showing anything."""
    from stimserver.fake_presenter import FakePresenter
    from stimserver.server import StimServer
    from wire.base import image_id
    from wire.errors import LimitExceeded
    from wire.stim import BlockResult, ImagesLoaded, LoadImages

    img = np.zeros((8, 8, 3), np.uint8)
    iid = image_id(img)
    async with StimServer(FakePresenter(realtime=False, refresh_hz=100.0), "tcp://127.0.0.1:0",
                          "tcp://127.0.0.1:0") as srv, RpcClient(srv.rpc_endpoint, timeout=10) as client:
        await client.request(LoadImages(image_ids=[iid], pixels=img[None]), ImagesLoaded)
        many = PresentBlock(block_id="b1", trials=[TrialSpec(image_id=iid, on_frames=1, off_frames=1,
                                                             repeats=10_000)] * 11)
        with pytest.raises(LimitExceeded, match="max_block_trials"):
            await client.request(many, BlockResult)
        long = PresentBlock(block_id="b2", trials=[TrialSpec(image_id=iid, on_frames=100_000, off_frames=100_000,
                                                             repeats=10)])
        with pytest.raises(LimitExceeded, match="max_block_seconds"):
            await client.request(long, BlockResult)
        ok = await client.request(PresentBlock(block_id="b3", trials=[TrialSpec(image_id=iid, on_frames=1,
                                                                                off_frames=1)]), BlockResult)
        assert ok.status == "completed" and len(ok.trials) == 1
