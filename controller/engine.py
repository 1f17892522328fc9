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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from controller import __version__
from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner, ClosedTrial
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.state import BLOCK_TRANSITIONS, SESSION_TRANSITIONS, BlockState, SessionState, StateMachine
from controller.store import SessionWriter
from protocols.analysis import TrialData, run_analysis
from protocols.plan import adrive
from protocols.steps import (
    RESULT_TYPES,
    Analyse,
    AnalysisResult,
    BlockResult,
    CountsResult,
    GenerateImages,
    GenerateResult,
    ImageSet,
    Ingest,
    IngestResult,
    MatchModels,
    MatchResult,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Retrain,
    RetrainResult,
    Step,
    WaitForCounts,
)
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import (
    Aborted,
    AcquisitionError,
    CortexloopError,
    ProtocolError,
    RequestTimeout,
    ServerUnavailable,
)
from wire.stim import TrialEvent, TrialSpec

log = logging.getLogger(__name__)


# --- the modelserver seam -------------------------------------------------------------------
@dataclass
class Generated:
    """Images a generator made, with why each was picked."""

    result: GenerateResult
    pixels: dict[str, np.ndarray]
    picks: list[PickDoc] = field(default_factory=list)


class ModelLink(Protocol):
    """What the engine asks of the modelserver (``controller.modellink`` speaks it over ZeroMQ)."""

    async def ingest(self, session_id: str, trials: list[tuple[TrialDoc, ResponseDoc]],
                     images: dict[str, np.ndarray], heldout: bool) -> IngestResult: ...

    async def retrain(self, step: Retrain) -> RetrainResult: ...

    async def generate(self, step: GenerateImages, seed: int) -> Generated: ...

    async def match(self, step: MatchModels, data: TrialData, image_ids: list[str]) -> MatchResult: ...


class Recording(Protocol):
    """A stored session the engine replays (:class:`controller.replay.Recording`): its blocks are
    shown as recorded and its counts answer in place of an acquisition source."""

    def block(self, block_id: str) -> BlockDoc | None: ...

    def image(self, image_id: str) -> np.ndarray: ...

    def closed_trial(self, trial_id: str, ev: TrialEvent) -> ClosedTrial: ...


class NoModelServer:
    """The seam when no modelserver is configured: every request is unavailable (fallbacks run)."""

    async def _unavailable(self) -> Any:
        raise ServerUnavailable("no modelserver is configured for this session")

    async def ingest(self, *a: Any, **k: Any) -> IngestResult:
        return await self._unavailable()

    async def retrain(self, *a: Any, **k: Any) -> RetrainResult:
        return await self._unavailable()

    async def generate(self, *a: Any, **k: Any) -> Generated:
        return await self._unavailable()

    async def match(self, *a: Any, **k: Any) -> MatchResult:
        return await self._unavailable()


# --- configuration and records --------------------------------------------------------------
@dataclass
class EngineConfig:
    session_id: str
    rig: str = "rig"
    subject: str = "unknown"
    seed: int = 0
    refresh_hz: float = 60.0
    stim_ping_interval: float = 1.0
    stim_dead_after: int = 3
    block_slack_s: float = 30.0


@dataclass
class TrialRecord:
    trial_id: str
    block_id: str
    index: int
    image_id: str
    condition: str
    shown: bool = False
    counts: ResponseDoc | None = None
    sent_to_model: bool = False


@dataclass
class BlockRecord:
    block_id: str
    step: PresentBlock
    trials: list[TrialRecord]
    conditions: dict[str, str]
    fallbacks: list[str]
    state: StateMachine[BlockState]
    dropped_frames: int = 0


