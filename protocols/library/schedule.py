"""Schedules: a lab's day as stages of session protocols, with the conditions between them.

A schedule file (``protocol: schedule``) lists ``stages``; each runs its protocol (a file
relative to the schedule file, or an inline mapping) as one or more sessions. ``set`` changes
values of the stage's protocol like ``cortexloop run --set`` (nested mappings are merged key
by key: ``{heldout: {repeats: 3}}`` is ``heldout.repeats=3``). ``repeat_until`` repeats a
``sysid`` stage until ``min_neurons`` neurons reach ``threshold`` on ``metric`` on its held-out
block (at most ``max_sessions`` sessions); the neurons that do are the *qualified* ones, which
a later stage with ``neurons: qualified`` restricts its causal test to. ``pause_before`` waits
for the operator's ``resume`` before the stage starts.

This module is the model and its validation (no I/O: stage files are read through the loader
the validation context names); ``controller.schedule`` runs a schedule, :func:`simulate_schedule`
simulates one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, model_validator

from protocols.analysis import TrialData
from protocols.library.common import Config, ProtocolBase
from protocols.library.maximize import MaximizeProtocol
from protocols.library.paired import AdversarialProtocol, SmoothProtocol
from protocols.library.sysid import SysidProtocol
from protocols.steps import Ident, MatchModels, MatchResult, Plan
from wire.errors import ProtocolError

if TYPE_CHECKING:
    from protocols.simulate import SimConfig, SimRecord, SimulationReport

#: stage protocols that take ``neurons`` (the causal tests)
TARGETED = (MaximizeProtocol, AdversarialProtocol, SmoothProtocol)


class RepeatUntil(Config):
    """Repeat the stage until ``min_neurons`` neurons reach ``threshold`` (held-out ``metric``)."""

    metric: Literal["r", "r2_er"] = Field(default="r", description="Pearson r or noise-corrected R2 (r2_ER)")
    threshold: float = Field(ge=-1.0, le=1.0)
    min_neurons: int = Field(default=1, ge=1, le=100_000)
    max_sessions: int = Field(default=3, ge=1, le=1000)
    on_unmet: Literal["stop", "continue"] = Field(
        default="stop", description="after max_sessions without the condition: end the day, or go on")


class Stage(Config):
    """One stage: its protocol (resolved at validation), the overrides, its condition and options."""

    name: Ident
    protocol: Any = Field(description="a file relative to the schedule file, or an inline mapping")
    file: str | None = Field(default=None, description="the stage's protocol file (set by the loader)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides, like --set KEY=VALUE")
    repeat_until: RepeatUntil | None = None
    sessions: int = Field(default=1, ge=1, le=1000,
                          description="sessions of this stage (without repeat_until); the k-th uses seed + k - 1")
    neurons: Literal["all", "qualified"] = "all"
    pause_before: bool = False
    message: str = Field(default="", max_length=2000, description="shown to the operator at the pause")

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or isinstance(data.get("protocol"), ProtocolBase):
            return data
        raw, sets = data.get("protocol"), data.get("set") or {}
        if not isinstance(sets, dict):
            raise ValueError("'set' is a mapping of KEY: VALUE overrides")
        if not isinstance(raw, str | dict):
            raise ValueError("'protocol' is a file name or an inline protocol mapping")
        load: Callable[..., ProtocolBase] | None = (info.context or {}).get("load_stage")
        if load is None:
            from protocols.loader import stage_loader

            load = stage_loader(None)
        proto = load(raw, flatten(sets), str(data.get("name")))
        return {**data, "protocol": proto, **({"file": raw} if isinstance(raw, str) else {})}

    @model_validator(mode="after")
    def _check(self) -> Stage:
        p = self.protocol
        if not isinstance(p, ProtocolBase) or isinstance(p, ScheduleProtocol):
            raise ValueError("a stage's protocol is a session protocol (not a schedule)")
        if self.repeat_until is not None and "sessions" in self.model_fields_set:
            raise ValueError("give either 'sessions' (a fixed count) or 'repeat_until' (a condition), not both")
        if self.repeat_until is not None and (not isinstance(p, SysidProtocol) or p.heldout is None):
            raise ValueError("'repeat_until' needs a sysid protocol with a 'heldout' block (the metric's images)")
        if self.neurons == "qualified" and not isinstance(p, TARGETED):
            raise ValueError(f"'neurons: qualified' needs maximize, adversarial or smooth, not {p.protocol!r}")
        return self


def flatten(sets: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``set`` as (dotted key, value) pairs; nested mappings merge key by key."""
    out: list[tuple[str, Any]] = []
    for k, v in sets.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


