"""Runs a schedule (``protocol: schedule``): its stages' sessions in order and the conditions between.

Each session is one :func:`controller.assembly.assemble` of the rig configuration, with session id
``<schedule_id>-<stage>-<k>`` in the same ``out_dir`` (so every session shares the modelserver's data
folder, and later stages match neurons to the sysid sessions' models). The condition of a
``repeat_until`` stage is measured after each of its sessions, while its parts are still up: the
session's model (modelserver ``Predict`` for the session) on the session's own held-out block (shown
with repeats and never trained on) against the recorded counts there: ``r`` is Pearson r between the
prediction and the repeat means, ``r2_er`` the noise-corrected R2 (Pospisil & Bair) on the repeats.

The state file ``<out_dir>/<schedule_id>.schedule.json`` (JSON, replaced atomically before and after
every session and pause) lists each stage's pause answer, sessions (id, file, exit status, metric per
neuron, ``after_session``'s dict) and qualified neurons. With ``resume`` a finished session is skipped,
an unfinished one continues through the session resume of the assembly, an answered pause is not
asked again. Operator pauses publish a retained ``paused`` status on the bus and wait for ``resume``
(or ``abort``, which ends the schedule with status ``abort``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from controller.assembly import Session, _broker, _client_keys, _modelserver, assemble
from controller.bus.base import Bus
from controller.config import RunConfig
from controller.demo_scoring import heldout_trials
from controller.modellink import model_session
from controller.schedule_state import check_id, load_state
from controller.store import SessionReader
from protocols.library import ProtocolBase
from protocols.library.schedule import RepeatUntil, ScheduleProtocol, Stage, qualified, with_neurons
from wire.documents import StopDoc
from wire.errors import CortexloopError, ProtocolError, StoreError
from wire.model import Predict, Prediction
from wire.topics import AbortCommand, ResumeCommand, SessionStatus
from wire.transport import RpcClient

log = logging.getLogger(__name__)

__all__ = ["ScheduleOutcome", "heldout_metric", "run_schedule", "state_path"]

AfterSession = Callable[[Session, StopDoc], Awaitable[dict[str, Any]]]
OnStatus = Callable[[str, dict[str, Any]], Any]
Status = Literal["success", "abort", "fail", "unmet"]


@dataclass
class ScheduleOutcome:
    """How a schedule ended: ``status`` (success, abort, fail, unmet), why, and its state."""

    schedule_id: str
    status: Status
    reason: str
    state_path: Path
    state: dict[str, Any]

    @property
    def qualified(self) -> list[int] | None:
        q = self.state.get("qualified")
        return None if q is None else list(q)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        return [s for st in self.state["stages"].values() for s in st["sessions"]]


def state_path(out_dir: Path, schedule_id: str) -> Path:
    return out_dir / f"{schedule_id}.schedule.json"


def _save(path: Path, state: dict[str, Any]) -> None:
    state["updated"] = time.time()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _load(path: Path, schedule: ScheduleProtocol, schedule_id: str, resume: bool) -> dict[str, Any]:
    dump = schedule.model_dump(mode="json")
    if path.exists():
        if not resume:
            raise StoreError(f"{path} exists: pass --resume to continue schedule {schedule_id!r}")
        state = load_state(path, dump, schedule_id)  # validated: ids, paths, types (controller.schedule_state)
        if set(state["stages"]) != {s.name for s in schedule.stages}:
            raise StoreError(f"{path}: its stages {sorted(state['stages'])} are not the schedule's")
        state.update(status="running", reason="")
        return state
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"schedule_id": schedule_id, "schedule": dump, "status": "running", "reason": "", "qualified": None,
            "stages": {s.name: {"pause": None, "sessions": [], "done": False, "met": None, "qualified": None}
                       for s in schedule.stages}}


async def heldout_metric(client: RpcClient, session_id: str, path: Path, block: str,
                         metric: Literal["r", "r2_er"]) -> dict[str, Any]:
    """Per neuron ``metric`` of the session's model on the session's held-out ``block`` (module docstring)."""
    from modelserver.training.metrics import pearson_r, r2_er

    ids, raw, pix = heldout_trials(path, block)
    if not ids:
        raise ProtocolError(f"session {session_id} has no held-out block {block!r} with counts")
    pred = await client.request(Predict(session=model_session(session_id), images=np.stack(pix)), Prediction)
    resp = np.asarray(pred.responses, dtype=np.float64)
    n = min(len(resp), raw.shape[0])
    values = (r2_er(resp[:n], raw[:n]) if metric == "r2_er"
              else pearson_r(resp[:n], np.nanmean(raw[:n], axis=2)))
    return {"metric": metric, "model_version": pred.version, "heldout_images": len(ids),
            "repeats": int(raw.shape[2]),
            "per_neuron": [round(float(v), 4) if np.isfinite(v) else None for v in values]}


@contextlib.asynccontextmanager
async def _mqtt(cfg: RunConfig) -> AsyncIterator[Bus]:
    from controller.bus.mqtt import MqttBus

    async with _broker(cfg) as (host, port, username, password):
        async with MqttBus(cfg.rig, host, port, username=username, password=password) as bus:
            yield bus


async def _pause(bus_cm: contextlib.AbstractAsyncContextManager[Bus], rig: str, schedule_id: str,
                 message: str, waiting: Callable[[], None]) -> dict[str, Any]:
    """Publish ``paused`` with ``message``, call ``waiting``; the operator's answer (resume or abort)."""
    async with bus_cm as bus:
        await bus.publish(SessionStatus(rig=rig, state="paused", session_id=schedule_id, protocol="schedule",
                                        message=message))
        waiting()
        async for cmd in bus.commands():
            if isinstance(cmd, ResumeCommand | AbortCommand):
                action = "resume" if isinstance(cmd, ResumeCommand) else "abort"
                await bus.publish(SessionStatus(rig=rig, state="running" if action == "resume" else "aborting",
                                                session_id=schedule_id, protocol="schedule",
                                                message=f"{action} by {cmd.issued_by or 'operator'}"))
                return {"action": action, "reason": cmd.reason, "by": cmd.issued_by, "time": time.time()}
    raise ProtocolError("the bus ended while waiting for the operator")


