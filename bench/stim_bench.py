"""Stimulus-server benchmark: the REAL server process with REAL PsychoPy (under Xvfb when DISPLAY is unset).

Prints: the time to load 2,000 112x112 images (one LoadImages message, ids verified, textures made) and
to re-send them (cached); per-frame and per-trial costs; the flip-interval distribution of a
1,000-trial block; and how many flips a block shows after an abort is sent.

Under Xvfb there is no vertical blank: a flip returns as soon as Mesa (llvmpipe) has rendered, so the
intervals are the CPU cost of a frame, not display timing (see docs/stimserver.md).

    .venv/bin/python bench/stim_bench.py [--images 2000] [--trials 1000] [--on 6] [--off 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stimserver.process import StimServerProcess  # noqa: E402
from wire.base import image_id  # noqa: E402
from wire.clock import now  # noqa: E402
from wire.stim import (  # noqa: E402
    AbortBlock,
    BlockResult,
    CheckImages,
    GetStimStatus,
    ImagesLoaded,
    ImagesMissing,
    LoadImages,
    PresentBlock,
    StimStatus,
    TrialSpec,
)
from wire.transport import RpcClient  # noqa: E402


def start_xvfb() -> subprocess.Popen[bytes] | None:
    if os.environ.get("DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("no DISPLAY and no Xvfb")
    for num in range(150, 200):
        if not Path(f"/tmp/.X{num}-lock").exists():
            break
    proc = subprocess.Popen([xvfb, f":{num}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{num}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("Xvfb did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{num}"
    return proc


def stats(x: np.ndarray) -> str:
    return f"mean {1e3 * x.mean():.3f} ms, sd {1e3 * x.std():.3f} ms, max {1e3 * x.max():.3f} ms"


async def bench(rpc: str, n_images: int, n_trials: int, on: int, off: int) -> None:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (n_images, 112, 112, 3), dtype=np.uint8)
    t = time.perf_counter()
    ids = [image_id(a) for a in px]
    hash_s = time.perf_counter() - t
    async with RpcClient(rpc, timeout=300) as c:
        st = await c.request(GetStimStatus(), StimStatus)
        print(f"presenter {st.presenter}, measured refresh period {1e3 * (st.refresh_period or 0):.3f} ms "
              f"(DISPLAY={os.environ.get('DISPLAY')})")
        t = time.perf_counter()
        r = await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        r2 = await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
        again_s = time.perf_counter() - t
        t = time.perf_counter()
        miss = await c.request(CheckImages(image_ids=ids), ImagesMissing)
        check_s = time.perf_counter() - t
        print(f"load {n_images} x 112x112 images: {load_s:.3f} s ({1e3 * load_s / n_images:.3f} ms/image, "
              f"{r.added} added; client-side hashing {hash_s:.3f} s extra)")
        print(f"re-send the same {n_images}: {1e3 * again_s:.1f} ms ({r2.already_cached} already cached; the time "
              f"is moving {px.nbytes / 1e6:.0f} MB); stim.check of their ids instead: {1e3 * check_s:.1f} ms "
              f"({len(miss.missing)} missing)")

        trials = [TrialSpec(image_id=ids[int(i)], on_frames=on, off_frames=off)
                  for i in rng.integers(0, n_images, n_trials)]
        cmd = PresentBlock(block_id="bench", trials=trials)
        t = time.perf_counter()
        res = await c.request(cmd, BlockResult, timeout=600)
        wall = time.perf_counter() - t
        ft = res.flip_times
        d = np.diff(ft)
        offset_frames = np.array([tr.offset_frame for tr in res.trials])
        onset_frames = np.array([tr.onset_frame for tr in res.trials])
        plain = np.ones(len(d), bool)
        plain[offset_frames - 1] = False
        plain[onset_frames - 1] = False
        print(f"block of {len(res.trials)} trials ({on} ON + {off} OFF frames): {len(ft)} flips in {wall:.2f} s "
              f"(client wall), flips span {ft[-1] - ft[0]:.2f} s")
        print(f"flip intervals, all: {stats(d)}")
        print(f"flip intervals, plain frames: {stats(d[plain])}; onset flips: {stats(d[onset_frames - 1])}; "
              f"offset flips (trial booked + event queued): {stats(d[offset_frames - 1])}")
        per_trial = d[offset_frames - 1].mean() + d[onset_frames - 1].mean() - 2 * d[plain].mean()
        print(f"per-trial overhead in the frame loop (onset + offset flips minus two plain frames): "
              f"{1e3 * per_trial:.3f} ms")
        setup = wall - (ft[-1] - ft[0])
        print(f"per-block overhead (RPC, texture check, lead-in, reply with {len(ft)} flip times): "
              f"{1e3 * setup:.1f} ms = {1e3 * setup / len(res.trials):.3f} ms/trial")
        print(f"dropped frames (> 1.5 x measured period): {res.dropped_frames}")

        # abort latency: flips shown after the abort left the client (same machine, same monotonic clock)
        idle_rtt = []
        for _ in range(200):
            t = time.perf_counter()
            await c.request(GetStimStatus(), StimStatus)
            idle_rtt.append(time.perf_counter() - t)
        lat, busy_rtt = [], []
        for k in range(5):
            task = asyncio.create_task(c.request(PresentBlock(block_id=f"abort{k}", trials=trials[:200]),
                                                 BlockResult, timeout=120))
            while True:
                t = time.perf_counter()
                done = (await c.request(GetStimStatus(), StimStatus)).trials_done
                busy_rtt.append(time.perf_counter() - t)
                if done >= 20:
                    break
            sent = now()
            await c.request(AbortBlock(), StimStatus)
            r3 = await task
            lat.append(int(np.count_nonzero(r3.flip_times > sent)))
        print(f"flips after the abort was sent (5 aborts): {lat}")
        print(f"stim.status round trip: idle median {1e3 * np.median(idle_rtt):.3f} ms (max "
              f"{1e3 * np.max(idle_rtt):.3f}); during a block median {1e3 * np.median(busy_rtt):.3f} ms (max "
              f"{1e3 * np.max(busy_rtt):.3f}, n={len(busy_rtt)})")


def frameloop_cost(n_trials: int, on: int, off: int) -> None:
    """The frame loop's own bookkeeping per flip, on the fake presenter's virtual clock (no rendering)."""
    from stimserver.fake_presenter import FakePresenter
    from stimserver.frameloop import BlockControl, run_block

    px = np.zeros((1, 8, 8, 3), np.uint8)
    p = FakePresenter(realtime=False)
    p.open()
    p.prepare("a", px[0])
    cmd = PresentBlock(block_id="f", trials=[TrialSpec(image_id="a", on_frames=on, off_frames=off,
                                                       repeats=n_trials)])
    t = time.perf_counter()
    res = run_block(p, cmd, BlockControl(), lambda e: None)
    dt = time.perf_counter() - t
    print(f"frame-loop bookkeeping alone (fake presenter, virtual clock): {1e6 * dt / len(res.flip_times):.1f} us "
          f"per flip, {1e6 * dt / n_trials:.1f} us per trial")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--on", type=int, default=6)
    ap.add_argument("--off", type=int, default=6)
    ap.add_argument("--size", default="800x600")
    args = ap.parse_args()
    frameloop_cost(args.trials, args.on, args.off)
    xvfb = start_xvfb()
    tmp = tempfile.mkdtemp(prefix="stimbench-", dir="/tmp")
    srv = None
    try:
        srv = StimServerProcess(["--presenter", "psychopy", "--rpc", f"ipc://{tmp}/rpc", "--events", f"ipc://{tmp}/ev",
                             "--size", args.size, "--monitor-resolution", args.size, "--image-size-deg", "4"])
        asyncio.run(bench(srv.rpc, args.images, args.trials, args.on, args.off))
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(5)


if __name__ == "__main__":
    main()
