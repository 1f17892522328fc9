"""The frame loop: shows one block on a presenter by counting frames, never by sleeping.

Runs on the display thread. Every flip's time is recorded. A trial's onset is the time of the flip
that first shows its image, its offset the time of the flip that first removes it (the first OFF
frame), so ``offset_frame - onset_frame == on_frames`` always. Dropped frames are flip intervals
longer than 1.5 measured refresh periods; a trial counts those inside its ON period (the intervals
ending at flips ``onset_frame + 1 .. offset_frame``). The photodiode patch toggles at every onset.

Control (pause, resume, abort, fixation) arrives from other threads through :class:`BlockControl`
and is read before every frame, so it takes effect at the next refresh.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stimserver.presenter import Presenter
from wire.errors import StimError
from wire.stim import BlockResult, BlockStatus, FixationSpot, PresentBlock, TrialEvent

DROP_FACTOR = 1.5


@dataclass(frozen=True)
class PlannedTrial:
    spec_index: int
    repeat: int
    image_id: str
    on_frames: int
    off_frames: int


def expand(cmd: PresentBlock) -> list[PlannedTrial]:
    """The block's trials in order, repeats expanded."""
    return [PlannedTrial(i, r, s.image_id, s.on_frames, s.off_frames)
            for i, s in enumerate(cmd.trials) for r in range(s.repeats)]


class BlockControl:
    """Thread-safe requests from the RPC side to the frame loop, and its progress."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.abort = False
        self.paused = False
        self.fixating = False
        self.trials_done = 0
        self.trials_total = 0
        #: called on the display thread once the loop has blanked the screen and starts waiting
        self.on_paused: Callable[[], None] | None = None

    @property
    def interrupt(self) -> bool:
        return self.abort or self.paused

    def request_abort(self) -> None:
        with self._cond:
            self.abort = True
            self._cond.notify_all()

    def request_pause(self) -> None:
        with self._cond:
            self.paused = True
            self._cond.notify_all()

    def request_resume(self) -> None:
        with self._cond:
            self.paused = False
            self._cond.notify_all()

    def set_fixation(self, fixating: bool) -> None:
        with self._cond:
            self.fixating = fixating
            self._cond.notify_all()

    def wait_while_paused(self) -> bool:
        """Block until resumed or aborted; True when aborted."""
        if self.on_paused is not None:
            self.on_paused()
        with self._cond:
            while self.paused and not self.abort:
                self._cond.wait()
            return self.abort


class Live:
    __slots__ = ("onset", "onset_frame", "photodiode", "shown", "trial", "trial_id")

    def __init__(self, trial: PlannedTrial) -> None:
        self.trial = trial
        self.trial_id = uuid.uuid4().hex
        self.onset = 0.0
        self.onset_frame = 0
        self.shown = 0
        self.photodiode = False


class BlockRun:
    def __init__(self, presenter: Presenter, cmd: PresentBlock, period: float,
                 emit: Callable[[TrialEvent], None]) -> None:
        self.presenter = presenter
        self.block_id = cmd.block_id
        self.fixation: FixationSpot | None = cmd.fixation
        self.period = period
        self.emit = emit
        self.times: list[float] = []
        self.no_count: set[int] = set()  # flip numbers whose preceding interval spans a pause
        self.on_screen: Live | None = None
        self.photodiode = False
        self.trials: list[TrialEvent] = []
        self.interrupted: list[TrialEvent] = []
        #: where a trial whose ON period completed goes: published at once, or (awake blocks) held
        #: by the fixation state machine until its counting window ended with the eyes in the window
        self.on_complete: Callable[[TrialEvent], None] = self._publish

    def _publish(self, event: TrialEvent) -> None:
        self.trials.append(event)
        self.emit(event)

    def frame(self, live: Live | None, spot: bool = True) -> float:
        """Draw and flip one frame showing ``live``'s image (or blank), the fixation spot unless ``spot`` is
        false; book onsets and offsets. Returns the flip's time."""
        if live is not None and live is not self.on_screen:
            self.photodiode = not self.photodiode
            live.photodiode = self.photodiode
        self.presenter.draw(live.trial.image_id if live is not None else None, self.photodiode,
                            self.fixation if spot else None)
        t = self.presenter.flip()
        n = len(self.times)
        self.times.append(t)
        previous = self.on_screen
        if previous is not None and previous is not live:
            self._finish(previous, t, n)
        if live is not None:
            if live is not previous:
                live.onset, live.onset_frame = t, n
            live.shown += 1
        self.on_screen = live
        return t

    def _finish(self, live: Live, offset: float, offset_frame: int) -> None:
        trial = live.trial
        threshold = DROP_FACTOR * self.period
        dropped = sum(1 for k in range(live.onset_frame + 1, offset_frame + 1)
                      if self.times[k] - self.times[k - 1] > threshold)
        complete = live.shown == trial.on_frames
        event = TrialEvent(
            block_id=self.block_id, trial_id=live.trial_id,
            index=len(self.trials) if complete else len(self.interrupted),
            image_id=trial.image_id, onset=live.onset, offset=offset, on_frames=trial.on_frames,
            dropped_frames=dropped, spec_index=trial.spec_index, repeat=trial.repeat,
            onset_frame=live.onset_frame, offset_frame=offset_frame, shown_frames=live.shown,
            photodiode=live.photodiode,
        )
        if complete:
            self.on_complete(event)
        else:
            self.interrupted.append(event)

    def pause(self, control: BlockControl) -> bool:
        """Blank the screen (a single flip), wait for resume; True when aborted meanwhile."""
        if self.on_screen is not None:
            self.frame(None)
        aborted = control.wait_while_paused()
        self.no_count.add(len(self.times))
        return aborted

    def result(self, status: BlockStatus) -> BlockResult:
        times = np.asarray(self.times, dtype=np.float64)
        intervals = np.diff(times)
        mask = np.ones(intervals.shape, dtype=bool)
        for n in self.no_count:
            if 1 <= n <= len(intervals):
                mask[n - 1] = False
        dropped = int(np.count_nonzero(intervals[mask] > DROP_FACTOR * self.period))
        return BlockResult(block_id=self.block_id, status=status, trials=self.trials, interrupted=self.interrupted,
                           flip_times=times, refresh_period=self.period, dropped_frames=dropped)


