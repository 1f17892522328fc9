"""Gaze sources: real LSL outlets in this process, and PsychoPy's ioHub (MouseGaze) under Xvfb."""

from __future__ import annotations

import math
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from stimserver.gaze import (
    GazeStreamNotFound,
    IoHubGaze,
    LslGaze,
    ScriptedGaze,
    make_gaze_source,
)
from stimserver.presenter import MonitorProfile, PresenterConfig
from stimserver.process import StimServerProcess
from tests.conftest import require, require_module
from tests.stimserver.helpers import random_images
from wire import clock
from wire.behavior import FixationRule, GazeSample
from wire.errors import InvalidRequest, StateError
from wire.stim import (
    BlockResult,
    BlockStatus,
    FixationSpot,
    ImagesLoaded,
    LoadImages,
    PresentBlock,
    TrialSpec,
)
from wire.transport import RpcClient


def xy(samples: list[GazeSample]) -> np.ndarray:
    return np.array([(s.x, s.y) for s in samples])


def test_scripted_gaze_releases_samples_when_their_time_comes() -> None:
    t0 = clock.now()
    g = ScriptedGaze([(t0 + 0.05, 1.0, 2.0), (t0 - 1, 0.0, 0.0), (t0 + 10, 5.0, 5.0)])
    g.open()
    assert [(s.x, s.y) for s in g.poll()] == [(0.0, 0.0)]
    assert g.poll() == []
    time.sleep(0.06)
    assert g.poll() == [GazeSample(t=t0 + 0.05, x=1.0, y=2.0)]
    assert g.poll() == []


def outlet(name: str, unit: str = "deg", source_id: str = "tracker-a", pupil_first: bool = False) -> Any:
    """A Gaze outlet: channels x, y (or pupil, gaze_x, gaze_y) whose x/y declare ``unit``."""
    import pylsl

    chans = [("pupil", "mm"), ("gaze_x", unit), ("gaze_y", unit)] if pupil_first else [("x", unit), ("y", unit)]
    info = pylsl.StreamInfo(name, "Gaze", len(chans), 500.0, "float32", source_id)
    node = info.desc().append_child("channels")
    for label, u in chans:
        ch = node.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", u)
    return pylsl.StreamOutlet(info)


def push_and_poll(out: Any, gaze: LslGaze, points: list[tuple[float, float]]) -> tuple[list[float], list[GazeSample]]:
    """Push each point stamped now (LSL clock); return the push times (wire clock) and what poll() gave."""
    import pylsl

    assert out.wait_for_consumers(10.0)
    sent = []
    for x, y in points:
        sent.append(clock.now())
        out.push_sample([x, y] if out.channel_count == 2 else [4.0, x, y], pylsl.local_clock())
        time.sleep(0.002)
    got: list[GazeSample] = []
    end = time.monotonic() + 5.0
    while len(got) < len(points) and time.monotonic() < end:
        got += gaze.poll()
        time.sleep(0.001)
    return sent, got


def test_lsl_gaze_in_degrees_with_local_timestamps() -> None:
    name = f"gaze-{uuid.uuid4().hex[:8]}"
    out = outlet(name)
    gaze = make_gaze_source(f"lsl:{name}")
    assert isinstance(gaze, LslGaze)
    with pytest.raises(StateError):
        gaze.poll()
    gaze.open()
    try:
        points = [(0.5 * k, -0.25 * k) for k in range(20)] + [(math.nan, math.nan)]
        sent, got = push_and_poll(out, gaze, points)
        assert len(got) == len(points)
        assert xy(got[:-1]) == pytest.approx(np.array(points[:-1]))
        assert not got[-1].has_eye
        assert max(abs(s.t - t) for s, t in zip(got, sent, strict=True)) < 0.003
        durations = []
        for _ in range(200):
            a = time.perf_counter()
            gaze.poll()
            durations.append(time.perf_counter() - a)
        assert statistics.median(durations) < 1e-3
    finally:
        gaze.close()


