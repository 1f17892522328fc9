"""The documents of a session, in the spirit of bluesky's event model.

A session is a stream of documents: one :class:`StartDoc`, then blocks, images, trials,
responses, model versions and picks as they happen, then one :class:`StopDoc`. The session
store (``controller.store``) writes each one to disk before it is acknowledged, and replay
reads the same documents back. Every document has a ``uid`` and a wall-clock ``time``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, model_validator

from wire.base import Array, Document
from wire.behavior import check_gaze_arrays


class StartDoc(Document):
    kind: Literal["start"] = "start"
    session_id: str = Field(description="unique session name, e.g. 2026-11-25_rig1_M1")
    protocol: dict[str, Any] = Field(default_factory=dict, description="the protocol as run (validated data)")
    config: dict[str, Any] = Field(default_factory=dict, description="controller configuration")
    code_version: str = Field(description="cortexloop version and git commit")
    rig: str = Field(default="rig", description="rig name")
    subject: str = Field(default="unknown", description="subject (animal) id")
    resumed_from: str | None = Field(default=None, description="uid of the start document this one resumes")


class BlockDoc(Document):
    """Descriptor of a block of trials, written before its first trial."""

    kind: Literal["block"] = "block"
    block_id: str
    index: int = Field(ge=0, description="position of the block in the session")
    source: str = Field(description="where the images came from (normal, gaudy, active, maximize_synth, ...)")
    fallback: bool = Field(default=False, description="true when this is the protocol's fallback block")
    n_trials: int = Field(ge=0)
    params: dict[str, Any] = Field(default_factory=dict)


class ImageDoc(Document):
    """An image, stored once per session (deduplicated by its content hash)."""

    kind: Literal["image"] = "image"
    image_id: str = Field(description="content hash (wire.base.image_id)")
    pixels: Array = Field(description="uint8 (H, W, 3) RGB")
    source: str = Field(default="", description="how the image was made")


class TrialDoc(Document):
    kind: Literal["trial"] = "trial"
    trial_id: str
    block_id: str
    index: int = Field(ge=0, description="position within the block")
    image_id: str
    requested_onset: float | None = Field(default=None, description="when the onset was scheduled (stim clock, s)")
    onset: float = Field(description="measured onset: time of the flip that first showed the image (stim clock, s)")
    offset: float = Field(description="time of the flip that removed it (stim clock, s)")
    on_frames: int = Field(gt=0)
    dropped_frames: int = Field(ge=0)
    valid: bool = Field(default=True, description="the trial counts (the animal held fixation through the image "
                        "and its counting window); counts of invalid trials are stored, never analysed or trained on")
    invalid_reason: str | None = Field(default=None, description="why it does not count (wire.behavior.InvalidReason)")
    broke_at: float | None = Field(default=None, description="time of the gaze sample that broke fixation (stim "
                                   "clock, s); for an image cut short by it, offset is the blanking flip")


class ResponseDoc(Document):
    """Spike counts of one trial in a window after its onset."""

    kind: Literal["response"] = "response"
    trial_id: str
    units: list[str] = Field(description="unit ids, one per column of counts")
    counts: Array = Field(description="spike counts, one per unit")
    window: tuple[float, float] = Field(description="counting window after onset (s)")
    onset_acq: float = Field(description="the onset mapped into the acquisition clock (s)")
    complete: bool = Field(default=True, description="false if spikes of the window may be missing")


class RewardDoc(Document):
    """A reward given to the animal: when the line opened (stim clock) and for how long."""

    kind: Literal["reward"] = "reward"
    block_id: str | None = Field(default=None, description="block during which it was given")
    onset: float = Field(description="when the pulse started (stim clock, s)")
    duration_s: float = Field(gt=0, description="pulse length (s)")
    manual: bool = Field(default=False, description="given by the operator, not earned by a completed sequence")
    line: str = Field(default="", description="the reward output that pulsed")


class GazeDoc(Document):
    """A chunk of the gaze samples the stimulus server judged during an awake block (``wire.behavior.GazeChunk``)."""

    kind: Literal["gaze"] = "gaze"
    block_id: str = Field(description="the block segment it was read in (``<block id>~<attempt>`` as events carry it)")
    t: Array = Field(description="float64 (N,) sample times (stim clock, s), increasing")
    xy: Array = Field(description="float32 (N, 2) positions (deg from the screen centre, x right, y up); NaN: no eye")

    @model_validator(mode="after")
    def _shapes(self) -> GazeDoc:
        check_gaze_arrays(self.t, self.xy)
        return self


class ModelVersionDoc(Document):
    kind: Literal["model_version"] = "model_version"
    version: str
    n_images: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class PickDoc(Document):
    """Why an image was chosen for a block."""

    kind: Literal["pick"] = "pick"
    image_id: str
    block_id: str
    generator: str = Field(description="active, maximize_normal, maximize_synth, adversarial+, random, ...")
    model_version: str | None = None
    neuron: int | None = None
    score: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class StopDoc(Document):
    kind: Literal["stop"] = "stop"
    exit_status: Literal["success", "abort", "fail"]
    reason: str = ""
    n_trials: int = Field(ge=0, default=0)




class StepDoc(Document):
    """A protocol step and its result, written when the step completes.

    Replay and crash-safe resume drive the protocol again and answer each recorded step with
    its recorded result, so the protocol reaches the interrupted step in the same state.
    """

    kind: Literal["step"] = "step"
    index: int = Field(ge=0, description="position of the step in the session")
    step: dict[str, Any] = Field(description="the step as data (protocols.steps)")
    result: dict[str, Any] = Field(description="the result sent back to the protocol")


class EventDoc(Document):
    """Something that happened to the session: a pause, a fault, a fallback, an operator command."""

    kind: Literal["event"] = "event"
    what: str = Field(description="paused, resumed, stim_unreachable, fallback, operator, ...")
    message: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


AnyDocument = Annotated[
    StartDoc | BlockDoc | ImageDoc | TrialDoc | ResponseDoc | RewardDoc | GazeDoc | ModelVersionDoc | PickDoc | StepDoc
    | EventDoc | StopDoc,
    Field(discriminator="kind"),
]
DOCUMENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyDocument)