class ScheduleProtocol(ProtocolBase):
    """``protocol: schedule``: stages run as sessions in order (see the module docstring)."""

    protocol: Literal["schedule"] = "schedule"
    stages: list[Stage] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _check(self) -> ScheduleProtocol:
        if {"seed", "timing"} & self.model_fields_set:
            raise ValueError("a schedule has no seed or timing of its own: set them in its stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, s in enumerate(self.stages):
            if s.neurons == "qualified" and not any(t.repeat_until for t in self.stages[:i]):
                raise ValueError(f"stage {s.name!r}: 'neurons: qualified' needs an earlier stage with 'repeat_until'")
        return self

    def plan(self) -> Plan:
        raise ProtocolError("a schedule runs its stages as separate sessions (controller.schedule.run_schedule, "
                            "protocols.library.schedule.simulate_schedule)")


def qualified(values: Sequence[float | None], rule: RepeatUntil) -> list[int]:
    """The neurons whose metric reaches the threshold (NaN/None never do)."""
    return [j for j, v in enumerate(values) if v is not None and np.isfinite(v) and v >= rule.threshold]


def with_neurons(protocol: ProtocolBase, neurons: list[int]) -> ProtocolBase:
    """A causal-test protocol restricted to ``neurons``."""
    return protocol.model_copy(update={"neurons": list(neurons)})


# --- simulation --------------------------------------------------------------------------------
@dataclass
class ScheduleSimulation:
    """What a schedule would do in the simulator's world (quacks like a ``SimulationReport``)."""

    protocol: str
    lines: list[str]
    sessions: list[SimulationReport]
    records: list[SimRecord] = field(default_factory=list)
    frames: int = 0
    refresh_hz: float = 60.0

    @property
    def trials(self) -> TrialData:
        parts = [s.trials for s in self.sessions]
        counts = np.concatenate([t.counts for t in parts]) if parts else np.zeros((0, 0))
        return TrialData(counts, [c for t in parts for c in t.conditions], [b for t in parts for b in t.blocks])

    def text(self) -> str:
        head = (f"protocol {self.protocol}: {len(self.sessions)} sessions, {len(self.records)} steps, "
                f"~{self.frames / self.refresh_hz / 60:.1f} min of stimulus at {self.refresh_hz:g} Hz")
        return "\n".join([head, *self.lines, "", *("\n" + s.text() for s in self.sessions)])


def simulate_schedule(schedule: ScheduleProtocol, config: SimConfig | None = None) -> ScheduleSimulation:
    """Run a schedule's stages in the simulator: each session a fresh simulated session, the
    condition from the simulator's match of its neurons on the stage's held-out block."""
    from protocols.simulate import SimConfig, Simulator

    cfg = config or SimConfig()
    operator = list(cfg.operator)
    out = ScheduleSimulation(schedule.protocol, [], [], refresh_hz=cfg.refresh_hz)
    chosen: list[int] | None = None
    for stage in schedule.stages:
        if stage.pause_before:
            action = operator.pop(0) if operator else "resume"
            out.lines.append(f"pause before {stage.name!r}: operator {action}")
            if action == "abort":
                out.lines.append("schedule aborted by the operator")
                return out
        proto = stage.protocol
        if stage.neurons == "qualified":
            if not chosen:
                out.lines.append(f"stage {stage.name!r}: skipped (no qualified neurons)")
                continue
            proto = with_neurons(proto, chosen)
        rule = stage.repeat_until
        for k in range(1, (rule.max_sessions if rule else stage.sessions) + 1):
            sim = Simulator(SimConfig(**{**cfg.__dict__, "seed": cfg.seed + len(out.sessions), "operator": []}))
            proto_k = proto if k == 1 else proto.model_copy(update={"seed": proto.seed + k - 1})
            report = sim.run(proto_k.plan(), f"{stage.name}-{k} ({proto.protocol})")
            out.sessions.append(report)
            out.records += report.records
            out.frames += report.frames
            note = f"stage {stage.name!r} session {k}: {proto.protocol}, {len(report.records)} steps"
            if rule is None:
                out.lines.append(note)
                continue
            assert isinstance(proto, SysidProtocol) and proto.heldout is not None
            match = sim.execute(MatchModels(heldout_blocks=[proto.heldout.block_id], min_score=rule.threshold,
                                            metric="r2_er" if rule.metric == "r2_er" else "pearson_r"))
            assert isinstance(match, MatchResult)
            chosen = sorted(match.neurons)
            met = len(chosen) >= rule.min_neurons
            out.lines.append(f"{note}; {len(chosen)}/{match.n_neurons} neurons {rule.metric} >= {rule.threshold:g} "
                             f"(need {rule.min_neurons}): {'met' if met else 'not met'}")
            if met:
                break
        else:
            if rule is not None and rule.on_unmet == "stop":
                out.lines.append(f"condition of {stage.name!r} not met in {rule.max_sessions} sessions: day ends")
                return out
        if rule is not None:
            out.lines.append(f"qualified neurons: {chosen}")
    return out
