"""Offline adversarial benchmark: do the model's adv+ / adv- images move the ground truth?

The demo's adversarial test without the loop, on the same trained ensembles as
``bench/causal_bench.py`` (same ground truth, same recorded counts; share its ``--cache``).
Per neuron, ``--k`` random V4 images are the base images (with ``--candidates C --rank R``: the
``k`` images the ensemble ranks R .. R+k-1 among C random ones, as the protocol's ``bases:
driving`` does with C = 8k, R = 2k); each is perturbed to raise (adv+) and
to lower (adv-) the ensemble's prediction for that neuron
(:func:`modelserver.generate.adversarial.adversarial`), for every ``--budget``
``EPSILON:MAX_ABS:BLUR`` (L2 in 0..1 pixel units, largest pixel change 0..255, gradient blur in
pixels; blur 0 is signed-gradient PGD). Scored on the ground-truth rates: per neuron the percent
change of the mean over its adversarial images against the mean over their base images; printed
as the mean over neurons and the fraction of neurons moved in the intended direction.

    .venv/bin/python bench/adversarial_bench.py --neurons 0-7 8-15 16-23 --cache /tmp/causal_cache \\
        --budget 2:8:0 8:32:0 8:32:2 [--candidates 24 --rank 6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from causal_bench import REPO, SESSION, library, neuron_set, recorded_model

from modelserver.generate.adversarial import adversarial
from modelserver.generate.context import EnsembleView
from modelserver.generate.pool import natural_crops, package_sample_images
from modelserver.training.ensemble import DeepEnsemble
from virtualrig.rates import CompactModelRates, evenly_spaced, load_image_zip


def own_rates(gt: CompactModelRates, images: np.ndarray, targets: list[int], k: int) -> np.ndarray:
    """(neurons,) mean GT rate of each neuron over its own ``k`` images."""
    return gt.rates(images)[np.arange(len(targets)), targets].reshape(-1, k).mean(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", nargs="+", default=["0-7"])
    ap.add_argument("--budget", nargs="+", default=["2:8:0", "8:32:0", "8:32:2"], metavar="EPS:MAX_ABS:BLUR")
    ap.add_argument("--k", type=int, default=3, help="base images per neuron (the demo's n_per_neuron)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=0,
                    help="base images: each neuron's k images from rank --rank of this many random images "
                         "by the model (0: random images)")
    ap.add_argument("--rank", type=int, default=0, help="with --candidates: the first base image's rank (0: best)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="causal_bench's cache of trained ensembles")
    ap.add_argument("--threads", type=int, default=2)
    # the trained model's settings: causal_bench's defaults (its cache key)
    ap.add_argument("--train", type=int, default=460)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1500)
    ap.add_argument("--random", type=int, default=30)
    ap.add_argument("--heldout", type=int, default=100)
    args = ap.parse_args()
    if not (args.v4 / "compact_models").is_dir():
        sys.exit(f"real V4 data not found at {args.v4}")
    torch.set_num_threads(args.threads)
    budgets = [tuple(float(v) for v in b.split(":")) for b in args.budget]
    lib = library(args.v4)
    pool = np.concatenate(list(natural_crops(list(lib) + package_sample_images(), args.pool, seed=args.seed + 1)))
    print(f"{args.k} random base images per neuron, {args.steps} steps; ensemble as in causal_bench "
          f"(train {args.train}, {args.members} members x {args.epochs} epochs); torch {torch.__version__}")
    print(f"{'neurons':>8} {'eps':>4} {'max_abs':>7} {'blur':>4}  {'adv+':>7} {'moved':>5}  {'adv-':>7} {'moved':>5}  {'s':>4}")
    for text in args.neurons:
        neurons = neuron_set(text)
        gt = CompactModelRates(args.v4 / "compact_models", session=SESSION, neurons=neurons,
                               reference=evenly_spaced(load_image_zip(args.v4 / "images" / f"images_{SESSION}.zip"), 120))
        ens = DeepEnsemble.from_state(recorded_model(neurons, args, lib, pool, gt)["state"])
        rng = np.random.default_rng(args.seed + 5)
        targets = [j for j in range(len(neurons)) for _ in range(args.k)]
        if args.candidates:  # each neuron's k best of `candidates` random images, by the model
            cand = lib[rng.choice(len(lib), args.candidates, replace=False)]
            pred = ens.predict(cand, "bench")  # (neurons, candidates)
            order = np.argsort(-pred, axis=1, kind="stable")[:, args.rank:args.rank + args.k]
            base = cand[order.reshape(-1)]
        else:
            base = lib[rng.choice(len(lib), len(neurons) * args.k, replace=False)]
        before = own_rates(gt, base, targets, args.k)
        for eps, max_abs, blur in budgets:
            t0 = time.perf_counter()
            cells = []
            for direction in ("+", "-"):
                gen = adversarial(EnsembleView(ens, "bench"), base, targets, direction, max_abs=max_abs,
                                  max_l2=eps * 255.0, steps=args.steps, blur=blur)
                change = 100.0 * (own_rates(gt, gen.images, targets, args.k) / before - 1.0)
                moved = np.mean(change > 0) if direction == "+" else np.mean(change < 0)
                cells.append(f"{change.mean():>+6.1f}% {moved:>5.0%}")
            print(f"{text:>8} {eps:>4g} {max_abs:>7g} {blur:>4g}  {'  '.join(cells)}  {time.perf_counter() - t0:>4.0f}",
                  flush=True)
    print("paper, real V4 (Cowley et al. 2023): adv+ +84%, adv- -33%")


if __name__ == "__main__":
    main()
