"""The engine: executes a protocol's steps against the servers and records every document.

A protocol (``protocols``) yields typed steps and receives their results; the engine does the
I/O: it resolves a block's images (the controller's own image library, or the modelserver
for model-made images, with the protocol's fallback when that is slow or down), loads them
into the stimserver, presents the block, turns each trial event and the acquisition stream
into spike counts (``controller.acquisition.binning``), and writes block, image, pick, trial,
response, step and event documents to the session store as they happen.

Faults: a stimserver that stops answering mid-block pauses the session (state ``paused``,
an ``event`` document, a status to listeners) until it answers again; then the trials that
have no counts yet are shown again. A silent acquisition source fails the step waiting for
counts with a clear error, and nothing is recorded as zero. A controller killed mid-block is
resumed by :meth:`Engine.resume_from`: recorded steps are answered from their ``step``
documents, and the interrupted block continues at its first trial without counts.

Awake animals: the stimserver's reward and behaviour events keep running counters
(``behavior``), sent to listeners as the ``behavior`` status; when no sequence completes for
``idle_warn_s`` while a block is shown, an ``animal_idle`` event warns the operator (and, with
``idle_pause``, pauses the session as an operator's pause would). :meth:`Engine.give_reward` is
the operator's manual reward.

This module holds the :class:`Engine` itself (construction, listeners, the run and its step
dispatch, operator commands, resume); its jobs are in ``blocks`` (presenting blocks),
``counts`` (spike counts), ``modelsteps`` (the modelserver's steps) and ``behavior`` (the
behaviour counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from controller import __version__
from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner
from controller.engine.base import (
    BlockRecord,
    EngineConfig,
    ImageListener,
    Recording,
    StatusListener,
    TrialRecord,
)
from controller.engine.behavior import BehaviorTracker
from controller.engine.blocks import BlocksMixin
from controller.engine.modelsteps import ModelLink, ModelStepsMixin, NoModelServer
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.state import BLOCK_TRANSITIONS, SESSION_TRANSITIONS, BlockState, SessionState, StateMachine
from controller.store import SessionWriter
from protocols.plan import adrive
from protocols.steps import (
    RESULT_TYPES,
    Analyse,
    GenerateImages,
    Ingest,
    MatchModels,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Retrain,
    Step,
    WaitForCounts,
)
from wire.documents import BlockDoc, ImageDoc, ResponseDoc, StartDoc, StepDoc, StopDoc, TrialDoc
from wire.errors import Aborted, CortexloopError, ProtocolError

log = logging.getLogger(__name__)

#: seconds a manual reward waits for the stimserver's reward event (published before its answer)
REWARD_EVENT_WAIT_S = 2.0


class Engine(BlocksMixin, ModelStepsMixin):
    """Runs one session. ``await Engine(...).run(plan, protocol=...)`` returns its stop document.

    Every part comes in through the constructor: ``models`` (None: no modelserver, model steps
    fall back), ``pixels`` (the session's image store by id; when given, that very dict is used,
    so a part made before the engine, such as the model link, can read images from it),
    ``recording`` (replay: blocks as recorded, recorded counts) and ``image_listeners`` (called
    with each block's images before it is shown; :meth:`on_images` adds more).
    """

    def __init__(self, config: EngineConfig, *, store: SessionWriter, stim: StimLink, source: AcquisitionSource,
                 binner: Binner, images: ImageLibrary, models: ModelLink | None = None,
                 pixels: dict[str, np.ndarray] | None = None, recording: Recording | None = None,
                 image_listeners: Sequence[ImageListener] = ()) -> None:
        self.config = config
        self.store = store
        self.stim = stim
        self.source = source
        self.binner = binner
        self.images = images
        self.models = models if models is not None else NoModelServer()
        self.recording = recording
        self.pixels = pixels if pixels is not None else {}
        self.session = StateMachine("session", SessionState.IDLE, SESSION_TRANSITIONS)
        self.blocks = {}
        self.trials = {}
        self.generated = {}
        self.requests = {}
        self._segments = {}
        self._invalid_seen = set()
        self._operator_pauses = 0
        spot = config.fixation_spot
        self.behavior = BehaviorTracker(window_deg=config.behavior.window_deg if config.behavior else None,
                                        centre=spot.position_deg if spot is not None else (0.0, 0.0))
        self._manual_seen = set()
        self._manual_recorded = asyncio.Event()
        self._last_completed = None
        self._recorded_steps = []
        self._step_index = 0
        self._counts_changed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._abort = False
        self._abort_reason = ""
        self._acq_error = None
        self._listeners = []
        self._image_listeners = list(image_listeners)
        self._operator = None
        self._deferred = []
        self._deferred_reported = False
        self._finishers: list[Callable[[], None]] = []
        self.session.on_change(lambda old, new: self._status("session", {"from": old.value, "state": new.value}))

    # -- listeners (the MQTT bus, the terminal) ---------------------------------------------------
    def on_status(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def on_finish(self, fn: Callable[[], None]) -> None:
        """Called once the session's parts stopped, before its stop document (a monitor's last records)."""
        self._finishers.append(fn)

    def raise_event(self, what: str, message: str, **details: Any) -> None:
        """An event document and a status ``event`` to the listeners (the bus), from a part outside the engine."""
        self._event(what, message, **details)

    def on_images(self, listener: ImageListener) -> None:
        """Called with the images of each block before it is shown (a virtual rig computes its rates)."""
        self._image_listeners.append(listener)

    # -- resume --------------------------------------------------------------------------------------
    def resume_from(self, docs: list[Any]) -> None:
        """Rebuild the engine's state from a session file's documents (before :meth:`run`)."""
        for d in docs:
            if isinstance(d, ImageDoc):
                self.pixels[d.image_id] = d.pixels
            elif isinstance(d, BlockDoc):
                step = PresentBlock.model_validate(d.params["step"])
                recs = [TrialRecord(tid, d.block_id, i, img, cond)
                        for i, (tid, img, cond) in enumerate(d.params["trials"])]
                for r in recs:
                    self.trials[r.trial_id] = r
                self.blocks[d.block_id] = BlockRecord(
                    d.block_id, step, recs, {r.image_id: r.condition for r in recs}, list(d.params["fallbacks"]),
                    StateMachine(f"block {d.block_id}", BlockState.PREPARING, BLOCK_TRANSITIONS))
            elif isinstance(d, TrialDoc):
                rec = self.trials.get(d.trial_id)
                if rec is not None:
                    rec.shown = True
            elif isinstance(d, ResponseDoc):
                rec = self.trials.get(d.trial_id)
                if rec is not None:
                    rec.counts = d
            elif isinstance(d, StepDoc):
                self._recorded_steps.append(d)
        # a trial shown whose counts were never recorded is shown again, as a new trial
        for rec in [r for r in self.trials.values() if r.shown and r.counts is None]:
            del self.trials[rec.trial_id]
            rec.trial_id = f"{rec.trial_id}.again"
            rec.shown = False
            self.trials[rec.trial_id] = rec
        done = sum(r.counts is not None for r in self.trials.values())
        log.info("resuming %s: %d steps recorded, %d trials with counts", self.config.session_id,
                 len(self._recorded_steps), done)

    # -- operator commands ---------------------------------------------------------------------------
    async def pause(self, reason: str = "operator") -> None:
        if self.session.state is not SessionState.RUNNING:
            return
        self.session.to(SessionState.PAUSED)
        self._resumed.clear()
        self._event("paused", reason)
        with contextlib.suppress(CortexloopError):
            await self.stim.pause()

    async def resume(self, reason: str = "operator") -> None:
        if self._operator is not None and not self._operator.done():
            self._operator.set_result(OperatorResult(action="resume", reason=reason))
            return
        if self.session.state is not SessionState.PAUSED:
            return
        self.session.to(SessionState.RUNNING)
        self._event("resumed", reason)
        with contextlib.suppress(CortexloopError):
            await self.stim.resume()
        self._resumed.set()

    async def abort(self, reason: str = "operator") -> None:
        if self.session.final or self._abort:
            return
        self._abort = True
        self._abort_reason = reason
        if self._operator is not None and not self._operator.done():
            self._operator.set_result(OperatorResult(action="abort", reason=reason))
        if self.session.can(SessionState.ABORTING):
            self.session.to(SessionState.ABORTING)
        self._event("abort", reason)
        self._resumed.set()
        self._counts_changed.set()
        await self.stim.abort()

    async def give_reward(self, duration_ms: float | None = None, *, operator: str = "operator",
                          command_id: str | None = None, reason: str = "") -> None:
        """A manual reward: one pulse of the stimserver's reward line (``duration_ms``, by default the
        reward schedule's base length), recorded as an ``operator`` event naming ``operator`` and, from
        the stimserver's reward event, a manual ``reward`` document. A stimserver without a reward line
        refuses it: the event says so and the error is raised."""
        rule = self.config.behavior
        if duration_ms is None and rule is not None:
            duration_ms = rule.reward.duration_ms
        length = f"{duration_ms:g} ms" if duration_ms is not None else "the stimserver's default length"
        details = {"command": "reward", "issued_by": operator, "command_id": command_id,
                   "duration_ms": duration_ms, "reason": reason}
        self._manual_recorded.clear()
        try:
            await self.stim.give_reward(duration_ms, operator)
        except CortexloopError as exc:
            self._event("operator", f"manual reward by {operator} failed: {exc}", ok=False, **details)
            raise
        self._event("operator", f"manual reward of {length} by {operator}", ok=True, **details)
        try:
            async with asyncio.timeout(REWARD_EVENT_WAIT_S):  # published before the stimserver answered
                await self._manual_recorded.wait()
        except TimeoutError:
            self._event("reward_unconfirmed", f"the stimserver gave the reward by {operator} but its reward "
                        f"event did not arrive within {REWARD_EVENT_WAIT_S:g} s; its reward document is "
                        "written when it does", **details)

    def record_event(self, what: str, message: str, details: dict[str, Any]) -> None:
        """An event from outside the engine (a child's traceback): recorded unless the session has stopped."""
        if not self.store.stopped:
            self._event(what, message, **details)

    def _presenting(self) -> BlockRecord | None:
        return next((b for b in self.blocks.values() if b.state.state is BlockState.PRESENTING), None)

    async def _watch_idle(self) -> None:
        """Awake animals: an ``animal_idle`` event (and the ``behavior`` status's warning) when no sequence
        has completed for ``idle_warn_s`` while a block is shown; with ``idle_pause`` the session pauses
        too. The time counts from the block's start (or the resume) or the last completed sequence."""
        loop = asyncio.get_running_loop()
        limit = self.config.idle_warn_s
        since: float | None = None  # when this stretch of showing a block began
        shown: str | None = None  # the block it shows
        warned = False
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            block = self._presenting()
            now = loop.time()
            if block is None or self.session.state is not SessionState.RUNNING or block.block_id != shown:
                since, warned, shown = None, False, None
            if block is None or self.session.state is not SessionState.RUNNING:
                continue
            if since is None:
                since, shown = now, block.block_id
                if self.behavior.clear_idle():  # showing again after the pause (or the next block)
                    self._status("behavior", self.behavior.payload())
            idle = now - max(since, self._last_completed or since)
            if idle < limit:
                warned = False
                continue
            if warned:
                continue
            warned = True
            msg = (f"the animal is not working: no sequence completed for {idle:.0f} s during block "
                   f"{block.block_id}" + (" (session paused)" if self.config.idle_pause else ""))
            self.behavior.set_idle(round(idle, 1), msg)
            self._event("animal_idle", msg, block_id=block.block_id, idle_s=round(idle, 1),
                        pause=self.config.idle_pause)
            self._status("behavior", self.behavior.payload())
            if self.config.idle_pause:
                await self.pause(f"animal idle: no sequence completed for {idle:.0f} s")

    def _replayed_answer(self, step: PauseForOperator) -> OperatorResult:
        """Replay: the ``n``-th operator pause is answered as the recording answered it (a recording that
        ended while waiting ends the replay there, as an abort)."""
        assert self.recording is not None
        n = self._operator_pauses
        self._operator_pauses += 1
        recorded = self.recording.operator_answer(n)
        result = (OperatorResult.model_validate(recorded) if recorded is not None else
                  OperatorResult(action="abort", reason="the recording ends while this pause waited for the operator"))
        self._event("operator_replayed", f"operator pause {n} ({step.message[:80]}): {result.action} as recorded"
                    if recorded is not None else f"operator pause {n}: no answer in the recording; replay ends here",
                    action=result.action)
        if result.action == "abort":
            self._abort = True
            self._abort_reason = result.reason or "operator (recorded)"
        return result

    async def _wait_for_operator(self, step: PauseForOperator) -> OperatorResult:
        if self.recording is not None:  # replay: the operator's recorded answer, without waiting
            return self._replayed_answer(step)
        self._operator = asyncio.get_running_loop().create_future()
        self._status("operator", {"message": step.message})
        try:
            async with asyncio.timeout(step.timeout_s):
                result = await self._operator
        except TimeoutError:
            result = OperatorResult(action=step.on_timeout, reason=f"no answer within {step.timeout_s:g} s")
        finally:
            self._operator = None
        if result.action == "abort":
            self._abort = True
            self._abort_reason = result.reason or "operator"
        return result

    # -- the run -----------------------------------------------------------------------------------
    async def run(self, plan: Plan, *, protocol: dict[str, Any] | None = None,
                  configuration: dict[str, Any] | None = None) -> StopDoc:
        resumed = bool(self._recorded_steps or self.blocks)
        if not resumed:
            self.store.write(StartDoc(session_id=self.config.session_id, protocol=protocol or {},
                                      config=configuration or {}, code_version=__version__,
                                      rig=self.config.rig, subject=self.config.subject))
        else:
            self._event("resumed_session", "controller restarted; resuming from the session file")
        self.session.to(SessionState.RUNNING)
        await self.source.open()
        if self.source.stream_records:  # which rig's data this is: source ids and hosts of the streams read
            self._event("acquisition_streams", ", ".join(f"{role}: {d.get('name')} from {d.get('hostname')} "
                                                         f"(source_id {d.get('source_id')})"
                                                         for role, d in self.source.stream_records.items()),
                        streams=self.source.stream_records)
        pumps = [asyncio.create_task(self._pump_events(), name="stim-events"),
                 asyncio.create_task(self._pump_acquisition(), name="acquisition")]
        if self.config.behavior is not None:
            pumps.append(asyncio.create_task(self._watch_idle(), name="idle-watch"))
        status, reason = "success", ""
        try:
            await adrive(plan, self._execute)
            self._check_abort()
        except Aborted as exc:
            status, reason = "abort", str(exc)
        except CortexloopError as exc:
            status, reason = "fail", f"{type(exc).__name__}: {exc}"
            log.error("session %s failed: %s", self.config.session_id, reason)
        except Exception as exc:  # a bug: the session file still ends with a stop document saying so
            status, reason = "fail", f"internal error: {type(exc).__name__}: {exc}"
            log.exception("session %s failed with an internal error", self.config.session_id)
        finally:
            tasks: list[asyncio.Task[Any]] = [*pumps, *self.generated.values()]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.source.close()
        for fn in self._finishers:
            try:
                fn()
            except Exception:  # the stop document is still written
                log.exception("a session finisher failed")
        if self._deferred:
            self._event("ingest_unsent", f"the modelserver never took the counts of {', '.join(self._deferred)} "
                        "(they are in this file: a replay or the next session can train on them)",
                        blocks=list(self._deferred))
        n = sum(r.counts is not None for r in self.trials.values())
        stop = StopDoc(exit_status=status, reason=reason, n_trials=n)  # type: ignore[arg-type]
        self.store.write(stop)
        if self.session.state is SessionState.PAUSED:
            self.session.to(SessionState.ABORTING)
        self.session.to(SessionState.FAILED if status == "fail" else SessionState.DONE)
        return stop

    async def _execute(self, step: Step) -> Result:
        self._check_abort()
        await self._resumed.wait()
        self._check_abort()
        index = self._step_index
        self._step_index += 1
        as_data = step.model_dump(mode="json")
        if index < len(self._recorded_steps):
            rec = self._recorded_steps[index]
            if rec.step != as_data:
                raise ProtocolError(f"step {index} differs from the recorded session ({rec.step.get('kind')} "
                                    f"recorded, {step.kind} now): resume needs the same protocol and seed")
            return RESULT_TYPES[type(step)].model_validate(rec.result)
        self._status("step", {"index": index, "kind": step.kind, "note": step.note})
        result = await self._dispatch(step)
        self.store.write(StepDoc(index=index, step=as_data, result=result.model_dump(mode="json")))
        return result

    async def _dispatch(self, step: Step) -> Result:
        if isinstance(step, PresentBlock):
            return await self._present(step)
        if isinstance(step, WaitForCounts):
            return await self._wait_for_counts(step)
        if isinstance(step, Ingest):
            return await self._ingest(step)
        if isinstance(step, Retrain):
            return await self._retrain(step)
        if isinstance(step, GenerateImages):
            return await self._generate(step)
        if isinstance(step, MatchModels):
            return await self._match(step)
        if isinstance(step, Analyse):
            return self._analyse(step)
        if isinstance(step, PauseForOperator):
            return await self._wait_for_operator(step)
        raise ProtocolError(f"the engine has no handler for step {step.kind!r}")
