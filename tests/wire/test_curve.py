"""CURVE: an allowed client gets replies; a client without an allowed key gets none."""

from __future__ import annotations

import pytest

from wire.errors import RequestTimeout, WireError
from wire.messages import Ok, Pong
from wire.security import CurveClient, CurveServer, _load, generate_keypair
from wire.transport import EventPublisher, EventSubscriber, RpcClient, RpcServer


@pytest.fixture
def keys(tmp_path):
    server_pub, server_sec = generate_keypair(tmp_path / "server", "server")
    allowed = tmp_path / "allowed"
    alice_pub, alice_sec = generate_keypair(tmp_path / "alice", "alice")
    _, mallory_sec = generate_keypair(tmp_path / "mallory", "mallory")
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(alice_pub.read_bytes())
    return {
        "server": CurveServer(secret_key_file=server_sec, allowed_clients_dir=allowed),
        "alice": CurveClient(secret_key_file=alice_sec, server_public_key_file=server_pub),
        "mallory": CurveClient(secret_key_file=mallory_sec, server_public_key_file=server_pub),
    }


async def test_curve_accepts_allowed_and_rejects_unknown_clients(keys) -> None:
    async with RpcServer("tcp://127.0.0.1:0", {}, name="secure", curve=keys["server"]) as srv:
        async with RpcClient(srv.endpoint, curve=keys["alice"]) as alice:
            assert isinstance(await alice.ping(timeout=5), Pong)
        async with RpcClient(srv.endpoint, curve=keys["mallory"], timeout=0.5) as mallory:
            with pytest.raises(RequestTimeout):
                await mallory.ping()
        async with RpcClient(srv.endpoint, timeout=0.5) as plaintext:
            with pytest.raises(RequestTimeout):
                await plaintext.ping()
        async with RpcClient(srv.endpoint, curve=keys["alice"]) as alice_again:  # still serving
            assert isinstance(await alice_again.ping(timeout=5), Pong)


async def test_curve_event_stream(keys) -> None:
    async with EventPublisher("tcp://127.0.0.1:0", curve=keys["server"], name="events") as pub:
        async with EventSubscriber(pub.endpoint, [Ok], curve=keys["alice"]) as sub:
            await pub.wait_for_subscribers(1)
            await pub.publish(Ok())
            assert isinstance(await sub.recv(timeout=5), Ok)


def test_bad_key_files_are_clear_errors(tmp_path, keys) -> None:
    with pytest.raises(WireError, match="not found"):
        _load(tmp_path / "nope.key_secret", secret=True)
    with pytest.raises(WireError, match="no secret key"):
        _load(keys["alice"].server_public_key_file, secret=True)
    (tmp_path / "junk.key").write_text("hello")
    with pytest.raises(WireError, match="certificate"):
        _load(tmp_path / "junk.key", secret=False)
