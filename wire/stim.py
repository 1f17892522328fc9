"""The stimulus server's vocabulary: commands, replies and the trial event stream.

Times are seconds on the stimulus machine's monotonic clock (``wire.clock.now``, the clock
LSL's ``local_clock`` also reads on Linux); the controller maps them into the acquisition clock.

Commands (one handler each on the stimserver, dispatched on ``kind``):

* :class:`LoadImages` (``stim.load``) -> :class:`ImagesLoaded`
* :class:`CheckImages` (``stim.check``) -> :class:`ImagesMissing`
* :class:`PresentBlock` (``stim.present``) -> :class:`BlockResult` (when the block ends)
* :class:`PauseBlock` / :class:`ResumeBlock` / :class:`AbortBlock` / :class:`SetFixation` /
  :class:`GetStimStatus` / :class:`~wire.behavior.GiveReward` -> :class:`StimStatus`

Events: :class:`TrialEvent` (``stim.trial``), and with a fixation rule :class:`~wire.behavior.RewardEvent`
(``stim.reward``) and :class:`~wire.behavior.BehaviorEvent` (``stim.behavior``).

Frame counting: a trial's image is drawn for exactly ``on_frames`` refreshes; ``onset`` is the
time of the flip that first shows it and ``offset`` the time of the flip that first removes it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wire.base import Array, Message
from wire.behavior import BehaviorEvent, FixationRule, GazeChunk, GiveReward, RewardEvent

STIM_TRIAL_TOPIC = "stim.trial"

#: an image id as a command carries it (content hashes are 32 characters)
ImageId = Annotated[str, Field(max_length=128)]
#: most images one stim.load carries, and most trials (TrialSpecs) one block holds
MAX_IMAGES_PER_LOAD = 100_000
MAX_TRIALS_PER_BLOCK = 100_000
#: most refreshes one trial's ON or OFF period lasts (about 28 minutes at 60 Hz)
MAX_FRAMES = 100_000


class TrialEvent(Message):
    """Published the moment a trial's OFF period starts (its last ON frame has been shown)."""

    kind: Literal["stim.trial"] = "stim.trial"
    block_id: str = Field(description="block this trial belongs to")
    trial_id: str = Field(description="unique id of this trial (one per shown repeat)")
    index: int = Field(ge=0, description="position of the trial within its block")
    image_id: str = Field(description="content hash of the image shown")
    onset: float = Field(description="time of the flip that first showed the image (stim clock, s)")
    offset: float = Field(description="time of the flip that first removed it (stim clock, s)")
    on_frames: int = Field(gt=0, description="frames the image was requested to stay on")
    dropped_frames: int = Field(ge=0, description="flip intervals longer than 1.5 refresh periods during the trial")
    # --- added by the stimserver (defaults keep older producers valid) ---
    spec_index: int = Field(default=0, ge=0, description="index of the TrialSpec (in the block command) this trial shows")
    repeat: int = Field(default=0, ge=0, description="which repeat of its TrialSpec this trial is (0-based)")
    onset_frame: int = Field(default=0, ge=0, description="flip number (within the block) of the onset flip")
    offset_frame: int = Field(default=0, ge=0, description="flip number (within the block) of the offset flip")
    shown_frames: int = Field(default=0, ge=0, description="refreshes the image was actually drawn for (== on_frames "
                              "unless the trial was interrupted by pause/abort)")
    photodiode: bool = Field(default=False, description="state of the photodiode patch during this trial (toggles "
                             "at every onset)")
    # --- awake animals (wire.behavior): whether the animal looked ---
    valid: bool = Field(default=True, description="the trial counts: fixation held through its image and counting "
                        "window (always true for blocks without a fixation rule)")
    invalid_reason: str | None = Field(default=None, max_length=64, description="why it does not count "
                                       "(wire.behavior.InvalidReason), None when valid")
    attempt: int = Field(default=0, ge=0, description="earlier showings of this TrialSpec that did not count")
    broke_at: float | None = Field(default=None, description="invalid trials: time of the gaze sample that broke "
                                   "fixation (stim clock, s); for an image cut short, ``offset`` is the blanking flip")


