"""A sysid session end to end with every real part in its own process.

Real PsychoPy stimserver under Xvfb, the virtual rig streaming spikes over LSL, the modelserver
on CPU, and a real mosquitto with username/password: the session file must hold every trial
and count, and an operator on the broker must see the session's status, blocks and trials.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from controller.acquisition.binning import Binner
from controller.acquisition.lsl import LslSource
from controller.bus.access import BusUser, new_password
from controller.bus.broker import MosquittoBroker, mosquitto_binary
from controller.bus.mqtt import MqttBus, MqttOperator
from controller.busbridge import BusBridge
from controller.demo import DemoSettings, modelserver_process
from controller.engine import Engine, EngineConfig
from controller.images import ImageLibrary, synthetic_images
from controller.links import StimLink
from controller.modellink import ZmqModelLink
from controller.store import SessionReader, SessionWriter
from protocols.library.sysid import SysidProtocol
from stimserver.process import StimServerProcess
from wire.acq import RigImagesLoaded, RigLoadImages
from wire.documents import ResponseDoc, StepDoc, TrialDoc
from wire.topics import BlockStatus, SessionStatus, TrialStatus
from wire.transport import RpcClient

REPO = Path(__file__).resolve().parents[1]


class RigProcess:
    """``python -m virtualrig`` with a synthetic population, on private LSL stream names."""

    def __init__(self, stim_events: str) -> None:
        tag = uuid.uuid4().hex[:8]
        self.spikes, self.sync = f"cl-spikes-{tag}", f"cl-sync-{tag}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "virtualrig", "--stim-events", stim_events, "--n-units", "8",
             "--spike-stream", self.spikes, "--sync-stream", self.sync],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("virtualrig rpc="):
                self.rpc = line.split("=", 1)[1].strip()
                break
        else:
            raise RuntimeError(f"virtualrig exited with {self.proc.wait()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.slow
@pytest.mark.display
async def test_sysid_session_with_every_real_part(tmp_path: Path, xdisplay: str) -> None:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; scripts/bootstrap.sh does)")
    ctl = BusUser("controller", new_password(), "controller", "rig1")
    op = BusUser("operator", new_password(), "operator", "rig1")
    stim = StimServerProcess(["--presenter", "psychopy", "--rpc", "tcp://127.0.0.1:0", "--events",
                              "tcp://127.0.0.1:0", "--size", "400x400", "--monitor-resolution", "400x400"])
    assert stim.display_error is None, stim.display_error
    rig = RigProcess(stim.events)
    lib = ImageLibrary(synthetic_images(200, seed=5))
    settings = DemoSettings(members=2, epochs_session=3, epochs_block=2, pool_crops=200)
    proto = SysidProtocol.model_validate({
        "protocol": "sysid", "n_blocks": 2, "normal": 20, "gaudy": 5, "timing": {"on_frames": 3, "off_frames": 3},
        "active": {"n_images": 5, "start_block": 1, "timeout_s": 300}, "retrain": "block", "prefetch": False})
    seen: list[object] = []
    store = SessionWriter.create(tmp_path / "sysid.h5")
    try:
        with MosquittoBroker(tmp_path / "mqtt", [ctl, op]) as broker, \
                modelserver_process(tmp_path / "ms", settings, None) as (ms_rpc, ms_events):
            async with StimLink(stim.rpc, stim.events) as link, RpcClient(rig.rpc, timeout=60) as rig_client, \
                    MqttOperator("rig1", broker.host, broker.port, username=op.name, password=op.password) as viewer:
                source = LslSource(spike_name=rig.spikes, marker_name=rig.sync, silence_timeout=20)
                engine = Engine(EngineConfig(session_id="integration", rig="rig1"), store=store, stim=link,
                                source=source, binner=Binner(), images=lib)
                models = ZmqModelLink(ms_rpc, ms_events, session_id="integration",
                                      pixels=lambda i: engine.pixels[i],
                                      base_images=lambda n, s: [lib.images[i] for i in lib.take(n, s)],
                                      pool_crops=200, block_epochs=2)
                engine.models = models

                async def to_rig(ids: list[str], pixels: list[np.ndarray]) -> None:
                    await rig_client.request(RigLoadImages(images=np.stack(pixels)), RigImagesLoaded)
                engine.on_images(to_rig)

                finished = asyncio.Event()

                async def watch() -> None:
                    async for msg in viewer.statuses():
                        seen.append(msg)
                        if isinstance(msg, SessionStatus) and msg.state in ("done", "failed"):
                            finished.set()
                watcher = asyncio.create_task(watch())
                bus = MqttBus("rig1", broker.host, broker.port, username=ctl.name, password=ctl.password)
                async with models, bus, BusBridge(engine, bus, protocol="sysid"):
                    stop = await asyncio.wait_for(engine.run(proto.plan()), timeout=600)
                await asyncio.wait_for(finished.wait(), 10)  # the operator saw the session end
                watcher.cancel()
    finally:
        store.close()
        rig.stop()
        stim.stop()
    assert stop.exit_status == "success", stop.reason
    with SessionReader(tmp_path / "sysid.h5") as r:
        docs = list(r.documents())
    trials = {d.trial_id for d in docs if isinstance(d, TrialDoc)}
    counted = {d.trial_id for d in docs if isinstance(d, ResponseDoc)}
    assert len(trials) == 55 and counted == trials  # 25 + 30 images, every one with counts
    kinds = [d.step["kind"] for d in docs if isinstance(d, StepDoc)]
    assert kinds.count("retrain") == 2 and "generate_images" in kinds
    assert any(isinstance(m, SessionStatus) and m.state == "running" for m in seen)
    assert any(isinstance(m, BlockStatus) for m in seen)
    assert sum(isinstance(m, TrialStatus) for m in seen) >= 50
