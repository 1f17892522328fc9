"""Gaze inputs: eye positions in degrees from the screen centre, on ``wire.clock.now``.

``GazeSource.poll()`` is called from the display thread's frame loop: it never blocks and returns the
samples that arrived since the last call (NaN x, y: no eye). Backends, from :func:`make_gaze_source`:

- ``lsl`` / ``lsl:NAME`` / ``lsl:NAME?source_id=ID``: :class:`LslGaze`, an LSL stream of type ``Gaze``
  whose x/y channels declare their ``unit``: ``deg``, or ``px`` (needs ``ppd``; centred pixels, x right
  and y up, or with ``resolution`` screen pixels from the top-left corner, y down).
- ``iohub`` / ``iohub:mouse`` / ``iohub:eyelink|tobii|gazepoint|<ioHub device class path>``:
  :class:`IoHubGaze`, PsychoPy ioHub's eye tracker interface (``mouse``: MouseGaze, the simulated
  tracker driven by the mouse: move it to look, press left+right buttons to blink).
- ``none``: no gaze source (``None``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import socket
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from stimserver.presenter import MonitorProfile
from wire import clock
from wire.behavior import GazeSample
from wire.errors import InvalidRequest, StateError, StimError

__all__ = ["GazeSource", "GazeStreamNotFound", "IoHubGaze", "LslGaze", "ScriptedGaze", "make_gaze_source"]

NAN = float("nan")
IOHUB_TRACKERS = {"mouse": "eyetracker.hw.mouse.EyeTracker", "eyelink": "eyetracker.hw.sr_research.eyelink.EyeTracker",
                  "tobii": "eyetracker.hw.tobii.EyeTracker", "gazepoint": "eyetracker.hw.gazepoint.gp3.EyeTracker"}
_UNITS = {"deg": "deg", "degree": "deg", "degrees": "deg", "px": "px", "pix": "px", "pixel": "px", "pixels": "px"}


class GazeStreamNotFound(StimError, TimeoutError):
    """No gaze stream answered within the timeout."""


class GazeSource(ABC):
    """One eye tracker: ``open()`` (may block), ``poll()`` (never blocks), ``close()``."""

    name: str = "gaze"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def poll(self) -> list[GazeSample]:
        """The samples that arrived since the last poll, oldest first (deg; ``wire.clock.now``)."""

    @abstractmethod
    def close(self) -> None: ...


class ScriptedGaze(GazeSource):
    """Preset ``(t, x, y)`` samples, each returned once ``t <= wire.clock.now()`` (tests, demos)."""

    name = "scripted"

    def __init__(self, samples: Iterable[tuple[float, float, float]]) -> None:
        self._samples = [GazeSample(t=t, x=x, y=y) for t, x, y in sorted(samples, key=lambda s: s[0])]
        self._next = 0

    def open(self) -> None:
        pass

    def poll(self) -> list[GazeSample]:
        now, start = clock.now(), self._next
        while self._next < len(self._samples) and self._samples[self._next].t <= now:
            self._next += 1
        return self._samples[start:self._next]

    def close(self) -> None:
        pass


class LslGaze(GazeSource):
    """An LSL ``Gaze`` stream (found by name; ``source_id`` pins one of several), pulled without waiting."""

    def __init__(self, name: str = "cortexloop-gaze", source_id: str | None = None, ppd: float | None = None,
                 resolution: tuple[int, int] | None = None, timeout: float = 5.0) -> None:
        if "'" in name or (source_id and "'" in source_id):
            raise InvalidRequest("LSL gaze stream name and source_id cannot contain a quote (')")
        self.stream_name, self.source_id, self.ppd, self.resolution = name, source_id, ppd, resolution
        self.timeout, self.name = timeout, f"lsl:{name}"
        self._inlet: Any = None
        self._channels, self._unit = (0, 1), "deg"
        self._correction = 0.0  # remote LSL clock -> local LSL clock
        self._offset = 0.0  # local LSL clock minus wire clock
        self._next_correction = 0.0

    def _resolve(self) -> Any:
        import pylsl

        pred = f"name='{self.stream_name}' and type='Gaze'"
        if self.source_id:
            pred += f" and source_id='{self.source_id}'"
        if not pylsl.resolve_bypred(pred, 1, self.timeout):
            raise GazeStreamNotFound(f"no LSL stream of type 'Gaze' named {self.stream_name!r}"
                                     f"{f' with source_id {self.source_id!r}' if self.source_id else ''} answered "
                                     f"within {self.timeout:g} s (is the eye tracker's LSL app streaming?)")
        found = pylsl.resolve_bypred(pred, 1000, 1.0)  # one more second: are there others of that name?
        if len(found) > 1:
            which = "; ".join(f"source_id={i.source_id()!r} on host {i.hostname()!r}" for i in found)
            raise InvalidRequest(f"{len(found)} LSL Gaze streams are named {self.stream_name!r} ({which}): "
                                 "pin one with source_id (spec lsl:NAME?source_id=ID)")
        return found[0]

    def _units(self, info: Any) -> None:
        """Pick the x, y channels and their unit from the stream's description; refuse what is unclear."""
        chans, ch = [], info.desc().child("channels").child("channel")
        while not ch.empty():
            chans.append({k: ch.child_value(k).strip().lower() for k in ("label", "type", "unit")})
            ch = ch.next_sibling()
        idx = [next((i for i, c in enumerate(chans) if c["type"] in (f"screen{a}", f"gaze{a}")
                     or c["label"] in (a, f"gaze_{a}", f"gaze{a}")), n) for n, a in enumerate("xy")]
        if info.channel_format() == 3:  # pylsl.cf_string
            raise InvalidRequest(f"LSL gaze stream {self.stream_name!r} carries strings, not numbers")
        if info.channel_count() < 2 or len(chans) <= max(idx):
            raise InvalidRequest(f"LSL gaze stream {self.stream_name!r} describes {len(chans)} channel(s); it needs "
                                 "x and y channels with a unit (desc/channels/channel/unit: deg or px)")
        units = {chans[i]["unit"] for i in idx}
        unit = _UNITS.get(units.pop()) if len(units) == 1 else None
        if unit is None:
            raise InvalidRequest(f"LSL gaze stream {self.stream_name!r}: x/y channel units {[chans[i]['unit'] for i in idx]}"
                                 " are not understood (use deg, or px with the monitor's pixels per degree)")
        if unit == "px" and not self.ppd:
            raise InvalidRequest(f"LSL gaze stream {self.stream_name!r} is in pixels: give ppd (pixels per degree)")
        self._channels, self._unit = (idx[0], idx[1]), unit

    def open(self) -> None:
        import pylsl

        from stimserver.markers import clock_offset

        inlet = pylsl.StreamInlet(self._resolve(), max_buflen=1)  # older gaze is of no use to the frame loop
        self._units(inlet.info(self.timeout))
        inlet.open_stream(self.timeout)
        self._correction = inlet.time_correction(self.timeout)  # later reads return liblsl's cached value
        self._offset = clock_offset()
        self._inlet, self._next_correction = inlet, clock.now() + 1.0

    def _deg(self, x: float, y: float) -> tuple[float, float]:
        if self._unit == "deg":
            return x, y
        if self.resolution is not None:  # screen pixels: origin top-left, y down
            x, y = x - self.resolution[0] / 2, self.resolution[1] / 2 - y
        return x / float(self.ppd or 1.0), y / float(self.ppd or 1.0)

    def poll(self) -> list[GazeSample]:
        if self._inlet is None:
            raise StateError(f"gaze source {self.name!r} polled before open()")
        if clock.now() >= self._next_correction:
            self._next_correction = clock.now() + 1.0
            with contextlib.suppress(Exception):
                self._correction = self._inlet.time_correction(0.0)
        data, stamps = self._inlet.pull_chunk(timeout=0.0, max_samples=4096)
        shift, (i, j) = self._correction - self._offset, self._channels
        return [GazeSample(t=ts + shift, x=gx, y=gy) for s, ts in zip(data, stamps, strict=True)
                for gx, gy in (self._deg(float(s[i]), float(s[j])),)]

    def close(self) -> None:
        if self._inlet is not None:
            inlet, self._inlet = self._inlet, None
            inlet.close_stream()