# --- commands ------------------------------------------------------------------------
class LoadImages(Message):
    """Put images in the server's cache (by content hash). Re-sent images cost nothing.

    Give either ``pixels`` (one uint8 array of shape (N, H, W, 3)) or ``images`` (N uint8
    arrays of shape (H, W, 3), sizes may differ). ``image_ids[i]`` must be
    ``wire.base.image_id`` of image i; the server verifies it.
    """

    kind: Literal["stim.load"] = "stim.load"
    image_ids: list[ImageId] = Field(min_length=1, max_length=MAX_IMAGES_PER_LOAD,
                                     description="content hash (wire.base.image_id) of each image, in order")
    pixels: Array | None = Field(default=None, description="uint8 (N, H, W, 3): all images in one array")
    images: list[Array] | None = Field(default=None, max_length=MAX_IMAGES_PER_LOAD,
                                       description="N uint8 (H, W, 3) arrays, one per image")

    @model_validator(mode="after")
    def _one_source(self) -> LoadImages:
        if (self.pixels is None) == (self.images is None):
            raise ValueError("give exactly one of 'pixels' (N,H,W,3) or 'images' (list of (H,W,3))")
        return self


class CheckImages(Message):
    """Which of these ids the server's cache lacks (send only those with LoadImages)."""

    kind: Literal["stim.check"] = "stim.check"
    image_ids: list[ImageId] = Field(max_length=1_000_000, description="content hashes to look up")


class TrialSpec(BaseModel):
    """One entry of a block: an image shown ``repeats`` times in a row, each ON then OFF."""

    model_config = ConfigDict(extra="forbid")

    image_id: ImageId = Field(description="content hash of a loaded image")
    on_frames: int = Field(gt=0, le=MAX_FRAMES, description="refreshes the image stays on (>= 1)")
    off_frames: int = Field(gt=0, le=MAX_FRAMES, description="refreshes of blank screen after it (>= 1)")
    repeats: int = Field(default=1, gt=0, le=10_000, description="consecutive presentations of this spec (>= 1)")


class FixationSpot(BaseModel):
    """A fixation spot drawn on every frame of the block (on top of the image)."""

    model_config = ConfigDict(extra="forbid")

    size_deg: float = Field(default=0.2, gt=0, le=360, description="diameter in degrees of visual angle")
    position_deg: tuple[float, float] = Field(default=(0.0, 0.0), description="centre (x, y) in degrees")
    color: tuple[float, float, float] = Field(default=(1.0, 0.0, 0.0), description="RGB in 0..1")


class PresentBlock(Message):
    """Show an ordered list of trials; the reply (:class:`BlockResult`) comes when the block ends."""

    kind: Literal["stim.present"] = "stim.present"
    block_id: str = Field(min_length=1, max_length=256, description="id of this block (echoed in every TrialEvent)")
    trials: list[TrialSpec] = Field(min_length=1, max_length=MAX_TRIALS_PER_BLOCK,
                                    description="trials in presentation order")
    fixation: FixationSpot | None = Field(default=None, description="fixation spot to draw, if any")
    wait_for_fixation: bool = Field(default=False, description="hold each onset until the rig reports fixation "
                                    "(stim.fixation), up to fixation_timeout")
    fixation_timeout: float = Field(default=5.0, gt=0, le=3600, description="seconds to wait for fixation before the block "
                                    "ends with status 'fixation_timeout'")
    behavior: FixationRule | None = Field(default=None, description="run the awake trial state machine (acquire, "
                                          "hold, sequences, reward, time-out) on the server's gaze source; trials "
                                          "that do not count are reported invalid and shown again later in the block")

    @model_validator(mode="after")
    def _one_fixation_mode(self) -> PresentBlock:
        if self.behavior is not None and self.wait_for_fixation:
            raise ValueError("give either 'behavior' (the stimserver reads gaze itself) or 'wait_for_fixation' "
                             "(the rig sends stim.fixation), not both")
        return self


class PauseBlock(Message):
    """Pause the running block at the next frame: an image on screen is removed and its trial re-shown
    after resume (it is not reported); an OFF period in progress restarts in full after resume."""

    kind: Literal["stim.pause"] = "stim.pause"
    always_admitted: ClassVar[bool] = True  # an operator is never told "busy"


class ResumeBlock(Message):
    kind: Literal["stim.resume"] = "stim.resume"
    always_admitted: ClassVar[bool] = True  # an operator is never told "busy"


class AbortBlock(Message):
    """End the running block at the next frame; its PresentBlock reply lists the trials shown so far."""

    kind: Literal["stim.abort"] = "stim.abort"
    always_admitted: ClassVar[bool] = True  # an operator is never told "busy"


