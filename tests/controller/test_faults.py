"""Fault tests of the engine with the stimserver in its own process: killed mid-block, restarted."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path

import numpy as np
import pytest

from controller.acquisition.binning import Binner
from controller.engine import Engine, EngineConfig
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.store import SessionReader, SessionWriter
from protocols.steps import ImageSet, PresentBlock, WaitForCounts
from stimserver.process import StimServerProcess
from virtualrig.loopback import LoopbackRig
from virtualrig.rates import GaborEnergyRates
from wire.documents import EventDoc, ResponseDoc, TrialDoc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_stimserver_killed_mid_block_pauses_then_resumes(tmp_path: Path) -> None:
    rpc, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = ["--presenter", "fake", "--rpc", rpc, "--events", events, "--fake-refresh-hz", "120"]
    server = StimServerProcess(args)
    lib = ImageLibrary(np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    pixels: dict[str, np.ndarray] = {}
    store = SessionWriter.create(tmp_path / "f.h5")
    rig = LoopbackRig(events, GaborEnergyRates(4, seed=0), lambda i: pixels[i], delay=0.2, silence_timeout=30)
    seen: list[str] = []
    restarted: list[StimServerProcess] = []

    def plan():
        yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=10)], repeats=6,
                           on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0", timeout_s=20)

    async with StimLink(rpc, events) as stim:
        engine = Engine(EngineConfig(session_id="f", stim_ping_interval=0.3, stim_dead_after=2), store=store,
                        stim=stim, source=rig, binner=Binner(), images=lib, pixels=pixels)

        def on(topic: str, payload: dict) -> None:
            seen.append(topic if topic != "event" else payload["what"])
            if topic == "trial" and payload["done"] == 15 and not restarted:
                server.proc.send_signal(signal.SIGKILL)  # the stimserver dies mid-block
            if topic == "event" and payload["what"] == "stim_unreachable":
                assert engine.session.state.value == "paused"
                restarted.append(StimServerProcess(args))  # the operator brings it back
        engine.on_status(on)
        await rig.open()
        try:
            stop = await asyncio.wait_for(engine.run(plan()), timeout=90)
        finally:
            store.close()
            for p in (server, *restarted):
                p.stop()
    assert stop.exit_status == "success", stop.reason
    assert "stim_unreachable" in seen and "stim_back" in seen
    with SessionReader(tmp_path / "f.h5") as r:
        docs = list(r.documents())
    shown = [d for d in docs if isinstance(d, TrialDoc)]
    counted = {d.trial_id for d in docs if isinstance(d, ResponseDoc)}
    assert len(counted) == 60 and len({d.trial_id for d in shown}) == len(shown)
    assert any(isinstance(d, EventDoc) and d.what == "stim_unreachable" for d in docs)


async def test_modelserver_gone_the_fallback_block_runs(tmp_path: Path) -> None:
    """A modelserver that stopped answering: the model-made set is replaced by its fallback, recorded."""
    from controller.modellink import ZmqModelLink
    from tests.controller.test_engine import run_session
    from wire.documents import BlockDoc

    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here any more

    def plan():
        yield PresentBlock(block_id="b0", images=[
            ImageSet(source="normal", n_images=4, condition="normal"),
            ImageSet(source="active", n_images=5, fallback="pool_random", timeout_s=5)], on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0", timeout_s=10)

    pixels: dict[str, np.ndarray] = {}  # the engine's image store, read by the model link
    models = ZmqModelLink(dead, dead, session_id="s", pixels=pixels.__getitem__, base_images=lambda n, s: [],
                          timeout=1.0)

    stop = await run_session(tmp_path / "ms.h5", plan(), models=models, pixels=pixels)
    assert stop.exit_status == "success", stop.reason
    with SessionReader(tmp_path / "ms.h5") as r:
        docs = list(r.documents())
    block = next(d for d in docs if isinstance(d, BlockDoc))
    assert block.fallback and block.params["fallbacks"] == ["active"]
    assert [c for _, _, c in block.params["trials"]].count("active/fallback") == 5
    assert any(isinstance(d, EventDoc) and d.what == "fallback" and "modelserver failed" in d.message for d in docs)
