"""Brokers: an embedded amqtt broker (in-process) and a helper that runs a real mosquitto.

Both refuse anonymous clients, check passwords from a password file and apply the role ACL
of :mod:`controller.bus.access`.

- :class:`EmbeddedBroker` (async context manager) runs amqtt in this process when no
  broker is configured: passwords are argon2 hashes (amqtt's ``FileAuthPlugin``), topics
  are checked by :class:`RoleAclPlugin`.
- :class:`MosquittoBroker` (context manager) writes a mosquitto config (``allow_anonymous
  false``, ``password_file`` made with ``mosquitto_passwd``, ``acl_file``) and runs
  ``mosquitto`` on a free port; it is ready when mosquitto logs that it is running.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from controller.bus.access import BusUser, Role, acl_for, mosquitto_acl
from controller.bus.base import filter_within
from wire.errors import BusError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- amqtt ----------------------------------------------------------------------------------
#: the largest MQTT packet the embedded broker reads (commands and status are a few kB): a bigger one
#: closes the sender's connection before its payload is read (one 100 MiB command raised the controller's
#: memory by 385 MiB before this limit)
MAX_PACKET_BYTES = 1 << 20


class PacketTooLarge(Exception):
    """An MQTT packet announced more than :data:`MAX_PACKET_BYTES`; its connection is closed unread."""


def _limit_packet_size() -> None:
    """Make amqtt refuse packets over MAX_PACKET_BYTES as soon as their fixed header is read.

    amqtt (0.12) has no such setting: its reader reads a packet's whole announced length into memory.
    The fixed header's decoder is wrapped once per process; an oversized header raises, which amqtt's
    reader loop answers by closing that client's connection (other clients are untouched)."""
    from amqtt.mqtt.packet import MQTTFixedHeader

    if getattr(MQTTFixedHeader.from_stream, "_cortexloop_limited", False):
        return
    original = MQTTFixedHeader.from_stream.__func__  # type: ignore[attr-defined]

    async def from_stream(cls: Any, reader: Any) -> Any:
        header = await original(cls, reader)
        if header is not None and header.remaining_length > MAX_PACKET_BYTES:
            raise PacketTooLarge(f"MQTT packet of {header.remaining_length:,} bytes refused "
                                 f"(the embedded broker reads at most {MAX_PACKET_BYTES:,})")
        return header

    from_stream._cortexloop_limited = True  # type: ignore[attr-defined]
    MQTTFixedHeader.from_stream = classmethod(from_stream)  # type: ignore[assignment,method-assign]


class RoleAclPlugin(BaseTopicPlugin):
    """amqtt topic plugin: publish/subscribe allowed by the user's role (see ``access``)."""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        cfg: Any = self.context.config
        self._roles: dict[str, tuple[str, str]] = dict(getattr(cfg, "roles", {}) or {})

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if action == Action.RECEIVE:
            return True  # what a client may receive is decided when it subscribes
        username = session.username if session else None
        entry = self._roles.get(username or "")
        if entry is None or topic is None:
            return False
        role, rig = entry
        publish, subscribe = acl_for(role, rig)  # type: ignore[arg-type]
        allowed = publish if action == Action.PUBLISH else subscribe
        return any(filter_within(topic, a) for a in allowed)

    @dataclass
    class Config:
        roles: dict[str, tuple[str, str]] = field(default_factory=dict)
        """username -> (role, rig)"""


