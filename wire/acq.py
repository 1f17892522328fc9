"""The acquisition side's vocabulary: per-trial spike counts, the virtual rig's commands,
and the Lab Streaming Layer conventions a rig (real or virtual) uses to send spikes.

Times are seconds on the acquisition clock unless a field says otherwise.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wire.base import Array, Message

ACQ_COUNTS_TOPIC = "acq.trial_counts"

# --- LSL conventions (what ``controller.acquisition.lsl`` resolves by default) ------------
#: Spike stream: 1 channel (int32 unit index; or a string unit label), irregular rate, one
#: sample per spike whose LSL timestamp is the spike time.
LSL_SPIKE_TYPE = "Spikes"
LSL_SPIKE_NAME = "cortexloop-spikes"
#: Marker stream: 1 string channel, irregular rate; sample ``"<channel> <state>"`` (e.g.
#: ``"photodiode 1"``) at the edge's time; a bare label means a rising edge of that channel.
LSL_MARKER_TYPE = "Markers"
LSL_MARKER_NAME = "cortexloop-sync"


class TrialCounts(Message):
    """Spike counts of one closed trial: ``counts[i]`` spikes of ``unit_ids[i]`` in the window.

    The window is ``[onset_acq + window_start, onset_acq + window_end)`` (start included, end excluded).
    ``complete`` is False when spikes of the window may be missing (flushed before the window
    had passed, a source that failed, spikes pruned before the trial was known).
    """

    kind: Literal["acq.trial_counts"] = "acq.trial_counts"
    trial_id: str
    block_id: str | None = None
    image_id: str | None = None
    index: int | None = None
    unit_ids: list[int | str] = Field(description="column labels of counts")
    counts: Array = Field(description="int32 (n_units,) spike counts")
    window_start: float = Field(description="window start after onset (s)")
    window_end: float = Field(description="window end after onset (s)")
    onset_stim: float = Field(description="onset on the stimulus clock (s)")
    onset_acq: float = Field(description="onset mapped into the acquisition clock (s)")
    complete: bool = True


# --- the virtual rig's RPC ----------------------------------------------------------------
class RigLoadImages(Message):
    """Give the virtual rig the pixels of images it may be shown (uint8 (N, H, W, 3)).

    The rig computes each image's firing rates once and keys them by the content hash
    (``wire.base.image_id``) that the stimserver's TrialEvents carry. Idempotent.
    """

    kind: Literal["rig.load_images"] = "rig.load_images"
    images: Array


class RigImagesLoaded(Message):
    kind: Literal["rig.images_loaded"] = "rig.images_loaded"
    image_ids: list[str] = Field(description="content hashes of the images, in the order sent")
    n_known: int = Field(description="images the rig holds rates for now")


class RigStatus(Message):
    kind: Literal["rig.status"] = "rig.status"


class RigStatusReply(Message):
    """What the rig shows to the world: no ground truth (rates, models) ever travels."""

    kind: Literal["rig.status_reply"] = "rig.status_reply"
    n_units: int
    n_images: int
    trials_seen: int
    trials_unknown_image: int = Field(description="trials whose image was never loaded (baseline only)")
    trials_too_late: int = Field(description="trial events that arrived after their spikes were emitted")
    spike_stream: str
    sync_stream: str
