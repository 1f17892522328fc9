"""The awake trial state machine, run in the frame loop where the flips happen.

States (Opticka's fixate / breakfix / correct, MonkeyLogic's trial errors)::

    ACQUIRE --gaze in window--> HOLD --hold_s held--> SEQUENCE --last image's window held--> (reward) ACQUIRE
       |  acquire_s passed          | break                  | break
       v                            v                        v
    TIMEOUT (blank, no spot, timeout_s) ----------------------> ACQUIRE

Gaze is read once per frame, before the frame is drawn: the samples that arrived since the previous
frame are judged in order (:class:`GazeJudge`), so a break is acted on by the very next flip, which
blanks the screen (no image, no spot): within one refresh of the sample's arrival.

A trial whose image completed its ON period is *held* until its counting window (onset +
``count_window_s``) has passed with the eyes in the window; then it is published as valid. A break
makes every held trial invalid (or, with ``count_before_break``, only those whose window had not ended
before the breaking sample), and the image cut short by it too. Invalid trials are published with
``valid=False`` and the reason, then put back at the end of the block's queue until the image has
been shown ``max_attempts`` times (then it is reported missing). Images of the broken sequence that
were not shown yet go back to the front. The reward line pulses right after the offset flip of the
sequence's last image.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from stimserver.frameloop import BlockControl, BlockRun, Live, PlannedTrial, expand
from stimserver.gaze import GazeSource
from stimserver.presenter import Presenter
from stimserver.reward import RewardLine
from wire import clock
from wire.base import Message
from wire.behavior import BehaviorEvent, FixationRule, GazeChunk, GazeSample, InvalidReason, RewardEvent
from wire.errors import StimError
from wire.stim import BlockResult, BlockStatus, PresentBlock, TrialEvent

#: the gaze samples read go out as one GazeChunk at most this often (s), and at the block's end
GAZE_CHUNK_S = 0.25


@dataclass
class Verdict:
    """What the gaze said this frame."""

    inside: bool  # the newest sample has an eye inside the window
    broke: GazeSample | None = None  # the sample that broke fixation (None: not broken)
    reason: InvalidReason = InvalidReason.BREAK_FIXATION


class GazeJudge:
    """Judges gaze samples against the window; remembers blinks and the last time fixation was confirmed."""

    def __init__(self, source: GazeSource, rule: FixationRule, centre: tuple[float, float]) -> None:
        self.source = source
        self.rule = rule
        self.centre = centre
        self.last: GazeSample | None = None
        self.no_eye_since: float | None = None
        #: time of the newest sample inside the window since the last reset, with no break since
        self.good_until = -math.inf
        #: every sample read and not yet taken (:meth:`take`), judged or not
        self.kept: list[GazeSample] = []

    def reset(self) -> None:
        """Start judging afresh (at the start of a hold): earlier blinks are forgotten."""
        self.no_eye_since = None
        self.good_until = self.last.t if self.last is not None and self._inside(self.last) else -math.inf

    def _inside(self, s: GazeSample) -> bool:
        return s.has_eye and math.hypot(s.x - self.centre[0], s.y - self.centre[1]) <= self.rule.window_deg

    def take(self) -> list[GazeSample]:
        """The samples read since the last call (all of them, also those after a breaking one)."""
        kept, self.kept = self.kept, []
        return kept

    def check(self, now: float) -> Verdict:
        """Read the new samples; the first one that breaks fixation decides."""
        samples = self.source.poll()
        if samples:
            self.kept.extend(samples)
        for s in samples:
            self.last = s
            if self._inside(s):
                self.no_eye_since = None
                self.good_until = s.t
            elif s.has_eye:
                return Verdict(False, s)
            else:
                if self.no_eye_since is None:
                    self.no_eye_since = s.t
                if s.t - self.no_eye_since > self.rule.blink_grace_s:
                    return Verdict(False, s)
        last_t = self.last.t if self.last is not None else -math.inf
        if now - last_t > self.rule.stale_gaze_s:  # the tracker went quiet: an eye we cannot see
            since = self.no_eye_since if self.no_eye_since is not None else max(last_t, self.good_until)
            if now - since > self.rule.blink_grace_s + self.rule.stale_gaze_s:
                return Verdict(False, GazeSample(t=now, x=math.nan, y=math.nan), InvalidReason.NO_GAZE)
            return Verdict(False)
        return Verdict(self.last is not None and self._inside(self.last))


class FixationBlock:
    """One block under a :class:`~wire.behavior.FixationRule` (``run()`` returns its BlockResult)."""

    def __init__(self, presenter: Presenter, cmd: PresentBlock, control: BlockControl,
                 emit: Callable[[Message], None], gaze: GazeSource, reward: RewardLine | None, *,
                 now: Callable[[], float] = clock.now) -> None:
        assert cmd.behavior is not None
        period = presenter.refresh_period
        if period is None or period <= 0:
            raise StimError("presenter has no measured refresh period (window not open?)")
        self.rule: FixationRule = cmd.behavior
        self.cmd, self.control, self.emit, self.reward, self.period = cmd, control, emit, reward, period
        self.now = now  # the clock gaze is judged on (the presenter's simulated one in tests)
        self.run = BlockRun(presenter, cmd, period, emit)
        self.run.on_complete = self._hold
        centre = cmd.fixation.position_deg if cmd.fixation is not None else (0.0, 0.0)
        self.judge = GazeJudge(gaze, self.rule, centre)
        self.queue: deque[PlannedTrial] = deque(expand(cmd))
        self.by_key = {(t.spec_index, t.repeat): t for t in self.queue}
        self.attempts: Counter[tuple[int, int]] = Counter()
        self.held: list[TrialEvent] = []
        self.invalid: list[TrialEvent] = []
        self.missing: list[int] = []
        self.rewards: list[RewardEvent] = []
        self.sequences = self.completed = self.no_fixation = self.streak = 0
        self._gaze_sent = -math.inf  # when the last GazeChunk went out (self.now; the block's start at first)

    # --- bookkeeping ----------------------------------------------------------------------------
    def _frames(self, seconds: float) -> int:
        return max(1, math.ceil(seconds / self.period - 1e-9))

    def _hold(self, event: TrialEvent) -> None:
        self.held.append(event.model_copy(update={"attempt": self.attempts[(event.spec_index, event.repeat)]}))

    def _release(self, until: float) -> None:
        """Publish, as valid, the held trials whose counting window ended by ``until``."""
        keep = []
        for ev in self.held:
            if ev.onset + self.rule.count_window_s <= until:
                ev = ev.model_copy(update={"index": len(self.run.trials)})
                self.run.trials.append(ev)
                self.emit(ev)
            else:
                keep.append(ev)
        self.held = keep

    def _spoil(self, ev: TrialEvent, reason: InvalidReason, trial: PlannedTrial, *, counts: bool = True,
               broke_at: float | None = None) -> None:
        """Publish ``ev`` as invalid and put its image back at the end of the queue, or give it up after
        ``max_attempts`` (an operator's pause is not the animal's attempt: that image goes back in front)."""
        key = (trial.spec_index, trial.repeat)
        ev = ev.model_copy(update={"valid": False, "invalid_reason": reason.value, "index": len(self.invalid),
                                   "attempt": self.attempts[key], "broke_at": broke_at})
        self.invalid.append(ev)
        self.emit(ev)
        if not counts:
            self.queue.appendleft(trial)
            return
        self.attempts[key] += 1
        if self.attempts[key] >= self.rule.max_attempts:
            self.missing.append(trial.spec_index)
        else:
            self.queue.append(trial)

    def _behavior(self, what: Literal["acquired", "break", "no_fixation", "completed"],
                  sample: GazeSample | None = None) -> None:
        self.emit(BehaviorEvent(block_id=self.cmd.block_id, time=self.now(), what=what,
                                gaze=(sample.x, sample.y) if sample is not None else None,
                                sample_time=sample.t if sample is not None else None))

    def _look(self) -> Verdict:
        """Judge the gaze read since the last frame; publish the samples read at most every GAZE_CHUNK_S."""
        now = self.now()
        v = self.judge.check(now)
        if now - self._gaze_sent >= GAZE_CHUNK_S and self.judge.kept:
            self._send_gaze(now)
        return v

    def _send_gaze(self, now: float) -> None:
        """Publish the samples read and not yet published as one GazeChunk."""
        self._gaze_sent = now
        kept = self.judge.take()
        if kept:
            t = np.fromiter((s.t for s in kept), np.float64, len(kept))
            xy = np.array([(s.x, s.y) for s in kept], np.float32).reshape(len(kept), 2)
            self.emit(GazeChunk(block_id=self.cmd.block_id, t=t, xy=xy))

    def _blank(self, seconds: float) -> bool:
        """Blank frames without the spot for ``seconds``; False when aborted meanwhile."""
        for _ in range(self._frames(seconds) if seconds > 0 else 0):
            if self.control.interrupt and (self.control.abort or self.run.pause(self.control)):
                return False
            self.run.frame(None, spot=False)
        return True

    # --- the states -----------------------------------------------------------------------------
    def _acquire(self) -> bool | None:
        """Spot on until gaze enters the window: True acquired, False timed out, None aborted."""
        for _ in range(self._frames(self.rule.acquire_s)):
            if self.control.interrupt and (self.control.abort or self.run.pause(self.control)):
                return None
            if self._look().inside:
                return True
            self.run.frame(None)
        return False

    def _hold_fixation(self) -> Verdict | None:
        """Spot on for ``hold_s`` with the eyes in the window: None held, else the breaking verdict."""
        self.judge.reset()
        for _ in range(self._frames(self.rule.hold_s) if self.rule.hold_s > 0 else 0):
            v = self._look()
            if v.broke is not None:
                return v
            self.run.frame(None)
        return None

    def _sequence(self) -> Verdict | None:
        """The images of one fixation; None when completed (and rewarded), else the breaking verdict."""
        seq = [self.queue.popleft() for _ in range(min(self.rule.images_per_fixation, len(self.queue)))]
        self.sequences += 1
        for k, trial in enumerate(seq):
            live = Live(trial)
            for _ in range(trial.on_frames):
                v = self._check()
                if v is not None or self.control.interrupt:
                    return self._broken(v, seq[k:], live)
                self.run.frame(live)
            self.run.frame(None)  # the offset flip (first OFF frame)
            last = k == len(seq) - 1
            if last:
                self._give_reward()
            off = 1  # after the last image, blank frames go on until its counting window is confirmed
            while off < trial.off_frames or (last and self.held):
                v = self._check(final=last)
                if v is not None or self.control.interrupt:
                    return self._broken(v, seq[k + 1:], None)
                self.run.frame(None)
                off += 1
            self.control.trials_done = len(self.run.trials)
        return None

    def _check(self, final: bool = False) -> Verdict | None:
        v = self._look()
        if v.broke is not None:
            return v
        if self.rule.count_before_break or final:
            self._release(self.judge.good_until)
        return None

    def _broken(self, v: Verdict | None, unshown: list[PlannedTrial], live: Live | None) -> Verdict:
        """Blank now; spoil the held trials (and the image cut short); unshown images go back in front."""
        if self.run.on_screen is not None or v is not None:
            self.run.frame(None, spot=False)  # the break's blank: the next refresh after the sample
        at = v.broke.t if v is not None and v.broke is not None else self.now()
        reason = v.reason if v is not None else InvalidReason.PAUSED
        if self.rule.count_before_break:
            self._release(self.judge.good_until)
        held, self.held = self.held, []
        cut = self.run.interrupted[-1] if live is not None and live.shown > 0 else None
        paused = reason is InvalidReason.PAUSED
        for ev in held + ([cut] if cut is not None else []):
            why = reason if ev.onset + self.rule.count_window_s > at else InvalidReason.SEQUENCE_BROKEN
            self._spoil(ev, why, self.by_key[(ev.spec_index, ev.repeat)], counts=not paused,
                        broke_at=None if paused else at)
        # images not shown yet go back in front, in order (a cut image was put back by _spoil)
        self.queue.extendleft(reversed(unshown[1:] if cut is not None else unshown))
        return v if v is not None else Verdict(False, None, InvalidReason.PAUSED)

    def _give_reward(self) -> None:
        self.completed += 1
        self.streak += 1
        duration = self.rule.reward.duration_s(self.streak)
        start = self.reward.pulse(duration) if self.reward is not None else self.now()
        ev = RewardEvent(block_id=self.cmd.block_id, time=start, duration_s=duration, sequence=self.completed,
                         streak=self.streak, line=self.reward.name if self.reward is not None else "")
        self.rewards.append(ev)
        self.emit(ev)

    # --- the block ------------------------------------------------------------------------------
    def run_block(self) -> BlockResult:
        self.control.trials_total = len(self.queue)
        self.control.trials_done = 0
        status = BlockStatus.COMPLETED
        failed_in_row = 0
        self._gaze_sent = self.now()
        self.run.frame(None, spot=False)  # lead-in blank
        while self.queue:
            acquired = self._acquire()
            if acquired is None:
                status = BlockStatus.ABORTED
                break
            if not acquired:
                self.no_fixation += 1
                failed_in_row += 1
                self.streak = 0
                self._behavior("no_fixation", self.judge.last)
                if failed_in_row >= self.rule.max_no_fixation:
                    status = BlockStatus.FIXATION_TIMEOUT
                    break
                if not self._blank(self.rule.timeout_s):
                    status = BlockStatus.ABORTED
                    break
                continue
            failed_in_row = 0
            self._behavior("acquired", self.judge.last)
            broke = self._hold_fixation()
            if broke is None:
                broke = self._sequence()
                if broke is None:
                    self._behavior("completed", self.judge.last)
                    continue
            if self.control.abort:
                status = BlockStatus.ABORTED
                break
            if broke.reason is InvalidReason.PAUSED:  # the operator paused mid-sequence: no time-out
                if self.run.pause(self.control):
                    status = BlockStatus.ABORTED
                    break
                continue
            self.streak = 0
            self._behavior("break", broke.broke)
            if not self._blank(self.rule.timeout_s):
                status = BlockStatus.ABORTED
                break
        if self.run.on_screen is not None:
            self.run.frame(None, spot=False)
        self._send_gaze(self.now())
        self.control.trials_done = len(self.run.trials)
        return self.run.result(status).model_copy(update={
            "invalid": self.invalid, "missing": sorted(self.missing), "rewards": self.rewards,
            "sequences": self.sequences, "completed_sequences": self.completed, "no_fixation": self.no_fixation})