def run_block(presenter: Presenter, cmd: PresentBlock, control: BlockControl,
              emit: Callable[[TrialEvent], None]) -> BlockResult:
    """Show ``cmd`` on ``presenter`` (whose images must be prepared); call ``emit`` after each offset flip."""
    period = presenter.refresh_period
    if period is None or period <= 0:
        raise StimError("presenter has no measured refresh period (window not open?)")
    queue = deque(expand(cmd))
    control.trials_total = len(queue)
    control.trials_done = 0
    run = BlockRun(presenter, cmd, period, emit)
    fixation_frames = max(1, math.ceil(cmd.fixation_timeout / period))
    status = BlockStatus.COMPLETED
    run.frame(None)  # lead-in blank: the first onset then lands one refresh after a known flip
    while queue:
        if control.interrupt:
            if control.abort or run.pause(control):
                status = BlockStatus.ABORTED
                break
        trial = queue[0]
        if cmd.wait_for_fixation and not _await_fixation(run, control, fixation_frames):
            status = BlockStatus.ABORTED if control.abort else BlockStatus.FIXATION_TIMEOUT
            break
        live = Live(trial)
        for _ in range(trial.on_frames):
            if control.interrupt:
                break
            run.frame(live)
        if live.shown < trial.on_frames:  # interrupted: blank now, then abort or re-show after resume
            if control.abort or run.pause(control):
                if run.on_screen is not None:
                    run.frame(None)
                status = BlockStatus.ABORTED
                break
            continue
        queue.popleft()
        run.frame(None)  # the offset flip: first OFF frame
        control.trials_done = len(run.trials)
        off = 1
        while off < trial.off_frames:
            if control.interrupt:
                if control.abort or run.pause(control):
                    status = BlockStatus.ABORTED
                    break
                off = 0  # OFF restarts in full after a pause
            run.frame(None)
            off += 1
        if status is BlockStatus.ABORTED:
            break
    if run.on_screen is not None:
        run.frame(None)
    control.trials_done = len(run.trials)
    return run.result(status)


def _await_fixation(run: BlockRun, control: BlockControl, max_frames: int) -> bool:
    """Flip blank frames (fixation spot shown) until the rig reports fixation; False on timeout/abort."""
    waited = 0
    while not control.fixating:
        if control.interrupt and (control.abort or run.pause(control)):
            return False
        if waited >= max_frames:
            return False
        run.frame(None)
        waited += 1
    return True
