"""The PsychoPy presenter: one ``psychopy.visual.Window`` (pyglet). The only module importing psychopy.

Units: degrees of visual angle from the monitor profile (distance, width in cm, resolution in px);
an image with no configured size is drawn at its native pixel size. ``Window.flip()`` returns
``psychopy.logging.defaultClock`` time (a MonotonicClock zeroed at import, over
``psychopy.clock.getTime``: ``timeit.default_timer`` = ``time.perf_counter`` on Linux, or
psychtoolbox's GetSecs when installed). Both that and ``wire.clock.now`` (``time.monotonic``) run at
the same rate, so the presenter measures the offset between them once at open (tightest of 50
bracketed reads) and returns flip times on the wire clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stimserver.presenter import PHOTODIODE_CORNERS, Presenter, PresenterConfig
from wire import clock
from wire.errors import DisplayError
from wire.stim import FixationSpot

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _first_run_lock() -> Iterator[None]:
    """Hold an exclusive lock beside the user's PsychoPy folder while psychopy is first imported.

    On a machine where ``~/.psychopy3`` does not exist yet, psychopy's import creates it and copies
    its theme files without any locking (``mkdir`` without ``exist_ok``, JSON files read while another
    process writes them), so two stimulus servers (or two test workers) starting at once could fail
    with ``FileExistsError`` or ``JSONDecodeError``. One process at a time imports; the others wait.
    """
    home = Path(os.path.expanduser("~"))
    lock_path = home / ".psychopy3.cortexloop.lock"
    try:
        handle = open(lock_path, "a")
    except OSError:  # an unwritable HOME: psychopy will run read-only anyway
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _quiet_psychopy() -> Any:
    """Import psychopy with its console logging at ERROR (it warns about many optional extras)."""
    os.environ.setdefault("PSYCHOPY_HIDE_PLUGIN_INFO", "1")
    with warnings.catch_warnings():  # psychopy's own DeprecationWarnings (locale, pkg_resources) at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from psychopy import logging as plog
        from psychopy import monitors, visual  # noqa: F401 - imported here once, quietly

    plog.console.setLevel(plog.ERROR)
    return plog


class PsychoPyPresenter(Presenter):
    name = "psychopy"

    def __init__(self, config: PresenterConfig) -> None:
        super().__init__(config)
        if config.photodiode_corner not in PHOTODIODE_CORNERS:
            raise ValueError(f"photodiode_corner must be one of {sorted(PHOTODIODE_CORNERS)}")
        self._win: Any = None
        self._stims: dict[str, Any] = {}
        self._patches: tuple[Any, ...] = ()
        self._spot: Any = None
        self._spot_spec: FixationSpot | None = None
        self._clock_offset = 0.0
        self._plog: Any = None

    @property
    def is_open(self) -> bool:
        return self._win is not None

    # --- window ------------------------------------------------------------------------
    def open(self) -> None:
        if self._win is not None:
            return
        display = os.environ.get("DISPLAY")
        if sys.platform.startswith("linux") and not display and not os.environ.get("WAYLAND_DISPLAY"):
            raise DisplayError("cannot open a PsychoPy window: DISPLAY is not set (start X or Xvfb, e.g. "
                               "'Xvfb :99 & export DISPLAY=:99', or use the fake presenter)")
        cfg = self.config
        mon = cfg.monitor
        size = cfg.size or mon.resolution
        try:
            with _first_run_lock():  # psychopy's first run writes ~/.psychopy3 unlocked
                self._plog = _quiet_psychopy()
                from psychopy import monitors, visual

                monitor = monitors.Monitor(mon.name, width=mon.width_cm, distance=mon.distance_cm, autoLog=False)
                monitor.setSizePix(list(mon.resolution))
                grey = 2.0 * float(cfg.background) - 1.0
                self._win = visual.Window(
                    size=list(size), fullscr=cfg.fullscreen, screen=cfg.screen, winType="pyglet", monitor=monitor,
                    units="deg", color=(grey, grey, grey), colorSpace="rgb", allowGUI=False, waitBlanking=True,
                    checkTiming=False, autoLog=False,
                )
        except Exception as exc:
            self._win = None
            raise DisplayError(f"cannot open a PsychoPy window on DISPLAY={display!r} (is an X server or Xvfb "
                               f"running there?): {type(exc).__name__}: {exc}") from exc
        win = self._win
        win.recordFrameIntervals = False
        w, h = (int(v) for v in win.size)
        s = cfg.photodiode_size_px
        cx, cy = PHOTODIODE_CORNERS[cfg.photodiode_corner]
        pos = (cx * (w - s) / 2, cy * (h - s) / 2)
        self._patches = tuple(visual.Rect(win, width=s, height=s, units="pix", pos=pos, fillColor=(v, v, v),
                                          lineColor=None, autoLog=False) for v in (-1, 1))
        self._clock_offset = self._measure_clock_offset()
        if cfg.refresh_hz is not None:
            self.refresh_period = 1.0 / cfg.refresh_hz
        else:
            self.refresh_period = self.measure_refresh(60)
        log.info("psychopy window %sx%s open on %s, refresh period %.3f ms", w, h, display,
                 1000 * self.refresh_period)

    def _measure_clock_offset(self) -> float:
        """wire clock minus psychopy flip clock, from the tightest of 50 bracketed reads."""
        best = (float("inf"), 0.0)
        get = self._plog.defaultClock.getTime
        for _ in range(50):
            a = clock.now()
            p = float(get())
            b = clock.now()
            if b - a < best[0]:
                best = (b - a, (a + b) / 2 - p)
        return best[1]

    def close(self) -> None:
        if self._win is not None:
            try:
                self._win.close()
            finally:
                self._win = None
                self._stims.clear()
                self._spot = None

    # --- images ------------------------------------------------------------------------
    def prepare(self, image_id: str, pixels: np.ndarray) -> None:
        if self._win is None:
            raise DisplayError("PsychoPy window is not open")
        from PIL import Image
        from psychopy import visual

        cfg = self.config
        h, w = pixels.shape[:2]
        if cfg.image_size_deg is not None:
            size: tuple[float, float] = (cfg.image_size_deg, cfg.image_size_deg * h / w)
            units = "deg"
            pos = cfg.image_pos_deg
        else:
            size, units = (float(w), float(h)), "pix"
            ppd = cfg.monitor.pixels_per_degree()
            pos = (cfg.image_pos_deg[0] * ppd, cfg.image_pos_deg[1] * ppd)
        self._stims[image_id] = visual.ImageStim(
            self._win, image=Image.fromarray(np.ascontiguousarray(pixels)), size=size, units=units,
            pos=pos, interpolate=True, autoLog=False)

    def is_prepared(self, image_id: str) -> bool:
        return image_id in self._stims

    def prepared(self) -> set[str]:
        return set(self._stims)

    def release(self, image_id: str) -> None:
        """Delete the image's textures now, on this (the GL) thread.

        ImageStim frees its textures in ``__del__``, but it sits in a reference cycle, so that would
        run whenever the garbage collector gets to it, on any thread; clear them here and drop the ids
        so the late ``__del__`` does nothing.
        """
        stim = self._stims.pop(image_id, None)
        if stim is None:
            return
        stim.clearTextures()
        for attr in ("_texID", "_maskID", "_pixBuffID"):
            stim.__dict__.pop(attr, None)

    # --- frames ------------------------------------------------------------------------
    def _fixation(self, spec: FixationSpot) -> Any:
        if self._spot is None or self._spot_spec != spec:
            from psychopy import visual

            rgb = tuple(2.0 * c - 1.0 for c in spec.color)
            self._spot = visual.Circle(self._win, radius=spec.size_deg / 2, pos=spec.position_deg, units="deg",
                                       fillColor=rgb, lineColor=None, autoLog=False)
            self._spot_spec = spec
        return self._spot

    def draw(self, image_id: str | None, photodiode: bool, fixation: FixationSpot | None) -> None:
        if image_id is not None:
            self._stims[image_id].draw()
        if fixation is not None:
            self._fixation(fixation).draw()
        self._patches[1 if photodiode else 0].draw()

    def flip(self) -> float:
        t = self._win.flip()
        return float(t) + self._clock_offset
