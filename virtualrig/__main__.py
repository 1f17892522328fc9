"""``python -m virtualrig --stim-events tcp://127.0.0.1:5601 [--v4-dir DIR [--ground-truth SESSION]] ...``

Runs the virtual rig as its own process. Prints one line ``virtualrig rpc=<endpoint>`` on
stdout when it is serving (after its LSL streams exist, so a parent can connect), then serves
until SIGINT/SIGTERM, or until the ``--parent-pid`` process ends. A configuration error (an
unknown session, neurons out of range, an RPC endpoint other machines can reach without CURVE or
``--insecure``, a missing key file) is one line on stderr and exit status 1.

CURVE: ``--curve-secret`` / ``--curve-clients`` secure the rig's RPC; ``--curve-client-secret`` /
``--curve-server-key`` are the rig's client keys for its subscription to a CURVE stimserver.

``--gaze`` adds the virtual monkey (``virtualrig.monkey``): its eye gaze as the LSL stream
``cortexloop-gaze`` (type Gaze), rewarded by the stimserver's ``stim.reward`` events.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from controller.acquisition.clock import ClockMap
from virtualrig.monkey import MonkeyConfig, VirtualMonkey
from virtualrig.rates import RateModel, compact_model_sessions, evenly_spaced, load_image_zip, make_rate_model
from virtualrig.rig import VirtualRig
from virtualrig.spikes import ResponseParams
from virtualrig.watchdog import watch_process
from wire import lslconfig
from wire.acq import LSL_GAZE_NAME, LSL_MARKER_NAME, LSL_SPIKE_NAME
from wire.errors import CortexloopError, InvalidRequest, ModelError
from wire.security import (
    CurveClient,
    CurveServer,
    check_bind,
    check_client_keys,
    check_server_keys,
    curve_client,
    curve_server,
)

log = logging.getLogger("virtualrig")


def neuron_spec(text: str) -> list[int]:
    """``--neurons``: ``N`` (the first N neurons), or indices and ranges ``0,3,5-8`` (``5,`` is neuron 5 alone)."""
    text = text.strip()
    try:
        if text.isdigit():
            n = int(text)
            if n < 1:
                raise ValueError
            return list(range(n))
        out: list[int] = []
        for part in filter(None, (t.strip() for t in text.split(","))):
            lo, sep, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        out = []
    if not out or min(out) < 0 or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"{text!r}: give a count N >= 1 or distinct indices like 0,3,5-8")
    return out


@dataclass(frozen=True)
class GroundTruth:
    """What the rig's neurons are: compact models of one session (``folder``), or synthetic units."""

    folder: Path | None
    session: str | None
    neurons: list[int] | None
    reference: Path | None


