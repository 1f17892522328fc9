"""Integration: the REAL server process with REAL PsychoPy under Xvfb, showing real V4 images."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stimserver.process import StimServerProcess
from tests.stimserver.helpers import block
from wire import clock
from wire.base import image_id
from wire.errors import DisplayError
from wire.stim import (
    AbortBlock,
    BlockResult,
    BlockStatus,
    FixationSpot,
    GetStimStatus,
    ImagesLoaded,
    LoadImages,
    PresentBlock,
    StimStatus,
    TrialEvent,
    TrialSpec,
)
from wire.transport import EventSubscriber, RpcClient

pytestmark = pytest.mark.display


def v4_images(v4_dir: Path, n: int, session: str = "190923") -> np.ndarray:
    """The first ``n`` images of a session, decoded from its zip of JPEGs (uint8, N x 112 x 112 x 3)."""
    from PIL import Image

    with zipfile.ZipFile(v4_dir / "images" / f"images_{session}.zip") as z:
        names = sorted(x for x in z.namelist() if x.lower().endswith(".jpg"))[:n]
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(x))).convert("RGB")) for x in names])


@pytest.fixture(scope="module")
def psychopy_server(xdisplay: str) -> Iterator[StimServerProcess]:
    srv = StimServerProcess(["--presenter", "psychopy", "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
                         "--size", "640x480", "--monitor-resolution", "640x480", "--image-size-deg", "4"],
                        env={"DISPLAY": xdisplay})
    try:
        assert srv.display_error is None, srv.ready
        yield srv
    finally:
        assert srv.stop() == 0, "".join(srv.output)


@pytest.mark.v4
async def test_real_psychopy_blocks_of_v4_images(psychopy_server: StimServerProcess, v4_dir: Path) -> None:
    px = v4_images(v4_dir, 12)
    assert px.shape == (12, 112, 112, 3) and px.dtype == np.uint8
    ids = [image_id(a) for a in px]
    rng = np.random.default_rng(1)
    order = [ids[i] for i in rng.permutation(12)]
    sub = EventSubscriber(psychopy_server.events, [TrialEvent])
    try:
        async with RpcClient(psychopy_server.rpc, timeout=30) as c:
            st = await c.request(GetStimStatus(), StimStatus)
            assert st.presenter == "psychopy" and st.display_open and st.refresh_period
            loaded = await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
            assert loaded.added == 12
            cmd = PresentBlock(block_id="v4", fixation=FixationSpot(size_deg=0.3), trials=[
                TrialSpec(image_id=i, on_frames=1 + k % 4, off_frames=2, repeats=2) for k, i in enumerate(order)])
            # wait until our subscription reaches the publisher: a ping block of one trial
            warm = asyncio.create_task(c.request(block(ids[:1], on=1, off=1, block_id="warm"), BlockResult))
            first = await sub.recv(15)
            await warm
            assert first.block_id == "warm"
            res = await c.request(cmd, BlockResult)
            assert res.status is BlockStatus.COMPLETED
            assert [t.image_id for t in res.trials] == [i for i in order for _ in range(2)]
            for t, (k, _) in zip(res.trials, [(k, i) for k, i in enumerate(order) for _ in range(2)], strict=True):
                assert t.on_frames == 1 + k % 4
                assert t.offset_frame - t.onset_frame == t.on_frames == t.shown_frames
                assert t.onset == res.flip_times[t.onset_frame] and t.offset == res.flip_times[t.offset_frame]
            events = [await sub.recv(10) for _ in res.trials]
            assert events == res.trials
    finally:
        sub.close()


@pytest.mark.v4
async def test_real_psychopy_abort_mid_block(psychopy_server: StimServerProcess, v4_dir: Path) -> None:
    px = v4_images(v4_dir, 20)
    ids = [image_id(a) for a in px]
    sub = EventSubscriber(psychopy_server.events, [TrialEvent])
    try:
        async with RpcClient(psychopy_server.rpc, timeout=60) as c:
            await c.request(LoadImages(image_ids=ids, images=list(px)), ImagesLoaded)
            long = block(ids, on=10, off=10, repeats=50, block_id="long")  # 1000 trials, 20,000 frames
            task = asyncio.create_task(c.request(long, BlockResult))
            seen: list[TrialEvent] = []
            while len(seen) < 3:  # events of earlier tests' blocks may not be here: count this block's
                ev = await sub.recv(30)
                if ev.block_id == "long":
                    seen.append(ev)
            await c.request(AbortBlock(), StimStatus)
            res = await task
            assert res.status is BlockStatus.ABORTED
            assert 3 <= len(res.trials) < 1000
            assert res.trials[:3] == seen
            assert [t.image_id for t in res.trials] == [ids[k // 50] for k in range(len(res.trials))]
            assert all(t.offset_frame - t.onset_frame == 10 for t in res.trials)
            assert (await c.request(GetStimStatus(), StimStatus)).state == "idle"
    finally:
        sub.close()


def test_window_that_cannot_open_is_reported_naming_display(ipc_dir: str) -> None:
    srv = StimServerProcess(["--presenter", "psychopy", "--rpc", f"ipc://{ipc_dir}/rpc", "--events",
                         f"ipc://{ipc_dir}/ev"], env={"DISPLAY": ":4077"})
    try:
        assert srv.display_error is not None and "DISPLAY=':4077'" in srv.display_error

        async def ask() -> None:
            async with RpcClient(srv.rpc, timeout=30) as c:
                st = await c.request(GetStimStatus(), StimStatus)
                assert st.display_error is not None and not st.display_open
                px = np.zeros((1, 4, 4, 3), np.uint8)
                await c.request(LoadImages(image_ids=[image_id(px[0])], pixels=px), ImagesLoaded)
                with pytest.raises(DisplayError, match="DISPLAY"):
                    await c.request(block([image_id(px[0])]), BlockResult)
                assert (await c.request(GetStimStatus(), StimStatus)).state == "idle"

        asyncio.run(ask())
    finally:
        assert srv.stop() == 0, "".join(srv.output)


def test_presenter_draws_image_and_photodiode_on_screen(xdisplay: str) -> None:
    """Read the front buffer back: the image is where it should be, upright; the patch toggles."""
    from stimserver.presenter import MonitorProfile, PresenterConfig
    from stimserver.psychopy_presenter import PsychoPyPresenter

    cfg = PresenterConfig(monitor=MonitorProfile(resolution=(320, 240)), size=(320, 240), background=0.5,
                          photodiode_corner="top-right", photodiode_size_px=20, refresh_hz=60.0)
    p = PsychoPyPresenter(cfg)
    p.open()
    try:
        img = np.zeros((40, 60, 3), np.uint8)
        img[:20] = (255, 0, 0)  # top half red
        img[20:] = (0, 0, 255)  # bottom half blue
        p.prepare("x", img)
        # Xvfb's Mesa cannot read the front buffer back: read the back buffer just before each flip
        p.draw("x", True, None)
        frame = np.asarray(p._win._getFrame(buffer="back"))  # (H, W, 3), row 0 = top of the screen
        t = p.flip()
        assert abs(t - clock.now()) < 1.0  # flip times are on the wire clock
        h, w = frame.shape[:2]
        cy, cx = h // 2, w // 2
        assert tuple(frame[cy - 10, cx]) == (255, 0, 0) and tuple(frame[cy + 10, cx]) == (0, 0, 255)
        assert tuple(frame[cy, cx - 29]) != (128, 128, 128) and tuple(frame[cy, cx - 32]) == (128, 128, 128)
        assert tuple(frame[5, 5]) == (128, 128, 128)  # background grey 0.5
        assert tuple(frame[5, w - 5]) == (255, 255, 255)  # photodiode on, top-right
        assert tuple(frame[25, w - 5]) == (128, 128, 128)  # the patch is 20 px
        p.draw(None, False, None)
        frame = np.asarray(p._win._getFrame(buffer="back"))
        p.flip()
        assert tuple(frame[5, w - 5]) == (0, 0, 0) and tuple(frame[cy, cx]) == (128, 128, 128)
        p.release("x")
        assert p.prepared() == set() and not p.is_prepared("x")
        p.release("x")  # unknown ids are a no-op
    finally:
        p.close()
