"""An awake animal's running counters, from the stimulus server's event stream (``docs/behavior.md``).

:class:`BehaviorCounts` counts one span (the session, or one block): fixations acquired (sequences
started), sequences completed and the share completed, breaks, failed acquisitions, rewards (manual ones
too) and invalid trials. :class:`BehaviorTracker` keeps the session's and the current block's counts
and the last gaze sample the stimulus server judged, and makes the engine's ``behavior`` status. It
only counts: the engine decides what to record and when to warn.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from wire.behavior import BehaviorEvent, RewardEvent
from wire.stim import TrialEvent

StimEvent = TrialEvent | RewardEvent | BehaviorEvent


@dataclass
class BehaviorCounts:
    """Counts over one span; :meth:`update` takes one event and says whether anything changed."""

    started: int = 0
    completed: int = 0
    breaks: int = 0
    no_fixation: int = 0
    rewards: int = 0
    manual_rewards: int = 0
    invalid: int = 0

    @property
    def share_completed(self) -> float | None:
        """Completed sequences per started one (None before the first start)."""
        return min(1.0, self.completed / self.started) if self.started else None

    def update(self, event: StimEvent) -> bool:
        if isinstance(event, BehaviorEvent):
            if event.what == "acquired":
                self.started += 1
            elif event.what == "completed":
                self.completed += 1
            elif event.what == "break":
                self.breaks += 1
            else:
                self.no_fixation += 1
            return True
        if isinstance(event, RewardEvent):
            self.rewards += 1
            self.manual_rewards += event.manual
            return True
        if not event.valid:
            self.invalid += 1
            return True
        return False  # a valid trial: nothing to count here

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "share_completed": self.share_completed}


def _finite(xy: tuple[float, float] | None) -> tuple[float, float] | None:
    """A gaze position, or None when the tracker saw no eye (NaN) or there was no sample."""
    if xy is None or not all(math.isfinite(v) for v in xy):
        return None
    return float(xy[0]), float(xy[1])


@dataclass
class BehaviorTracker:
    """The session's and the current block's counts, the last gaze sample, and the idle warning."""

    window_deg: float | None = None
    centre: tuple[float, float] = (0.0, 0.0)
    session: BehaviorCounts = field(default_factory=BehaviorCounts)
    block: BehaviorCounts = field(default_factory=BehaviorCounts)
    block_id: str | None = None
    gaze: tuple[float, float] | None = None
    gaze_time: float | None = None
    gaze_wall: float | None = None
    last: str | None = None
    idle_s: float | None = None
    warning: str = ""

    def start_block(self, block_id: str) -> None:
        """New block counters (the session's go on)."""
        if block_id != self.block_id:
            self.block_id = block_id
            self.block = BehaviorCounts()

    def update(self, event: StimEvent, block_id: str | None) -> bool:
        """Count ``event`` (of block ``block_id``; None: between blocks); whether anything changed."""
        if block_id is not None:
            self.start_block(block_id)
        changed = self.session.update(event)
        if block_id is not None and block_id == self.block_id:
            self.block.update(event)
        if isinstance(event, BehaviorEvent):
            self.last = event.what
            self.gaze = _finite(event.gaze)
            self.gaze_time = event.sample_time if event.sample_time is not None else event.time
            self.gaze_wall = time.time()
            if event.what == "completed":
                self.clear_idle()
        return changed

    def set_idle(self, idle_s: float, warning: str) -> None:
        self.idle_s, self.warning = idle_s, warning

    def clear_idle(self) -> bool:
        """Clear the warning; whether there was one."""
        was = self.idle_s is not None
        self.idle_s, self.warning = None, ""
        return was

    def payload(self) -> dict[str, Any]:
        """The ``behavior`` status (``BusBridge`` publishes it as :class:`wire.topics.BehaviorStatus`)."""
        return {"block_id": self.block_id, "session": self.session.as_dict(), "block": self.block.as_dict(),
                "gaze": list(self.gaze) if self.gaze is not None else None, "gaze_time": self.gaze_time,
                "gaze_wall": self.gaze_wall, "last": self.last, "window_deg": self.window_deg,
                "centre": list(self.centre), "idle": self.idle_s is not None, "idle_s": self.idle_s,
                "warning": self.warning}