def ground_truth(args: argparse.Namespace) -> GroundTruth:
    """Resolve the ground-truth options (files are listed, nothing is loaded); ModelError when they don't fit."""
    folder: Path | None = args.compact_models
    if folder is None and args.v4_dir is not None:
        folder = args.v4_dir / "compact_models"
    if folder is None:
        if args.ground_truth is not None or args.neurons is not None:
            raise InvalidRequest("--ground-truth and --neurons choose compact models: give --v4-dir or "
                                 "--compact-models (--n-units sizes the synthetic population)")
        return GroundTruth(None, None, None, args.reference)
    sessions = compact_model_sessions(folder)
    if not sessions:
        raise ModelError(f"no compact models (compact_model_<session>_neuron<k>.pt) in {folder}")
    session = args.ground_truth if args.ground_truth is not None else sessions[0]
    if session not in sessions:
        raise ModelError(f"no compact models of session {session!r} in {folder}; sessions there: "
                         f"{', '.join(sessions)}")
    n = len(list(folder.glob(f"compact_model_{session}_neuron*.pt")))
    if args.neurons is not None and max(args.neurons) >= n:
        raise InvalidRequest(f"session {session} has {n} neurons (0..{n - 1}); --neurons asks for "
                             f"{[k for k in args.neurons if k >= n]}")
    reference = args.reference
    if reference is None and args.v4_dir is not None:  # calibrate on the session's own images
        session_zip = args.v4_dir / "images" / f"images_{session}.zip"
        if session_zip.exists():
            reference = session_zip
        else:
            log.warning("no %s: rates calibrated on seeded noise images", session_zip)
    return GroundTruth(folder, session, args.neurons, reference)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m virtualrig", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--stim-events", required=True, help="the stimserver's event endpoint (TrialEvents)")
    p.add_argument("--rpc", default="tcp://127.0.0.1:0", help="endpoint of the rig's RPC (rig.load_images)")
    p.add_argument("--compact-models", type=Path, help="folder of V4 compact models (the real neurons)")
    p.add_argument("--v4-dir", type=Path, help="V4 data folder: compact_models/ and images/images_<session>.zip")
    p.add_argument("--ground-truth", metavar="SESSION",
                   help="whose compact models are the neurons (default: the folder's first session, sorted)")
    p.add_argument("--neurons", type=neuron_spec, metavar="SPEC",
                   help="the session's neurons to use: N (the first N) or indices 0,3,5-8 (default: all)")
    p.add_argument("--reference", type=Path,
                   help="zip of calibration images (default: the session's images with --v4-dir, else noise)")
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
    gaze = p.add_argument_group("virtual monkey (synthetic eye gaze over LSL, type Gaze)")
    gaze.add_argument("--gaze", action="store_true", help="stream a fixating monkey's gaze (deg) in real time")
    gaze.add_argument("--gaze-rate", type=float, default=MonkeyConfig.rate_hz, metavar="HZ",
                      help="gaze samples/s (default %(default)g)")
    gaze.add_argument("--break-rate", type=float, default=MonkeyConfig.break_rate, metavar="PER_S",
                      help="fixation breaks per second of fixation right after a reward (default %(default)g; "
                      "rises without reward)")
    gaze.add_argument("--gaze-seed", type=int, metavar="SEED", help="the monkey's seed (default: --seed)")
    gaze.add_argument("--gaze-stream", default=LSL_GAZE_NAME, help="name of the gaze stream (default %(default)s)")
    p.add_argument("--parent-pid", type=int, metavar="PID",
                   help="exit when this process ends (checked every second; e.g. the controller's PID)")
    sec = p.add_argument_group("authentication (ZeroMQ CURVE; keys from `cortexloop keys generate`)")
    sec.add_argument("--curve-secret", type=Path, metavar="FILE",
                     help="the rig's NAME.key_secret: its RPC is a CURVE server (with --curve-clients)")
    sec.add_argument("--curve-clients", type=Path, metavar="DIR",
                     help="folder of the allowed clients' public NAME.key files")
    sec.add_argument("--insecure", action="store_true",
                     help="allow an RPC endpoint beyond loopback without CURVE")
    sec.add_argument("--curve-client-secret", type=Path, metavar="FILE",
                     help="the rig's client NAME.key_secret for the stimserver's events (with --curve-server-key)")
    sec.add_argument("--curve-server-key", type=Path, metavar="FILE",
                     help="the stimserver's public NAME.key")
    p.add_argument("--lsl-scope", choices=["machine", "site"], default="machine",
                   help="who can discover the rig's LSL streams: this machine only (default), or the lab "
                        "network (a rig reached from another machine)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def security(args: argparse.Namespace) -> tuple[CurveServer | None, CurveClient | None]:
    """(the RPC's CURVE server config, the subscription's CURVE client config), key files checked and the
    RPC endpoint allowed by :func:`wire.security.check_bind`; a WireError says what is wrong."""
    server = curve_server(args.curve_secret, args.curve_clients)
    client = curve_client(args.curve_client_secret, args.curve_server_key)
    if server is not None:
        check_server_keys(server)
    if client is not None:
        check_client_keys(client)
    check_bind(args.rpc, server, args.insecure, server="virtualrig")
    return server, client


def build_monkey(args: argparse.Namespace) -> VirtualMonkey | None:
    """The virtual monkey of ``--gaze`` (None without it); InvalidRequest names a bad setting."""
    if not args.gaze:
        return None
    try:
        config = MonkeyConfig(rate_hz=args.gaze_rate, break_rate=args.break_rate)
    except ValueError as exc:
        raise InvalidRequest(f"--gaze-rate/--break-rate: {exc}") from None
    return VirtualMonkey(config, seed=args.seed if args.gaze_seed is None else args.gaze_seed)


def build_model(args: argparse.Namespace, truth: GroundTruth) -> RateModel:
    ref_images = None
    if truth.reference is not None:  # an evenly spaced subset: 33 models on 1,200 images take minutes on CPU
        ref_images = evenly_spaced(load_image_zip(truth.reference), args.reference_count)
    return make_rate_model(compact_models=truth.folder, session=truth.session, neurons=truth.neurons,
                           reference=ref_images, n_units=args.n_units, seed=args.seed, lo=args.min_rate,
                           hi=args.max_rate, device=args.device)


async def amain(args: argparse.Namespace, truth: GroundTruth, curve: CurveServer | None = None,
                stim_curve: CurveClient | None = None, monkey: VirtualMonkey | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = (asyncio.create_task(watch_process(args.parent_pid, stop.set), name="parent-watch")
                if args.parent_pid is not None else None)
    building = asyncio.create_task(asyncio.to_thread(build_model, args, truth))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([building, stopping], return_when=asyncio.FIRST_COMPLETED)
    if not building.done():  # the model thread cannot be interrupted, and nothing is open yet: leave now
        log.info("stopped while loading the models")
        logging.shutdown()
        os._exit(0)
    stopping.cancel()
    model = building.result()
    log.info("ground truth: %s", getattr(model, "description", f"{model.n_units} units"))
    params = ResponseParams(latency=args.latency, baseline=args.baseline, fano=args.fano)
    rig = VirtualRig(model, stim_events=args.stim_events, rpc=args.rpc, params=params, delay=args.delay,
                     clock=ClockMap(offset=args.clock_offset, scale=1 + args.clock_drift), seed=args.seed,
                     spike_name=args.spike_stream, sync_name=args.sync_stream, curve=curve,
                     insecure=args.insecure, stim_curve=stim_curve, monkey=monkey, gaze_name=args.gaze_stream)
    try:
        async with rig:
            # exactly this line (parents parse "rpc=" to the end); stream names are in rig.status
            print(f"virtualrig rpc={rig.endpoint}", flush=True)
            await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lslconfig.configure(args.verbose, args.lsl_scope)  # liblsl quiet unless -v; a lab's LSLAPICFG is kept
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        curve, stim_curve = security(args)  # before the models load: a refused bind fails at once
        truth = ground_truth(args)
        asyncio.run(amain(args, truth, curve, stim_curve, build_monkey(args)))
    except (CortexloopError, FileNotFoundError) as exc:  # a configuration error: one line, no traceback
        print(f"virtualrig: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except ModuleNotFoundError as exc:
        print(f"virtualrig: error: {exc} (the compact models need torch: pip install 'cortexloop[model]')",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
