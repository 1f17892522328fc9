"""Throughput of image generation with the real V4 compact models (Cowley et al. 2023) as the model.

Prints: pool scoring (images/s through all requested neurons' models, reading the HDF5
pool included) and synthesis (neuron-steps/s: one step = forward + backward of one
neuron's image). Usage:

    .venv/bin/python bench/generate_bench.py [--v4 ../shared/data/v4] [--neurons 33]
        [--pool 512] [--steps 10] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from modelserver.compact.model import CompactModel  # noqa: E402
from modelserver.generate.maximize import maximize_pool  # noqa: E402
from modelserver.generate.models import CompactStack  # noqa: E402
from modelserver.generate.pool import ImagePool, build_pool, natural_crops, v4_images  # noqa: E402
from modelserver.generate.synthesize import SynthesisConfig, synthesize  # noqa: E402


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4", type=Path, default=REPO.parent / "shared" / "data" / "v4")
    ap.add_argument("--neurons", type=int, default=33)
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not (args.v4 / "compact_models").is_dir():
        sys.exit(f"real V4 data not found at {args.v4}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stack = CompactStack.from_folder(args.v4 / "compact_models", neurons=range(args.neurons), device=device)
    filters = [sum(m.filters) for m in stack.members if isinstance(m, CompactModel)]
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.neurons} compact models "
          f"(median {int(np.median(filters))} filters)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pool.h5"
        sources = list(v4_images(args.v4, sessions=["190925"], limit=300))
        build_pool(path, natural_crops(sources, args.pool, seed=0))
        with ImagePool(path) as pool:
            t = time.perf_counter()
            n_read = sum(len(b) for _, b in pool.batches(args.batch))
            read_rate = n_read / (time.perf_counter() - t)
            with torch.no_grad():  # warm-up: every model sees one batch of the scoring shape
                stack(torch.zeros((args.batch, 3, 112, 112), device=device))
            t = time.perf_counter()
            maximize_pool(stack, pool, list(range(args.neurons)), k=10, batch_size=args.batch, device=device)
            dt = time.perf_counter() - t
    print(f"pool read alone: {read_rate:.0f} images/s (HDF5, chunked, uncompressed)")
    print(f"pool scoring: {args.pool} images x {args.neurons} neurons in {dt:.2f} s = {args.pool / dt:.1f} images/s "
          f"({args.pool * args.neurons / dt:.0f} image-neurons/s; a 500,000-image pool would take "
          f"{500_000 / (args.pool / dt) / 3600:.1f} h)")
    cfg = SynthesisConfig(steps=args.steps)
    synthesize(stack, list(range(args.neurons)), config=SynthesisConfig(steps=1), device=device)  # warm-up
    t = time.perf_counter()
    synthesize(stack, list(range(args.neurons)), config=cfg, device=device)
    dt = time.perf_counter() - t
    print(f"synthesis: {args.neurons} neurons x {args.steps} steps in {dt:.2f} s = "
          f"{args.neurons * args.steps / dt:.1f} neuron-steps/s (150-step default: {150 / (args.neurons * args.steps / dt) * args.neurons:.0f} s "
          f"for all {args.neurons} neurons)")


if __name__ == "__main__":
    main()
