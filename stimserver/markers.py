"""Trial onsets as an LSL Markers stream, so a lab's LabRecorder puts them in its XDF file.

One outlet (type ``Markers``, one string channel, irregular rate) carries one sample per
completed trial, pushed by the server after the trial's offset flip (never from the frame
loop): a JSON object ``{"event": "onset", "trial_id", "image_id", "block_id", "index",
"flip", "offset", "on_frames", "dropped_frames"}`` whose LSL timestamp is the trial's onset
flip converted to LSL's clock (``pylsl.local_clock``). ``flip``/``offset`` keep the flip times
on the stimserver's clock (``wire.clock.now``). On Linux both clocks are CLOCK_MONOTONIC and
the measured offset is a few microseconds; it is measured anyway, so another base also works.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from wire import clock
from wire.stim import TrialEvent

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_NAME", "MarkerOutlet", "clock_offset", "marker_payload"]

DEFAULT_NAME = "cortexloop-markers"


def clock_offset(tries: int = 9) -> float:
    """``pylsl.local_clock() - wire.clock.now()``, from the tightest of ``tries`` bracketed reads."""
    import pylsl

    best: tuple[float, float] | None = None
    for _ in range(tries):
        a = clock.now()
        lsl = pylsl.local_clock()
        b = clock.now()
        if best is None or b - a < best[0]:
            best = (b - a, lsl - (a + b) / 2)
    assert best is not None
    return best[1]


def marker_payload(ev: TrialEvent) -> str:
    """The JSON string one trial's marker sample carries."""
    return json.dumps({"event": "onset", "trial_id": ev.trial_id, "image_id": ev.image_id, "block_id": ev.block_id,
                       "index": ev.index, "flip": ev.onset, "offset": ev.offset, "on_frames": ev.on_frames,
                       "dropped_frames": ev.dropped_frames}, separators=(",", ":"))


class MarkerOutlet:
    """An LSL Markers outlet of trial onsets (``push(event)``; ``close()`` when done)."""

    def __init__(self, name: str = DEFAULT_NAME, source_id: str = "cortexloop-stimserver") -> None:
        import pylsl

        info = pylsl.StreamInfo(name, "Markers", 1, pylsl.IRREGULAR_RATE, "string", source_id)
        desc = info.desc()
        desc.append_child_value("manufacturer", "cortexloop")
        desc.append_child_value("content", "trial onsets: JSON with trial_id, image_id, block_id; "
                                           "timestamp = onset flip on pylsl.local_clock")
        desc.append_child("channels").append_child("channel").append_child_value("label", "trial")
        self.name = name
        self.source_id = source_id
        self.offset = clock_offset()
        self.pushed = 0
        self._outlet: Any = pylsl.StreamOutlet(info)

    def lsl_time(self, t: float) -> float:
        """A stimserver-clock time on LSL's clock."""
        return t + self.offset

    def push(self, ev: TrialEvent) -> None:
        """One sample for ``ev``, stamped with its onset flip on LSL's clock."""
        if self._outlet is None:
            return
        self._outlet.push_sample([marker_payload(ev)], self.lsl_time(ev.onset))
        self.pushed += 1

    def wait_for_consumers(self, timeout: float) -> bool:
        return bool(self._outlet is not None and self._outlet.wait_for_consumers(timeout))

    def close(self) -> None:
        self._outlet = None  # pylsl destroys the outlet when its last reference goes