@pytest.mark.parametrize("resolution", [None, (800, 600)])
def test_lsl_gaze_in_pixels(resolution: tuple[int, int] | None) -> None:
    name = f"gaze-{uuid.uuid4().hex[:8]}"
    out = outlet(name, unit="px", pupil_first=True)
    with pytest.raises(InvalidRequest, match="ppd"):
        LslGaze(name, timeout=5.0).open()
    gaze = LslGaze(name, ppd=20.0, resolution=resolution)
    gaze.open()
    try:
        pix = [(0.0, 0.0), (40.0, 20.0), (-100.0, 10.0)]
        if resolution:  # screen pixels from the top-left corner, y down
            pix = [(400 + x, 300 - y) for x, y in pix]
        _, got = push_and_poll(out, gaze, pix)
        assert xy(got) == pytest.approx(np.array([(0.0, 0.0), (2.0, 1.0), (-5.0, 0.5)]))
    finally:
        gaze.close()


def test_lsl_gaze_refuses_unknown_units() -> None:
    name = f"gaze-{uuid.uuid4().hex[:8]}"
    _out = outlet(name, unit="mV")
    with pytest.raises(InvalidRequest, match="mv"):
        LslGaze(name, ppd=20.0).open()


def test_two_streams_of_one_name_are_refused_unless_pinned() -> None:
    name = f"gaze-{uuid.uuid4().hex[:8]}"
    a, b = outlet(name, source_id="eyelink-1"), outlet(name, source_id="tobii-2")
    with pytest.raises(InvalidRequest) as err:
        LslGaze(name).open()
    msg = str(err.value)
    assert "eyelink-1" in msg and "tobii-2" in msg and "host" in msg and "source_id" in msg
    gaze = make_gaze_source(f"lsl:{name}?source_id=tobii-2")
    assert isinstance(gaze, LslGaze)
    gaze.open()
    try:
        assert a.wait_for_consumers(0.5) is False  # the pinned inlet connected to b only
        _, got = push_and_poll(b, gaze, [(3.0, 4.0)])
        a.push_sample([9.0, 9.0])
        time.sleep(0.05)
        assert [(s.x, s.y) for s in got + gaze.poll()] == [(3.0, 4.0)]
    finally:
        gaze.close()


def test_no_stream_is_a_timeout() -> None:
    t = time.monotonic()
    with pytest.raises(GazeStreamNotFound, match=r"within 0\.3 s"):
        LslGaze(f"absent-{uuid.uuid4().hex[:8]}", timeout=0.3).open()
    assert time.monotonic() - t < 3.0
    assert issubclass(GazeStreamNotFound, TimeoutError)


def test_gaze_specs() -> None:
    assert make_gaze_source("none") is None
    g = make_gaze_source("lsl")
    assert isinstance(g, LslGaze) and (g.stream_name, g.source_id) == ("cortexloop-gaze", None)
    g = make_gaze_source("lsl:EyeLink?source_id=el-1", ppd=30.0)
    assert isinstance(g, LslGaze) and (g.stream_name, g.source_id, g.ppd) == ("EyeLink", "el-1", 30.0)
    g = make_gaze_source("iohub:mouse", monitor=MonitorProfile())
    assert isinstance(g, IoHubGaze) and g.tracker == "eyetracker.hw.mouse.EyeTracker"
    g = make_gaze_source("iohub", monitor=MonitorProfile())
    assert isinstance(g, IoHubGaze) and g.tracker == "eyetracker.hw.mouse.EyeTracker"
    g = make_gaze_source("iohub", ppd=30.0)  # what the stimserver's CLI passes (its window opens later)
    assert isinstance(g, IoHubGaze) and g.ppd == 30.0 and g.window is None
    g = make_gaze_source("lsl", monitor=MonitorProfile())
    assert isinstance(g, LslGaze) and g.ppd == pytest.approx(MonitorProfile().pixels_per_degree())
    g = make_gaze_source("iohub:eyelink", monitor=MonitorProfile())
    assert isinstance(g, IoHubGaze) and g.tracker == "eyetracker.hw.sr_research.eyelink.EyeTracker"
    for bad in ("tobii", "lsl:x?ppd=3", "iohub:x?source_id=1", "iohub:nonsense"):
        with pytest.raises(InvalidRequest):
            make_gaze_source(bad, monitor=MonitorProfile())
    with pytest.raises(InvalidRequest, match="window"):
        make_gaze_source("iohub")


