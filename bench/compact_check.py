"""Saved compact students, reloaded from disk, against their ensemble teacher on images of a new source.

    .venv/bin/python bench/compact_check.py --ensemble ens.pt --models compact/ [--session 190923]
        [--source 190923] [--images 1024] [--data DIR]

The pool of :func:`modelserver.compact.distill.make_pool` (crops, gaudy crops, noise) is made from the
images of ``--source`` (by default the teacher session's own images, which the distillation pool of
``bench/distill_bench.py`` never draws from); prints the students' Pearson r with the ensemble.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.compact.distill import make_pool  # noqa: E402
from modelserver.compact.distill_teacher import teacher_targets  # noqa: E402
from modelserver.compact.model import find_compact_models, load_compact_model  # noqa: E402
from modelserver.training.data import load_images  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble  # noqa: E402
from modelserver.training.metrics import pearson_r  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--ensemble", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--session", default="190923")
    ap.add_argument("--source", default=None, help="session whose images make the pool (default: --session)")
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ens = DeepEnsemble.from_state(torch.load(args.ensemble, map_location="cpu", weights_only=True))
    paths = find_compact_models(args.models, args.session)
    if not paths:
        sys.exit(f"no compact models of session {args.session} in {args.models}")
    pool = make_pool(load_images(args.data, args.source or args.session), args.images, seed=args.seed)
    models = [load_compact_model(p) for p in paths]
    r = pearson_r(teacher_targets(models, pool), ens.predict(pool, args.session)[: len(models)])
    filters = np.array([m.filters for m in models]).sum(1)
    print(f"{len(models)} students vs the ensemble on {len(pool)} pool images made from {args.source or args.session}: "
          f"median r {np.median(r):.3f}, min {r.min():.3f}, >= 0.9: {(r >= 0.9).sum()}/{len(r)}; "
          f"median filters {np.median(filters):.0f}")


if __name__ == "__main__":
    main()
