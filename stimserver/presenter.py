"""The presenter seam: what a display must do for the frame loop (``stimserver.frameloop``).

A presenter draws one frame's content and flips; the frame loop does all the timing bookkeeping
(frame counting, onsets, offsets, dropped frames), so the PsychoPy presenter and the display-free
fake share it. Every method is called from ONE thread (the thread that owns the GL context).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from wire.stim import FixationSpot

#: photodiode patch corners -> (x sign, y sign)
PHOTODIODE_CORNERS: dict[str, tuple[int, int]] = {
    "top-left": (-1, 1), "top-right": (1, 1), "bottom-left": (-1, -1), "bottom-right": (1, -1),
}


@dataclass(frozen=True)
class MonitorProfile:
    """Geometry of the display, for degrees of visual angle."""

    distance_cm: float = 57.0
    width_cm: float = 53.0
    resolution: tuple[int, int] = (1920, 1080)
    name: str = "cortexloop"

    def pixels_per_degree(self) -> float:
        """Pixels per degree at the screen centre (tan rule, as PsychoPy's deg units)."""
        cm_per_deg = float(np.tan(np.deg2rad(1.0)) * self.distance_cm)
        return self.resolution[0] / self.width_cm * cm_per_deg


@dataclass
class PresenterConfig:
    """Settings common to every presenter."""

    monitor: MonitorProfile = field(default_factory=MonitorProfile)
    #: window size in pixels (None: the monitor's resolution)
    size: tuple[int, int] | None = None
    fullscreen: bool = False
    #: image size in degrees (square side); None draws the image at its native pixel size
    image_size_deg: float | None = None
    image_pos_deg: tuple[float, float] = (0.0, 0.0)
    #: background grey level, 0 (black) .. 1 (white)
    background: float = 0.5
    photodiode_corner: str = "bottom-left"  # top-left, top-right, bottom-left, bottom-right
    photodiode_size_px: int = 40
    #: refresh rate in Hz; None measures it when the window opens
    refresh_hz: float | None = None
    screen: int = 0


class Presenter(ABC):
    """One display. ``open`` / ``prepare`` / ``draw`` / ``flip`` / ``close`` run on the display thread."""

    name: str = "presenter"

    def __init__(self, config: PresenterConfig) -> None:
        self.config = config
        self.refresh_period: float | None = None

    @property
    @abstractmethod
    def is_open(self) -> bool: ...

    @abstractmethod
    def open(self) -> None:
        """Open the window and measure (or set) ``refresh_period``; raise DisplayError when it cannot."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def prepare(self, image_id: str, pixels: np.ndarray) -> None:
        """Make the image drawable (upload a texture); called before a block's timing starts."""

    @abstractmethod
    def is_prepared(self, image_id: str) -> bool: ...

    @abstractmethod
    def prepared(self) -> set[str]:
        """Ids of the images that are drawable now."""

    @abstractmethod
    def release(self, image_id: str) -> None:
        """Free what ``prepare`` made (the texture); a no-op for an unknown id."""

    @abstractmethod
    def draw(self, image_id: str | None, photodiode: bool, fixation: FixationSpot | None) -> None:
        """Draw the next frame's content into the back buffer (background, image, spot, patch)."""

    @abstractmethod
    def flip(self) -> float:
        """Show the back buffer at the next refresh; return its time on ``wire.clock.now``'s base."""

    def measure_refresh(self, n: int = 60) -> float:
        """Median interval of ``n`` blank flips (the period used for dropped-frame counting)."""
        times = []
        for _ in range(n + 1):
            self.draw(None, False, None)
            times.append(self.flip())
        period = float(np.median(np.diff(times)))
        return period
