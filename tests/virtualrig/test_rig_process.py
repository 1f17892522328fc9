"""``python -m virtualrig`` as its own process, seen by the controller's LSL source like a real rig."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from controller.acquisition.binning import Binner, BinningConfig, ClockSync
from controller.acquisition.lsl import LslSource
from controller.acquisition.pipeline import AcquisitionPipeline
from virtualrig.rates import GaborEnergyRates, reference_images
from wire import clock
from wire.acq import RigImagesLoaded, RigLoadImages, RigStatus, RigStatusReply
from wire.base import image_id
from wire.errors import InvalidRequest
from wire.stim import TrialEvent
from wire.transport import EventPublisher, RpcClient

REPO = Path(__file__).resolve().parents[2]
N_UNITS, SEED = 6, 3
OFFSET, DRIFT = 2.5, 1e-4  # the rig's clock vs the stimulus clock


async def test_virtual_rig_process_end_to_end() -> None:
    tag = uuid.uuid4().hex[:10]
    images = reference_images(8, seed=9)
    truth = GaborEnergyRates(N_UNITS, seed=SEED).rates(images)  # the same population, in-process
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "virtualrig", "--stim-events", pub.endpoint, "--n-units", str(N_UNITS),
            "--seed", str(SEED), "--spike-stream", f"sp-{tag}", "--sync-stream", f"sy-{tag}", "--baseline", "2",
            "--clock-offset", str(OFFSET), "--clock-drift", str(DRIFT), "--delay", "0.25",
            cwd=REPO, stdout=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line.startswith("virtualrig rpc="), line
            await pub.wait_for_subscribers(1, timeout=30)
            async with RpcClient(line.strip().split("=", 1)[1], timeout=30) as rig:
                loaded = await rig.request(RigLoadImages(images=images), RigImagesLoaded)
                assert loaded.image_ids == [image_id(im) for im in images] and loaded.n_known == 8
                with pytest.raises(InvalidRequest):
                    await rig.request(RigLoadImages(images=images.astype(np.float32)), RigImagesLoaded)

                src = LslSource(spike_name=f"sp-{tag}", spike_type=None, marker_name=f"sy-{tag}", marker_type=None,
                                resolve_timeout=10, silence_timeout=5)
                binner = Binner(BinningConfig(window=(0.05, 0.15), lateness=0.1),
                                clock=ClockSync("photodiode", tolerance=0.005))
                n = 32
                shown = [i % 8 for i in range(n)]
                async with AcquisitionPipeline(src, binner) as acq:
                    t0 = clock.now() + 0.3
                    for i in range(n + 1):
                        onset = t0 + 0.17 * i + 0.01 * (i % 3)  # jittered ITI
                        img = loaded.image_ids[shown[i]] if i < n else "never-loaded"
                        ev = TrialEvent(block_id="b", trial_id=f"t{i}", index=i, image_id=img, onset=onset,
                                        offset=onset + 0.1, on_frames=6, dropped_frames=0)
                        await pub.publish(ev)
                        acq.add_trial(ev)
                    closed = [await acq.next_closed(timeout=10) for _ in range(n + 1)]
                status = await rig.request(RigStatus(), RigStatusReply)
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert status.trials_seen == n + 1 and status.trials_unknown_image == 1 and status.trials_too_late == 0
    assert status.n_units == N_UNITS
    assert all(c.complete for c in closed) and binner.stats.late_spikes == 0
    for c in closed:  # the photodiode sync recovered the rig's clock
        assert abs(c.onset_acq - (OFFSET + (1 + DRIFT) * c.onset_stim)) < 1e-3
    counts = np.zeros((n, N_UNITS))
    for i, c in enumerate(closed[:n]):
        for u in range(N_UNITS):
            counts[i, u] = c.count(u) if u in c.unit_ids else 0
    expected = truth[shown] * 0.1  # rate x 100 ms driven window
    total, mu = counts.sum(), expected.sum()
    assert abs(total - mu) < 5 * np.sqrt(mu), (total, mu)
    mean_by_image = np.array([counts[np.array(shown) == k].mean(0) for k in range(8)])
    r = np.corrcoef(mean_by_image.ravel(), (truth * 0.1).ravel())[0, 1]
    assert r > 0.6, r
