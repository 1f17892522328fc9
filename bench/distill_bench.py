"""Distilling compact students from the 33 published V4 compact models (as teachers), then pruning.

    .venv/bin/python bench/distill_bench.py [--data DIR] [--neurons 33] [--pool 800] [--epochs 4]
        [--filters 8,8,6,6,6] [--speed-steps 3] [--threads 1]

1. Speed: the same number of training steps for all students at once (one batched computation,
   grouped convolutions with a leading model axis) vs one student at a time; prints the speed-up.
2. Accuracy: all students distilled batched on a pool of unlabeled images (crops of the V4
   images, gaudy crops, noise) labelled by the teachers; prints each student's correlation with
   its teacher on held-out pool images.
3. Pruning: filter by filter with the greedy accuracy-reduction index (RAR), deepest layer first;
   prints median filter counts before/after and the correlations after.
Teachers: Cowley, Stan, Pillow & Smith (2023), bioRxiv 2023.11.22.568315 (GPL-3.0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.compact import find_compact_models, load_compact_model, preprocess  # noqa: E402
from modelserver.data import load_images  # noqa: E402
from modelserver.distill import (  # noqa: E402
    DistillConfig,
    StackedCompact,
    distill,
    evaluate,
    make_pool,
    teacher_targets,
)
from modelserver.prune import prune  # noqa: E402


def speed(n: int, filters: tuple[int, ...], pool: np.ndarray, steps: int, batch: int,
          shared: bool) -> tuple[float, float]:
    """Seconds for ``steps`` training steps of n students batched, and of n students one by one
    (each its own :class:`StackedCompact` of one, with its own layer 0)."""
    y = torch.randn(len(pool), n)

    def run(model: StackedCompact, cols: slice) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for s in range(steps):
            idx = np.arange(s * batch, (s + 1) * batch) % len(pool)
            x = preprocess(pool[idx])
            loss = ((model(x) - y[idx][:, cols]) ** 2).mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    torch.manual_seed(0)
    batched = StackedCompact(n, filters, shared_layer0=shared)
    run(StackedCompact(1, filters), slice(0, 1))  # warm-up
    t0 = time.perf_counter()
    run(batched, slice(0, n))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for j in range(n):
        run(StackedCompact(1, filters), slice(j, j + 1))
    t_single = time.perf_counter() - t0
    return t_batched, t_single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", type=int, default=33)
    ap.add_argument("--pool", type=int, default=800)
    ap.add_argument("--heldout", type=int, default=160, help="pool images held out for evaluation/pruning")
    ap.add_argument("--filters", default="16,8,6,6,6")
    ap.add_argument("--separate-layer0", action="store_true",
                    help="every student learns its own layer 0 (slower: no shared computation)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--time-budget", type=float, default=None, help="seconds of student training at most")
    ap.add_argument("--speed-steps", type=int, default=3)
    ap.add_argument("--speed-neurons", type=int, default=30)
    ap.add_argument("--tolerance", type=float, default=0.02, help="allowed drop of r while pruning")
    ap.add_argument("--min-r", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    filters = tuple(int(v) for v in args.filters.split(","))
    t_start = time.monotonic()

    sessions = ["190925", "190927", "190928", "190929"]
    base = np.concatenate([load_images(args.data, s) for s in sessions])
    pool = make_pool(base, args.pool + args.heldout, seed=args.seed)
    teachers = [load_compact_model(p) for p in find_compact_models(args.data / "compact_models", "190923")]
    teachers = teachers[: args.neurons]

    shared = not args.separate_layer0
    for sh in (True, False):
        tb, ts = speed(args.speed_neurons, filters, pool, args.speed_steps, args.batch_size, sh)
        print(f"speed ({'shared' if sh else 'separate'} layer 0): {args.speed_steps} steps x {args.batch_size} "
              f"images for {args.speed_neurons} students: batched {tb:.1f} s, one by one {ts:.1f} s -> "
              f"speed-up {ts / tb:.2f}x ({torch.get_num_threads()} CPU threads)", flush=True)

    t0 = time.monotonic()
    targets = teacher_targets(teachers, pool)
    print(f"teacher labels for {len(pool)} pool images x {len(teachers)} teachers: {time.monotonic() - t0:.0f} s",
          flush=True)
    train_i, held_i = np.arange(args.pool), np.arange(args.pool, args.pool + args.heldout)
    cfg = DistillConfig(filters=filters, shared_layer0=shared, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        val_fraction=0.1, time_budget_s=args.time_budget, seed=args.seed)
    students, rep = distill(pool[train_i], targets[:, train_i], cfg, progress=lambda i: print(
        f"  epoch {int(i['epoch'])}: median val r {i['median_val_r']:.3f} ({i['seconds']:.0f} s)", flush=True))
    r_held = evaluate(students, pool[held_i], targets[:, held_i])
    print(f"distilled {len(teachers)} students batched in {rep.seconds:.0f} s ({rep.steps} steps): r with teacher on "
          f"{len(held_i)} held-out pool images median {np.median(r_held):.3f}, min {r_held.min():.3f}, "
          f">= {args.min_r}: {(r_held >= args.min_r).sum()}/{len(r_held)}", flush=True)

    half = len(held_i) // 2
    prune_i, test_i = held_i[:half], held_i[half:]
    prep = prune(students, pool[prune_i], targets[:, prune_i], tolerance=args.tolerance, min_r=args.min_r)
    r_after = evaluate(students, pool[test_i], targets[:, test_i])
    before, after = prep.filters_before.sum(1), prep.filters_after.sum(1)
    print(f"pruned (RAR, tolerance {args.tolerance}) in {prep.seconds:.0f} s, {prep.evaluations} evaluations: "
          f"median filters {np.median(before):.0f} -> {np.median(after):.0f} "
          f"(per layer {np.median(prep.filters_after, 0).astype(int).tolist()}); r with teacher on "
          f"{len(test_i)} unseen pool images median {np.median(r_after):.3f}, min {r_after.min():.3f}")
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
