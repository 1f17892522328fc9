"""Offline causal benchmark: do the model's maximizing natural and synthesized images drive the ground truth?

The closed-loop demo's maximize test without the loop. Ground truth (GT): 8 real V4 compact
models (Cowley et al. 2023) of session 190923, scaled to spike rates as the virtual rig does
(calibrated on 120 evenly spaced session images: 1st percentile -> 2, 99th -> 60 spikes/s).
Recorded responses: one Poisson count per image in the 100 ms window (rate x 0.1 s) on
``--train`` random V4 images plus gaudy versions of a quarter as many (the demo's sysid mix).
The model: the modelserver's deep ensemble (:mod:`modelserver.training.ensemble`, the CPU demo's 3
members), trained on those counts. Per neuron, the ensemble picks the top ``--k`` images of a
pool of ``--pool`` natural crops (``maximize``) and synthesizes ``--k`` images
(:mod:`modelserver.generate.synthesize`, one run per ``--variant``); everything is scored on
the GT rates and reported as the mean over neurons of the percent change over ``--random``
randomly chosen V4 images, with the ensemble's median r against GT on 200 held-out images.

    .venv/bin/python bench/causal_bench.py --neurons 0-7 8-15 16-23 [--seed 0] [--steps 60]
        [--variant plain default] [--set jitter=2 --set spread_weight=0.5]

Variants: ``plain`` is the synthesis before issue 16 (no ensemble agreement, no jitter),
``default`` the current :class:`SynthesisConfig` defaults, ``pool`` the defaults started from
each neuron's top pool images, ``poolstart`` the settings the modelserver uses from the pool
(``wire.generate.POOL_START_SYNTHESIS``: a contrast phase, then pixel steps), ``poolpixels`` the
same without the contrast phase; ``--set`` overrides a setting in every variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.generate.context import EnsembleView  # noqa: E402
from modelserver.generate.pool import gaudy, natural_crops, package_sample_images, responses_of  # noqa: E402
from modelserver.generate.synthesize import SynthesisConfig, synthesize  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig  # noqa: E402
from virtualrig.rates import CompactModelRates, evenly_spaced, load_image_zip  # noqa: E402
from wire.generate import POOL_START_SYNTHESIS  # noqa: E402

SESSION = "190923"
WINDOW_S = 0.1
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"spread_weight": 0.0, "jitter": 0, "scale_jitter": 0.0},
    "default": {},
    "pool": {},  # the defaults, started from the top pool images
    "poolstart": dict(POOL_START_SYNTHESIS),  # what the modelserver runs from the pool (wire.generate)
    "poolpixels": {**POOL_START_SYNTHESIS, "max_contrast": 1.0},  # the same without the contrast phase
}


def neuron_set(text: str) -> list[int]:
    """``"8-15"`` -> [8, ..., 15]; ``"1,4,9"`` -> [1, 4, 9]."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def library(v4: Path) -> np.ndarray:
    """All V4 session images (the demo's image library), uint8 (N, 112, 112, 3)."""
    zips = sorted((v4 / "images").glob("images_*.zip"))
    return np.concatenate([load_image_zip(z) for z in zips])


