"""Predicting real V4 responses on a held-out session: deep ensemble vs Gabor vs compact models.

    .venv/bin/python bench/real_v4_prediction.py [--data DIR] [--train 190925,190927,190928,190929]
        [--test 190923] [--raw-session 210325] [--time-budget 780] [--device cpu]

The ensemble trains on the training sessions plus a readout fitted on half of the test
session's images (jointly), and predicts the other half. Baselines: ridge regression on a fixed
Gabor-energy front end, and the published compact models of the test session (Cowley et al.
2023; they saw half of these images when fitted, so they are an upper reference). Then the
ensemble's frozen core gets a readout fitted on part of the raw-repeat session, and the
unbiased noise-corrected R2 (r2_ER) is computed on the rest. One line per model is printed.
Data: Cowley, Stan, Pillow & Smith (2023), bioRxiv 2023.11.22.568315 (GPL-3.0).
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

from modelserver.compact.model import find_compact_models, load_compact_model, preprocess  # noqa: E402
from modelserver.training.data import load_images, load_responses_avg, load_responses_raw  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig  # noqa: E402
from modelserver.training.gabor import gabor_features  # noqa: E402
from modelserver.training.metrics import explainable_variance, pearson_r, r2_er  # noqa: E402
from modelserver.training.readouts import fit_ridge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--train", default="190925,190927,190928,190929")
    ap.add_argument("--test", default="190923")
    ap.add_argument("--raw-session", default="210325")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=56)
    ap.add_argument("--strides", default="1,2,1", help="strides of the separable blocks")
    ap.add_argument("--first-stride", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--frontend", choices=["pixels", "gabor"], default="gabor",
                    help="gabor: fixed V1-like channels (+ colour) at 28x28 as the trainable core's input")
    ap.add_argument("--first-kernel", type=int, default=3)
    ap.add_argument("--save", type=Path, default=None, help="write the trained ensemble here (weights only)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loss", choices=["poisson", "gaussian"], default="poisson")
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--time-budget", type=float, default=600.0, help="seconds of ensemble training")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest when other jobs share the 2 cores)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-compact", action="store_true")
    ap.add_argument("--skip-raw", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    if not (args.data / "responses_avg").is_dir():
        sys.exit(f"no V4 data at {args.data} (see ../shared/data/v4/README.md)")

    train = {s: (load_images(args.data, s), load_responses_avg(args.data, s).T) for s in args.train.split(",")}
    test_images = load_images(args.data, args.test)
    test_resp = load_responses_avg(args.data, args.test)  # (N, K)
    order = np.random.default_rng(args.seed).permutation(len(test_images))
    fit_i, eval_i = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    print(f"data loaded in {time.monotonic() - t_start:.0f} s; test session {args.test}: "
          f"{len(fit_i)} images for its readout, {len(eval_i)} held out", flush=True)

    # --- deep ensemble -----------------------------------------------------------------
    cfg = EnsembleConfig(members=args.members, channels=args.channels, input_size=args.input_size,
                         strides=tuple(int(v) for v in args.strides.split(",")), first_stride=args.first_stride,
                         lr=args.lr, batch_size=args.batch_size, frontend=args.frontend,
                         first_kernel=args.first_kernel,
                         loss=args.loss, max_epochs=args.max_epochs, time_budget_s=args.time_budget, seed=args.seed)
    ens = DeepEnsemble(cfg).to(args.device)
    data = dict(train)
    data[args.test] = (test_images[fit_i], test_resp[:, fit_i].T)
    t0 = time.monotonic()
    rep = ens.fit(data, progress=lambda i: print(
        f"  epoch {int(i['epoch'])}: loss {i['train_loss']:.3f} val r {i['val_r']:.3f} ({i['seconds']:.0f} s)",
        flush=True))
    t_ens = time.monotonic() - t0
    if args.save is not None:
        torch.save(ens.export_state(), args.save)
    pred = ens.predict(test_images[eval_i], args.test)
    r_ens = pearson_r(pred, test_resp[:, eval_i])
    member_preds = ens.predict(test_images[eval_i], args.test, members=True)
    r_members = [float(np.nanmedian(pearson_r(p, test_resp[:, eval_i]))) for p in member_preds]

    # --- Gabor-energy + ridge ------------------------------------------------------------
    t0 = time.monotonic()
    gf = gabor_features(test_images)
    inner = np.random.default_rng(args.seed + 1).permutation(fit_i)
    tr, va = inner[: int(0.8 * len(inner))], inner[int(0.8 * len(inner)):]
    _, _, alpha = fit_ridge(gf[tr], test_resp[:, tr].T, gf[va], test_resp[:, va].T)
    w, b, _ = fit_ridge(gf[fit_i], test_resp[:, fit_i].T, gf[va], test_resp[:, va].T, alphas=[alpha])
    r_gabor = pearson_r((gf[eval_i] @ w + b).T, test_resp[:, eval_i])
    t_gabor = time.monotonic() - t0

    print(f"ensemble ({cfg.members} members x {cfg.channels} ch, {cfg.input_size} px, {cfg.frontend}, {cfg.loss}): "
          f"median r = {np.nanmedian(r_ens):.3f} on {len(eval_i)} held-out images of {args.test} "
          f"(members {', '.join(f'{r:.3f}' for r in r_members)}; {rep.epochs} epochs, {t_ens:.0f} s, {rep.stopped})")
    print(f"gabor-energy + ridge: median r = {np.nanmedian(r_gabor):.3f} ({t_gabor:.0f} s)")

    # --- published compact models ------------------------------------------------------------
    if not args.skip_compact:
        t0 = time.monotonic()
        paths = find_compact_models(args.data / "compact_models", args.test)
        x = preprocess(test_images[eval_i]).contiguous(memory_format=torch.channels_last)  # faster depthwise
        r_c = []
        with torch.no_grad():
            for path in paths:
                k = int(path.name.split("neuron")[1].split(".")[0])
                m = load_compact_model(path)
                out = torch.cat([m(x[i:i + 200]) for i in range(0, len(x), 200)]).numpy()
                r_c.append(float(pearson_r(out, test_resp[k, eval_i])[0]))
        print(f"compact models (published, upper reference): median r = {np.nanmedian(r_c):.3f} "
              f"({len(r_c)} neurons, {time.monotonic() - t0:.0f} s)")

    # --- noise-corrected R2 on the raw-repeat session ------------------------------------------
    if not args.skip_raw:
        t0 = time.monotonic()
        raw = load_responses_raw(args.data, args.raw_session)  # (N, K, R)
        imgs = load_images(args.data, args.raw_session)
        avg = np.nanmean(raw, -1)
        o = np.random.default_rng(args.seed + 2).permutation(len(imgs))
        fi, ei = np.sort(o[: int(0.6 * len(o))]), np.sort(o[int(0.6 * len(o)):])
        ens.fit_readout(args.raw_session, imgs[fi], avg[:, fi].T, kind="factorized", max_epochs=60,
                        patience=6, time_budget_s=None)
        p = ens.predict(imgs[ei], args.raw_session)
        r2 = r2_er(p, raw[:, ei])
        rr = pearson_r(p, avg[:, ei])
        fev = explainable_variance(raw[:, ei])
        print(f"ensemble on {args.raw_session} (frozen core, readout on {len(fi)} images, {len(ei)} held out): "
              f"median r2_ER = {np.nanmedian(r2):.3f}, median r = {np.nanmedian(rr):.3f}, "
              f"median explainable variance = {np.nanmedian(fev):.3f} ({time.monotonic() - t0:.0f} s)")
    print(f"total {time.monotonic() - t_start:.0f} s on {torch.get_num_threads()} threads ({args.device})")


if __name__ == "__main__":
    main()