class SetFixation(Message):
    """The rig's fixation state (drives ``wait_for_fixation``)."""

    kind: Literal["stim.fixation"] = "stim.fixation"
    fixating: bool = Field(description="True while the subject fixates")


class GetStimStatus(Message):
    kind: Literal["stim.status"] = "stim.status"
    always_admitted: ClassVar[bool] = True  # an operator is never told "busy"


# --- replies -------------------------------------------------------------------------
class StimState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"


class BlockStatus(StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"
    FIXATION_TIMEOUT = "fixation_timeout"


class ImagesLoaded(Message):
    kind: Literal["stim.loaded"] = "stim.loaded"
    added: int = Field(ge=0, description="images new to the cache")
    already_cached: int = Field(ge=0, description="images the cache already held (nothing was done for them)")
    cached_total: int = Field(ge=0, description="images in the cache now")


class ImagesMissing(Message):
    kind: Literal["stim.missing"] = "stim.missing"
    missing: list[str] = Field(description="ids (of those asked about) the cache lacks, in the order asked, once each")
    cached_total: int = Field(ge=0, description="images in the cache now")


class BlockResult(Message):
    """Reply to PresentBlock: every trial shown, in order, with its flip times."""

    kind: Literal["stim.block"] = "stim.block"
    block_id: str = Field(description="the block's id")
    status: BlockStatus = Field(description="completed, aborted, or fixation_timeout")
    trials: list[TrialEvent] = Field(description="trials whose ON period completed, in presentation order")
    interrupted: list[TrialEvent] = Field(default_factory=list, description="trials cut short by pause/abort "
                                          "(shown_frames < on_frames); not published, re-shown after a pause")
    flip_times: Array = Field(description="float64 time of every flip of the block (stim clock, s)")
    refresh_period: float = Field(description="measured refresh period (s) used for dropped-frame counting")
    dropped_frames: int = Field(ge=0, description="flip intervals > 1.5 refresh periods in the whole block")
    invalid: list[TrialEvent] = Field(default_factory=list, description="trials shown that did not count (the animal "
                                      "did not look), in presentation order; each was published as it ended")
    missing: list[int] = Field(default_factory=list, description="TrialSpec indices given up after "
                               "FixationRule.max_attempts showings that did not count")
    rewards: list[RewardEvent] = Field(default_factory=list, description="rewards given during the block")
    sequences: int = Field(default=0, ge=0, description="fixation sequences started (images shown after a hold)")
    completed_sequences: int = Field(default=0, ge=0, description="sequences that ended in a reward")
    no_fixation: int = Field(default=0, ge=0, description="acquisitions that timed out")


class StimStatus(Message):
    kind: Literal["stim.status_reply"] = "stim.status_reply"
    state: StimState = Field(description="idle, running or paused")
    block_id: str | None = Field(default=None, description="the block running or paused, if any")
    trials_done: int = Field(default=0, ge=0, description="trials of that block completed so far")
    trials_total: int = Field(default=0, ge=0, description="trials of that block in all (repeats expanded)")
    fixating: bool = Field(default=False, description="last fixation state set by the rig")
    images_cached: int = Field(default=0, ge=0, description="images in the cache")
    max_images: int | None = Field(default=None, description="cache bound (least recently used images beyond it "
                                   "are dropped); None: unbounded")
    presenter: str = Field(default="", description="presenter in use (psychopy or fake)")
    display_open: bool = Field(default=False, description="whether the presenter's window is open")
    display_error: str | None = Field(default=None, description="why the window could not open, if it could not")
    refresh_period: float | None = Field(default=None, description="measured refresh period (s), once open")
    gaze: str | None = Field(default=None, description="the gaze source in use (None: none)")
    reward_line: str | None = Field(default=None, description="the reward output in use (None: none)")
    rewards: int = Field(default=0, ge=0, description="rewards given since the server started")


STIM_COMMANDS: tuple[type[Message], ...] = (
    LoadImages, CheckImages, PresentBlock, PauseBlock, ResumeBlock, AbortBlock, SetFixation, GetStimStatus, GiveReward,
)
#: what the stimserver publishes on its event stream (topic = the event's ``kind``)
STIM_EVENTS: tuple[type[Message], ...] = (TrialEvent, RewardEvent, BehaviorEvent, GazeChunk)