def percent_change(rates: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Per neuron j: 100 x (mean GT rate of neuron j's own ``k`` images / mean over random images - 1)."""
    own = rates.reshape(len(base), k, -1)[np.arange(len(base)), :, np.arange(len(base))]  # (neurons, k)
    return 100.0 * (own.mean(1) / base - 1.0)


def recorded_model(neurons: list[int], args: argparse.Namespace, lib: np.ndarray, pool: np.ndarray,
                   gt: CompactModelRates) -> dict[str, Any]:
    """Train the ensemble on Poisson counts and pick natural images; cached in ``--cache`` (the slow part)."""
    key = f"{SESSION}_{neurons[0]}-{neurons[-1]}_s{args.seed}_t{args.train}_e{args.epochs}_m{args.members}_p{args.pool}"
    path = args.cache / f"{key}.pt" if args.cache else None
    if path is not None and path.exists():  # our own file: tensors and numbers only
        return dict(torch.load(path, weights_only=True))
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(lib))
    held, rand = order[:args.heldout], order[args.heldout:args.heldout + args.random]
    train_idx = order[args.heldout + args.random:args.heldout + args.random + args.train]
    train = np.concatenate([lib[train_idx], gaudy(lib[train_idx[:args.train // 4]])])
    counts = rng.poisson(gt.rates(train) * WINDOW_S).astype(np.float64)
    ens = DeepEnsemble(EnsembleConfig(members=args.members, max_epochs=args.epochs, seed=args.seed))
    fit = ens.fit({"bench": (train, counts)})
    pred = ens.predict(lib[held], "bench").T
    truth = gt.rates(lib[held])
    r = [float(np.corrcoef(pred[:, j], truth[:, j])[0, 1]) for j in range(len(neurons))]
    scores = responses_of(EnsembleView(ens, "bench"), pool)
    top = np.argsort(-scores, axis=0, kind="stable")[:args.k].T  # (neurons, k)
    base = gt.rates(lib[rand]).mean(0)
    natural = percent_change(gt.rates(pool[top.reshape(-1)]), base, args.k)
    out = {"state": ens.export_state(), "median_r": float(np.median(r)), "epochs": fit.epochs,
           "top": torch.as_tensor(top), "base": torch.as_tensor(base), "natural": float(natural.mean()),
           "fit_s": time.perf_counter() - t0}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def run_set(neurons: list[int], args: argparse.Namespace, lib: np.ndarray, pool: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    gt = CompactModelRates(args.v4 / "compact_models", session=SESSION, neurons=neurons,
                           reference=evenly_spaced(load_image_zip(args.v4 / "images" / f"images_{SESSION}.zip"), 120))
    rec = recorded_model(neurons, args, lib, pool, gt)
    ens = DeepEnsemble.from_state(rec["state"])
    mean_view, members_view = EnsembleView(ens, "bench"), EnsembleView(ens, "bench", members=True)
    top, base = rec["top"].numpy(), rec["base"].numpy()
    row: dict[str, Any] = {"neurons": f"{neurons[0]}-{neurons[-1]}", "median_r": rec["median_r"],
                           "natural": rec["natural"], "fit_s": rec["fit_s"], "synth": {}, "synth_s": {}}
    for name in args.variant:
        settings = {**VARIANTS[name], **args.overrides, "steps": args.steps}
        cfg = dataclasses.replace(SynthesisConfig(), **settings)
        init = pool[top.reshape(-1)] if name.startswith("pool") else None
        model = members_view if cfg.spread_weight > 0 else mean_view
        ts = time.perf_counter()
        gen = synthesize(model, list(range(len(neurons))), per_neuron=args.k, seed=args.seed, config=cfg,
                         init_images=init)
        row["synth_s"][name] = time.perf_counter() - ts
        row["synth"][name] = float(percent_change(gt.rates(gen.images), base, args.k).mean())
    row["total_s"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", nargs="+", default=["0-7"], help="neuron sets, e.g. 0-7 8-15 16-23")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=460, help="normal training images (+ a quarter as many gaudy)")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--pool", type=int, default=1500, help="natural crops in the maximize pool (the demo's)")
    ap.add_argument("--k", type=int, default=3, help="images per neuron and kind (the demo's max_per_neuron)")
    ap.add_argument("--random", type=int, default=30, help="random natural images (the demo's max_random)")
    ap.add_argument("--steps", type=int, default=60, help="synthesis steps (the demo's synth_steps)")
    ap.add_argument("--variant", nargs="+", default=["plain", "default"], choices=sorted(VARIANTS))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a SynthesisConfig setting in every variant")
    ap.add_argument("--heldout", type=int, default=100, help="held-out V4 images for the model's r against GT")
    ap.add_argument("--cache", type=Path, default=None,
                    help="folder keeping each set's trained ensemble and picks (reruns only synthesize)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (args.v4 / "compact_models").is_dir():
        sys.exit(f"real V4 data not found at {args.v4}")
    torch.set_num_threads(args.threads)
    args.overrides = {k: parse_value(v) for k, _, v in (s.partition("=") for s in args.sets)}
    t0 = time.perf_counter()
    lib = library(args.v4)
    pool = np.concatenate(list(natural_crops(list(lib) + package_sample_images(), args.pool, seed=args.seed + 1)))
    print(f"library {len(lib)} V4 images, pool {len(pool)} crops; train {args.train} + {args.train // 4} gaudy, "
          f"{args.members} members x {args.epochs} epochs; k={args.k}, {args.random} random, synthesis "
          f"{args.steps} steps {args.overrides or ''}; seed {args.seed}; torch {torch.__version__}, "
          f"{args.threads} threads")
    head = f"{'neurons':>8} {'r':>5} {'natural':>8} " + " ".join(f"{'syn:' + v:>13}" for v in args.variant)
    print(head + f" {'fit s':>6} " + " ".join(f"{'s:' + v:>9}" for v in args.variant))
    for text in args.neurons:
        row = run_set(neuron_set(text), args, lib, pool)
        print(f"{row['neurons']:>8} {row['median_r']:>5.2f} {row['natural']:>+7.0f}% "
              + " ".join(f"{row['synth'][v]:>+12.0f}%" for v in args.variant)
              + f" {row['fit_s']:>6.0f} "
              + " ".join(f"{row['synth_s'][v]:>9.1f}" for v in args.variant), flush=True)
    print(f"paper, real V4 (Cowley et al. 2023): natural +137%, synthesized +153%; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