def _stop_of(path: Path) -> StopDoc | None:
    if not path.exists():
        return None
    with SessionReader(path) as reader:
        return next((d for d in reader.documents() if isinstance(d, StopDoc)), None)


class _Runner:
    def __init__(self, schedule: ScheduleProtocol, cfg: RunConfig, schedule_id: str, state: dict[str, Any],
                 after_session: AfterSession | None, on_status: OnStatus | None,
                 operator_bus: Callable[[], contextlib.AbstractAsyncContextManager[Bus]] | None,
                 record: dict[str, Any]) -> None:
        self.schedule, self.cfg, self.id, self.state = schedule, cfg, schedule_id, state
        self.after, self.on_status, self.record = after_session, on_status, record
        self.bus = operator_bus or (lambda: _mqtt(cfg))
        self.path = state_path(cfg.out_dir, schedule_id)

    def say(self, message: str) -> None:
        log.info("schedule %s: %s", self.id, message)
        if self.on_status is not None:
            self.on_status("event", {"what": "schedule", "message": message})

    def save(self) -> None:
        _save(self.path, self.state)

    def mark_waiting(self, st: dict[str, Any]) -> None:
        st["pause"] = {"action": "waiting"}
        self.save()

    async def run(self) -> tuple[Status, str]:
        chosen: list[int] | None = self.state["qualified"]
        for stage in self.schedule.stages:
            st = self.state["stages"][stage.name]
            if st["done"]:
                chosen = st["qualified"] if stage.repeat_until is not None else chosen
                continue
            if stage.pause_before and st["pause"] in (None, {"action": "waiting"}):
                msg = stage.message or f"next: stage {stage.name!r} ({stage.protocol.protocol}); resume or abort"
                self.say(f"paused: {msg}")
                st["pause"] = await _pause(self.bus(), self.cfg.rig, self.id, msg, functools.partial(
                    self.mark_waiting, st))
                self.save()
            if st["pause"] is not None and st["pause"]["action"] == "abort":
                return "abort", f"aborted by the operator before stage {stage.name!r}"
            proto: ProtocolBase = stage.protocol
            if stage.neurons == "qualified":
                if not chosen:
                    st.update(done=True, skipped="no qualified neurons")
                    self.save()
                    self.say(f"stage {stage.name!r} skipped: no qualified neurons")
                    continue
                proto = with_neurons(proto, chosen)
            outcome = await self.stage(stage, proto, st)
            if outcome is not None:
                return outcome
            if stage.repeat_until is not None:
                chosen = self.state["qualified"] = st["qualified"]
                self.save()
                if not st["met"] and stage.repeat_until.on_unmet == "stop":
                    return "unmet", f"stage {stage.name!r}: condition not met in {len(st['sessions'])} session(s)"
        return "success", ""

    async def stage(self, stage: Stage, proto: ProtocolBase, st: dict[str, Any]) -> tuple[Status, str] | None:
        rule = stage.repeat_until
        for k in range(1, (rule.max_sessions if rule else stage.sessions) + 1):
            proto_k = proto if k == 1 else proto.model_copy(update={"seed": proto.seed + k - 1})  # new images
            if k > len(st["sessions"]):
                st["sessions"].append({"stage": stage.name, "k": k, "session_id": f"{self.id}-{stage.name}-{k}",
                                       "exit_status": None, "started": time.time()})
                self.save()
                await self.session(stage, proto_k, st["sessions"][-1], resume=False)
            elif st["sessions"][k - 1]["exit_status"] is None:
                await self.session(stage, proto_k, st["sessions"][k - 1], resume=True)
            rec = st["sessions"][k - 1]
            if rec["exit_status"] != "success":
                status: Status = "abort" if rec["exit_status"] == "abort" else "fail"
                return status, f"session {rec['session_id']}: {rec['exit_status']} {rec.get('reason', '')}".strip()
            if rule is not None:
                q = qualified(rec.get("metric", {}).get("per_neuron", []), rule)
                st.update(qualified=q, met=len(q) >= rule.min_neurons)
                self.say(f"{rec['session_id']}: {len(q)} neurons {rule.metric} >= {rule.threshold:g} "
                         f"(need {rule.min_neurons}): {'met' if st['met'] else 'not met'}")
                if st["met"]:
                    break
        st["done"] = True
        self.save()
        return None

    async def session(self, stage: Stage, proto: ProtocolBase, rec: dict[str, Any], resume: bool) -> None:
        sid = rec["session_id"]
        cfg = self.cfg.model_copy(update={"session_id": sid})
        rec["file"] = str(self.cfg.out_dir / f"{sid}.h5")
        finished = _stop_of(Path(rec["file"])) if resume else None
        if finished is not None:  # ended before the crash, but the state file did not say so
            rec.update(exit_status=finished.exit_status, reason=finished.reason, n_trials=finished.n_trials,
                       note="finished before the crash; after_session not called")
            if stage.repeat_until is not None and finished.exit_status == "success":
                async with contextlib.AsyncExitStack() as stack:
                    eps = await stack.enter_async_context(_modelserver(cfg, {}))
                    if eps is None:
                        raise ProtocolError("'repeat_until' needs a modelserver (model.kind)")
                    client = await stack.enter_async_context(
                        RpcClient(eps[0], timeout=120.0, curve=_client_keys(cfg, "model", eps[0])))
                    rec["metric"] = await self.metric(client, stage.repeat_until, stage, sid, Path(rec["file"]))
            self.save()
            return
        self.say(f"stage {stage.name!r}: session {sid} ({proto.protocol})" + (" resumed" if resume else ""))
        record = {**self.record, "schedule": self.id, "stage": stage.name}
        async with assemble(cfg, proto, resume=resume, record=record, on_status=self.on_status) as s:
            stop = await s.run()
            rec.update(exit_status=stop.exit_status, reason=stop.reason, n_trials=stop.n_trials, file=str(s.path))
            if stage.repeat_until is not None and stop.exit_status == "success":
                async with s.model_client() as client:
                    rec["metric"] = await self.metric(client, stage.repeat_until, stage, sid, s.path)
            if self.after is not None:
                rec["after"] = await self.after(s, stop)
        rec["ended"] = time.time()
        self.save()

    async def metric(self, client: RpcClient, rule: RepeatUntil, stage: Stage, sid: str, path: Path) -> dict[str, Any]:
        heldout = getattr(stage.protocol, "heldout", None)
        assert heldout is not None  # validated: repeat_until needs a sysid with a held-out block
        try:
            return await heldout_metric(client, sid, path, heldout.block_id, rule.metric)
        except CortexloopError as exc:  # no model for the session: no neuron qualifies this time
            log.warning("schedule %s: no %s for %s: %s", self.id, rule.metric, sid, exc)
            return {"metric": rule.metric, "per_neuron": [], "error": f"{type(exc).__name__}: {exc}"}


