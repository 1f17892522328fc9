"""The modelserver's heavy work on one device, each figure next to its compute floor.

Measures, on ``--device`` (default: a GPU when there is one):

* pool scoring: a pool file streamed through the ensemble (``maximize_pool``: HDF5 reads, transfer,
  forward), images/s and the time for 500,000 images extrapolated;
* ensemble training at Cowley scale (``--neurons`` 100, ``--train-images`` 2,000 new images per block);
* synthesis, ``--synth-images`` x ``--synth-steps`` (1,000 x 1,000 on a GPU), extrapolated to
  1,000 x 1,000 where fewer are run;
* the block-to-block turnaround of a real session with prefetch (``bench/turnaround_bench.py``'s
  ``prefetch`` variant: modelserver, stimserver and virtual rig processes), unless ``--no-turnaround``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the real model (forward, and
forward + backward for training and synthesis); the floor is FLOPs / peak FLOP/s. The peak is the
dense bf16 tensor-core figure of the GPU's data sheet for H100/H200/A100 (bf16 is what ``--autocast``
uses; float32 runs cannot reach it), else the measured throughput of a large matmul. Usage:

    .venv/bin/python bench/gpu_bench.py                # one GPU: under 8 minutes
    .venv/bin/python bench/gpu_bench.py --quick        # smaller, on the CPU (minutes on 2 cores)
        [--device cuda:1] [--autocast] [--frontend resnet50 --weights resnet50.pth --layer layer3]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.compact.model import preprocess  # noqa: E402
from modelserver.generate.context import EnsembleView  # noqa: E402
from modelserver.generate.maximize import maximize_pool  # noqa: E402
from modelserver.generate.pool import ImagePool, PoolWriter  # noqa: E402
from modelserver.generate.synthesize import SynthesisConfig, synthesize  # noqa: E402
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig  # noqa: E402

#: dense bf16 tensor-core peak FLOP/s (data sheets, SXM parts; no sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
POOL_TARGET, SYNTH_TARGET = 500_000, (1000, 1000)


def peak_flops(device: torch.device, quick: bool) -> tuple[float, str]:
    """The device's peak: the data-sheet table for known GPUs, else a measured matmul."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_BF16.items():
            if key in name:
                return peak, f"{name}: {peak / 1e12:.0f} TFLOP/s dense bf16 (data sheet)"
    n = 2048 if quick else 8192
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    peak = 0.0
    for _ in range(6):  # the best of a few trials (other processes may share the device)
        _sync(device)
        t0, reps = time.perf_counter(), 0
        while reps < 3 or time.perf_counter() - t0 < 0.3:
            a @ b
            reps += 1
        _sync(device)
        peak = max(peak, 2 * n**3 * reps / (time.perf_counter() - t0))
    return peak, f"measured {n}x{n} {str(dtype)[6:]} matmul, best of 6: {peak / 1e12:.3f} TFLOP/s"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def pixel_grad_flops(ens: DeepEnsemble, view: EnsembleView, x: torch.Tensor) -> float:
    """FLOPs of one forward + backward to the pixels only (as synthesis runs it: no weight gradients)."""
    params = [p for p in ens.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    try:
        return count_flops(lambda: view(xg).sum().backward())
    finally:
        for p in params:
            p.requires_grad_(True)


def timed(device: torch.device, fn: Callable[[], object]) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def row(name: str, seconds: float, floor: float, extra: str = "") -> str:
    return f"{name:<44}{seconds:>11.2f} s{floor:>12.3f} s{seconds / max(floor, 1e-12):>9.1f}x  {extra}"


def random_images(n: int, seed: int, size: int = 112) -> np.ndarray:
    """Smooth random colour images (low-frequency noise), uint8 (n, size, size, 3)."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 3, 8, 8)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size), mode="bicubic")
    return up.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run(a: argparse.Namespace) -> None:
    device = torch.device(a.device)
    peak, peak_note = peak_flops(device, a.quick)
    cfg = EnsembleConfig(members=a.members, max_epochs=a.epochs, patience=a.epochs, batch_size=a.batch_size,
                         frontend=a.frontend, weights=a.weights, layer=a.layer, autocast=a.autocast,
                         input_size=a.input_size or (224 if a.frontend == "resnet50" else 56))
    print(f"gpu bench on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{torch.get_num_threads()} threads); peak {peak_note}")
    print(f"ensemble: {cfg.members} members x {cfg.channels} ch, {cfg.frontend}, input {cfg.input_size}, "
          f"autocast {cfg.autocast}; {a.neurons} neurons\n")
    print(f"{'':<44}{'measured':>13}{'floor':>14}{'ratio':>10}")
    rng = np.random.default_rng(0)

    # --- training at Cowley scale ---
    imgs = random_images(a.train_images, 1)
    resp = rng.poisson(2.0, (a.train_images, a.neurons)).astype(np.float64)
    ens = DeepEnsemble(cfg).to(device)
    t_train = timed(device, lambda: ens.fit({"s": (imgs, resp)}))
    x = ens.inputs(imgs[:a.batch_size])
    ens.train()
    step_flops = count_flops(lambda: ens._member_loss(ens(x, "s"), torch.zeros(len(x), a.neurons, device=device))
                             .sum().backward())
    ens.eval()
    train_floor = step_flops / len(x) * a.train_images * (1 - cfg.val_fraction) * a.epochs / peak
    print(row(f"train: {a.train_images} images x {a.epochs} epochs", t_train, train_floor,
              f"{step_flops / len(x) / 1e9:.3f} GFLOP/image fwd+bwd"))

    # --- pool scoring ---
    view = EnsembleView(ens, "s")
    probe = preprocess(random_images(8, 2), device=device)
    fwd = count_flops(lambda: view(probe)) / len(probe)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        path = Path(tmp) / "pool.h5"
        with PoolWriter(path, chunk_rows=256) as w:
            for s in range(0, a.pool_images, 2048):
                w.append(random_images(min(2048, a.pool_images - s), 100 + s))
        with ImagePool(path) as pool:
            maximize_pool(view, pool, [0], 1, batch_size=a.score_batch, device=device)  # warm-up
            t_pool = timed(device, lambda: maximize_pool(view, pool, list(range(a.neurons)), 1,
                                                         batch_size=a.score_batch, device=device))
    rate = a.pool_images / t_pool
    print(row(f"pool scoring: {a.pool_images} images", t_pool, fwd * a.pool_images / peak,
              f"{rate:,.0f} images/s; {fwd / 1e9:.3f} GFLOP/image"))
    print(row("pool scoring: 500,000 images (extrapolated)", POOL_TARGET / rate, fwd * POOL_TARGET / peak))

    # --- synthesis ---
    n_img, n_steps = a.synth_images, a.synth_steps
    neurons = [i % a.neurons for i in range(n_img)]
    syn_cfg = SynthesisConfig(steps=n_steps)
    synthesize(view, neurons[:2], config=dataclasses.replace(syn_cfg, steps=2), device=device)  # warm-up
    probe_steps = min(n_steps, 10)
    t_probe = timed(device, lambda: synthesize(view, neurons, config=dataclasses.replace(syn_cfg, steps=probe_steps),
                                               device=device))
    if t_probe / probe_steps * n_steps > a.synth_budget_s:  # keep the whole bench within its time
        n_steps = max(probe_steps, int(a.synth_budget_s * probe_steps / t_probe))
        syn_cfg = dataclasses.replace(syn_cfg, steps=n_steps)
    t_syn = timed(device, lambda: synthesize(view, neurons, config=syn_cfg, device=device))
    step = pixel_grad_flops(ens, view, probe) / len(probe)
    print(row(f"synthesis: {n_img} images x {n_steps} steps", t_syn, step * n_img * n_steps / peak,
              f"{step / 1e9:.3f} GFLOP/image-step"))
    if (n_img, n_steps) != SYNTH_TARGET:
        total = SYNTH_TARGET[0] * SYNTH_TARGET[1]
        print(row("synthesis: 1,000 x 1,000 steps (extrapolated)", t_syn / (n_img * n_steps) * total,
                  step * total / peak, "linear in images x steps"))

    # --- turnaround of a real session with prefetch ---
    if a.turnaround:
        from bench.turnaround_bench import Options, child_threads, run_bench

        opts = Options(blocks=a.blocks, images=a.block_images, picks=a.picks, neurons=8, device=str(device),
                       data=None, members=a.members, epochs=a.block_epochs, pool_crops=a.pool_crops, frames=1,
                       threads=torch.get_num_threads())
        with child_threads(opts.threads), tempfile.TemporaryDirectory(prefix="gpu-bench-turn-") as tmp:
            res = asyncio.run(run_bench(opts, Path(tmp)))
        med = res["variants"]["prefetch"]["median"]
        seq = res["variants"]["sequential"]["median"]
        n_train = a.blocks * (a.block_images + a.picks)  # the training set at the last boundary, at most
        retrain_floor = step_flops / len(x) * n_train * a.block_epochs / peak
        print(row("turnaround with prefetch (median, warm)", med["total-rig"], retrain_floor,
                  f"floor: one retraining of {n_train} images; retrain {med['retrain']:.2f} s, "
                  f"generate {med['generate']:.2f} s; sequential {seq['total-rig']:.2f} s"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU in minutes); extrapolates")
    ap.add_argument("--frontend", default="gabor", choices=["pixels", "gabor", "resnet50"])
    ap.add_argument("--weights", default=None, help="--frontend resnet50: local state_dict file")
    ap.add_argument("--layer", default="layer3")
    ap.add_argument("--input-size", type=int, default=0)
    ap.add_argument("--autocast", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--neurons", type=int, default=100)
    ap.add_argument("--no-turnaround", dest="turnaround", action="store_false")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--synth-budget-s", type=float, default=150.0,
                    help="run fewer synthesis steps (and extrapolate) where the full run would take longer")
    a = ap.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.threads:
        torch.set_num_threads(a.threads)
    big = dict(train_images=2000, epochs=10, batch_size=64, pool_images=50_000, score_batch=1024,
               synth_images=1000, synth_steps=1000, blocks=4, block_images=200, picks=100, block_epochs=4,
               pool_crops=5000)
    small = dict(train_images=300, epochs=2, batch_size=64, pool_images=2000, score_batch=256,
                 synth_images=16, synth_steps=5, blocks=3, block_images=16, picks=8, block_epochs=2,
                 pool_crops=300)
    for k, v in (small if a.quick else big).items():
        setattr(a, k, v)
    run(a)


if __name__ == "__main__":
    main()
