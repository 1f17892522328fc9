"""Pool scoring through Ray (scorer actors) next to in process, on the same cores.

Builds a pool of random uint8 images (112x112) in a temporary HDF5 file, an ensemble of the
server's default architecture (its weights do not change the cost), and scores the whole pool
with :func:`modelserver.generate.pool.score_batches`: in process with ``--workers`` torch
threads, and on a local Ray cluster of ``--workers`` CPUs (one scorer actor of one thread per
CPU, shards streamed from the pool file). The actors are started and hold the model before the
timing; each side is timed ``--repeats`` times, alternating, and the best and median are reported. Usage:

    .venv/bin/python bench/ray_bench.py [--pool 4096] [--workers 2] [--batch 256] [--members 4]
        [--neurons 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.cluster import RayCluster  # noqa: E402
from modelserver.cluster.context import spec_of  # noqa: E402
from modelserver.cluster.scoring import ClusterScored  # noqa: E402
from modelserver.generate.context import EnsembleView  # noqa: E402
from modelserver.generate.pool import ImagePool, build_pool, score_batches  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig  # noqa: E402


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--neurons", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import ray

    rng = np.random.default_rng(0)
    model = DeepEnsemble(EnsembleConfig(members=a.members))
    model.add_session("s", a.neurons)
    view = EnsembleView(model.eval(), "s", members=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.h5"
        build_pool(path, (rng.integers(0, 256, (256, 112, 112, 3), dtype=np.uint8)
                          for _ in range(a.pool // 256)))
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
        try:
            cluster = RayCluster.connect("auto")
            remote = ClusterScored(view, cluster.scorer(), "bench", lambda: spec_of(model, "s", True))
            with ImagePool(path) as pool:
                n = len(pool)

                def here() -> torch.Tensor:
                    return torch.cat([o for _, o in score_batches(pool, view, a.batch)], 1)

                def on_ray() -> torch.Tensor:
                    return torch.cat([o for _, o in score_batches(pool, remote, a.batch)], 1)

                torch.set_num_threads(a.workers)
                here()  # warm: first-call allocations
                list(score_batches(pool, remote, a.batch))  # start the actors, load the model
                t_here, t_ray = [], []
                for _ in range(a.repeats):  # alternated, so a change of load on the machine hits both
                    t, out_here = timed(here)
                    t_here.append(t)
                    t, out_ray = timed(on_ray)
                    t_ray.append(t)
                actors = cluster.scorer_count()
        finally:
            ray.shutdown()
    diff = float((out_here - out_ray).abs().max())
    print(f"pool {n} images 112x112, ensemble {a.members} members x {a.neurons} neurons "
          f"(channels {model.config.channels}, input {model.config.input_size}), batch {a.batch}")
    here_s, ray_s = min(t_here), min(t_ray)
    print(f"in process, {a.workers} torch threads: best {here_s:7.2f} s  {n / here_s:8.1f} images/s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in t_here)})")
    print(f"Ray, {actors} scorer actors x 1 thread: best {ray_s:7.2f} s  {n / ray_s:8.1f} images/s  "
          f"(runs: {', '.join(f'{t:.2f}' for t in t_ray)})")
    print(f"Ray overhead: {100 * (ray_s / here_s - 1):+.1f} % of the best runs, "
          f"{100 * (float(np.median(t_ray)) / float(np.median(t_here)) - 1):+.1f} % of the medians "
          f"(max |difference| of outputs {diff:.2e})")


if __name__ == "__main__":
    main()