# --- ioHub's MouseGaze under a real X display (Xvfb) ---------------------------------------------


class Pointer:
    """Moves the X pointer and presses buttons through XTEST, as a person at the desk would."""

    def __init__(self) -> None:
        from Xlib import X, display
        from Xlib.ext import xtest

        self.X, self.xtest, self.d = X, xtest, display.Display()
        require(self.d.has_extension("XTEST") and self.d.has_extension("RECORD"),
                "the X server lacks XTEST or RECORD (ioHub's mouse needs RECORD)")

    def move(self, x: float, y: float) -> None:
        self.xtest.fake_input(self.d, self.X.MotionNotify, x=round(x), y=round(y))
        self.d.sync()

    def buttons(self, press: bool, *numbers: int) -> None:
        for n in numbers:
            self.xtest.fake_input(self.d, self.X.ButtonPress if press else self.X.ButtonRelease, n)
        self.d.sync()


@pytest.fixture
def psychopy_window(xdisplay: str) -> Iterator[Any]:
    """A real PsychoPy presenter's window (640x480, off the screen's centre when it can be)."""
    require_module("psychopy", "psychopy is not installed (the stim extra)")
    require_module("Xlib", "python-xlib is not installed (psychopy installs it on Linux)")
    from stimserver.psychopy_presenter import PsychoPyPresenter

    p = PsychoPyPresenter(PresenterConfig(monitor=MonitorProfile(resolution=(640, 480)), size=(640, 480),
                                          refresh_hz=60.0))
    p.open()
    try:
        p._win.winHandle.set_location(100, 60)  # a desk's window is seldom centred: the offset must count
        p._win.flip()
        yield p
    finally:
        p.close()


def frames_until(presenter: Any, gaze: IoHubGaze, done: Any, timeout: float = 5.0) -> list[GazeSample]:
    """Run the frame loop (draw, flip, poll gaze) until ``done(samples)``; poll() is timed each frame."""
    got: list[GazeSample] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not done(got):
        presenter.draw(None, False, None)
        presenter.flip()
        a = time.perf_counter()
        got += gaze.poll()
        assert time.perf_counter() - a < 0.005
    return got


@pytest.mark.display
@pytest.mark.xdist_group("xpointer")
def test_iohub_mouse_gaze_in_degrees_in_a_psychopy_frame_loop(psychopy_window: Any) -> None:
    presenter = psychopy_window
    win = presenter._win
    pointer = Pointer()
    gaze = make_gaze_source("iohub:mouse", window=win, monitor=presenter.config.monitor)
    assert isinstance(gaze, IoHubGaze)
    gaze.open()
    try:
        ppd = presenter.config.monitor.pixels_per_degree()
        assert gaze.ppd == pytest.approx(ppd, rel=1e-3)  # the window's monitor: the presenter's profile
        wx, wy = win.winHandle.get_location()
        cx, cy = wx + 320, wy + 240  # the window's centre on the X screen (y down)
        screen = pointer.d.screen()
        sw, sh = screen.width_in_pixels, screen.height_in_pixels
        assert gaze.centre == pytest.approx((cx - sw / 2, sh / 2 - cy))
        assert (sw, sh) == (640, 480) or gaze.centre != (0.0, 0.0)  # the window is off the screen's centre
        for dx, dy in [(0.0, 0.0), (3.0, 0.0), (-2.0, 1.5), (0.5, -4.0)]:
            t_move = clock.now()
            pointer.move(cx + dx * ppd, cy - dy * ppd)
            got = frames_until(presenter, gaze, lambda s, at=(dx, dy): bool(s) and abs(s[-1].x - at[0]) < 0.1
                               and abs(s[-1].y - at[1]) < 0.1)
            assert got and (got[-1].x, got[-1].y) == pytest.approx((dx, dy), abs=0.1), (dx, dy, got[-3:])
            last = got[-1]
            assert t_move - 0.02 < last.t < clock.now() + 0.001
        pointer.buttons(True, 1, 3)  # both buttons: MouseGaze's blink, no eye
        try:
            got = frames_until(presenter, gaze, lambda s: any(not x.has_eye for x in s))
            assert any(not x.has_eye for x in got)
        finally:
            pointer.buttons(False, 1, 3)
        got = frames_until(presenter, gaze, lambda s: bool(s) and s[-1].has_eye)
        assert got[-1].x == pytest.approx(0.5, abs=0.1)
        n = len(gaze.poll())
        time.sleep(0.2)
        assert 50 < n + len(gaze.poll()) < 200  # 500 Hz simulated samples keep coming while the eye rests
    finally:
        gaze.close()
    assert gaze.errors == []


