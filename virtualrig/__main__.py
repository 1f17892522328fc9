"""``python -m virtualrig --stim-events tcp://127.0.0.1:5601 [--compact-models DIR] ...``

Runs the virtual rig as its own process. Prints one line ``virtualrig rpc=<endpoint>`` on
stdout when it is serving (so a parent can connect), then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from controller.acquisition.clock import ClockMap
from virtualrig.rates import load_image_zip, make_rate_model
from virtualrig.rig import VirtualRig
from virtualrig.spikes import ResponseParams
from wire.acq import LSL_MARKER_NAME, LSL_SPIKE_NAME


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m virtualrig", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--stim-events", required=True, help="the stimserver's event endpoint (TrialEvents)")
    p.add_argument("--rpc", default="tcp://127.0.0.1:0", help="endpoint of the rig's RPC (rig.load_images)")
    p.add_argument("--compact-models", type=Path, help="folder of V4 compact models (the real neurons)")
    p.add_argument("--v4-dir", type=Path, help="V4 data folder: compact_models/ and images/images_190923.zip")
    p.add_argument("--reference", type=Path, help="zip of calibration images (default: the V4 session's, or noise)")
    p.add_argument("--reference-count", type=int, default=120, help="calibration images taken from the reference")
    p.add_argument("--n-units", type=int, default=32, help="synthetic population size (without compact models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device for the compact models")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--baseline", type=float, default=5.0, help="spikes/s outside driven responses")
    p.add_argument("--fano", type=float, default=1.0, help="Fano factor of driven counts (1 = Poisson)")
    p.add_argument("--min-rate", type=float, default=2.0)
    p.add_argument("--max-rate", type=float, default=60.0)
    p.add_argument("--delay", type=float, default=0.3, help="streaming delay behind real time (s)")
    p.add_argument("--clock-offset", type=float, default=0.0, help="simulated rig clock offset (s)")
    p.add_argument("--clock-drift", type=float, default=0.0, help="simulated rig clock drift (e.g. 2e-5)")
    p.add_argument("--spike-stream", default=LSL_SPIKE_NAME)
    p.add_argument("--sync-stream", default=LSL_MARKER_NAME)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> None:
    folder = args.compact_models
    reference = args.reference
    if args.v4_dir is not None:
        folder = folder or args.v4_dir / "compact_models"
        session_zip = args.v4_dir / "images" / "images_190923.zip"
        if reference is None and session_zip.exists():
            reference = session_zip
    ref_images = None
    if reference is not None:  # an evenly spaced subset: calibrating 33 models on 1,200 images takes minutes on CPU
        ref_images = await asyncio.to_thread(load_image_zip, reference)
        step = max(1, ref_images.shape[0] // max(2, args.reference_count))
        ref_images = ref_images[::step]
    model = await asyncio.to_thread(make_rate_model, compact_models=folder, reference=ref_images,
                                    n_units=args.n_units, seed=args.seed, lo=args.min_rate, hi=args.max_rate,
                                    device=args.device)
    params = ResponseParams(latency=args.latency, baseline=args.baseline, fano=args.fano)
    rig = VirtualRig(model, stim_events=args.stim_events, rpc=args.rpc, params=params, delay=args.delay,
                     clock=ClockMap(offset=args.clock_offset, scale=1 + args.clock_drift), seed=args.seed,
                     spike_name=args.spike_stream, sync_name=args.sync_stream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with rig:
        print(f"virtualrig rpc={rig.endpoint}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
