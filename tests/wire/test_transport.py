"""The RPC server answers bad input with typed errors and keeps serving; timeouts; reconnects; events."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import numpy as np
import pytest
import zmq
import zmq.asyncio

from wire.base import Array, Message
from wire.codec import encode
from wire.errors import (
    Busy,
    DecodeError,
    InternalError,
    MessageTooLarge,
    NotFound,
    RequestTimeout,
    UnknownCommand,
)
from wire.messages import Ok, Ping, Pong
from wire.transport import EventPublisher, EventSubscriber, RpcClient, RpcServer


class Echo(Message):
    kind: Literal["t.echo"] = "t.echo"
    a: Array
    delay: float = 0.0


class Echoed(Message):
    kind: Literal["t.echoed"] = "t.echoed"
    a: Array


class Fail(Message):
    kind: Literal["t.fail"] = "t.fail"
    how: Literal["busy", "notfound", "bug"]


class Tick(Message):
    kind: Literal["t.tick"] = "t.tick"
    n: int


async def echo(cmd: Echo) -> Echoed:
    await asyncio.sleep(cmd.delay)
    return Echoed(a=np.asarray(cmd.a) * 2)


async def fail(cmd: Fail) -> Ok:
    if cmd.how == "busy":
        raise Busy("a block is running")
    if cmd.how == "notfound":
        raise NotFound("no image abc")
    raise ZeroDivisionError("oops")


HANDLERS = {Echo: echo, Fail: fail}


@pytest.fixture
async def server():
    async with RpcServer("tcp://127.0.0.1:0", HANDLERS, name="test", max_bytes=1 << 20) as srv:
        yield srv


async def test_round_trip_and_ping(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        pong = await client.ping()
        assert isinstance(pong, Pong) and pong.server == "test"
        r = await client.request(Echo(a=np.arange(5, dtype=np.int32)), Echoed)
        assert r.a.tolist() == [0, 2, 4, 6, 8]


async def test_handler_errors_are_typed_and_server_keeps_serving(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        with pytest.raises(Busy, match="block is running"):
            await client.request(Fail(how="busy"))
        with pytest.raises(NotFound):
            await client.request(Fail(how="notfound"))
        with pytest.raises(InternalError, match="ZeroDivisionError"):
            await client.request(Fail(how="bug"))
        assert (await client.ping()).server == "test"


async def test_unknown_command_is_answered(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        with pytest.raises(UnknownCommand, match=r"t\.tick"):
            await client.request(Tick(n=1))
        assert isinstance(await client.ping(), Pong)


async def _raw_request(endpoint: str, frames: list[bytes]) -> dict:
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        await sock.send_multipart(frames)
        async with asyncio.timeout(5):
            reply = await sock.recv_multipart()
        return json.loads(reply[0])
    finally:
        sock.close(0)


@pytest.mark.parametrize("frames,code", [
    ([b"not json at all"], "decode"),
    ([json.dumps({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {"__nd__": 0, "dtype": "<O", "shape": [1]}}}).encode(), b"12345678"], "decode"),
    ([json.dumps({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {"__nd__": 0, "dtype": "<f8", "shape": [2]}}}).encode(), b"12345678"], "decode"),
    ([json.dumps({"v": 1, "id": "r1", "msg": {"kind": "t.echo"}}).encode()], "decode"),
    ([json.dumps({"v": 1, "id": "r1", "msg": {"kind": "t.nope"}}).encode()], "unknown_command"),
    # each frame under the socket's limit (1 MiB), together over it: buffered, then a typed answer
    ([json.dumps({"v": 1, "id": "r1", "msg": {"kind": "t.echo", "a": {"__nd__": 0, "dtype": "|u1",
                  "shape": [700_000]}}}).encode(), bytes(700_000), bytes(700_000)], "too_large"),
])
async def test_malformed_frames_get_typed_error_replies(server: RpcServer, frames: list[bytes], code: str) -> None:
    reply = await _raw_request(server.endpoint, frames)
    assert reply["msg"]["kind"] == "error"
    assert reply["msg"]["code"] == code
    if code != "decode" or frames[0].startswith(b"{"):
        assert reply["id"] == "r1"  # the error finds its caller
    async with RpcClient(server.endpoint) as client:  # and the server is still serving
        assert isinstance(await client.ping(), Pong)


async def test_oversized_request_raises_message_too_large(server: RpcServer) -> None:
    # the client refuses what is over its own limit before sending (the server's socket would drop it)
    async with RpcClient(server.endpoint, max_bytes=1 << 20) as client:
        with pytest.raises(MessageTooLarge):
            await client.request(Echo(a=np.zeros(2 << 20, np.uint8)), Echoed)


async def test_slow_request_does_not_block_others(server: RpcServer) -> None:
    async with RpcClient(server.endpoint, timeout=5) as client:
        slow = asyncio.create_task(client.request(Echo(a=np.ones(1), delay=0.5), Echoed))
        pong = await client.ping(timeout=0.4)  # answered while the slow one is still running
        assert isinstance(pong, Pong) and not slow.done()
        assert (await slow).a.tolist() == [2.0]


async def test_request_timeout(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        with pytest.raises(RequestTimeout, match=r"t\.echo"):
            await client.request(Echo(a=np.ones(1), delay=2.0), Echoed, timeout=0.2)
        assert isinstance(await client.ping(), Pong)  # the late reply is dropped, not mixed up


async def test_dead_server_gives_clear_error_and_client_reconnects(tmp_path) -> None:
    endpoint = f"ipc://{tmp_path}/rpc.sock"
    srv = RpcServer(endpoint, HANDLERS, name="first")
    await srv.start()
    client = RpcClient(endpoint, timeout=0.3)
    client.connect()
    assert (await client.ping()).server == "first"
    await srv.stop()
    with pytest.raises(RequestTimeout, match="is the server running"):
        await client.ping()
    async with RpcServer(endpoint, HANDLERS, name="second"):
        for _ in range(20):  # ZeroMQ reconnects on its own; no new client needed
            try:
                assert (await client.ping(timeout=0.5)).server == "second"
                break
            except RequestTimeout:
                continue
        else:
            pytest.fail("client did not reconnect")
        await client.reconnect()
        assert (await client.ping()).server == "second"
    await client.close()


async def test_many_clients_one_server(server: RpcServer) -> None:
    clients = [RpcClient(server.endpoint) for _ in range(5)]
    for c in clients:
        c.connect()
    try:
        replies = await asyncio.gather(*(c.request(Echo(a=np.full(3, i)), Echoed) for i, c in enumerate(clients)))
        assert [r.a[0] for r in replies] == [2 * i for i in range(5)]
    finally:
        for c in clients:
            await c.close()


async def test_events_reach_subscribers_in_order() -> None:
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        async with EventSubscriber(pub.endpoint, [Tick, Echoed]) as sub:
            await pub.wait_for_subscribers(1)
            for i in range(100):
                await pub.publish(Tick(n=i))
            await pub.publish(Echoed(a=np.arange(3)))
            got = [await sub.recv(timeout=5) for _ in range(101)]
    assert [e.n for e in got[:100]] == list(range(100))
    assert got[100].a.tolist() == [0, 1, 2]


async def test_subscriber_topic_filter_and_timeout() -> None:
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        async with EventSubscriber(pub.endpoint, [Tick], topics=["t.tick"]) as sub:
            await pub.wait_for_subscribers(1)
            await pub.publish(Echoed(a=np.arange(3)))  # filtered out by topic
            await pub.publish(Tick(n=7))
            assert (await sub.recv(timeout=5)).n == 7
            with pytest.raises(RequestTimeout):
                await sub.recv(timeout=0.1)


async def test_bad_event_payload_is_a_decode_error() -> None:
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        async with EventSubscriber(pub.endpoint, [Tick]) as sub:
            await pub.wait_for_subscribers(1)
            await pub._sock.send_multipart([b"t.tick", b"{broken"])
            with pytest.raises(DecodeError):
                await sub.recv(timeout=5)
            await pub.publish(Tick(n=1))
            assert (await sub.recv(timeout=5)).n == 1


def test_encode_refuses_nothing_it_cannot_carry() -> None:
    frames = encode(Ping())
    assert len(frames) == 1 and json.loads(frames[0])["msg"] == {"kind": "ping"}


async def test_wait_for_subscribers_counts_each_subscriber_of_the_same_topic() -> None:
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        subs = [EventSubscriber(pub.endpoint, [Tick], topics=["t.tick"]) for _ in range(3)]
        await pub.wait_for_subscribers(3)
        await pub.publish(Tick(n=5))
        assert [(await s.recv(timeout=5)).n for s in subs] == [5, 5, 5]
        for s in subs:
            s.close()
