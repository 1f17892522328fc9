"""Opening the bus from configuration: an external broker, or the embedded one when none is set.

``BusConfig(host=None)`` (the default) runs amqtt inside the controller on ``bind:port``:
its users are the controller itself (a random password made at start, never written in
clear) plus the operators and viewers of ``users_file``, a text file of
``name:role:argon2-hash`` lines made by :func:`add_user` (``cortexloop bus adduser``).
With ``host`` set, the controller connects to that broker (e.g. the lab's mosquitto, see
:func:`controller.bus.broker.write_mosquitto_config`) as ``username`` with the password in
the environment variable ``password_env`` (or ``password``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from controller.bus.access import BusUser, Role, new_password
from controller.bus.base import Bus
from controller.bus.broker import EmbeddedBroker
from controller.bus.mqtt import MqttBus
from wire.errors import BusError


class BusConfig(BaseModel):
    """How the controller reaches the MQTT bus."""

    model_config = ConfigDict(extra="forbid")

    host: str | None = Field(default=None, description="broker host; None runs the embedded broker")
    port: int = Field(default=1883, ge=0, le=65535, description="broker port (embedded: 0 = any free port)")
    bind: str = Field(default="127.0.0.1", description="embedded broker: listen address")
    username: str = Field(default="controller", description="the controller's user name")
    password: SecretStr | None = Field(default=None, description="external broker: the controller's password")
    password_env: str = Field(default="CORTEXLOOP_MQTT_PASSWORD",
                              description="external broker: environment variable holding the password")
    users_file: Path | None = Field(default=None, description="embedded broker: operators and viewers")
    timeout: float = Field(default=10.0, gt=0)


def _hasher():  # type: ignore[no-untyped-def]
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    return PasswordHash((Argon2Hasher(),))


def add_user(users_file: Path, user: BusUser) -> None:
    """Add (or replace) ``user`` in an embedded broker's users file (password stored as argon2)."""
    users_file = Path(users_file)
    lines = users_file.read_text(encoding="utf-8").splitlines() if users_file.exists() else []
    lines = [ln for ln in lines if ln.split(":", 1)[0] != user.name]
    lines.append(f"{user.name}:{user.role}:{_hasher().hash(user.password)}")
    users_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    users_file.chmod(0o600)


def read_users(users_file: Path) -> list[tuple[str, Role, str]]:
    """(name, role, argon2 hash) of each user in a users file."""
    out: list[tuple[str, Role, str]] = []
    for n, line in enumerate(Path(users_file).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(":", 2)
        if len(parts) != 3 or parts[1] not in get_args(Role):
            raise BusError(f"{users_file}:{n}: expected 'name:role:hash' with role in {get_args(Role)}")
        out.append((parts[0], parts[1], parts[2]))  # type: ignore[arg-type]
    return out


@asynccontextmanager
async def open_bus(config: BusConfig, rig: str) -> AsyncIterator[Bus]:
    """The controller's connected bus (starting the embedded broker first when ``host`` is None)."""
    if config.host is not None:
        secret = config.password.get_secret_value() if config.password else os.environ.get(config.password_env)
        async with MqttBus(rig, config.host, config.port, username=config.username, password=secret,
                           timeout=config.timeout) as bus:
            yield bus
        return
    users = read_users(config.users_file) if config.users_file else []
    if any(name == config.username for name, _, _ in users):
        raise BusError(f"users file must not define the controller's own user {config.username!r}")
    own = new_password()
    with tempfile.TemporaryDirectory(prefix="cortexloop-bus-") as tmp:
        passwd = Path(tmp) / "passwd"
        passwd.write_text(f"{config.username}:{_hasher().hash(own)}\n"
                          + "".join(f"{name}:{h}\n" for name, _, h in users), encoding="utf-8")
        passwd.chmod(0o600)
        roles: dict[str, Role] = {config.username: "controller", **{name: role for name, role, _ in users}}
        async with EmbeddedBroker(passwd, roles, config.bind, config.port) as broker:
            host = "127.0.0.1" if config.bind in ("0.0.0.0", "", "::") else config.bind
            async with MqttBus(rig, host, broker.port, username=config.username, password=own,
                               timeout=config.timeout) as bus:
                yield bus