def write_amqtt_password_file(path: Path, users: list[BusUser]) -> Path:
    """``user:argon2hash`` lines, the format of amqtt's ``FileAuthPlugin``."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    hasher = PasswordHash((Argon2Hasher(),))
    path.write_text("".join(f"{u.name}:{hasher.hash(u.password)}\n" for u in users), encoding="utf-8")
    path.chmod(0o600)
    return path


class EmbeddedBroker:
    """amqtt broker in this process on ``host:port`` (0: a free port, see :attr:`port`).

    ``password_file`` holds ``user:argon2`` lines (:func:`write_amqtt_password_file`);
    ``roles`` maps each user name to its role. Anonymous connections are refused.
    """

    def __init__(self, password_file: Path, roles: dict[str, Role] | dict[str, tuple[Role, str]],
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.password_file = Path(password_file)
        self.roles = {u: (r if isinstance(r, tuple) else (r, "+")) for u, r in roles.items()}
        self._broker: Any = None

    @classmethod
    def for_users(cls, directory: Path, users: list[BusUser], host: str = "127.0.0.1",
                  port: int = 0) -> EmbeddedBroker:
        pw = write_amqtt_password_file(Path(directory) / "bus.passwd", users)
        return cls(pw, {u.name: (u.role, u.rig) for u in users}, host, port)

    def config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(self.password_file)},
                f"{__name__}.RoleAclPlugin": {"roles": self.roles},
            },
        }

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        if not self.password_file.is_file():
            raise BusError(f"password file {self.password_file} not found")
        _limit_packet_size()
        try:
            self._broker = Broker(self.config())
            await self._broker.start()
        except Exception as exc:  # amqtt raises BrokerError/PluginError/OSError
            raise BusError(f"embedded MQTT broker failed to start on {self.host}:{self.port}: {exc}") from exc
        if self.port == 0:
            # amqtt keeps its asyncio servers in a private table; read the bound port from it
            server = self._broker._servers["default"].instance
            self.port = int(server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await asyncio.shield(broker.shutdown())


# --- mosquitto --------------------------------------------------------------------------------
def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None)


def write_mosquitto_config(directory: Path, users: list[BusUser], port: int, host: str = "127.0.0.1") -> Path:
    """Write ``mosquitto.conf``, its ``passwd`` (via ``mosquitto_passwd -b``) and ``acl`` files."""
    passwd_tool = shutil.which("mosquitto_passwd")
    if passwd_tool is None:
        raise BusError("mosquitto_passwd not found (apt-get install mosquitto)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    passwd = directory / "passwd"
    passwd.unlink(missing_ok=True)
    for i, user in enumerate(users):
        args = [passwd_tool, "-b", *(["-c"] if i == 0 else []), str(passwd), user.name, user.password]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BusError(f"mosquitto_passwd failed: {done.stderr.strip() or done.stdout.strip()}")
    passwd.chmod(0o600)
    acl = directory / "acl"
    acl.write_text(mosquitto_acl(users), encoding="utf-8")
    acl.chmod(0o600)
    conf = directory / "mosquitto.conf"
    conf.write_text("\n".join([
        "# cortexloop bus broker (generated)",
        "per_listener_settings false",
        f"listener {port} {host}",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        f"user {getpass.getuser()}",  # as root mosquitto would switch to 'mosquitto' and lose the files
        "persistence false",
        f"max_packet_size {MAX_PACKET_BYTES}",  # larger packets close the connection unread
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "",
    ]), encoding="utf-8")
    return conf


class MosquittoBroker:
    """Runs ``mosquitto -c <generated conf>`` for ``users``; ``with`` starts it and waits until
    it is running (its "running" log line), or raises :class:`BusError` with its log."""

    def __init__(self, directory: Path, users: list[BusUser], host: str = "127.0.0.1", port: int = 0,
                 binary: str | None = None, start_timeout: float = 10.0) -> None:
        self.directory = Path(directory)
        self.users = users
        self.host = host
        self.port = port or free_port(host)
        self.binary = binary or mosquitto_binary()
        self.start_timeout = start_timeout
        self.log: list[str] = []
        self._proc: subprocess.Popen[str] | None = None
        self._event = threading.Event()
        self._running = False
        self._reader: threading.Thread | None = None

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line.rstrip())
            if " running" in line:
                self._running = True
                self._event.set()
        self._event.set()  # exited: wake the waiter

    def __enter__(self) -> MosquittoBroker:
        if self.binary is None:
            raise BusError("mosquitto not found (apt-get install mosquitto)")
        conf = write_mosquitto_config(self.directory, self.users, self.port, self.host)
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._drain, args=(self._proc,), daemon=True)
        self._reader.start()
        if not self._event.wait(self.start_timeout) or not self._running:
            self.stop()
            raise BusError(f"mosquitto did not start on {self.host}:{self.port}: " + " | ".join(self.log[-5:]))
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

