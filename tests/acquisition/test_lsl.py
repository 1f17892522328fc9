"""The LSL source fed by a real pylsl outlet in another process: exact counts through the clock sync."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import numpy as np
import pylsl
import pytest

from controller.acquisition.base import SpikeBatch, SyncEvent
from controller.acquisition.binning import Binner, BinningConfig, ClockMap, ClockSync, ClosedTrial
from controller.acquisition.lsl import LslSource, parse_marker
from controller.acquisition.pipeline import AcquisitionPipeline
from wire.errors import AcquisitionError
from wire.stim import TrialEvent

HERE = Path(__file__).parent
W = (0.05, 0.15)


def test_parse_marker() -> None:
    assert parse_marker("photodiode 1", 2.0) == SyncEvent("photodiode", 2.0, 1)
    assert parse_marker("photodiode 0", 2.0) == SyncEvent("photodiode", 2.0, 0)
    assert parse_marker("trial start", 2.0) == SyncEvent("trial start", 2.0, 1)


async def test_unknown_stream_is_a_clear_error() -> None:
    src = LslSource(spike_name=f"nope-{uuid.uuid4().hex}", spike_type=None, resolve_timeout=0.3)
    with pytest.raises(AcquisitionError, match="no LSL stream with name='nope-"):
        async with src:
            pass


def make_session(seed: int, n_trials: int, t0: float, true: ClockMap) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                               np.ndarray]:
    """Onsets on the stim clock, their acq-clock pulse times, and spikes (units, acq times) away from edges."""
    rng = np.random.default_rng(seed)
    onsets_stim = 5000.0 + np.cumsum(rng.uniform(0.3, 0.5, n_trials))
    onsets_acq = np.asarray(true.to_acq(onsets_stim)) + t0
    units, times = [], []
    for o in onsets_acq:
        for u in range(4):
            n = rng.integers(0, 6)
            rel = rng.uniform(0.0, 0.3, n)
            rel = rel[np.minimum(np.abs(rel - W[0]), np.abs(rel - W[1])) > 2e-3]  # LSL correction moves us by µs
            units += [u] * rel.size
            times += list(o + rel)
    return onsets_stim, onsets_acq, np.array(units), np.array(times)


async def test_lsl_outlet_in_another_process_exact_counts() -> None:
    tag = uuid.uuid4().hex[:10]
    true = ClockMap(offset=-4990.0, scale=1 + 2e-4)  # stim clock vs rig clock: offset and 200 ppm drift
    t0 = pylsl.local_clock()
    onsets_stim, onsets_acq, units, times = make_session(7, 25, t0, true)
    end = float(times.max()) + 1.0
    spike_name, marker_name = f"sp-{tag}", f"mk-{tag}"
    spec = {"spike_name": spike_name, "marker_name": marker_name,
            "spikes": [[int(u), float(t)] for u, t in zip(units, times, strict=True)] + [[99, end]],
            "markers": [["photodiode 1", float(o)] for o in onsets_acq] + [["photodiode 0", float(o) + 0.1]
                                                                           for o in onsets_acq]}
    proc = await asyncio.create_subprocess_exec(sys.executable, str(HERE / "lsl_outlet.py"),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
        src = LslSource(spike_name=spike_name, spike_type=None, marker_name=marker_name,
                        marker_type=None, resolve_timeout=10, silence_timeout=10, max_delay=600)
        binner = Binner(BinningConfig(window=W, lateness=0.05), clock=ClockSync("photodiode", tolerance=0.005))
        closed: list[ClosedTrial] = []
        async with AcquisitionPipeline(src, binner) as acq:
            assert abs(src.time_correction) < 0.01
            for i, o in enumerate(onsets_stim):
                acq.add_trial(TrialEvent(block_id="b", trial_id=f"t{i}", index=i, image_id=f"img{i % 5}",
                                         onset=float(o), offset=float(o) + 0.1, on_frames=6, dropped_frames=0))
            while len(closed) < len(onsets_stim):
                closed.append(await acq.next_closed(timeout=20))
        assert binner.stats.late_spikes == 0
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert [c.trial_id for c in closed] == [f"t{i}" for i in range(len(onsets_stim))]
    for c, o in zip(closed, onsets_acq, strict=True):
        assert c.complete and abs(c.onset_acq - o) < 1e-3
        for u in range(4):
            want = int(np.sum((units == u) & (times >= o + W[0]) & (times < o + W[1])))
            got = c.count(u) if u in c.unit_ids else 0
            assert got == want, (c.trial_id, u)


async def test_spike_batch_from_lsl_has_int_units() -> None:
    b = SpikeBatch.of(np.array([1, 2], dtype=np.int32), [0.1, 0.2])
    assert b.units.dtype == np.int64 and len(b) == 2