async def run_schedule(schedule: ScheduleProtocol, cfg: RunConfig, *, resume: bool = False,
                       after_session: AfterSession | None = None, on_status: OnStatus | None = None,
                       record: dict[str, Any] | None = None,
                       operator_bus: Callable[[], contextlib.AbstractAsyncContextManager[Bus]] | None = None,
                       ) -> ScheduleOutcome:
    """Run (or with ``resume`` continue) ``schedule`` on the rig ``cfg``; the schedule's id is
    ``cfg.session_id`` (default: time_rig_schedule). ``after_session(session, stop)`` is awaited after
    each session while its parts are up; its dict goes to the state file. ``operator_bus`` (tests)
    replaces the rig's MQTT bus for the pauses."""
    schedule_id = check_id(cfg.session_id or f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.rig}_schedule", "schedule id")
    if any(s.pause_before for s in schedule.stages) and cfg.bus.broker == "none" and operator_bus is None:
        raise ProtocolError("the schedule pauses for the operator ('pause_before'): the rig needs a bus "
                            "(bus.broker embedded or host:port)")
    path = state_path(cfg.out_dir, schedule_id)
    state = _load(path, schedule, schedule_id, resume)
    runner = _Runner(schedule, cfg, schedule_id, state, after_session, on_status, operator_bus, record or {})
    runner.save()
    try:
        status, reason = await runner.run()
    except BaseException as exc:
        state.update(status="fail", reason=f"{type(exc).__name__}: {exc}")
        runner.save()
        raise
    state.update(status=status, reason=reason)
    runner.save()
    runner.say(f"{status}" + (f": {reason}" if reason else ""))
    return ScheduleOutcome(schedule_id, status, reason, path, state)