def test_iohub_needs_geometry() -> None:
    with pytest.raises(InvalidRequest):
        IoHubGaze()



@pytest.mark.display
@pytest.mark.xdist_group("xpointer")
async def test_psychopy_stimserver_runs_a_fixation_block_driven_by_iohub_mouse_gaze(xdisplay: str) -> None:
    """The acceptance: ``python -m stimserver --presenter psychopy --gaze iohub:mouse`` under Xvfb; the
    pointer (MouseGaze's eye) on the spot completes the block, the pointer away ends it unfixated."""
    require_module("psychopy", "psychopy is not installed (the stim extra)")
    require_module("Xlib", "python-xlib is not installed (psychopy installs it on Linux)")
    pointer = Pointer()
    screen = pointer.d.screen()
    sw, sh = screen.width_in_pixels, screen.height_in_pixels
    pointer.move(sw / 2 + 10, sh / 2 - 5)  # the (centred) window's centre, 0.6 deg off: inside the window
    srv = StimServerProcess(["--presenter", "psychopy", "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
                             "--size", "640x480", "--monitor-resolution", "640x480", "--image-size-deg", "4",
                             "--refresh-hz", "60", "--gaze", "iohub:mouse", "--reward", "none"],
                            env={"DISPLAY": xdisplay})
    try:
        assert srv.display_error is None, srv.ready
        ids, px = random_images(6)
        # generous gaps (a loaded CI machine can starve ioHub's process for a while): gaze, not timing, is tested
        rule = FixationRule(window_deg=2.0, acquire_s=1.0, hold_s=0.1, images_per_fixation=3, max_no_fixation=2,
                            timeout_s=0.1, blink_grace_s=0.3, stale_gaze_s=0.5)
        async with RpcClient(srv.rpc, timeout=60) as c:
            assert (await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)).added == 6

            def cmd(block_id: str) -> PresentBlock:
                return PresentBlock(block_id=block_id, behavior=rule, fixation=FixationSpot(size_deg=0.3),
                                    trials=[TrialSpec(image_id=i, on_frames=3, off_frames=3) for i in ids])

            res = await c.request(cmd("looking"), BlockResult)
            assert res.status is BlockStatus.COMPLETED, res
            assert len(res.trials) == 6 and all(t.valid for t in res.trials) and res.invalid == [], \
                [(t.invalid_reason, t.onset) for t in res.invalid]
            assert res.completed_sequences == 2 and len(res.rewards) == 2
            pointer.move(sw / 2 + 200, sh / 2)  # ~7 deg right: outside the fixation window
            res = await c.request(cmd("away"), BlockResult)
            assert res.status is BlockStatus.FIXATION_TIMEOUT and res.trials == [] and res.no_fixation == 2
    finally:
        assert srv.stop() == 0, "".join(srv.output)