class IoHubGaze(GazeSource):
    """PsychoPy ioHub's eye tracker (default: MouseGaze), read by a thread; ``poll()`` takes its queue.

    ioHub reports gaze in screen pixels from the screen centre (y up); this class converts them with
    the window's geometry: its centre's offset from the screen's and the pixels per degree of its
    monitor (``psychopy.tools.monitorunittools.deg2pix``, the inverse of how the window draws in
    deg), or of ``monitor`` when no window is given. ioHub's Display device is given the same monitor
    under the name ``cortexloop-iohub`` (ioHub saves it in PsychoPy's Monitor Center folder)."""

    def __init__(self, window: Any = None, monitor: MonitorProfile | None = None, ppd: float | None = None,
                 tracker: str = "mouse", tracker_config: dict[str, Any] | None = None, udp_port: int | None = None,
                 interval_s: float = 0.002) -> None:
        if window is None and monitor is None and not ppd:
            raise InvalidRequest("IoHubGaze needs the PsychoPy window, the monitor profile or ppd for degrees")
        self.window, self.monitor, self.interval_s, self.udp_port = window, monitor, interval_s, udp_port
        self.tracker = IOHUB_TRACKERS.get(tracker, tracker)
        if not self.tracker.startswith("eyetracker.hw."):
            raise InvalidRequest(f"ioHub tracker {tracker!r}: use {sorted(IOHUB_TRACKERS)} or a device class path")
        self.tracker_config = tracker_config or {}
        self.name = f"iohub:{tracker}"
        self.ppd, self.centre, self._offset = ppd or 1.0, (0.0, 0.0), 0.0
        self._io: Any = None
        self._queue: collections.deque[GazeSample] = collections.deque(maxlen=100_000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def _display(self) -> dict[str, Any]:
        """ioHub's Display device: pixels from the screen centre; the monitor's size when known."""
        win, screen = self.window, int(getattr(self.window, "screen", 0) or 0)
        display: dict[str, Any] = {"reporting_unit_type": "pix", "device_number": screen}
        if self.monitor is not None:
            width, dist, res = self.monitor.width_cm, self.monitor.distance_cm, self.monitor.resolution
        elif win is not None:
            width, dist, res = win.monitor.getWidth(), win.monitor.getDistance(), win.monitor.getSizePix()
        else:
            return display
        display.update(psychopy_monitor_name="cortexloop-iohub", override_using_psycho_settings=False,
                       physical_dimensions={"width": width * 10, "height": width * 10 * res[1] / res[0], "unit_type": "mm"},
                       default_eye_distance={"surface_center": dist * 10, "unit_type": "mm"})
        return display

    def open(self) -> None:
        from psychopy.iohub import launchHubServer
        from psychopy.iohub.client import ioHubConnection
        from psychopy.iohub.devices import Computer

        if ioHubConnection.ACTIVE_CONNECTION is not None:
            raise StimError("an ioHub server is already running in this process; close it first")
        if self.window is not None:
            from psychopy.tools.monitorunittools import deg2pix

            self.ppd = float(deg2pix(1.0, self.window.monitor))
        elif self.monitor is not None:
            self.ppd = self.monitor.pixels_per_degree()
        display = self._display()
        tracker = {"name": "tracker", **self.tracker_config}
        if self.tracker == IOHUB_TRACKERS["mouse"]:
            tracker = {"runtime_settings": {"sampling_rate": 500}, "device_timer": {"interval": 0.002}, **tracker}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:  # JSON is YAML
            json.dump({"monitor_devices": [{"Display": display}]}, f)
        try:
            io = launchHubServer(iohub_config_name=f.name, udp_port=self.udp_port or _free_udp_port(),
                                 **{self.tracker: tracker})
        except Exception as exc:
            raise StimError(f"ioHub did not start ({self.tracker}): {type(exc).__name__}: {exc}") from exc
        finally:
            os.unlink(f.name)
        self._io = io
        if getattr(io.devices, "tracker", None) is None:
            self.close()
            raise StimError(f"ioHub started without its eye tracker {self.tracker} (see iohub_last_session.log in "
                            "PsychoPy's user folder; a vendor tracker needs its psychopy-eyetracker-* plugin)")
        self.centre = self._window_centre(io.devices.display.getBounds())
        send, lock = io._sendToHubServer, threading.Lock()

        def locked_send(*a: Any, **k: Any) -> Any:  # the display thread may call ioHub too (window events)
            with lock:
                return send(*a, **k)

        io._sendToHubServer = locked_send
        io.devices.tracker.setRecordingState(True)
        self._offset = _bracket(Computer.getTime)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="iohub-gaze", daemon=True)
        self._thread.start()

    def _window_centre(self, bounds: tuple[int, int, int, int]) -> tuple[float, float]:
        """The window centre in ioHub's pixels (from the screen centre, y up); (0, 0) when full screen."""
        win = self.window
        if win is None or getattr(win, "_isFullScr", False):
            return 0.0, 0.0
        left, top, right, bottom = bounds
        try:
            wx, wy = win.winHandle.get_location()
        except Exception:
            wx, wy = win.pos
        ww, wh = (float(v) for v in win.size)
        return wx + ww / 2 - (left + right) / 2, (top + bottom) / 2 - (wy + wh / 2)

    def _sample(self, e: Any) -> GazeSample | None:
        from psychopy.iohub.constants import EventConstants as E

        if e.type == E.MONOCULAR_EYE_SAMPLE:
            eyes = [(e.gaze_x, e.gaze_y)] if e.status == 0 else []
        elif e.type == E.BINOCULAR_EYE_SAMPLE:  # status: tens digit left eye, units digit right (0 = seen)
            eyes = [p for ok, p in (((e.status // 10) % 10 == 0, (e.left_gaze_x, e.left_gaze_y)),
                                    (e.status % 10 == 0, (e.right_gaze_x, e.right_gaze_y))) if ok]
        else:
            return None
        if not eyes:
            return GazeSample(t=e.time + self._offset, x=NAN, y=NAN)
        x, y = (sum(p[k] for p in eyes) / len(eyes) for k in (0, 1))
        cx, cy = self.centre
        return GazeSample(t=e.time + self._offset, x=(x - cx) / self.ppd, y=(y - cy) / self.ppd)

    def _run(self) -> None:
        tracker = self._io.devices.tracker
        while not self._stop.wait(self.interval_s):
            try:
                for e in tracker.getEvents():
                    s = self._sample(e)
                    if s is not None:
                        self._queue.append(s)
            except Exception as exc:  # recorded once per kind (the loop goes on: ioHub may recover)
                if f"{type(exc).__name__}: {exc}" not in self.errors[-1:]:
                    self.errors.append(f"{type(exc).__name__}: {exc}")

    def poll(self) -> list[GazeSample]:
        if self._io is None:
            raise StateError(f"gaze source {self.name!r} polled before open()")
        out: list[GazeSample] = []
        with contextlib.suppress(IndexError):
            while True:
                out.append(self._queue.popleft())
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._io is not None:
            io, self._io = self._io, None
            with contextlib.suppress(Exception):
                io.devices.tracker.setRecordingState(False)
            io.quit()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bracket(other: Any, tries: int = 50) -> float:
    """``wire.clock.now() - other()`` from the tightest of ``tries`` bracketed reads."""
    best = (math.inf, 0.0)
    for _ in range(tries):
        a, o, b = clock.now(), float(other()), clock.now()
        best = min(best, (b - a, (a + b) / 2 - o))
    return best[1]


def make_gaze_source(spec: str, *, monitor: MonitorProfile | None = None, window: Any = None,
                     **kw: Any) -> GazeSource | None:
    """The gaze source a spec names (module docstring); ``none``: None. ``monitor`` (and for ioHub the
    PsychoPy ``window``) give the geometry; ``kw`` go to the class (``ppd``, ``timeout``, ...)."""
    kind, _, rest = spec.strip().partition(":")
    target, _, query = rest.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if set(opts) - ({"source_id"} if kind == "lsl" else set()):
        raise InvalidRequest(f"gaze spec {spec!r}: unknown option(s) {sorted(opts)}")
    if kind in ("none", ""):
        return None
    if kind == "lsl":
        if monitor is not None:
            kw.setdefault("ppd", monitor.pixels_per_degree())
        return LslGaze(target or "cortexloop-gaze", source_id=opts.get("source_id"), **kw)
    if kind == "iohub":
        return IoHubGaze(window=window, monitor=monitor, tracker=target or "mouse", **kw)
    raise InvalidRequest(f"gaze spec {spec!r}: unknown kind {kind!r} (lsl[:NAME[?source_id=ID]], iohub[:TRACKER], none)")
