"""Does the dashboard add time to a block? The same small session with and without it attached.

Each run is ``cortexloop run`` on embedded defaults (sysid shrunk, ``controller.dashboard.browser``);
"with" adds ``--dashboard 0`` and a headless chromium showing the page (server-sent events flowing),
"without" has neither. From each session file, per presented block: the wall time from its first to
its last trial (``TrialDoc.time``), the mean onset-to-onset interval (stimulus clock) and the dropped
frames. Printed per run and as the difference of the means; also the page's bus-to-DOM latency.

    .venv/bin/python bench/dashboard_bench.py --pairs 1
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.dashboard.browser import chromium, latency, start_session, summary
from controller.store import SessionReader
from wire.documents import TrialDoc


def block_times(path: Path) -> dict[str, tuple[float, float, int, int]]:
    """block -> (wall seconds first..last trial, mean onset interval (s), dropped frames, trials)."""
    with SessionReader(path) as r:
        trials = [d for d in r.documents() if isinstance(d, TrialDoc)]
    out: dict[str, tuple[float, float, int, int]] = {}
    for block in dict.fromkeys(t.block_id for t in trials):
        ts = [t for t in trials if t.block_id == block]
        onsets = [t.onset for t in ts]
        gaps = [b - a for a, b in itertools.pairwise(onsets)]
        out[block] = (ts[-1].time - ts[0].time, statistics.fmean(gaps) if gaps else 0.0,
                      sum(t.dropped_frames for t in ts), len(ts))
    return out


def one(out: Path, with_dashboard: bool) -> tuple[dict[str, tuple[float, float, int, int]], list[float]]:
    session = start_session(out, "bench", dashboard=with_dashboard)
    driver, delays = None, []
    try:
        if with_dashboard:
            driver = chromium(out / "profile")
            driver.get(session.wait_for_url())
        code = session.proc.wait(900)
        if driver is not None:
            delays = latency(driver)
        if code != 0:
            raise RuntimeError(f"session failed ({code}):\n{session.output()}")
    finally:
        if driver is not None:
            driver.quit()
        session.stop()
    return block_times(out / "bench.h5"), delays


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1, help="runs with and without the dashboard, alternating")
    args = ap.parse_args()
    results: dict[bool, list[dict[str, tuple[float, float, int, int]]]] = {True: [], False: []}
    delays: list[float] = []
    with tempfile.TemporaryDirectory(prefix="cortexloop-dashbench-") as tmp:
        for i in range(args.pairs):
            for attached in (False, True):
                t0 = time.perf_counter()
                blocks, d = one(Path(tmp) / f"run{i}-{int(attached)}", attached)
                delays += d
                results[attached].append(blocks)
                print(f"run {i} {'with   ' if attached else 'without'} dashboard ({time.perf_counter() - t0:.0f} s): "
                      + "; ".join(f"{b} {w:.2f} s/{n} trials, {g * 1000:.1f} ms/trial, {dr} dropped"
                                  for b, (w, g, dr, n) in blocks.items()))
    print("mean per block, without -> with the dashboard:")
    for block in results[False][0]:
        wo = [r[block] for r in results[False] if block in r]
        wi = [r[block] for r in results[True] if block in r]
        w0, w1 = statistics.fmean(x[0] for x in wo), statistics.fmean(x[0] for x in wi)
        g0, g1 = statistics.fmean(x[1] for x in wo), statistics.fmean(x[1] for x in wi)
        print(f"  {block}: {w0:.3f} -> {w1:.3f} s ({w1 - w0:+.3f} s); {g0 * 1000:.2f} -> {g1 * 1000:.2f} ms/trial; "
              f"dropped {sum(x[2] for x in wo)} -> {sum(x[2] for x in wi)}")
    print(summary(delays))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
