"""Awake-animal timing: break to blank screen, reward after the last offset flip, gaze at 1 kHz vs frames.

An in-process stimulus server (the display-free presenter flipping in real time on a simulated vsync, at
60 and at 120 Hz) reads gaze from a real LSL ``Gaze`` stream that another process publishes at 1 kHz in real
time: steady fixation with a saccade out of the window every ``--break-every`` seconds. The reward line
is a real pyserial port on a pseudo-terminal whose other end a thread reads. Prints, per refresh rate:

- break to blank: for each break (at a random phase of the refresh), the time from the first out-of-window sample to the flip that blanked
  the screen, and how many flips still showed the image after the sample (1 at most: the frame already
  drawn when the sample arrived);
- reward: the pulse's start after the last offset flip of its sequence, and the bytes' arrival on the
  serial device after that flip;
- dropped frames of a fixation block with 1 kHz gaze against the same block with no gaze at all.

    .venv/bin/python bench/behavior_bench.py [--images 60] [--hz 60 120] [--break-every 2.5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pylsl  # noqa: E402

from stimserver.fake_presenter import FakePresenter  # noqa: E402
from stimserver.gaze import LslGaze  # noqa: E402
from stimserver.reward import SerialReward  # noqa: E402
from stimserver.server import StimServer  # noqa: E402
from wire import clock, lslconfig  # noqa: E402
from wire.base import Message, image_id  # noqa: E402
from wire.behavior import BehaviorEvent, FixationRule, RewardEvent  # noqa: E402
from wire.stim import BlockResult, FixationSpot, LoadImages, PresentBlock, TrialSpec  # noqa: E402


def publish_gaze(name: str, every: float, stop: Any) -> None:
    """In its own process, as a tracker's LSL app: 1 kHz gaze in degrees in real time; fixation, and a
    300-ms saccade out of the window at random intervals (``every`` on average) and random phases."""
    lslconfig.configure()
    info = pylsl.StreamInfo(name, "Gaze", 2, 1000.0, "float32", f"bench-{name}")
    chans = info.desc().append_child("channels")
    for label in ("x", "y"):
        ch = chans.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", "deg")
    outlet = pylsl.StreamOutlet(info)
    rng = random.Random(0)
    offset = pylsl.local_clock() - clock.now()
    t = clock.now()
    next_break, away_until = t + every, -math.inf
    while not stop.is_set():
        now = clock.now()
        while t + 0.001 <= now:
            t += 0.001
            if t >= next_break:
                away_until, next_break = t + 0.3, t + every * (0.5 + rng.random())
            x = 6.0 if t < away_until else 0.1 * math.sin(t)
            outlet.push_sample([x, 0.0], t + offset)
        time.sleep(0.0005)


class PtyReader(threading.Thread):
    """Reads the master side of a pty: the arrival time (wire clock) of each reward command."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.arrivals = fd, list[float]()

    def run(self) -> None:
        import select

        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                return
            t = clock.now()
            self.arrivals += [t] * data.count(b"\n")


async def one_rate(hz: float, n_images: int, every: float, gaze_on: bool) -> dict[str, object]:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
    ids = [image_id(a) for a in px]
    name = f"bench-gaze-{uuid.uuid4().hex[:8]}"
    stop = mp.Event()
    stream = mp.Process(target=publish_gaze, args=(name, every, stop), daemon=True) if gaze_on else None
    master, slave = os.openpty()
    reader = PtyReader(master)
    reader.start()
    reward = SerialReward(os.ttyname(slave))
    presenter = FakePresenter(refresh_hz=hz, realtime=True, keep_frames=1_000_000)
    server = StimServer(presenter, "inproc://bench-rpc-" + name, "inproc://bench-ev-" + name,
                        gaze=LslGaze(name) if gaze_on else None, reward=reward, markers=None)
    events: list[Message] = []
    async with server:
        put = server._events.put_nowait
        server._events.put_nowait = lambda e: (events.append(e), put(e))[1]  # type: ignore[method-assign]
        await server.load(LoadImages(image_ids=ids, pixels=px))
        on = off = max(1, round(0.1 * hz))  # 100 ms on, 100 ms off
        specs = [TrialSpec(image_id=i, on_frames=on, off_frames=off) for i in ids]
        rule = FixationRule(window_deg=2.0, acquire_s=2.0, hold_s=0.3, images_per_fixation=4, blink_grace_s=0.1,
                            timeout_s=0.5, count_window_s=0.15, max_attempts=10)
        if stream is not None:
            stream.start()
            await asyncio.sleep(0.5)
            res: BlockResult = await server.present(PresentBlock(block_id="b", trials=specs, behavior=rule,
                                                                 fixation=FixationSpot()))
            stop.set()
            stream.join(5)
        else:
            res = await server.present(PresentBlock(block_id="b", trials=specs, fixation=FixationSpot()))
    os.close(slave)
    frames = presenter.frames
    out: dict[str, object] = {"hz": hz, "gaze": gaze_on, "flips": len(res.flip_times),
                              "dropped_frames": res.dropped_frames}
    if stream is None:
        return out
    period = 1.0 / hz
    latencies, showing_after = [], []
    breaks = [e for e in events if isinstance(e, BehaviorEvent) and e.what == "break" and e.sample_time]
    for b in breaks:
        assert b.sample_time is not None
        blank = next((f for f in frames if f.time > b.sample_time and f.image_id is None and not f.fixation), None)
        if blank is None:
            continue
        latencies.append(blank.time - b.sample_time)
        showing_after.append(sum(1 for f in frames if b.sample_time < f.time < blank.time and f.image_id))
    rewards = [e for e in events if isinstance(e, RewardEvent)]
    offsets = sorted(t.offset for t in res.trials + res.invalid)  # a sequence's last image may be spoiled after it
    after_flip = []
    for r in rewards:
        last = max((o for o in offsets if o <= r.time), default=None)
        if last is not None:
            after_flip.append(r.time - last)
    arrivals = [a - (r.time - d) for a, r, d in zip(reader.arrivals, rewards, after_flip, strict=False)]
    out.update({
        "breaks": len(latencies), "invalid": len(res.invalid), "sequences": res.sequences,
        "completed": res.completed_sequences,
        "break_to_blank_ms": _stats(latencies), "break_to_blank_frames_max": max(latencies) / period if latencies else None,
        "image_flips_after_sample_max": max(showing_after, default=None),
        "reward_after_offset_flip_ms": _stats(after_flip), "serial_after_offset_flip_ms": _stats(arrivals),
    })
    return out


def _stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    a = np.asarray(xs) * 1000
    return f"median {np.median(a):.2f}, max {a.max():.2f} (n={a.size})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--hz", type=float, nargs="+", default=[60.0, 120.0])
    ap.add_argument("--break-every", type=float, default=2.5)
    a = ap.parse_args()
    lslconfig.configure()
    for hz in a.hz:
        for gaze_on in (False, True):
            r = asyncio.run(one_rate(hz, a.images, a.break_every, gaze_on))
            print(" ".join(f"{k}={v}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
