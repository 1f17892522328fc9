"""The stimulus server over real sockets with the fake presenter (real-time simulated refresh)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stimserver.fake_presenter import FakePresenter
from stimserver.server import StimServer
from tests.stimserver.helpers import block, random_images, running
from wire.base import image_id
from wire.errors import Busy, DecodeError, DisplayError, InvalidRequest, NotFound, RequestTimeout, StateError
from wire.messages import Pong
from wire.stim import (
    AbortBlock,
    BlockResult,
    BlockStatus,
    CheckImages,
    GetStimStatus,
    ImagesLoaded,
    ImagesMissing,
    LoadImages,
    PauseBlock,
    PresentBlock,
    ResumeBlock,
    SetFixation,
    StimState,
    StimStatus,
    TrialSpec,
)
from wire.transport import RpcClient


async def test_load_then_block_order_exact_frames_and_events(ipc_dir: str) -> None:
    ids, px = random_images(4)
    async with running(FakePresenter(refresh_hz=500.0), ipc_dir) as rig:
        r = await rig.client.request(LoadImages(image_ids=ids, images=list(px)), ImagesLoaded)
        assert (r.added, r.already_cached, r.cached_total) == (4, 0, 4)
        order = [ids[2], ids[0], ids[3], ids[1]]
        cmd = PresentBlock(block_id="blk-1", trials=[TrialSpec(image_id=i, on_frames=k + 1, off_frames=2, repeats=2)
                                                     for k, i in enumerate(order)])
        res = await rig.client.request(cmd, BlockResult)
        assert res.status is BlockStatus.COMPLETED and res.block_id == "blk-1"
        assert [t.image_id for t in res.trials] == [i for i in order for _ in range(2)]
        assert [t.on_frames for t in res.trials] == [k + 1 for k in range(4) for _ in range(2)]
        for t in res.trials:
            assert t.offset_frame - t.onset_frame == t.on_frames == t.shown_frames
            # real-time fake: a late frame lands on a later blank, never an earlier one
            assert t.offset - t.onset >= t.on_frames * 0.002 - 1e-9
        events = await rig.next_events(len(res.trials))
        assert events == res.trials  # the stream carries the same trials, in order, before the reply
        assert np.all(np.diff(res.flip_times) > 0)


async def test_resent_images_cost_nothing_and_one_array_form(ipc_dir: str) -> None:
    ids, px = random_images(5)
    async with running(FakePresenter(refresh_hz=500.0), ipc_dir) as rig:
        r1 = await rig.client.request(LoadImages(image_ids=ids[:3], pixels=px[:3]), ImagesLoaded)
        r2 = await rig.client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        assert (r1.added, r2.added, r2.already_cached, r2.cached_total) == (3, 2, 3, 5)
        r3 = await rig.client.request(LoadImages(image_ids=ids[:1] * 2, pixels=px[[0, 0]]), ImagesLoaded)
        assert (r3.added, r3.already_cached) == (0, 1)
        extra, _ = random_images(2, seed=9)
        miss = await rig.client.request(CheckImages(image_ids=[extra[0], ids[4], extra[1], extra[0]]), ImagesMissing)
        assert miss.missing == [extra[0], extra[1]] and miss.cached_total == 5


async def test_abort_mid_block_returns_trials_so_far(ipc_dir: str) -> None:
    ids, px = random_images(3)
    async with running(FakePresenter(refresh_hz=200.0), ipc_dir) as rig:
        await rig.client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        task = asyncio.create_task(rig.client.request(block(ids, on=3, off=3, repeats=100), BlockResult,
                                                      timeout=30))
        first = await rig.next_events(3)
        status = await rig.client.request(AbortBlock(), StimStatus)
        assert status.state is StimState.IDLE  # abort answers once the block has stopped
        res = await task
        assert res.status is BlockStatus.ABORTED
        assert 3 <= len(res.trials) < 300
        assert res.trials[:3] == first
        assert [t.index for t in res.trials] == list(range(len(res.trials)))
        # the server keeps serving: a new block runs to the end
        again = await rig.client.request(block(ids, on=1, off=1, block_id="after"), BlockResult)
        assert again.status is BlockStatus.COMPLETED and len(again.trials) == 3


async def test_pause_and_resume(ipc_dir: str) -> None:
    ids, px = random_images(3)
    async with running(FakePresenter(refresh_hz=200.0), ipc_dir) as rig:
        await rig.client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        task = asyncio.create_task(rig.client.request(block(ids, on=4, off=2, repeats=4), BlockResult,
                                                      timeout=30))
        await rig.next_events(2)
        paused = await rig.client.request(PauseBlock(), StimStatus)
        assert paused.state is StimState.PAUSED and paused.block_id == "b" and paused.trials_total == 12
        with pytest.raises(StateError):
            await rig.client.request(PauseBlock(), StimStatus)
        # the pause is answered once the loop waits: trials_done is final, nothing more arrives while paused
        done = paused.trials_done
        assert (await rig.client.request(GetStimStatus(), StimStatus)).trials_done == done
        for _ in range(done - 2):
            await rig.events.recv(5)
        with pytest.raises(RequestTimeout):
            await rig.events.recv(0.3)
        assert (await rig.client.request(GetStimStatus(), StimStatus)).trials_done == done
        resumed = await rig.client.request(ResumeBlock(), StimStatus)
        assert resumed.state is StimState.RUNNING
        res = await task
        assert res.status is BlockStatus.COMPLETED
        assert [t.image_id for t in res.trials] == [i for i in ids for _ in range(4)]
        assert all(t.shown_frames == 4 for t in res.trials)
        assert all(t.shown_frames < 4 for t in res.interrupted)
        idle = await rig.client.request(GetStimStatus(), StimStatus)
        assert idle.state is StimState.IDLE and idle.images_cached == 3 and idle.presenter == "fake"


async def test_wait_for_fixation_hook(ipc_dir: str) -> None:
    ids, px = random_images(2)
    async with running(FakePresenter(refresh_hz=200.0), ipc_dir) as rig:
        await rig.client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        cmd = block(ids, on=2, off=2).model_copy(update={"wait_for_fixation": True, "fixation_timeout": 20.0})
        task = asyncio.create_task(rig.client.request(cmd, BlockResult, timeout=30))
        with pytest.raises(RequestTimeout):  # nothing is shown before the rig reports fixation
            await rig.events.recv(0.3)
        st = await rig.client.request(SetFixation(fixating=True), StimStatus)
        assert st.fixating
        res = await task
        assert res.status is BlockStatus.COMPLETED and len(res.trials) == 2
        await rig.client.request(SetFixation(fixating=False), StimStatus)
        short = cmd.model_copy(update={"fixation_timeout": 0.05, "block_id": "t"})
        res2 = await rig.client.request(short, BlockResult)
        assert res2.status is BlockStatus.FIXATION_TIMEOUT and res2.trials == []


async def test_bad_inputs_get_typed_errors_and_server_keeps_serving(ipc_dir: str) -> None:
    ids, px = random_images(3)
    async with running(FakePresenter(refresh_hz=200.0), ipc_dir) as rig:
        c = rig.client
        floats = px.astype(np.float32)
        with pytest.raises(InvalidRequest, match="uint8"):
            await c.request(LoadImages(image_ids=ids, pixels=floats), ImagesLoaded)
        rgba = np.zeros((3, 8, 8, 4), np.uint8)
        with pytest.raises(InvalidRequest, match="shape"):
            await c.request(LoadImages(image_ids=ids, pixels=rgba), ImagesLoaded)
        with pytest.raises(InvalidRequest, match="shape"):
            await c.request(LoadImages(image_ids=ids[:1], images=[px[0, :, :, 0]]), ImagesLoaded)
        with pytest.raises(InvalidRequest, match="2 images for 3"):
            await c.request(LoadImages(image_ids=ids, pixels=px[:2]), ImagesLoaded)
        with pytest.raises(InvalidRequest, match="does not match"):
            await c.request(LoadImages(image_ids=[ids[1], ids[0]], pixels=px[:2]), ImagesLoaded)
        with pytest.raises(DecodeError):  # neither or both sources
            await c.request(LoadImages.model_construct(image_ids=ids, pixels=None, images=None), ImagesLoaded)
        assert (await c.request(GetStimStatus(), StimStatus)).images_cached == 0  # nothing half-loaded
        await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        with pytest.raises(NotFound, match="unknown image"):
            await c.request(block([ids[0], image_id(np.zeros((2, 2, 3), np.uint8))]), BlockResult)
        for on, off in ((0, 1), (1, 0), (-2, 3)):
            bad = PresentBlock.model_construct(block_id="x", trials=[TrialSpec.model_construct(
                image_id=ids[0], on_frames=on, off_frames=off, repeats=1)], fixation=None, wait_for_fixation=False,
                fixation_timeout=1.0)
            with pytest.raises(DecodeError, match="greater than 0"):
                await c.request(bad, BlockResult)
        for cmd in (PauseBlock(), ResumeBlock(), AbortBlock()):
            with pytest.raises(StateError):
                await c.request(cmd, StimStatus)
        long_block = asyncio.create_task(c.request(block(ids, on=5, off=5, repeats=50), BlockResult, timeout=30))
        await rig.next_events(1)
        with pytest.raises(Busy):
            await c.request(block(ids, block_id="second"), BlockResult)
        with pytest.raises(StateError):
            await c.request(ResumeBlock(), StimStatus)
        await c.request(AbortBlock(), StimStatus)
        assert (await long_block).status is BlockStatus.ABORTED
        assert isinstance(await c.ping(), Pong)
        ok = await c.request(block(ids, on=1, off=1, block_id="fine"), BlockResult)
        assert ok.status is BlockStatus.COMPLETED


async def test_display_that_cannot_open_is_a_typed_error(ipc_dir: str) -> None:
    ids, px = random_images(1)
    broken = FakePresenter(fail_open="cannot open a window on DISPLAY=':404'")
    async with running(broken, ipc_dir) as rig:
        st = await rig.client.request(GetStimStatus(), StimStatus)
        assert not st.display_open and st.display_error is not None and "DISPLAY" in st.display_error
        await rig.client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)  # caching needs no window
        with pytest.raises(DisplayError, match="DISPLAY"):
            await rig.client.request(block(ids), BlockResult)
        assert (await rig.client.request(GetStimStatus(), StimStatus)).state is StimState.IDLE


def test_psychopy_presenter_without_display_names_display(monkeypatch: pytest.MonkeyPatch) -> None:
    from stimserver.presenter import PresenterConfig
    from stimserver.psychopy_presenter import PsychoPyPresenter

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(DisplayError, match="DISPLAY is not set"):
        PsychoPyPresenter(PresenterConfig()).open()


def test_cli_process_serves_and_stops_cleanly() -> None:
    from stimserver.process import StimServerProcess

    ids, px = random_images(2)
    srv = StimServerProcess(["--presenter", "fake", "--fake-refresh-hz", "500", "--rpc", "tcp://127.0.0.1:0",
                             "--events", "tcp://127.0.0.1:0"])
    try:
        assert srv.rpc.startswith("tcp://127.0.0.1:") and not srv.rpc.endswith(":0")

        async def use() -> None:
            async with RpcClient(srv.rpc, timeout=10) as c:
                assert (await c.ping()).server == "stimserver"
                await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
                res = await c.request(block(ids, on=2, off=1, repeats=3), BlockResult)
                assert [t.image_id for t in res.trials] == [ids[0]] * 3 + [ids[1]] * 3

        asyncio.run(use())
    finally:
        assert srv.stop() == 0, "".join(srv.output)


def test_cli_mounts_in_a_parent_app_and_rejects_bad_options() -> None:
    import typer
    from typer.testing import CliRunner

    import stimserver.cli

    parent = typer.Typer()
    parent.command("other")(lambda: None)
    parent.add_typer(stimserver.cli.app, name="stimserver")
    r = CliRunner().invoke(parent, ["stimserver", "--presenter", "bogus"])
    assert r.exit_code == 2 and "psychopy" in r.output
    r = CliRunner().invoke(parent, ["stimserver", "--photodiode-corner", "middle"])
    assert r.exit_code == 2 and "top-left" in r.output
    r = CliRunner().invoke(parent, ["stimserver", "--monitor-resolution", "big"])
    assert r.exit_code == 2 and "1920x1080" in r.output


async def test_bounded_cache_evicts_least_recently_used_and_frees_textures(ipc_dir: str) -> None:
    ids, px = random_images(6)
    fake = FakePresenter(refresh_hz=500.0)
    async with StimServer(fake, f"ipc://{ipc_dir}/rpc", f"ipc://{ipc_dir}/ev", max_images=3) as srv, \
            RpcClient(srv.rpc_endpoint, timeout=10) as c:
        with pytest.raises(InvalidRequest, match="bound of 3"):
            await c.request(LoadImages(image_ids=ids[:4], pixels=px[:4]), ImagesLoaded)
        await c.request(LoadImages(image_ids=ids[:3], pixels=px[:3]), ImagesLoaded)
        assert fake.prepared() == set(ids[:3])
        await c.request(block(ids[:1], on=1, off=1), BlockResult)  # ids[0] is now the most recently used
        r = await c.request(LoadImages(image_ids=ids[3:5], pixels=px[3:5]), ImagesLoaded)
        assert r.cached_total == 3
        miss = await c.request(CheckImages(image_ids=ids[:5]), ImagesMissing)
        assert miss.missing == [ids[1], ids[2]]
        assert fake.prepared() == {ids[0], ids[3], ids[4]}  # evicted textures freed
        with pytest.raises(NotFound):
            await c.request(block(ids[1:2]), BlockResult)
        st = await c.request(GetStimStatus(), StimStatus)
        assert st.max_images == 3 and st.images_cached == 3
