"""A protocol written out as its list of steps (plain data, no logic)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocols.library.common import ProtocolBase
from protocols.steps import AnyStep, Plan


class ScriptProtocol(ProtocolBase):
    """``steps`` are yielded in order; results are ignored (use a library protocol for logic)."""

    protocol: Literal["script"] = "script"
    steps: list[AnyStep] = Field(min_length=1)

    def plan(self) -> Plan:
        for step in self.steps:  # noqa: UP028 (a list iterator has no .send)
            yield step
