"""A display-free presenter on a simulated refresh clock (unit tests, replay, dry runs).

Flips happen on a grid of simulated vertical blanks ``t0 + k * period``. In ``realtime`` mode a flip
blocks until its blank on the real monotonic clock, like a vsynced display (so a block takes as long
as on a real monitor and commands can arrive mid-block); a flip that is called after its blank has
passed lands on the next blank, exactly as a late frame on hardware. In virtual mode (``realtime=False``)
flips return at once and time advances only on the simulated grid. ``drop_flips`` injects missed
blanks: flip number k (1-based, counted since ``open``) lands one period late.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stimserver.presenter import Presenter, PresenterConfig
from wire import clock
from wire.errors import DisplayError
from wire.stim import FixationSpot


@dataclass(frozen=True)
class FakeFrame:
    """What one simulated flip showed."""

    time: float
    image_id: str | None
    photodiode: bool
    fixation: bool


class FakePresenter(Presenter):
    name = "fake"

    def __init__(self, config: PresenterConfig | None = None, *, refresh_hz: float = 60.0, realtime: bool = True,
                 drop_flips: Iterable[int] = (), keep_frames: int = 0, fail_open: str | None = None) -> None:
        super().__init__(config or PresenterConfig())
        if refresh_hz <= 0:
            raise ValueError("refresh_hz must be > 0")
        self.period = 1.0 / refresh_hz
        self.realtime = realtime
        self.drop_flips = set(drop_flips)
        self.keep_frames = keep_frames
        self.fail_open = fail_open
        self.frames: list[FakeFrame] = []
        self.flips = 0
        self._prepared: dict[str, tuple[int, int]] = {}
        self._open = False
        self._next_blank = 0.0
        self._pending: tuple[str | None, bool, bool] = (None, False, False)
        self._wake = threading.Event()  # never set: an interruptible wait that is not a bare sleep

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if self.fail_open is not None:
            raise DisplayError(self.fail_open)
        self._open = True
        self._next_blank = clock.now() + self.period
        self.refresh_period = self.period if self.config.refresh_hz is None else 1.0 / self.config.refresh_hz

    def close(self) -> None:
        self._open = False

    def prepare(self, image_id: str, pixels: np.ndarray) -> None:
        self._prepared[image_id] = (int(pixels.shape[0]), int(pixels.shape[1]))

    def is_prepared(self, image_id: str) -> bool:
        return image_id in self._prepared

    def prepared(self) -> set[str]:
        return set(self._prepared)

    def release(self, image_id: str) -> None:
        self._prepared.pop(image_id, None)

    def draw(self, image_id: str | None, photodiode: bool, fixation: FixationSpot | None) -> None:
        if image_id is not None and image_id not in self._prepared:
            raise KeyError(f"image {image_id} was not prepared")
        self._pending = (image_id, photodiode, fixation is not None)

    def flip(self) -> float:
        if not self._open:
            raise DisplayError("fake presenter: flip on a closed window")
        self.flips += 1
        blank = self._next_blank
        if self.flips in self.drop_flips:
            blank += self.period
        if self.realtime:
            t = clock.now()
            if t > blank:  # called too late for this blank: the frame lands on the next one
                blank += math.ceil((t - blank) / self.period) * self.period
            if blank > t:
                self._wake.wait(blank - t)  # stands in for the driver blocking until the blank
        self._next_blank = blank + self.period
        if self.keep_frames:
            if len(self.frames) >= self.keep_frames:
                del self.frames[: self.keep_frames // 2]
            self.frames.append(FakeFrame(blank, *self._pending))
        return blank
