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
#: Gaze stream (the virtual monkey, ``virtualrig.monkey``): 2 float32 channels "x", "y" in deg from
#: the screen centre (x right, y up; NaN: no eye), regular rate, LSL timestamp = sample time.
LSL_GAZE_TYPE = "Gaze"
LSL_GAZE_NAME = "cortexloop-gaze"


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
#: Most images one ``RigLoadImages`` or ``RigRates`` may carry (send more in several requests);
#: the rig answers a larger request with ``InvalidRequest`` before computing anything.
RIG_MAX_IMAGES = 10_000
#: Largest image height or width the rig accepts (the compact models see 112 x 112 pixels).
RIG_MAX_SIDE = 1024


class RigLoadImages(Message):
    """Give the virtual rig the pixels of images it may be shown (uint8 (N, H, W, 3)).

    The rig computes each image's firing rates once and keys them by the content hash
    (``wire.base.image_id``) that the stimserver's TrialEvents carry. Idempotent.
    """

    kind: Literal["rig.load_images"] = "rig.load_images"
    images: Array = Field(description=f"uint8 (N, H, W, 3), N <= {RIG_MAX_IMAGES}, H, W <= {RIG_MAX_SIDE}")


class RigImagesLoaded(Message):
    kind: Literal["rig.images_loaded"] = "rig.images_loaded"
    image_ids: list[str] = Field(description="content hashes of the images, in the order sent")
    n_known: int = Field(description="images the rig holds rates for now")


class RigStatus(Message):
    kind: Literal["rig.status"] = "rig.status"


class RigStatusReply(Message):
    """What the rig shows to the world: counters, streams and a description of its ground truth.

    The models themselves never travel; ``RigRates`` answers the rates of given images.
    """

    kind: Literal["rig.status_reply"] = "rig.status_reply"
    n_units: int
    n_images: int
    trials_seen: int
    trials_unknown_image: int = Field(description="trials whose image was never loaded (baseline only)")
    trials_too_late: int = Field(description="trial events that arrived after their spikes were emitted")
    spike_stream: str
    sync_stream: str
    description: str = Field(default="", description="the ground truth in words, e.g. '8 real V4 compact "
                             "models of session 190923 (Cowley et al. 2023)' or '24 synthetic Gabor-energy units'")
    session: str | None = Field(default=None, description="the V4 session whose compact models are the ground "
                                "truth (None for a synthetic population)")
    unit_names: list[str] = Field(default_factory=list, description="name of each unit, by the unit index the "
                                  "spike stream carries (e.g. '190923/neuron5', 'gabor3')")


class RigRates(Message):
    """The rig's ground truth on some images, for scoring: the rates it would use for them.

    Read-only: nothing is loaded or cached, the rig's state (and its spikes) are unchanged.
    Images are uint8 (N, H, W, 3) (one (H, W, 3) image is taken as N = 1), N <= RIG_MAX_IMAGES.
    """

    kind: Literal["rig.rates"] = "rig.rates"
    images: Array = Field(description=f"uint8 (N, H, W, 3), N <= {RIG_MAX_IMAGES}, H, W <= {RIG_MAX_SIDE}")


class RigRatesReply(Message):
    kind: Literal["rig.rates_reply"] = "rig.rates_reply"
    rates: Array = Field(description="float32 (N, n_units): each unit's driven rate (spikes/s) for each image")
    unit_names: list[str] = Field(description="column labels of rates (see RigStatusReply.unit_names)")
    image_ids: list[str] = Field(description="content hashes of the images, in the order sent")
