"""Who may do what on the bus: users, roles and the ACL every broker configuration derives from.

Roles (``<rig>`` is ``+``, any rig, unless a user is limited to one rig):

- ``controller`` publishes ``cortexloop/<rig>/session/#`` and ``cortexloop/<rig>/model/#``,
  subscribes ``cortexloop/<rig>/cmd/#``;
- ``operator`` subscribes to the status topics and publishes ``cortexloop/<rig>/cmd/#``;
- ``viewer`` subscribes to the status topics only.

Anonymous clients get nothing: brokers are configured to refuse their connection.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from wire.topics import ROOT, check_rig

Role = Literal["controller", "operator", "viewer"]


@dataclass(frozen=True)
class BusUser:
    name: str
    password: str
    role: Role
    rig: str = "+"

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ":# \t\n"):
            raise ValueError(f"invalid bus user name {self.name!r}")
        if self.rig != "+":
            check_rig(self.rig)


def new_password() -> str:
    return secrets.token_urlsafe(18)


def acl_for(role: Role, rig: str = "+") -> tuple[list[str], list[str]]:
    """(publish filters, subscribe filters) of a role."""
    status = [f"{ROOT}/{rig}/session/#", f"{ROOT}/{rig}/model/#"]
    commands = [f"{ROOT}/{rig}/cmd/#"]
    if role == "controller":
        return status, commands
    if role == "operator":
        return commands, status
    return [], status


def mosquitto_acl(users: list[BusUser]) -> str:
    """The text of a mosquitto ``acl_file`` for ``users`` (nothing for anonymous clients)."""
    lines = ["# cortexloop bus ACL (generated): anonymous clients get no access"]
    for user in users:
        publish, subscribe = acl_for(user.role, user.rig)
        lines += ["", f"user {user.name}"]
        lines += [f"topic write {t}" for t in publish]
        lines += [f"topic read {t}" for t in subscribe]
    return "\n".join(lines) + "\n"
