"""The library of session and causal-test protocols, and the union every protocol file validates as."""

from __future__ import annotations

from typing import Annotated, TypeAlias

from pydantic import Field, TypeAdapter

from protocols.library.common import ProtocolBase
from protocols.library.dots import DotsProtocol
from protocols.library.maximize import MaximizeProtocol
from protocols.library.paired import AdversarialProtocol, SmoothProtocol
from protocols.library.schedule import ScheduleProtocol
from protocols.library.script import ScriptProtocol
from protocols.library.sysid import SysidProtocol

AnyProtocol: TypeAlias = Annotated[
    SysidProtocol | MaximizeProtocol | AdversarialProtocol | SmoothProtocol | DotsProtocol | ScriptProtocol,
    Field(discriminator="protocol"),
]
PROTOCOL_ADAPTER: TypeAdapter[
    SysidProtocol | MaximizeProtocol | AdversarialProtocol | SmoothProtocol | DotsProtocol | ScriptProtocol
] = TypeAdapter(AnyProtocol)

#: name -> protocol class, the ``protocol:`` value of a protocol file (``schedule``: stages of the
#: others, each its own session; not in :data:`AnyProtocol`, the protocols of one session).
LIBRARY: dict[str, type[ProtocolBase]] = {
    "sysid": SysidProtocol,
    "maximize": MaximizeProtocol,
    "adversarial": AdversarialProtocol,
    "smooth": SmoothProtocol,
    "dots": DotsProtocol,
    "script": ScriptProtocol,
    "schedule": ScheduleProtocol,
}

__all__ = [
    "LIBRARY", "PROTOCOL_ADAPTER", "AdversarialProtocol", "AnyProtocol", "DotsProtocol", "MaximizeProtocol",
    "ProtocolBase", "ScheduleProtocol", "ScriptProtocol", "SmoothProtocol", "SysidProtocol",
]
