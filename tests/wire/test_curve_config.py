"""CURVE by configuration: the bind rule (``wire.security.check_bind``), the servers' CLI flags, and the
rig file's ``keys`` section.

A server binds ``tcp://0.0.0.0`` here only as a local socket: the tests connect to 127.0.0.1 on the
bound port and never send traffic to another address.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.config import KeysConfig, load_config
from stimserver.fake_presenter import FakePresenter
from stimserver.process import StimServerProcess
from stimserver.server import StimServer
from wire.errors import ProtocolError, RequestTimeout, WireError
from wire.messages import Pong
from wire.security import (
    CurveClient,
    InsecureBind,
    check_bind,
    curve_client,
    curve_server,
    generate_keypair,
    is_local_endpoint,
)
from wire.transport import RpcClient

REPO = Path(__file__).resolve().parents[2]


# --- check_bind ----------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5560", "tcp://127.0.0.1:0", "tcp://127.1.2.3:9", "tcp://localhost:5560", "TCP://LOCALHOST:1",
    "tcp://[::1]:5560", "tcp://[::ffff:127.0.0.1]:1", "ipc:///tmp/cortexloop-stim", "ipc://@abstract", "inproc://x",
])
def test_loopback_ipc_and_inproc_need_no_keys(endpoint: str) -> None:
    assert is_local_endpoint(endpoint)
    check_bind(endpoint, None)  # no error


@pytest.mark.parametrize("endpoint", [
    "tcp://*:5560", "tcp://0.0.0.0:5560", "tcp://0.0.0.0:0", "tcp://[::]:5560", "tcp://10.0.0.5:5560",
    "tcp://192.168.1.20:0", "tcp://eth0:5560", "tcp://rig1.lab:5560", "tcp://127.0.0.1", "tcp://127.0.0.1;10.0.0.1:5",
    "ws://127.0.0.1:5560", "pgm://eth0;239.192.1.1:5555", "127.0.0.1:5560", "",
])
def test_anything_else_needs_curve_or_insecure(endpoint: str, tmp_path: Path) -> None:
    assert not is_local_endpoint(endpoint)
    with pytest.raises(InsecureBind) as info:
        check_bind(endpoint, None, server="stimserver")
    message = str(info.value)
    assert "\n" not in message and "stimserver" in message
    assert "--curve-secret KEY_SECRET --curve-clients DIR" in message and "--insecure" in message
    assert isinstance(info.value, WireError)
    check_bind(endpoint, None, insecure=True)  # said explicitly: allowed (with a warning)
    curve = curve_server(tmp_path / "s.key_secret", tmp_path)
    check_bind(endpoint, curve)  # with CURVE: allowed


def test_curve_options_go_in_pairs(tmp_path: Path) -> None:
    assert curve_server(None, None) is None and curve_client(None, None) is None
    with pytest.raises(WireError, match="go together"):
        curve_server(tmp_path / "a.key_secret", None)
    with pytest.raises(WireError, match="go together"):
        curve_server(None, tmp_path)
    with pytest.raises(WireError, match="both"):
        curve_client(None, tmp_path / "s.key")


async def test_a_server_refuses_a_non_loopback_bind_in_process() -> None:
    server = StimServer(FakePresenter(realtime=False), "tcp://0.0.0.0:0", "tcp://127.0.0.1:0")
    with pytest.raises(InsecureBind):
        async with server:
            pass


# --- the servers' command lines ------------------------------------------------------------------
def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("name", "args"), [
    ("stimserver", ["-m", "stimserver", "--presenter", "fake", "--rpc", "tcp://0.0.0.0:0",
                    "--events", "tcp://127.0.0.1:0"]),
    ("stimserver", ["-m", "stimserver", "--presenter", "fake", "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://*:0"]),
    ("modelserver", ["-m", "modelserver", "serve", "--endpoint", "tcp://0.0.0.0:0", "--events", "tcp://127.0.0.1:0"]),
    ("virtualrig", ["-m", "virtualrig", "--stim-events", "tcp://127.0.0.1:1", "--rpc", "tcp://0.0.0.0:0"]),
])
def test_servers_refuse_a_non_loopback_bind_without_keys(name: str, args: list[str], tmp_path: Path) -> None:
    if name == "modelserver":
        args = [*args, "--data-dir", str(tmp_path / "md")]
    done = _run(args)
    assert done.returncode != 0
    err = done.stderr.strip()
    assert err.startswith(f"{name}: error: refusing to bind tcp://"), err
    assert len(err.splitlines()) == 1, err
    assert "--curve-secret KEY_SECRET --curve-clients DIR" in err and "--insecure" in err
    assert "ready" not in done.stdout
    assert not (tmp_path / "md").exists(), "nothing was created before the refusal"


def test_stimserver_with_insecure_binds_all_interfaces() -> None:
    srv = StimServerProcess(["--presenter", "fake", "--rpc", "tcp://0.0.0.0:0", "--events", "tcp://127.0.0.1:0",
                             "--insecure"])
    try:
        assert srv.rpc.startswith("tcp://0.0.0.0:")
        port = srv.rpc.rsplit(":", 1)[1]

        async def ping() -> Pong:
            async with RpcClient(f"tcp://127.0.0.1:{port}", timeout=10) as client:
                return await client.ping()

        assert isinstance(asyncio.run(ping()), Pong)
    finally:
        assert srv.stop() == 0


def test_stimserver_with_curve_binds_all_interfaces_and_admits_only_its_clients(tmp_path: Path) -> None:
    _, server_secret = generate_keypair(tmp_path / "keys", "stimserver")
    generate_keypair(tmp_path / "keys", "controller")
    _, mallory_secret = generate_keypair(tmp_path / "other", "mallory")
    srv = StimServerProcess(["--presenter", "fake", "--rpc", "tcp://0.0.0.0:0", "--events", "tcp://0.0.0.0:0",
                             "--curve-secret", str(server_secret), "--curve-clients", str(tmp_path / "keys")])
    try:
        port = srv.rpc.rsplit(":", 1)[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        server_public = tmp_path / "keys" / "stimserver.key"

        async def ping(curve: CurveClient | None) -> object:
            async with RpcClient(endpoint, timeout=1.5, curve=curve) as client:
                try:
                    return await client.ping()
                except RequestTimeout as exc:
                    return exc

        good = CurveClient(secret_key_file=tmp_path / "keys" / "controller.key_secret",
                           server_public_key_file=server_public)
        bad = CurveClient(secret_key_file=mallory_secret, server_public_key_file=server_public)
        assert isinstance(asyncio.run(ping(good)), Pong)
        assert isinstance(asyncio.run(ping(bad)), RequestTimeout)
        assert isinstance(asyncio.run(ping(None)), RequestTimeout)
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize(("extra", "expect"), [
    (["--curve-secret", "{keys}/nope.key_secret", "--curve-clients", "{keys}"], "key file not found"),
    (["--curve-secret", "{keys}/stimserver.key", "--curve-clients", "{keys}"], "holds no secret key"),
    (["--curve-secret", "{keys}/stimserver.key_secret", "--curve-clients", "{keys}/none"], "folder not found"),
    (["--curve-secret", "{keys}/stimserver.key_secret"], "go together"),
    (["--curve-secret", "{keys}/stimserver.key_secret", "--curve-clients", "{keys}/junk"], "junk.key"),
])
def test_bad_key_options_are_one_line_errors(extra: list[str], expect: str, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keypair(keys, "stimserver")
    (keys / "junk").mkdir()
    (keys / "junk" / "junk.key").write_text("not a certificate")
    done = _run(["-m", "stimserver", "--presenter", "fake", "--rpc", "tcp://127.0.0.1:0", "--events",
                 "tcp://127.0.0.1:0", *[a.format(keys=keys) for a in extra]])
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.startswith("stimserver: error:") and expect in err and len(err.splitlines()) == 1, err


def test_virtualrig_checks_its_client_keys_before_loading_models(tmp_path: Path) -> None:
    done = _run(["-m", "virtualrig", "--stim-events", "tcp://127.0.0.1:1", "--curve-client-secret",
                 str(tmp_path / "controller.key_secret"), "--curve-server-key", str(tmp_path / "stimserver.key")])
    assert done.returncode == 1
    assert done.stderr.strip().startswith("virtualrig: error: CURVE key file not found"), done.stderr


# --- the rig file's keys section -----------------------------------------------------------------
def test_the_keys_section_names_every_key_file(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text("keys: {folder: keys}\n")
    cfg = load_config(rig)
    assert cfg.keys is not None
    keys = cfg.keys
    assert (keys.client, keys.stim, keys.model, keys.rig) == ("controller", "stimserver", "modelserver", "virtualrig")
    server = keys.server("stimserver")
    assert server.secret_key_file == Path("keys/stimserver.key_secret").absolute()
    assert server.allowed_clients_dir == Path("keys").absolute()
    client = keys.client_of("modelserver")
    assert client.secret_key_file == Path("keys/controller.key_secret").absolute()
    assert client.server_public_key_file == Path("keys/modelserver.key").absolute()
    assert load_config(None).keys is None, "no keys section: no CURVE"


def test_the_keys_section_takes_other_names_and_a_clients_folder(tmp_path: Path) -> None:
    cfg = KeysConfig.model_validate({"folder": tmp_path, "client": "rig1", "model": "gpu-box", "stim": None,
                                     "allowed_clients": tmp_path / "admitted"})
    assert cfg.stim is None
    assert cfg.server("gpu-box").allowed_clients_dir == tmp_path / "admitted"
    assert cfg.client_of("gpu-box").secret_key_file == tmp_path / "rig1.key_secret"


@pytest.mark.parametrize("text", ["keys: {}", "keys: {folder: k, client: ../x}", "keys: {folder: k, rig: .hidden}",
                                  "keys: {folder: k, model: ''}", "keys: {folder: k, servers: {}}"])
def test_a_bad_keys_section_is_a_protocol_error(tmp_path: Path, text: str) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(text + "\n")
    with pytest.raises(ProtocolError, match="keys"):
        load_config(rig)
