"""Between the engine and the MQTT bus: engine status out as bus messages, operator commands in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from controller.bus.base import Bus, Command
from controller.engine import Engine
from wire.errors import BusError
from wire.topics import (
    AbortCommand,
    BehaviorStatus,
    BlockStatus,
    ModelProgress,
    PauseCommand,
    ResumeCommand,
    RewardCommand,
    SessionEvent,
    SessionStatus,
    TrialStatus,
)

log = logging.getLogger(__name__)

#: events an operator should see as warnings (a part is down, the session goes on without it)
_WARNINGS = frozenset({"stim_unreachable", "acquisition_failed", "fallback", "generate_failed", "ingest_deferred",
                       "retrain_skipped", "match_failed", "ingest_unsent", "model_unreachable",
                       "photodiode_lost", "animal_idle", "reward_unconfirmed"})

_BLOCK_STATES = {"preparing": "queued", "presenting": "running", "paused": "running", "counting": "running",
                 "done": "completed", "aborted": "aborted", "failed": "failed"}


class BusBridge:
    """``async with BusBridge(engine, bus, protocol="sysid"):`` for the length of a session."""

    def __init__(self, engine: Engine, bus: Bus, *, protocol: str | None = None) -> None:
        self.engine = engine
        self.bus = bus
        self.protocol = protocol
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._step: dict[str, Any] = {}
        engine.on_status(self._on_status)

    def _on_status(self, topic: str, payload: dict[str, Any]) -> None:
        rig = self.engine.config.rig
        msg: Any
        if topic == "session":
            msg = SessionStatus(rig=rig, state=payload["state"], session_id=payload["session_id"],
                                protocol=self.protocol, step_index=self._step.get("index"),
                                step_kind=self._step.get("kind"))
        elif topic == "step":
            self._step = payload
            msg = SessionStatus(rig=rig, state=self.engine.session.state.value, session_id=payload["session_id"],
                                protocol=self.protocol, step_index=payload["index"], step_kind=payload["kind"],
                                message=payload.get("note", ""))
        elif topic == "block":
            block = self.engine.blocks.get(payload["block_id"])
            msg = BlockStatus(block_id=payload["block_id"], state=_BLOCK_STATES[payload["state"]],  # type: ignore[arg-type]
                              n_trials=len(block.trials) if block else 0,
                              done_trials=sum(t.shown for t in block.trials) if block else 0,
                              fallback_used=bool(block and block.fallbacks))
        elif topic == "trial":
            rec = self.engine.blocks[payload["block_id"]].trials[payload["index"]]
            msg = TrialStatus(block_id=payload["block_id"], index=payload["index"], image_id=rec.image_id,
                              condition=rec.condition)
        elif topic == "model":
            try:
                msg = ModelProgress(task=payload.get("task", "model"), scope=payload.get("scope"),
                                    fraction=payload.get("fraction", 0.0), epoch=payload.get("epoch"),
                                    max_epochs=payload.get("max_epochs"), val_r=payload.get("val_r"),
                                    loss=payload.get("loss"), model_version=payload.get("model_version"),
                                    session_id=payload.get("session_id"), message=payload.get("message", ""))
            except ValidationError as exc:  # a status listener must not fail the step that reports
                log.warning("model progress not published: %s", exc)
                return
        elif topic == "behavior":
            try:
                msg = BehaviorStatus.model_validate({k: v for k, v in payload.items()
                                                     if k in BehaviorStatus.model_fields})
            except ValidationError as exc:  # a status listener must not fail the event pump that reports
                log.warning("behaviour status not published: %s", exc)
                return
        elif topic in ("event", "operator"):
            level = "warning" if payload.get("what") in _WARNINGS else "info"
            msg = SessionEvent(level=level, event=payload.get("what", topic),  # type: ignore[arg-type]
                               message=payload.get("message", ""))
        else:
            return
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("bus queue full; %s status dropped", topic)

    async def _publish(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self.bus.publish(msg)
            except Exception as exc:  # the session goes on without the bus; say so each time
                log.warning("bus publish failed: %s", exc)
            finally:
                self._queue.task_done()

    async def _commands(self) -> None:
        """Obey the operator's commands for the whole session. The bus answers bad payloads with
        ``command.rejected`` and goes on; a command the engine fails to carry out is reported as
        ``command.failed``; anything unexpected restarts the loop (so a later abort is still
        obeyed). The loop ends only when the bus connection is lost."""
        while True:
            try:
                async for cmd in self.bus.commands():
                    try:
                        await self._obey(cmd)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.exception("operator command %s failed", cmd.kind)
                        with contextlib.suppress(asyncio.QueueFull):
                            self._queue.put_nowait(SessionEvent(
                                level="error", event="command.failed",
                                message=f"{cmd.kind} ({cmd.command_id}) failed: {type(exc).__name__}: "
                                        f"{str(exc)[:300]}"))
                return
            except BusError as exc:
                log.warning("operator commands no longer received: %s", exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in a bus implementation: keep listening
                log.exception("the operator command loop failed; listening again")
                await asyncio.sleep(0.1)

    async def _obey(self, cmd: Command) -> None:
        reason = cmd.reason or f"MQTT {cmd.kind} by {cmd.issued_by or 'operator'}"
        if cmd.issued_by and cmd.issued_by not in reason:  # the session records who sent every command
            reason = f"{reason} (by {cmd.issued_by})"
        self._on_status("event", {"what": "operator", "message": f"{cmd.kind} accepted ({cmd.command_id})"})
        if isinstance(cmd, PauseCommand):
            await self.engine.pause(reason)
        elif isinstance(cmd, ResumeCommand):
            await self.engine.resume(reason)
        elif isinstance(cmd, AbortCommand):
            await self.engine.abort(reason)
        elif isinstance(cmd, RewardCommand):
            await self.engine.give_reward(cmd.duration_ms, operator=cmd.issued_by or "operator",
                                          command_id=cmd.command_id, reason=reason)

    async def __aenter__(self) -> BusBridge:
        self._tasks = [asyncio.create_task(self._publish()), asyncio.create_task(self._commands())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._queue.join()  # let the final statuses out
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
