"""Distilling compact students from the 33 published V4 compact models (as teachers), then pruning.

    .venv/bin/python bench/distill_bench.py [--data DIR] [--neurons 33] [--pool 8192] [--heldout 256]
        [--filters 24,48,8,6,6] [--shared 4] [--readout-rank 2] [--train-minutes 10] [--threads 1]

1. Speed: the same training steps (same images, same architecture) for ``--speed-neurons``
   students at once, as one :class:`StackedCompact`, vs one by one, each student its own model
   (the faster of a plain :class:`CompactModel` and a stack of one). Twice: with independent
   students (``shared=0``: the same arithmetic either way) and with the shared trunk used below.
2. Accuracy: all students distilled batched on a pool of unlabeled images (crops of the V4 images
   of the four training sessions, gaudy crops, noise) labelled by the teachers (in bfloat16,
   checked against float32 labels); prints each student's correlation with its teacher on
   held-out pool images never trained on.
3. Pruning: filter by filter with the greedy accuracy-reduction index (RAR), deepest layer first,
   on half of the held-out images (lazy greedy evaluation; with a shared layer 1, layer 0 is
   pruned jointly so that the trunk stays shared); prints median filter counts before/after and
   the correlations after pruning on the other half (images used neither for training nor pruning).
Teachers: Cowley, Stan, Pillow & Smith (2023), bioRxiv 2023.11.22.568315 (GPL-3.0).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.compact import CompactModel, find_compact_models, load_compact_model, preprocess  # noqa: E402
from modelserver.data import load_images  # noqa: E402
from modelserver.distill import (  # noqa: E402
    DistillConfig,
    StackedCompact,
    distill,
    evaluate,
    make_pool,
    teacher_targets,
)
from modelserver.metrics import pearson_r  # noqa: E402
from modelserver.prune import prune  # noqa: E402


def _train_steps(model: nn.Module, pool: np.ndarray, y: torch.Tensor, steps: int, batch: int) -> float:
    """Seconds for ``steps`` Adam steps of ``model`` (outputs (B,) or (B, n)) on the targets ``y``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for s in range(steps):
        idx = np.arange(s * batch, (s + 1) * batch) % len(pool)
        out = model(preprocess(pool[idx]))
        loss = ((out.reshape(len(idx), -1) - y[idx]) ** 2).mean(0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def speed(n: int, filters: tuple[int, ...], pool: np.ndarray, steps: int, batch: int, shared: int,
          readout_rank: int | None) -> tuple[float, float, str]:
    """Seconds for ``steps`` training steps of ``n`` students batched, and of the same ``n`` students
    one by one (each its own model, with its own layer 0), and which single model was faster."""
    y = torch.randn(len(pool), n)
    torch.manual_seed(0)
    singles: dict[str, Callable[[], nn.Module]] = {
        "CompactModel": lambda: CompactModel(filters),
        "stack of one": lambda: StackedCompact(1, filters, readout_rank=readout_rank),
    }
    per = {}
    for name, make in singles.items():  # warm-up, then the faster kind is the baseline
        _train_steps(make(), pool, y[:, :1], 1, batch)
        per[name] = _train_steps(make(), pool, y[:, :1], steps, batch)
    kind = min(per, key=lambda k: per[k])
    t_single = sum(_train_steps(singles[kind](), pool, y[:, j:j + 1], steps, batch) for j in range(n))
    _train_steps(StackedCompact(n, filters, shared=shared, readout_rank=readout_rank), pool, y, 1, batch)
    t_batched = _train_steps(StackedCompact(n, filters, shared=shared, readout_rank=readout_rank), pool, y, steps,
                             batch)
    return t_batched, t_single, kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", type=int, default=33)
    ap.add_argument("--pool", type=int, default=8192, help="pool images for training (and validation)")
    ap.add_argument("--heldout", type=int, default=256, help="pool images held out for evaluation/pruning")
    ap.add_argument("--filters", default="24,48,8,6,6")
    ap.add_argument("--shared", type=int, default=4,
                    help="leading units shared by the students (0 none, 1 layer 0, 2 +layer-1 depthwise, "
                         "3 +layer 1, 4 +layer-2 depthwise)")
    ap.add_argument("--readout-rank", type=int, default=2, help="rank of Beta while training (0: dense)")
    ap.add_argument("--epochs", type=int, default=100, help="at most; --train-minutes usually ends training")
    ap.add_argument("--train-minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--speed-steps", type=int, default=2)
    ap.add_argument("--speed-neurons", type=int, default=30)
    ap.add_argument("--tolerance", type=float, default=0.02, help="allowed drop of r while pruning")
    ap.add_argument("--min-r", type=float, default=0.9)
    ap.add_argument("--prune-layers", default="4,3,2,1,0")
    ap.add_argument("--prune-minutes", type=float, default=5.0, help="no new pruning round after this")
    ap.add_argument("--fp32-labels", action="store_true", help="teacher labels in float32 (default bfloat16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    filters = tuple(int(v) for v in args.filters.split(","))
    rank = args.readout_rank or None
    t_start = time.monotonic()

    sessions = ["190925", "190927", "190928", "190929"]
    base = np.concatenate([load_images(args.data, s) for s in sessions])
    pool = make_pool(base, args.pool + args.heldout, seed=args.seed)
    teachers = [load_compact_model(p) for p in find_compact_models(args.data / "compact_models", "190923")]
    teachers = teachers[: args.neurons]

    for sh in (0, args.shared):
        tb, ts, kind = speed(args.speed_neurons, filters, pool, args.speed_steps, args.batch_size, sh, rank)
        print(f"speed (shared={sh}: {'independent students' if sh == 0 else 'shared trunk'}): {args.speed_steps} "
              f"steps x {args.batch_size} images for {args.speed_neurons} students {args.filters}: batched {tb:.1f} s, "
              f"one by one ({kind}) {ts:.1f} s -> speed-up {ts / tb:.1f}x ({torch.get_num_threads()} CPU thread)",
              flush=True)

    t0 = time.monotonic()
    targets = teacher_targets(teachers, pool, bfloat16=not args.fp32_labels)
    print(f"teacher labels ({'float32' if args.fp32_labels else 'bfloat16'}) for {len(pool)} pool images x "
          f"{len(teachers)} teachers: {time.monotonic() - t0:.0f} s", flush=True)
    if not args.fp32_labels:
        check = pearson_r(targets[:, -64:], teacher_targets(teachers, pool[-64:]))
        print(f"  bfloat16 vs float32 labels on 64 images: r min {check.min():.5f}", flush=True)
    train_i, held_i = np.arange(args.pool), np.arange(args.pool, args.pool + args.heldout)
    cfg = DistillConfig(filters=filters, shared=args.shared, readout_rank=rank, epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr, val_fraction=0.05,
                        time_budget_s=60 * args.train_minutes, seed=args.seed)
    students, rep = distill(pool[train_i], targets[:, train_i], cfg, progress=lambda i: print(
        f"  epoch {int(i['epoch'])}: validation r median {i['median_val_r']:.3f}, min {i['min_val_r']:.3f} "
        f"({i['seconds']:.0f} s)", flush=True))
    r_held = evaluate(students, pool[held_i], targets[:, held_i])
    print(f"distilled {len(teachers)} students batched (shared={args.shared}, filters {args.filters}) in "
          f"{rep.seconds:.0f} s ({rep.steps} steps): r with teacher on {len(held_i)} held-out pool images median "
          f"{np.median(r_held):.3f}, min {r_held.min():.3f}, >= {args.min_r}: {(r_held >= args.min_r).sum()}/"
          f"{len(r_held)}", flush=True)

    half = len(held_i) // 2
    prune_i, test_i = held_i[:half], held_i[half:]
    r_before = evaluate(students, pool[test_i], targets[:, test_i])
    joint = (0,) if args.shared >= 3 else ()  # keeps a shared trunk one computation (see prune's docstring)
    prep = prune(students, pool[prune_i], targets[:, prune_i], tolerance=args.tolerance, min_r=args.min_r,
                 layers=tuple(int(v) for v in args.prune_layers.split(",")), joint=joint,
                 time_budget_s=60 * args.prune_minutes)
    r_after = evaluate(students, pool[test_i], targets[:, test_i])
    before, after = prep.filters_before.sum(1), prep.filters_after.sum(1)
    print(f"pruned (RAR, tolerance {args.tolerance}, floor {args.min_r}"
          f"{', layer 0 jointly' if joint else ''}{'' if prep.complete else ', stopped by its time budget'}) in "
          f"{prep.seconds:.0f} s, "
          f"{prep.evaluations} evaluations: median filters {np.median(before):.0f} -> {np.median(after):.0f} "
          f"(per layer {np.median(prep.filters_before, 0).astype(int).tolist()} -> "
          f"{np.median(prep.filters_after, 0).astype(int).tolist()}); r with teacher on {len(test_i)} pool images "
          f"used neither for training nor pruning: median {np.median(r_before):.3f} -> {np.median(r_after):.3f}, "
          f"min {r_before.min():.3f} -> {r_after.min():.3f}, >= {args.min_r}: {(r_before >= args.min_r).sum()} -> "
          f"{(r_after >= args.min_r).sum()}/{len(r_after)}")
    teacher_filters = np.array([t.filters for t in teachers])
    print(f"teachers (published compact models): median filters {np.median(teacher_filters.sum(1)):.0f} "
          f"(per layer {np.median(teacher_filters, 0).astype(int).tolist()})")
    print(f"total {time.monotonic() - t_start:.0f} s")


if __name__ == "__main__":
    main()
