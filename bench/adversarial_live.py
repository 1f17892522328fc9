"""Re-make a demo's adversarial images offline: same models, same base images, other settings.

Reads a demo output folder (``cortexloop demo --out DIR``): the adversarial session's adv+ / adv-
pick documents name, per image, the model version and session readout, the model neuron and the
base image. For each ``--variant JITTER:SCALE_JITTER`` (and each ``--readout``: the one the demo
matched, or another sysid session's) it makes the images again with
:func:`modelserver.generate.adversarial.adversarial` at the demo's budget and scores them on the
ground truth (the V4 compact models of the rig): per recorded neuron the percent change of the mean
rate over its images against their base images, printed per neuron, as the mean over neurons and
as the share moved in the intended direction. The first line scores the images the demo showed.

    .venv/bin/python bench/adversarial_live.py /tmp/d07b --neurons 0-7 \\
        --variant 0:0 8:0.15 --readout matched demo-sysid-1 demo-sysid-3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.demo_scoring import _base_of, _Block
from modelserver.generate.adversarial import adversarial
from modelserver.generate.context import EnsembleView
from modelserver.serving.versions import load_version
from virtualrig.rates import CompactModelRates, evenly_spaced, load_image_zip

SESSION = "190923"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path, help="the demo's output folder")
    ap.add_argument("--neurons", default="0-7", help="the demo's --neurons (first-last)")
    ap.add_argument("--v4", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "v4")
    ap.add_argument("--variant", nargs="+", default=["0:0", "8:0.15"], metavar="JITTER:SCALE_JITTER")
    ap.add_argument("--readout", nargs="+", default=["matched"],
                    help="model session readouts to attack through ('matched': the demo's)")
    ap.add_argument("--epsilon", type=float, default=12.0, help="the demo's L2 budget (0..1 pixel units)")
    ap.add_argument("--max-abs", type=float, default=48.0)
    ap.add_argument("--blur", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.neurons.split("-"))
    gt = CompactModelRates(args.v4 / "compact_models", session=SESSION, neurons=list(range(lo, hi + 1)),
                           reference=evenly_spaced(load_image_zip(args.v4 / "images" / f"images_{SESSION}.zip"), 120))
    block = _Block(args.demo / "demo-adversarial-1.h5", "adversarial-test")
    for direction, sign in (("+", 1.0), ("-", -1.0)):
        rec, model_neurons, bases, shown, model = [], [], [], [], ""
        for j, ids in sorted(block.neurons(f"adv{direction}").items()):
            for i in ids:
                pick = block.picks[i]
                base = _base_of(pick)
                assert base is not None and pick.neuron is not None
                rec.append(j)
                model_neurons.append(pick.neuron)
                bases.append(block.images[base])
                shown.append(block.images[i])
                model = str(pick.details["model"])
        targets, base_u8 = np.asarray(rec), np.stack(bases)
        r0 = gt.rates(base_u8)[np.arange(len(targets)), targets]

        def score(images: np.ndarray, targets: np.ndarray = targets, r0: np.ndarray = r0, sign: float = sign) -> str:
            r1 = gt.rates(images)[np.arange(len(targets)), targets]
            per = np.array([100 * (r1[targets == j].mean() / r0[targets == j].mean() - 1)
                            for j in sorted(set(targets.tolist()))])
            share = np.mean(np.sign(per) == sign)
            return f"{per.mean():+6.1f}% {share:4.0%}   " + " ".join(f"{v:+4.0f}" for v in per)
        version, _, matched = model.rpartition("/")
        ens = load_version(args.demo / "modelserver" / "versions", version)
        print(f"adv{direction}: model {model}; {len(targets)} images; per neuron {lo}..{hi} in % change")
        print(f"  {'shown in the demo':34s} {score(np.stack(shown))}", flush=True)
        for readout in args.readout:
            session = matched if readout == "matched" else readout
            for variant in args.variant:
                jitter, scale = variant.split(":")
                t0 = time.perf_counter()
                gen = adversarial(EnsembleView(ens, session), base_u8, model_neurons, direction,  # type: ignore[arg-type]
                                  max_abs=args.max_abs, max_l2=args.epsilon * 255.0, steps=args.steps,
                                  blur=args.blur, jitter=int(jitter), scale_jitter=float(scale), seed=0)
                label = f"{session} jitter {jitter} scale {scale}"
                print(f"  {label:34s} {score(gen.images)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("paper, real V4 (Cowley et al. 2023): adv+ +84%, adv- -33%")


if __name__ == "__main__":
    main()