StatusListener = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class Engine:
    """Runs one session. ``await Engine(...).run(plan, protocol=...)`` returns its stop document."""

    def __init__(self, config: EngineConfig, *, store: SessionWriter, stim: StimLink, source: AcquisitionSource,
                 binner: Binner, images: ImageLibrary, models: ModelLink | None = None) -> None:
        self.config = config
        self.store = store
        self.stim = stim
        self.source = source
        self.binner = binner
        self.images = images
        self.models: ModelLink = models if models is not None else NoModelServer()
        #: replay: blocks as recorded, recorded counts instead of the acquisition stream
        self.recording: Recording | None = None
        self.session = StateMachine("session", SessionState.IDLE, SESSION_TRANSITIONS)
        self.blocks: dict[str, BlockRecord] = {}
        self.trials: dict[str, TrialRecord] = {}
        self.pixels: dict[str, np.ndarray] = {}
        self.generated: dict[str, asyncio.Task[Generated]] = {}
        self.requests: dict[str, GenerateImages] = {}
        self._segments: dict[str, list[TrialRecord]] = {}
        self._recorded_steps: list[StepDoc] = []
        self._step_index = 0
        self._counts_changed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._abort = False
        self._abort_reason = ""
        self._acq_error: AcquisitionError | None = None
        self._listeners: list[StatusListener] = []
        self._image_listeners: list[Callable[[list[str], list[np.ndarray]], Awaitable[None]]] = []
        self._operator: asyncio.Future[OperatorResult] | None = None
        self.session.on_change(lambda old, new: self._status("session", {"from": old.value, "state": new.value}))

    # -- listeners (the MQTT bus, the terminal) ---------------------------------------------------
    def on_status(self, listener: StatusListener) -> None:
        self._listeners.append(listener)

    def on_images(self, listener: Callable[[list[str], list[np.ndarray]], Awaitable[None]]) -> None:
        """Called with the images of each block before it is shown (a virtual rig computes its rates)."""
        self._image_listeners.append(listener)

    def _status(self, topic: str, payload: dict[str, Any]) -> None:
        payload = {"session_id": self.config.session_id, **payload}
        for listener in self._listeners:
            out = listener(topic, payload)
            if asyncio.iscoroutine(out):
                task = asyncio.ensure_future(out)
                task.add_done_callback(_log_failure)

    def _event(self, what: str, message: str, **details: Any) -> None:
        self.store.write(EventDoc(what=what, message=message, details=details))
        self._status("event", {"what": what, "message": message, **details})

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

    def _check_abort(self) -> None:
        if self._abort:
            raise Aborted(f"session aborted: {self._abort_reason}")

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
        pumps = [asyncio.create_task(self._pump_trials(), name="trial-events"),
                 asyncio.create_task(self._pump_acquisition(), name="acquisition")]
        status, reason = "success", ""
        try:
            await adrive(plan, self._execute)
            self._check_abort()
        except Aborted as exc:
            status, reason = "abort", str(exc)
        except CortexloopError as exc:
            status, reason = "fail", f"{type(exc).__name__}: {exc}"
            log.error("session %s failed: %s", self.config.session_id, reason)
        finally:
            tasks: list[asyncio.Task[Any]] = [*pumps, *self.generated.values()]
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await self.source.close()
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
            result = await self.models.retrain(step)
            if result.status == "done":
                metrics = {"val_r": result.heldout_score} if result.heldout_score is not None else {}
                self.store.write(ModelVersionDoc(version=result.model_version, n_images=0, metrics=metrics,
                                                 details={"scope": result.scope}))
            return result
        if isinstance(step, GenerateImages):
            return await self._generate(step)
        if isinstance(step, MatchModels):
            data, ids = self.trial_data(step.heldout_blocks)
            return await self.models.match(step, data, ids)
        if isinstance(step, Analyse):
            return self._analyse(step)
        if isinstance(step, PauseForOperator):
            return await self._wait_for_operator(step)
        raise ProtocolError(f"the engine has no handler for step {step.kind!r}")

    # -- images -----------------------------------------------------------------------------------
    def _seed(self, *parts: object) -> int:
        """A seed derived from the session seed and names (stable across runs, unlike hash())."""
        return _stable_seed(self.config.seed, *parts)

    async def _generate(self, step: GenerateImages) -> GenerateResult:
        task = asyncio.create_task(self.models.generate(step, self._seed("generate", step.request_id)))
        self.generated[step.request_id] = task
        self.requests[step.request_id] = step
        if step.prefetch:
            return GenerateResult(request_id=step.request_id, status="pending")
        try:
            async with asyncio.timeout(step.timeout_s):
                gen = await asyncio.shield(task)
        except (TimeoutError, CortexloopError) as exc:
            # the protocol decides; an image set showing this request falls back to its pool source
            why = f"{type(exc).__name__}: {exc}" if str(exc) else f"no images within {step.timeout_s:g} s"
            self._event("generate_failed", f"{step.generator} ({step.request_id}) failed: {why}",
                        request_id=step.request_id)
            return GenerateResult(request_id=step.request_id, status="failed", error=why)
        return gen.result

    def _request_for(self, step: PresentBlock, s: ImageSet) -> GenerateImages:
        """The generate request whose images set ``s`` shows (prefetched, or made inline now)."""
        if s.request is not None:
            req = self.requests.get(s.request)
            if req is None:
                raise ProtocolError(f"block {step.block_id}: no generate_images request {s.request!r} was made")
            return req
        try:
            return s.inline_request(step.block_id)
        except ValidationError as exc:
            raise ProtocolError(f"block {step.block_id}: {s.label}: {exc}") from exc

    async def _model_images(self, step: PresentBlock, s: ImageSet, req: GenerateImages) -> Generated:
        task = self.generated.get(req.request_id) if s.request is not None else None
        if task is None:
            task = asyncio.create_task(self.models.generate(req, self._seed("set", step.block_id, s.label)))
        async with asyncio.timeout(s.timeout_s):
            return await asyncio.shield(task)

    async def _resolve_set(self, step: PresentBlock, s: ImageSet) -> tuple[list[str], list[str], list[PickDoc], bool]:
        """(image ids, condition per image, picks, fallback used) of one image set."""
        seed = s.seed if s.seed is not None else self._seed("set", step.block_id, s.label)
        if s.image_ids is not None:
            missing = [i for i in s.image_ids if i not in self.pixels and i not in self.images.ids]
            if missing:
                raise ProtocolError(f"block {step.block_id}: unknown image ids {missing[:3]}")
            for i in s.image_ids:
                if i not in self.pixels:
                    self.pixels[i] = self.images.images[self.images.ids.index(i)]
            return list(s.image_ids), [s.label] * len(s.image_ids), [], False
        assert s.source is not None
        if s.source in ("normal", "pool_random", "gaudy") and s.request is None:
            ids, pix = self.images.draw(s.source, s.n_images, seed)
            self.pixels.update(zip(ids, pix, strict=True))
            picks = [PickDoc(image_id=i, block_id=step.block_id, generator=s.source, details={"seed": seed})
                     for i in ids]
            return ids, [s.label] * len(ids), picks, False
        req = self._request_for(step, s)
        try:
            gen = await self._model_images(step, s, req)
        except (TimeoutError, CortexloopError) as exc:
            if s.fallback is None:
                raise ServerUnavailable(f"block {step.block_id}: {s.label} images unavailable ({exc}) "
                                        "and the image set has no fallback") from exc
            n = req.total_images  # as many as the generator would have made (per neuron x neurons)
            self._event("fallback", f"{s.label}: modelserver failed ({type(exc).__name__}); "
                        f"showing {n} {s.fallback} images instead", block_id=step.block_id, condition=s.label)
            ids, pix = self.images.draw(s.fallback, n, seed)
            self.pixels.update(zip(ids, pix, strict=True))
            picks = [PickDoc(image_id=i, block_id=step.block_id, generator=f"fallback:{s.fallback}",
                             details={"seed": seed, "instead_of": s.source}) for i in ids]
            # labelled '<condition>/fallback' so analyses never count them as the condition
            return ids, [f"{s.label}/fallback"] * n, picks, True
        self.pixels.update(gen.pixels)
        ids = gen.result.image_ids
        labels: list[str | None] = list(gen.result.labels) if gen.result.labels else [None] * len(ids)
        conds = [s.label if lab is None else f"{s.label}/{lab}" for lab in labels]
        picks = [p.model_copy(update={"block_id": step.block_id}) for p in gen.picks]
        return ids, conds, picks, False

    # -- blocks ----------------------------------------------------------------------------------------
    async def _prepare_block(self, step: PresentBlock) -> BlockRecord:
        if self.recording is not None:
            return await self._prepare_recorded(step, self.recording)
        ids: list[str] = []
        conds: list[str] = []
        picks: list[PickDoc] = []
        fallbacks: list[str] = []
        for s in step.images:
            i, c, p, fb = await self._resolve_set(step, s)
            ids += i
            conds += c
            picks += p
            if fb:
                fallbacks.append(s.label)
        order = [k for k in range(len(ids)) for _ in range(step.repeats)]
        if step.shuffle:
            np.random.default_rng(step.seed if step.seed is not None else self._seed("order", step.block_id)) \
                .shuffle(order)
        recs = [TrialRecord(f"{step.block_id}/{n}", step.block_id, n, ids[k], conds[k]) for n, k in enumerate(order)]
        return self._add_block(step, recs, fallbacks, picks, source=step.images[0].label, fallback=bool(fallbacks),
                               conditions=dict(zip(ids, conds, strict=True)))

    async def _prepare_recorded(self, step: PresentBlock, recording: Recording) -> BlockRecord:
        """Replay: the block's trials exactly as recorded (same ids, images, order and conditions).

        Generated image sets are still requested from the model: what it picks now is written as
        pick documents marked ``counterfactual`` (shown: whether the recording showed that image).
        """
        recorded = recording.block(step.block_id)
        if recorded is None:
            raise ProtocolError(f"replay: block {step.block_id!r} is not in the recording")
        recs = [TrialRecord(tid, step.block_id, n, img, cond)
                for n, (tid, img, cond) in enumerate(recorded.params["trials"])]
        for r in recs:
            if r.image_id not in self.pixels:
                self.pixels[r.image_id] = recording.image(r.image_id)
        shown = {r.image_id for r in recs}
        picks: list[PickDoc] = []
        for s in step.images:
            if not s.generated:
                continue
            try:
                gen = await self._model_images(step, s, self._request_for(step, s))
            except (TimeoutError, CortexloopError) as exc:
                self._event("generate_failed", f"replay: {s.label} picks failed ({type(exc).__name__}: {exc})",
                            block_id=step.block_id)
                continue
            picks += [p.model_copy(update={"block_id": step.block_id, "details": {
                **p.details, "counterfactual": True, "shown": p.image_id in shown}}) for p in gen.picks]
        return self._add_block(step, recs, list(recorded.params.get("fallbacks", [])), picks,
                               source=recorded.source, fallback=recorded.fallback, replay_of=recorded.uid)

    def _add_block(self, step: PresentBlock, recs: list[TrialRecord], fallbacks: list[str], picks: list[PickDoc],
                   *, source: str, fallback: bool, conditions: dict[str, str] | None = None,
                   **params: Any) -> BlockRecord:
        """Record a prepared block (its images, picks and block document) and start tracking it."""
        for img in dict.fromkeys(r.image_id for r in recs):
            self.store.write(ImageDoc(image_id=img, pixels=self.pixels[img]))
        self.store.write_many(picks)
        self.store.write(BlockDoc(block_id=step.block_id, index=len(self.blocks), source=source, fallback=fallback,
                                  n_trials=len(recs), params={
                                      "step": step.model_dump(mode="json"), "fallbacks": fallbacks,
                                      "trials": [[r.trial_id, r.image_id, r.condition] for r in recs], **params}))
        if conditions is None:
            conditions = {r.image_id: r.condition for r in recs}
        block = BlockRecord(step.block_id, step, recs, conditions, fallbacks,
                            StateMachine(f"block {step.block_id}", BlockState.PREPARING, BLOCK_TRANSITIONS))
        block.state.on_change(lambda o, n: self._status("block", {"block_id": step.block_id, "state": n.value}))
        for r in recs:
            self.trials[r.trial_id] = r
        self.blocks[step.block_id] = block
        return block

    async def _present(self, step: PresentBlock) -> BlockResult:
        block = self.blocks.get(step.block_id) or await self._prepare_block(step)
        attempt = 0
        while True:
            self._check_abort()
            todo = [r for r in block.trials if r.counts is None and not r.shown]
            if not todo:
                break
            need = list(dict.fromkeys(r.image_id for r in todo))
            try:
                await self.stim.load(need, [self.pixels[i] for i in need])
                for listener in self._image_listeners:
                    await listener(need, [self.pixels[i] for i in need])
                if block.state.state is BlockState.PREPARING:
                    block.state.to(BlockState.PRESENTING)
                await self._present_segment(block, todo, attempt)
            except (RequestTimeout, ServerUnavailable) as exc:
                if self._abort:
                    break
                await self._stim_lost(block, exc)
            attempt += 1
        if self._abort:
            if block.state.can(BlockState.ABORTED):
                block.state.to(BlockState.ABORTED)
            self._check_abort()
        block.state.to(BlockState.COUNTING)
        shown = [r for r in block.trials if r.shown]
        return BlockResult(block_id=step.block_id, n_trials=len(shown),
                           image_ids=list(dict.fromkeys(r.image_id for r in block.trials)),
                           conditions=block.conditions, dropped_frames=block.dropped_frames,
                           fallbacks=block.fallbacks)

    async def _present_segment(self, block: BlockRecord, todo: list[TrialRecord], attempt: int) -> None:
        seg_id = f"{block.block_id}~{attempt}"
        self._segments[seg_id] = todo
        specs = [TrialSpec(image_id=r.image_id, on_frames=block.step.on_frames,
                           off_frames=max(1, block.step.off_frames)) for r in todo]
        frames = sum(s.on_frames + s.off_frames for s in specs)
        budget = frames / self.config.refresh_hz * 3 + self.config.block_slack_s
        present = asyncio.create_task(self.stim.present(seg_id, specs, timeout=budget))
        watchdog = asyncio.create_task(self._watch_stim(present))
        try:
            reply = await present
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if watchdog.done() and not watchdog.cancelled() and me is not None and not me.cancelling():
                raise ServerUnavailable(f"stimserver stopped answering during {seg_id}") from None
            raise
        finally:
            watchdog.cancel()
        for ev in reply.trials:  # events lost on the SUB socket are recovered from the reply
            self._on_trial(ev)
        block.dropped_frames += reply.dropped_frames
        if reply.status != "completed" and not self._abort:
            self._event("block_interrupted", f"stimserver ended segment {seg_id} as {reply.status}",
                        block_id=block.block_id)

    async def _watch_stim(self, present: asyncio.Task[Any]) -> None:
        """Cancel a block request whose server stopped answering pings (it was killed)."""
        misses = 0
        while not present.done():
            await asyncio.sleep(self.config.stim_ping_interval)
            try:
                await self.stim.ping(timeout=self.config.stim_ping_interval)
                misses = 0
            except RequestTimeout:
                misses += 1
                if misses >= self.config.stim_dead_after:
                    present.cancel()
                    return

    async def _stim_lost(self, block: BlockRecord, exc: Exception) -> None:
        msg = f"stimserver unreachable during block {block.block_id} ({exc}); waiting for it to come back"
        log.warning("%s", msg)
        if self.session.state is SessionState.RUNNING:
            self.session.to(SessionState.PAUSED)
        if block.state.can(BlockState.PAUSED):
            block.state.to(BlockState.PAUSED)
        self._event("stim_unreachable", msg, block_id=block.block_id)
        await self.stim.client.reconnect()
        while not self._abort:
            try:
                await self.stim.ping(timeout=self.config.stim_ping_interval)
                break
            except RequestTimeout:
                continue
        if self._abort:
            return
        self._event("stim_back", f"stimserver answers again; re-showing the trials of {block.block_id} "
                    "that have no counts", block_id=block.block_id)
        block.state.to(BlockState.PRESENTING)
        self.session.to(SessionState.RUNNING)

    # -- trial events and counts -------------------------------------------------------------------------
    async def _pump_trials(self) -> None:
        async for ev in self.stim.events():
            self._on_trial(ev)

    def _on_trial(self, ev: TrialEvent) -> None:
        seg = self._segments.get(ev.block_id)
        if seg is None or ev.index >= len(seg):
            log.warning("trial event of unknown block segment %s dropped", ev.block_id)
            return
        rec = seg[ev.index]
        if rec.shown or rec.image_id != ev.image_id:
            if rec.image_id != ev.image_id:
                log.error("trial %s: stimserver showed %s, expected %s", rec.trial_id, ev.image_id, rec.image_id)
            return
        rec.shown = True
        self.store.write(TrialDoc(trial_id=rec.trial_id, block_id=rec.block_id, index=rec.index,
                                  image_id=rec.image_id, onset=ev.onset, offset=ev.offset,
                                  on_frames=ev.on_frames, dropped_frames=ev.dropped_frames))
        self._status("trial", {"block_id": rec.block_id, "index": rec.index,
                               "done": sum(r.shown for r in self.blocks[rec.block_id].trials),
                               "total": len(self.blocks[rec.block_id].trials)})
        if self.recording is not None:
            self._on_closed([self.recording.closed_trial(rec.trial_id, ev)])
            return
        self._on_closed(self.binner.add_trial(rec.trial_id, ev.onset, block_id=rec.block_id,
                                              image_id=rec.image_id, index=rec.index))

    async def _pump_acquisition(self) -> None:
        try:
            async for item in self.source:
                self._on_closed(self.binner.feed(item))
        except AcquisitionError as exc:
            self._acq_error = exc
            self._event("acquisition_failed", str(exc))
            self._counts_changed.set()

    def _on_closed(self, closed: list[ClosedTrial]) -> None:
        docs = []
        for c in closed:
            rec = self.trials.get(c.trial_id)
            if rec is None or rec.counts is not None:
                continue
            if not c.complete:
                log.warning("trial %s closed without a complete window; no counts recorded", c.trial_id)
                continue
            counts = np.asarray(c.counts)  # spike counts as int32; repeat-averaged (imported) ones stay float
            rec.counts = ResponseDoc(trial_id=c.trial_id, units=[str(u) for u in c.unit_ids],
                                     counts=counts if counts.dtype.kind == "f" else counts.astype(np.int32),
                                     window=c.window,
                                     onset_acq=c.onset_acq)
            docs.append(rec.counts)
        if docs:
            self.store.write_many(docs)
            self._counts_changed.set()

    async def _wait_for_counts(self, step: WaitForCounts) -> CountsResult:
        block = self.blocks.get(step.block_id)
        if block is None:
            raise ProtocolError(f"wait_for_counts: block {step.block_id!r} was not presented")
        shown = [r for r in block.trials if r.shown]
        deadline = time.monotonic() + step.timeout_s
        while True:
            self._check_abort()
            done = [r for r in shown if r.counts is not None]
            if len(done) == len(shown):
                break
            # a replay has closed every shown trial already: what has no counts was never counted
            if self._acq_error is not None or time.monotonic() >= deadline or self.recording is not None:
                why = f"acquisition failed: {self._acq_error}" if self._acq_error else \
                    "the recording has no counts for the rest" if self.recording is not None else \
                    f"no counts after {step.timeout_s:g} s"
                if len(done) < step.min_fraction * len(shown):
                    raise AcquisitionError(f"block {step.block_id}: {len(done)} of {len(shown)} trials have "
                                           f"counts ({why}); missing trials are not recorded")
                break
            self._counts_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(0.5, max(0.0, deadline - time.monotonic()))):
                    await self._counts_changed.wait()
        if block.state.can(BlockState.DONE):
            block.state.to(BlockState.DONE)
        done = [r for r in shown if r.counts is not None]
        units = {u for r in done if r.counts for u in r.counts.units}
        total = sum(float(np.sum(r.counts.counts)) for r in done if r.counts)
        cells = sum(len(r.counts.units) for r in done if r.counts)
        return CountsResult(block_id=step.block_id, n_trials=len(done), n_neurons=len(units),
                            mean_count=total / cells if cells else 0.0)

    # -- model steps -------------------------------------------------------------------------------------
    async def _ingest(self, step: Ingest) -> IngestResult:
        pairs: list[tuple[TrialDoc, ResponseDoc]] = []
        for b in step.block_ids:
            if b not in self.blocks:
                raise ProtocolError(f"ingest: block {b!r} was not presented")
            for r in self.blocks[b].trials:
                if r.counts is not None:
                    pairs.append((TrialDoc(trial_id=r.trial_id, block_id=r.block_id, index=r.index,
                                           image_id=r.image_id, onset=0.0, offset=0.0, on_frames=1,
                                           dropped_frames=0), r.counts))
        images = {t.image_id: self.pixels[t.image_id] for t, _ in pairs}
        result = await self.models.ingest(self.config.session_id, pairs, images, step.heldout)
        for t, _ in pairs:
            self.trials[t.trial_id].sent_to_model = True
        return result

    def trial_data(self, blocks: list[str] | None = None) -> tuple[TrialData, list[str]]:
        """Counts of every trial with counts (of ``blocks``): (TrialData, image id per trial)."""
        recs = [r for r in self.trials.values() if r.counts is not None and (blocks is None or r.block_id in blocks)]
        units = sorted({u for r in recs if r.counts for u in r.counts.units}, key=_natural_key)
        col = {u: j for j, u in enumerate(units)}
        counts = np.full((len(recs), len(units)), np.nan)
        for i, r in enumerate(recs):
            assert r.counts is not None
            counts[i, [col[u] for u in r.counts.units]] = r.counts.counts
        data = TrialData(counts=counts, conditions=[r.condition for r in recs], blocks=[r.block_id for r in recs])
        return data, [r.image_id for r in recs]

    def _analyse(self, step: Analyse) -> AnalysisResult:
        data, _ = self.trial_data(step.blocks)
        return run_analysis(step, data)

    async def _wait_for_operator(self, step: PauseForOperator) -> OperatorResult:
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


def _natural_key(unit: str) -> tuple[int, str]:
    """Unit "2" before unit "10"; named units after numbered ones (the modelserver's neuron order)."""
    return (int(unit), "") if unit.isdigit() else (1 << 62, unit)


def _stable_seed(*parts: object) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=4).digest(), "little")


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("status listener failed: %s", task.exception())


__all__ = ["Engine", "EngineConfig", "Generated", "ModelLink", "NoModelServer"]
