"""Cross-check of maximizing and synthesized images that is not self-fulfilling (prints a table).

Virtual neurons = the real V4 compact models of Cowley et al. (2023) (ground truth, GT);
their recorded responses = Poisson counts (rate softplus(GT output), averaged over
``--repeats``) on V4 session images. A model fitted ONLY to those counts (``--fit cnn``: a
small CNN trained with the Poisson loss; ``--fit ridge``: ridge on random conv features)
picks the top-k images of a pool of natural crops and synthesizes images from noise; GT
rates on those images are compared with GT rates on randomly chosen pool images (mean
percent change per neuron), next to the paper's real-V4 figures.

    .venv/bin/python bench/generate_crosscheck.py [--neurons 8] [--train 2400] [--pool 400]
        [--repeats 4] [--fit cnn] [--epochs 30] [--steps 80]
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

from modelserver.generate.crosscheck import cross_check, format_table  # noqa: E402
from modelserver.generate.models import CompactStack  # noqa: E402
from modelserver.generate.pool import natural_crops, package_sample_images, v4_images  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", type=int, default=8)
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--fit", choices=("cnn", "ridge"), default="cnn")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.v4 / "compact_models").is_dir():
        sys.exit(f"real V4 data not found at {args.v4}")
    t0 = time.perf_counter()
    gt = CompactStack.from_folder(args.v4 / "compact_models", neurons=range(args.neurons))
    train = np.stack(list(v4_images(args.v4, sessions=["190925", "190928"], limit=args.train)))
    sources = list(v4_images(args.v4, sessions=["190927"], limit=300)) + package_sample_images()
    pool = np.concatenate(list(natural_crops(sources, args.pool, seed=args.seed + 1)))
    rows = cross_check(gt, gt.names, train, pool, k=args.k, repeats=args.repeats, synth_steps=args.steps,
                       fit=args.fit, epochs=args.epochs, seed=args.seed)
    print(f"fit={args.fit} on {len(train)} images x {args.repeats} Poisson repeats; pool of {len(pool)} crops "
          f"(V4 session 190927 + package images), top-{args.k}; synthesized: 2 per neuron, {args.steps} steps; "
          f"torch {torch.__version__} CPU; {time.perf_counter() - t0:.0f} s")
    print("percent change of the ground-truth rate over 200 random pool images (oracle: picked by GT itself)")
    print(format_table(rows))


if __name__ == "__main__":
    main()
