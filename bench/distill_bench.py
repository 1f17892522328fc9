"""Distilling compact students for 33 V4 neurons, pruning them, and the batched speed-up.

    .venv/bin/python bench/distill_bench.py [--data DIR] [--teacher compact|ensemble --ensemble PATH]
        [--pool 23552] [--heldout 1024] [--filters 24,48,8,6,6] [--shared 4] [--train-minutes 20]
        [--prune-minutes 5] [--finetune-minutes 5] [--threads 2]

1. Speed: the same training steps (same images, same architecture) for ``--speed-neurons``
   students at once, as one :class:`StackedCompact`, vs one by one, each student its own model
   (the faster of a plain :class:`CompactModel` and a stack of one). Twice: with independent
   students (``shared=0``: the same arithmetic either way) and with the shared trunk used below.
2. Teacher: the 33 published compact models of 190923 (``--teacher compact``, folded, labels in
   bfloat16, checked against float32), or a deep ensemble trained on the V4 data and saved by
   ``bench/real_v4_prediction.py --save PATH`` (``--teacher ensemble --ensemble PATH``: its
   predictions for session 190923, as ``cortexloop modelserver distill`` uses a server's version).
3. The pipeline of :func:`modelserver.compact.compress.compress`: a pool of unlabeled images (crops of
   the V4 images of the four training sessions, gaudy crops, noise) labelled by the teacher;
   students distilled batched; pruned filter by filter with the greedy accuracy-reduction index
   (RAR), deepest layer first, on half of the held-out pool images (layer 0 jointly while the
   trunk is shared) down to ``--min-r`` + ``--margin``; fine-tuned with their masks fixed.
   Prints each student's correlation with its teacher on the other half of the held-out images
   (used neither for training nor pruning) after each stage, and median filters before/after.
Teachers and data: Cowley, Stan, Pillow & Smith (2023), bioRxiv 2023.11.22.568315 (GPL-3.0).
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

from modelserver.compact.compress import (  # noqa: E402
    CompressConfig,
    Teacher,
    compress,
    format_report,
    progress_printer,
    write_compact_models,
)
from modelserver.compact.distill import StackedCompact, make_pool, teacher_targets  # noqa: E402
from modelserver.compact.model import CompactModel, find_compact_models, load_compact_model, preprocess  # noqa: E402
from modelserver.training.data import load_images  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble  # noqa: E402
from modelserver.training.metrics import pearson_r  # noqa: E402


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--teacher", choices=["compact", "ensemble"], default="compact",
                    help="the published compact models of 190923, or a saved ensemble (--ensemble)")
    ap.add_argument("--ensemble", type=Path, default=None,
                    help="ensemble state (bench/real_v4_prediction.py --save) for --teacher ensemble")
    ap.add_argument("--session", default="190923", help="the teacher session whose neurons get students")
    ap.add_argument("--neurons", type=int, default=33, help="at most this many of the session's neurons")
    ap.add_argument("--pool", type=int, default=23552, help="pool images for training (and validation)")
    ap.add_argument("--heldout", type=int, default=1024, help="pool images held out: half prune, half test")
    ap.add_argument("--filters", default="24,48,8,6,6")
    ap.add_argument("--shared", type=int, default=4,
                    help="leading units shared by the students (0 none, 1 layer 0, 2 +layer-1 depthwise, "
                         "3 +layer 1, 4 +layer-2 depthwise)")
    ap.add_argument("--readout-rank", type=int, default=2, help="rank of Beta while training (0: dense)")
    ap.add_argument("--epochs", type=int, default=100, help="at most; --train-minutes usually ends training")
    ap.add_argument("--train-minutes", type=float, default=20.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--speed-steps", type=int, default=2)
    ap.add_argument("--speed-neurons", type=int, default=30, help="0 skips the speed comparison")
    ap.add_argument("--tolerance", type=float, default=0.02, help="allowed drop of r while pruning")
    ap.add_argument("--min-r", type=float, default=0.9)
    ap.add_argument("--margin", type=float, default=0.01, help="pruning stops at min-r + margin on its images")
    ap.add_argument("--prune-layers", default="4,3,2,1,0")
    ap.add_argument("--prune-minutes", type=float, default=5.0, help="no new pruning round after this")
    ap.add_argument("--finetune-minutes", type=float, default=5.0, help="training of the pruned students")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--fp32-labels", action="store_true", help="compact teachers in float32 (default bfloat16)")
    ap.add_argument("--out", type=Path, default=None, help="write the students here (published layout)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "images").is_dir():
        sys.exit(f"no V4 data at {args.data} (see ../shared/data/v4/README.md)")
    cfg = CompressConfig(pool=args.pool, heldout=args.heldout, filters=tuple(int(v) for v in args.filters.split(",")),
                         shared=args.shared, readout_rank=args.readout_rank or None, train_minutes=args.train_minutes,
                         batch_size=args.batch_size, lr=args.lr, tolerance=args.tolerance, min_r=args.min_r,
                         margin=args.margin, prune_minutes=args.prune_minutes,
                         finetune_minutes=args.finetune_minutes, finetune_lr=args.finetune_lr, seed=args.seed,
                         epochs=args.epochs, prune_layers=tuple(int(v) for v in args.prune_layers.split(",")))
    t_start = time.monotonic()
    base = np.concatenate([load_images(args.data, s) for s in ("190925", "190927", "190928", "190929")])

    if args.speed_neurons > 0:
        pool = make_pool(base, max(256, args.speed_steps * args.batch_size), seed=args.seed)
        for sh in (0, args.shared):
            tb, ts, kind = speed(args.speed_neurons, cfg.filters, pool, args.speed_steps, args.batch_size, sh,
                                 cfg.readout_rank)
            print(f"speed (shared={sh}: {'independent students' if sh == 0 else 'shared trunk'}): "
                  f"{args.speed_steps} steps x {args.batch_size} images for {args.speed_neurons} students "
                  f"{args.filters}: batched {tb:.1f} s, one by one ({kind}) {ts:.1f} s -> speed-up {ts / tb:.1f}x "
                  f"({torch.get_num_threads()} CPU threads)", flush=True)

    teacher, what, teacher_filters = _teacher(args)
    print(f"teacher: {what}; students {args.filters}, shared={args.shared}; pool {cfg.pool} + {cfg.heldout} "
          f"held out (crops of {len(base)} images of the four training sessions, gaudy crops, noise)", flush=True)
    students, rep = compress(teacher, base, cfg, progress=progress_printer(lambda line: print(line, flush=True)))
    if args.out is not None:
        paths = write_compact_models(students, args.out, args.session, rep, overwrite=True)
        print(f"wrote {len(paths)} compact models and summary.json to {args.out}")
    print(f"labels: {rep.seconds['labels']:.0f} s for {cfg.pool + cfg.heldout} images "
          f"({1e3 * rep.seconds['labels'] / (cfg.pool + cfg.heldout):.1f} ms each); distilled {rep.steps['distill']} "
          f"steps in {rep.seconds['distill']:.0f} s; pruned (RAR on {cfg.prune_images} images, tolerance "
          f"{cfg.tolerance}, floor {cfg.min_r} + {cfg.margin}{', layer 0 jointly' if cfg.shared >= 3 else ''}"
          f"{'' if rep.prune_complete else ', stopped by its time budget'}) with {rep.steps['prune']} evaluations "
          f"in {rep.seconds['prune']:.0f} s; fine-tuned {rep.steps['finetune']} steps in "
          f"{rep.seconds['finetune']:.0f} s")
    print(format_report(rep))
    if teacher_filters is not None:
        print(f"teachers (published compact models): median filters {np.median(teacher_filters.sum(1)):.0f} "
              f"(per layer {np.median(teacher_filters, 0).astype(int).tolist()})")
    print(f"total {time.monotonic() - t_start:.0f} s")


def _teacher(args: argparse.Namespace) -> tuple[Teacher, str, np.ndarray | None]:
    """The labelling function, its description, and the teachers' filters (compact teachers only)."""
    if args.teacher == "ensemble":
        if args.ensemble is None:
            sys.exit("--teacher ensemble needs --ensemble PATH (bench/real_v4_prediction.py --save PATH)")
        ens = DeepEnsemble.from_state(torch.load(args.ensemble, map_location="cpu", weights_only=True))
        if args.session not in ens.session_neurons:
            sys.exit(f"the ensemble has no session {args.session} (it has {sorted(ens.session_neurons)})")
        n = min(args.neurons, ens.session_neurons[args.session])
        return ((lambda x: ens.predict(x, args.session)[:n]),
                f"deep ensemble {args.ensemble.name} ({ens.config.members} members), session {args.session}, "
                f"{n} neurons", None)
    teachers = [load_compact_model(p) for p in find_compact_models(args.data / "compact_models", args.session)]
    teachers = teachers[: args.neurons]
    if not teachers:
        sys.exit(f"no compact models of session {args.session} in {args.data / 'compact_models'}")
    bf16 = not args.fp32_labels
    probe = make_pool(load_images(args.data, args.session)[:64], 64, seed=1)
    if bf16:
        check = pearson_r(teacher_targets(teachers, probe, bfloat16=True), teacher_targets(teachers, probe))
        print(f"bfloat16 vs float32 labels on 64 images: r min {check.min():.5f}", flush=True)
    return ((lambda x: teacher_targets(teachers, x, bfloat16=bf16)),
            f"{len(teachers)} published compact models of {args.session} ({'bfloat16' if bf16 else 'float32'}, "
            f"folded)", np.array([t.filters for t in teachers]))


if __name__ == "__main__":
    main()
