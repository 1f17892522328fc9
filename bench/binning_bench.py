"""Spike-binning benchmark: sustained spike events/s on one core, and window-end -> counts latency.

    .venv/bin/python bench/binning_bench.py [--units 200] [--rate 40] [--seconds 120] [--realtime 6]

Part 1 (offline, CPU time of the binner alone): a population of ``--units`` units firing at
``--rate`` spikes/s each for ``--seconds`` simulated seconds, trials every 0.25 s registered at
their offset (as the stimserver does), spikes delivered in chunks of 10 ms and 1 ms of
acquisition time. Prints spikes/s and the processing time of the call that closes a trial.

Part 2 (real time, ``--realtime`` s): the virtual rig (in-process, no streaming delay) pushes
spikes through a real LSL outlet; the controller's LslSource + Binner count them. Prints the
latency from each window's end (local clock) to its closed record, which is lateness + the
source's poll interval + transport: the floor a closed loop can react at.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import numpy as np

from controller.acquisition.binning import Binner, BinningConfig
from controller.acquisition.lsl import LslSource
from controller.acquisition.pipeline import AcquisitionPipeline
from wire import clock


def offline(units: int, rate: float, seconds: float, chunk: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = rng.poisson(units * rate * seconds)
    times = np.sort(rng.uniform(0, seconds, n))
    unit_ids = rng.integers(0, units, n)
    edges = np.searchsorted(times, np.arange(0, seconds + chunk, chunk))
    onsets = np.arange(0.5, seconds - 1, 0.25)
    b = Binner(BinningConfig(window=(0.05, 0.15), lateness=0.05))
    closing: list[float] = []
    n_closed = 0
    k_trial = 0
    t_cpu = time.process_time()
    for i in range(edges.size - 1):
        t_now = (i + 1) * chunk
        while k_trial < onsets.size and onsets[k_trial] + 0.1 <= t_now:  # TrialEvent at offset
            b.add_trial(f"t{k_trial}", float(onsets[k_trial]))
            k_trial += 1
        lo, hi = edges[i], edges[i + 1]
        t0 = time.perf_counter()
        closed = b.add_spikes(unit_ids[lo:hi], times[lo:hi])
        if closed:
            closing.append(time.perf_counter() - t0)
            n_closed += len(closed)
    cpu = time.process_time() - t_cpu
    print(f"offline  chunk {chunk * 1e3:4.0f} ms: {n:,} spikes, {units} units, {n_closed} trials closed in "
          f"{cpu:.2f} s CPU -> {n / cpu:,.0f} spikes/s; closing call median {statistics.median(closing) * 1e6:.0f} "
          f"µs, max {max(closing) * 1e6:.0f} µs; late spikes {b.stats.late_spikes}")


async def realtime(seconds: float, units: int) -> None:
    from virtualrig.rates import GaborEnergyRates, reference_images
    from virtualrig.rig import VirtualRig
    from virtualrig.spikes import ResponseParams
    from wire.base import image_id
    from wire.stim import TrialEvent
    from wire.transport import EventPublisher

    tag = uuid.uuid4().hex[:8]
    model = GaborEnergyRates(units, seed=0)
    imgs = reference_images(4, seed=3)
    async with EventPublisher("tcp://127.0.0.1:0") as pub:
        rig = VirtualRig(model, stim_events=pub.endpoint, params=ResponseParams(baseline=5.0), delay=0.002,
                         tick=0.005, spike_name=f"bsp-{tag}", sync_name=f"bsy-{tag}", seed=0)
        async with rig:
            from wire.acq import RigLoadImages
            await rig._load(RigLoadImages(images=imgs))
            lateness = 0.02
            src = LslSource(spike_name=f"bsp-{tag}", spike_type=None, marker_name=None, marker_type=None,
                            max_delay=0.05, poll=0.005)
            binner = Binner(BinningConfig(window=(0.05, 0.15), lateness=lateness))
            async with AcquisitionPipeline(src, binner) as acq:
                t0 = clock.now() + 0.5
                n = int(seconds / 0.25)
                for i in range(n):
                    ev = TrialEvent(block_id="b", trial_id=f"t{i}", index=i, image_id=image_id(imgs[i % 4]),
                                    onset=t0 + 0.25 * i, offset=t0 + 0.25 * i + 0.1, on_frames=6, dropped_frames=0)
                    rig.on_trial(ev)
                    acq.add_trial(ev)
                lat = []
                for _ in range(n):
                    c = await acq.next_closed(timeout=10)
                    lat.append(c.closed_at - (c.onset_acq + c.window[1]))
    lat_ms = np.array(lat) * 1e3
    print(f"realtime LSL (virtual rig, {units} units, lateness {lateness * 1e3:.0f} ms, poll 5 ms): {n} trials, "
          f"window end -> counts median {np.median(lat_ms):.1f} ms, p95 {np.percentile(lat_ms, 95):.1f} ms, "
          f"max {lat_ms.max():.1f} ms (of which {lateness * 1e3:.0f} ms is the lateness allowance)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--units", type=int, default=200)
    p.add_argument("--rate", type=float, default=40.0, help="spikes/s per unit")
    p.add_argument("--seconds", type=float, default=120.0, help="simulated seconds (offline part)")
    p.add_argument("--realtime", type=float, default=6.0, help="seconds of the real-time LSL part (0: skip)")
    args = p.parse_args()
    for chunk in (0.01, 0.001):
        offline(args.units, args.rate, args.seconds, chunk)
    if args.realtime > 0:
        asyncio.run(realtime(args.realtime, 32))


if __name__ == "__main__":
    main()
