"""Blocks: a ``present_block`` step from its image sets to the trials the stimserver showed.

A block's image sets are resolved to images (ids given, drawn from the controller's image
library, or made by the modelserver, with the set's fallback when that is slow or down), the
trials are ordered and recorded, the images are loaded into the stimserver and the block is
presented. Each trial event marks a trial shown and opens its counting window; with an awake
animal, every event (trials, rewards, the trial state machine's transitions) also updates the
behaviour counters (``controller.engine.behavior``) sent to listeners as ``behavior``. A stimserver
that stops answering mid-block pauses the session until it answers again; then the trials that
have no counts yet are shown again. A replay shows each block as recorded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from pydantic import ValidationError

from controller.engine.base import BlockRecord, Recording, TrialRecord
from controller.engine.counts import CountsMixin
from controller.engine.modelsteps import Generated
from controller.state import BLOCK_TRANSITIONS, BlockState, SessionState, StateMachine
from protocols.steps import BlockResult, GenerateImages, ImageSet, PresentBlock
from wire.behavior import BehaviorEvent, GazeChunk, RewardEvent
from wire.documents import BlockDoc, GazeDoc, ImageDoc, PickDoc, RewardDoc, TrialDoc
from wire.errors import CortexloopError, ProtocolError, RequestTimeout, ServerUnavailable
from wire.stim import BlockResult as StimBlockResult
from wire.stim import TrialEvent, TrialSpec

log = logging.getLogger(__name__)


class BlocksMixin(CountsMixin):
    """Image sets, block preparation, presenting, trial events and a lost stimserver."""

    # -- image sets --------------------------------------------------------------------------------
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

    # -- preparing a block ---------------------------------------------------------------------------
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

    # -- presenting ----------------------------------------------------------------------------------
    async def _present(self, step: PresentBlock) -> BlockResult:
        block = self.blocks.get(step.block_id) or await self._prepare_block(step)
        attempt = 0
        while True:
            self._check_abort()
            todo = [r for r in block.trials if r.counts is None and not r.shown and not r.missing]
            if not todo:
                break
            need = list(dict.fromkeys(r.image_id for r in todo))
            try:
                await self.stim.load(need, [self.pixels[i] for i in need])
                for listener in self._image_listeners:
                    await listener(need, [self.pixels[i] for i in need])
                # a pause that came while the block was being prepared holds it here (the stimserver
                # had no block to pause then); mid-block pauses are the stimserver's
                await self._resumed.wait()
                self._check_abort()
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
        rule = self.config.behavior
        if rule is not None:  # every image may be shown max_attempts times, each sequence after a time-out
            per_seq = rule.acquire_s + rule.hold_s + rule.timeout_s + 2 * rule.count_window_s
            budget = budget * rule.max_attempts + per_seq * rule.max_attempts * len(specs) \
                + rule.max_no_fixation * (rule.acquire_s + rule.timeout_s)
        present = asyncio.create_task(self.stim.present(seg_id, specs, timeout=budget, behavior=rule,
                                                        fixation=self.config.fixation_spot))
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
        for ev in reply.trials + reply.invalid:  # events lost on the SUB socket are recovered from the reply
            self._on_trial(ev)
        block.dropped_frames += reply.dropped_frames
        if rule is not None:
            self._record_behavior(block, todo, reply)
        if reply.status != "completed" and not self._abort:
            self._event("block_interrupted", f"stimserver ended segment {seg_id} as {reply.status}",
                        block_id=block.block_id)

    # -- a lost stimserver ---------------------------------------------------------------------------
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

    # -- the stimserver's events -----------------------------------------------------------------------
    async def _pump_events(self) -> None:
        """Trial events; rewards and transitions (awake animals) count, manual rewards and gaze are recorded."""
        async for ev in self.stim.events():
            if isinstance(ev, GazeChunk):
                self._on_gaze(ev)
                continue
            if isinstance(ev, TrialEvent):
                self._on_trial(ev)
            elif isinstance(ev, RewardEvent) and ev.manual:
                self._on_manual_reward(ev)
            if self.behavior.update(ev, self._block_of(ev.block_id)):
                if isinstance(ev, BehaviorEvent) and ev.what == "completed":
                    self._last_completed = asyncio.get_running_loop().time()
                self._status("behavior", self.behavior.payload())

    def _block_of(self, segment: str | None) -> str | None:
        """The block a segment id (``<block id>~<attempt>``, as events carry it) belongs to."""
        if segment is None:
            return None
        recs = self._segments.get(segment)
        return recs[0].block_id if recs else segment.rsplit("~", 1)[0]

    def _on_gaze(self, ev: GazeChunk) -> None:
        """Keep the gaze samples the stimulus server judged (one ``gaze`` document per chunk)."""
        if len(ev.t):
            self.store.write(GazeDoc(block_id=self._block_of(ev.block_id) or ev.block_id, t=ev.t, xy=ev.xy))

    def _on_trial(self, ev: TrialEvent) -> None:
        seg = self._segments.get(ev.block_id)
        # each TrialSpec of a segment is one trial record (repeats are expanded by the controller)
        if seg is None or ev.spec_index >= len(seg):
            log.warning("trial event of unknown block segment %s dropped", ev.block_id)
            return
        rec = seg[ev.spec_index]
        if rec.image_id != ev.image_id:
            log.error("trial %s: stimserver showed %s, expected %s", rec.trial_id, ev.image_id, rec.image_id)
            return
        if not ev.valid:
            self._on_invalid(rec, ev)
            return
        if rec.shown:
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

    # -- awake animals: trials that did not count ----------------------------------------------------------
    def _on_invalid(self, rec: TrialRecord, ev: TrialEvent) -> None:
        """A showing the animal did not look at: recorded (trial and counts) under its own id, never analysed."""
        key = (ev.block_id, ev.spec_index, ev.onset)
        if key in self._invalid_seen:  # published, then listed again in the block's reply
            return
        self._invalid_seen.add(key)
        bad = TrialRecord(f"{rec.trial_id}~x{rec.invalid_shown}", rec.block_id, rec.index, rec.image_id,
                          rec.condition, shown=True, valid=False)
        rec.invalid_shown += 1
        self.trials[bad.trial_id] = bad
        self.store.write(TrialDoc(trial_id=bad.trial_id, block_id=rec.block_id, index=rec.index,
                                  image_id=rec.image_id, onset=ev.onset, offset=ev.offset, on_frames=ev.on_frames,
                                  dropped_frames=ev.dropped_frames, valid=False, invalid_reason=ev.invalid_reason,
                                  broke_at=ev.broke_at))
        if self.recording is not None:
            self._on_closed([self.recording.closed_trial(bad.trial_id, ev)])
            return
        self._on_closed(self.binner.add_trial(bad.trial_id, ev.onset, block_id=rec.block_id,
                                              image_id=rec.image_id, index=rec.index))

    def _record_behavior(self, block: BlockRecord, todo: list[TrialRecord], reply: StimBlockResult) -> None:
        """Rewards, images given up on and the block's behaviour, from the stimserver's reply."""
        self.store.write_many([RewardDoc(block_id=block.block_id, onset=r.time, duration_s=r.duration_s,
                                         manual=r.manual, line=r.line) for r in reply.rewards
                               if not r.manual])  # manual rewards are recorded from their event
        gave_up = [todo[i] for i in dict.fromkeys(reply.missing) if i < len(todo)]
        for rec in gave_up:
            rec.missing = True
        if gave_up:
            self._event("trials_missing", f"{len(gave_up)} image(s) of {block.block_id} did not count in "
                        f"{self.config.behavior.max_attempts if self.config.behavior else '?'} showings; recorded "
                        "as missing", block_id=block.block_id, trials=[r.trial_id for r in gave_up])
        self._event("behavior", f"{block.block_id}: {reply.completed_sequences} of {reply.sequences} sequences "
                    f"completed, {len(reply.invalid)} trials invalid, {reply.no_fixation} failed acquisitions, "
                    f"{len(reply.rewards)} rewards", block_id=block.block_id, sequences=reply.sequences,
                    completed=reply.completed_sequences, invalid=len(reply.invalid), no_fixation=reply.no_fixation,
                    rewards=len(reply.rewards), missing=len(gave_up), status=str(reply.status))

    def _on_manual_reward(self, ev: RewardEvent) -> None:
        """A manual reward the stimserver gave (the operator's): a ``reward`` document, once."""
        key = (ev.time, ev.duration_s)
        if key in self._manual_seen:
            return
        self._manual_seen.add(key)
        self.store.write(RewardDoc(block_id=self._block_of(ev.block_id), onset=ev.time, duration_s=ev.duration_s,
                                   manual=True, line=ev.line))
        self._manual_recorded.set()
