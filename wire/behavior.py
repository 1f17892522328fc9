"""The awake animal's vocabulary: gaze samples, the fixation rule, rewards and why a trial did not count.

A fixating animal is part of the loop. The stimulus server reads gaze at frame rate (``stimserver.gaze``),
runs the trial state machine (``stimserver.fixation``: acquire fixation, hold, the images of one fixation
sequence, reward, time-out) and reports every trial with ``valid`` and ``invalid_reason``. The
controller records what it is told, shows the images that did not count again, and passes only valid
trials to analyses and the modelserver.

Gaze is in degrees of visual angle relative to the screen centre (x right, y up), timed on the stimulus
machine's clock (``wire.clock.now``). A sample with NaN coordinates means the tracker saw no eye (a
blink, a lost pupil).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wire.base import Array, Message

STIM_REWARD_TOPIC = "stim.reward"
STIM_BEHAVIOR_TOPIC = "stim.behavior"
STIM_GAZE_TOPIC = "stim.gaze"


class InvalidReason(StrEnum):
    """Why a trial did not count (MonkeyLogic's trial error codes, in words)."""

    #: gaze left the window (or no eye for longer than the blink grace) during the image or its window
    BREAK_FIXATION = "break_fixation"
    #: the sequence broke before this image's counting window ended (it was on screen or queued)
    SEQUENCE_BROKEN = "sequence_broken"
    #: the animal never acquired fixation within ``acquire_s``
    NO_FIXATION = "no_fixation"
    #: the gaze source delivered no samples (tracker lost) while the image was shown
    NO_GAZE = "no_gaze"
    #: the operator paused the block while the image's window was open (shown again; not an attempt)
    PAUSED = "paused"


class GazeSample(BaseModel):
    """One eye position: degrees from the screen centre, on the stimulus machine's clock."""

    model_config = ConfigDict(frozen=True)

    t: float = Field(description="sample time (wire.clock.now base, s)")
    x: float = Field(description="horizontal position (deg, right positive); NaN: no eye")
    y: float = Field(description="vertical position (deg, up positive); NaN: no eye")

    @property
    def has_eye(self) -> bool:
        return not (math.isnan(self.x) or math.isnan(self.y))


class RewardSchedule(BaseModel):
    """How long the reward line opens after a completed sequence."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fixed", "streak"] = Field(default="fixed", description="fixed: always duration_ms; streak: "
                                             "duration_ms plus step_ms per completed sequence in a row, up to max_ms")
    duration_ms: float = Field(default=100.0, gt=0, le=5000, description="pulse length (ms)")
    step_ms: float = Field(default=20.0, ge=0, le=5000, description="streak: added per sequence in a row (ms)")
    max_ms: float = Field(default=300.0, gt=0, le=5000, description="streak: longest pulse (ms)")

    def duration_s(self, streak: int) -> float:
        """Pulse length (s) after the ``streak``-th completed sequence in a row (1 for the first)."""
        if self.kind == "fixed":
            return self.duration_ms / 1000.0
        return min(self.max_ms, self.duration_ms + self.step_ms * max(0, streak - 1)) / 1000.0


class FixationRule(BaseModel):
    """The trial state machine's settings (a protocol's ``fixation`` block or a rig file's ``behavior``).

    A sequence: the spot appears; gaze must enter the window within ``acquire_s`` and stay ``hold_s``;
    then up to ``images_per_fixation`` images are shown, each ON then OFF, with gaze in the window
    throughout (gaps without an eye up to ``blink_grace_s`` are forgiven); after the last one the
    reward is given. A break blanks the screen at the next frame and starts a ``timeout_s`` time-out.
    """

    model_config = ConfigDict(extra="forbid")

    window_deg: float = Field(default=2.0, gt=0, le=90, description="radius of the fixation window (deg)")
    acquire_s: float = Field(default=2.0, gt=0, le=600, description="time to bring gaze into the window")
    hold_s: float = Field(default=0.3, ge=0, le=60, description="fixation held before the first image")
    images_per_fixation: int = Field(default=4, ge=1, le=1000, description="images of one fixation sequence")
    blink_grace_s: float = Field(default=0.1, ge=0, le=5, description="longest gap without an eye that is "
                                 "not a break")
    timeout_s: float = Field(default=1.0, ge=0, le=600, description="blank screen after a break or a failed "
                                                                    "acquisition")
    count_before_break: bool = Field(default=True, description="in a broken sequence, images whose counting "
                                     "window ended before the break still count")
    count_window_s: float = Field(default=0.15, ge=0, le=10, description="an image's counting window ends this "
                                  "long after its onset (the acquisition window's end)")
    max_attempts: int = Field(default=3, ge=1, le=100, description="showings of an image before it is recorded "
                              "as missing")
    max_no_fixation: int = Field(default=20, ge=1, le=100_000, description="failed acquisitions in a row that "
                                 "end the block as 'fixation_timeout' (the animal stopped working)")
    reward: RewardSchedule = Field(default_factory=RewardSchedule)
    stale_gaze_s: float = Field(default=0.1, gt=0, le=10, description="no new gaze sample for this long "
                                "is a lost tracker (treated like a missing eye)")


class RewardEvent(Message):
    """Published on the stimserver's event stream each time the reward line opens."""

    kind: Literal["stim.reward"] = "stim.reward"
    block_id: str | None = Field(default=None, description="block during which it was given (None: between blocks)")
    time: float = Field(description="when the pulse started (stim clock, s)")
    duration_s: float = Field(gt=0, description="pulse length (s)")
    sequence: int = Field(default=0, ge=0, description="completed sequences of the block so far (0: manual)")
    streak: int = Field(default=0, ge=0, description="completed sequences in a row")
    manual: bool = Field(default=False, description="given by the operator, not earned")
    line: str = Field(default="", description="the reward output that pulsed (serial, lsl, nidaqmx, ...)")


class BehaviorEvent(Message):
    """The trial state machine's transitions that the lab watches: fixation acquired, a break, a time-out."""

    kind: Literal["stim.behavior"] = "stim.behavior"
    block_id: str
    time: float = Field(description="stim clock (s)")
    what: Literal["acquired", "break", "no_fixation", "completed"] = Field(description="what happened")
    gaze: tuple[float, float] | None = Field(default=None, description="the gaze sample that decided it (deg)")
    sample_time: float | None = Field(default=None, description="that sample's time (stim clock, s)")


def check_gaze_arrays(t: np.ndarray, xy: np.ndarray) -> None:
    """Gaze arrays as a chunk or a document holds them: t (N,), xy (N, 2), both floating point."""
    if t.ndim != 1 or xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] != t.shape[0]:
        raise ValueError(f"gaze needs t (N,) and xy (N, 2), got {t.shape} and {xy.shape}")
    if t.dtype.kind != "f" or xy.dtype.kind != "f":
        raise ValueError(f"gaze arrays must be floating point, got {t.dtype} and {xy.dtype}")


class GazeChunk(Message):
    """The gaze samples the trial state machine read during an awake block, published in chunks (at most
    every 0.25 s and at the block's end) so the session keeps them."""

    kind: Literal["stim.gaze"] = "stim.gaze"
    block_id: str
    t: Array = Field(description="float64 (N,) sample times (stim clock, s), increasing")
    xy: Array = Field(description="float32 (N, 2) positions (deg from the screen centre, x right, y up); NaN: no eye")

    @model_validator(mode="after")
    def _shapes(self) -> GazeChunk:
        check_gaze_arrays(self.t, self.xy)
        return self


class GiveReward(Message):
    """A manual reward from the operator (one pulse of ``duration_ms``, or the schedule's base length)."""

    kind: Literal["stim.give_reward"] = "stim.give_reward"
    duration_ms: float | None = Field(default=None, gt=0, le=5000, description="pulse length (ms)")
    operator: str = Field(default="", max_length=128, description="who asked for it")
