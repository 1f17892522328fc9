"""Distilling compact models from a teacher, many neurons at once (Cowley et al. 2023).

A teacher (the ensemble, the published compact models, any ``images -> (neurons, images)``
function) labels a large pool of unlabeled images: natural crops of recorded images, their
"gaudy" versions (each colour channel pushed to 0 or 255 about its mean) and noise. Students
have the 5-layer separable architecture of :mod:`modelserver.compact.model`; all of them train in one
batched computation (:class:`~modelserver.compact.distill_stack.StackedCompact`: grouped convolutions
with a leading model axis, optionally a shared trunk computed once per batch), not a Python loop
over neurons. A factorized readout (space x channels, ``readout_rank``) regularizes ``Beta``
while training and is stored dense afterwards. Per-model channel masks let
:mod:`modelserver.compact.prune` remove filters from each student independently, and
:meth:`StackedCompact.export` writes a normal :class:`~modelserver.compact.model.CompactModel` with
only the kept filters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from modelserver.compact.distill_stack import StackedCompact
from modelserver.compact.distill_teacher import teacher_targets
from modelserver.compact.model import IMAGE_SIZE, preprocess
from modelserver.training.metrics import pearson_r

__all__ = ["DistillConfig", "DistillReport", "StackedCompact", "distill", "evaluate", "gaudy", "make_pool",
           "one_cycle", "predict_students", "teacher_targets"]

Teacher = Callable[[np.ndarray], np.ndarray]  # uint8 (K, 112, 112, 3) -> (neurons, K)


# --- the unlabeled pool ---------------------------------------------------------------------
def gaudy(images: np.ndarray) -> np.ndarray:
    """Each colour channel of each image pushed to 0 or 255 about its own mean."""
    x = np.asarray(images)
    mean = x.reshape(len(x), -1, 3).mean(1)[:, None, None, :]
    return np.where(x >= mean, 255, 0).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    t = torch.as_tensor(img).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def make_pool(images: np.ndarray, n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.25, 0.15),
              size: int = IMAGE_SIZE) -> np.ndarray:
    """``n`` unlabeled uint8 images: random crops (with flips) of ``images``, gaudy crops and noise.

    ``fractions``: shares of natural crops, gaudy crops and noise images (white and 1/f).
    """
    rng = np.random.default_rng(seed)
    n_nat = round(fractions[0] * n)
    n_gaudy = round(fractions[1] * n)
    n_noise = n - n_nat - n_gaudy
    src = np.asarray(images)
    h, w = src.shape[1:3]
    crops = []
    for _ in range(n_nat + n_gaudy):
        im = src[rng.integers(len(src))]
        c = int(rng.integers(int(0.5 * min(h, w)), min(h, w) + 1))
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = im[y0:y0 + c, x0:x0 + c]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(_resize(np.ascontiguousarray(crop), size))
    nat = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    parts = [nat[:n_nat], gaudy(nat[n_nat:])]
    noise = []
    for i in range(n_noise):
        if i % 2 == 0:  # white noise
            noise.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        else:  # pink (1/f) noise, per channel
            f = np.fft.fftfreq(size)
            amp = 1.0 / np.maximum(np.hypot(f[:, None], f[None, :]), 1.0 / size)
            spec = amp[..., None] * np.exp(2j * np.pi * rng.random((size, size, 3)))
            img = np.real(np.fft.ifft2(spec, axes=(0, 1)))
            img = (img - img.mean()) / (img.std() + 1e-9) * 50 + 110
            noise.append(np.clip(img, 0, 255).astype(np.uint8))
    if noise:
        parts.append(np.stack(noise))
    pool = np.concatenate(parts)
    return pool[rng.permutation(len(pool))]


# --- training ----------------------------------------------------------------------------------
@dataclass
class DistillConfig:
    """Students' filters, sharing (see :class:`StackedCompact`) and the optimisation."""

    filters: tuple[int, ...] = (16, 16, 8, 8, 8)
    shared_layer0: bool = False  # one layer 0 learned by all students together: computed once per batch
    shared: int | None = None  # leading units shared by all students (overrides shared_layer0)
    readout_rank: int | None = None  # train Beta as (space x rank) @ (rank x channels); exported dense
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    time_budget_s: float | None = None
    stop_r: float | None = None  # stop after an epoch where ``stop_fraction`` of students reach this val r
    stop_fraction: float = 1.0
    seed: int = 0


@dataclass
class DistillReport:
    val_r: np.ndarray  # (n,) correlation of each student with its teacher on held-out pool images
    seconds: float
    steps: int
    history: list[float] = field(default_factory=list)


def one_cycle(frac: float, max_lr: float, warmup: float = 0.3, div: float = 25.0, final_div: float = 1e4) -> float:
    """Learning rate at ``frac`` (0..1) of training: cosine up from ``max_lr / div`` over the first
    ``warmup`` of it, then cosine down to ``max_lr / (div * final_div)`` (the one-cycle policy)."""
    lo, end = max_lr / div, max_lr / (div * final_div)
    if frac < warmup:
        return lo + (max_lr - lo) * (1 - np.cos(np.pi * frac / warmup)) / 2
    t = min(1.0, (frac - warmup) / (1 - warmup))
    return float(end + (max_lr - end) * (1 + np.cos(np.pi * t)) / 2)


def _standardize(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = y.mean(1, keepdims=True), y.std(1, keepdims=True) + 1e-8
    return (y - mu) / sd, mu[:, 0], sd[:, 0]


def distill(pool: np.ndarray, targets: np.ndarray, config: DistillConfig | None = None,
            device: torch.device | str = "cpu", progress: Callable[[dict[str, float]], None] | None = None,
            model: StackedCompact | None = None,
            calibrated: bool = False) -> tuple[StackedCompact, DistillReport]:
    """Train one student per row of ``targets`` (neurons, K) on ``pool`` (K, 112, 112, 3), batched.

    Targets are standardized per neuron (mean squared error summed over students, so each
    student's gradient is its own); the students' ``Beta`` is rescaled afterwards so their outputs
    are in the teacher's units, and a factorized readout is stored as the dense ``Beta``.
    ``model``: start from these students instead of a fresh stack (their masks stay as they are);
    ``calibrated``: its outputs are in the targets' units already (students distilled before, e.g.
    pruned students to fine-tune), so their readouts are first brought to the standardized units.
    A one-cycle learning-rate schedule (:func:`one_cycle`) spans all ``epochs``, or the time budget
    where ``time_budget_s`` is given and runs out first (progress is the larger of the fractions
    of steps and of time used), so training always ends annealed; ``stop_r`` may end it after an
    epoch where enough students reach that correlation on the validation images.
    """
    c = config or DistillConfig()
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    n, k = targets.shape
    if len(pool) != k:
        raise ValueError(f"{len(pool)} pool images but targets for {k}")
    y, mu, sd = _standardize(np.asarray(targets, np.float64))
    order = rng.permutation(k)
    n_val = max(1, round(c.val_fraction * k))
    vi, ti = order[:n_val], order[n_val:]
    if model is None:
        shared = c.shared if c.shared is not None else int(c.shared_layer0)
        model = StackedCompact(n, c.filters, shared=shared, readout_rank=c.readout_rank).to(device)
    elif model.n != n:
        raise ValueError(f"{model.n} students but targets for {n} neurons")
    if calibrated:
        model.scale_readout(torch.as_tensor(1.0 / sd, dtype=torch.float32, device=device),  # to standardized units
                            torch.as_tensor(-mu / sd, dtype=torch.float32, device=device))
    opt = torch.optim.AdamW(model.parameters(), lr=one_cycle(0.0, c.lr), weight_decay=c.weight_decay)
    yt = torch.as_tensor(y.T, dtype=torch.float32)
    steps_per_epoch = max(1, len(ti) // c.batch_size)
    total = c.epochs * steps_per_epoch
    t0 = time.monotonic()
    steps, frac = 0, 0.0
    history: list[float] = []
    for epoch in range(c.epochs):
        model.train()
        perm = rng.permutation(ti)
        for s in range(steps_per_epoch):
            idx = np.sort(perm[s * c.batch_size:(s + 1) * c.batch_size])
            x = preprocess(pool[idx], device=device)
            loss = ((model(x) - yt[idx].to(device)) ** 2).mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            frac = steps / total
            if c.time_budget_s is not None:
                frac = max(frac, (time.monotonic() - t0) / c.time_budget_s)
            if frac >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = one_cycle(frac, c.lr)
        val = evaluate(model, pool[vi], y[:, vi], device)
        history.append(float(np.median(val)))
        if progress is not None:
            progress({"epoch": float(epoch + 1), "median_val_r": history[-1], "min_val_r": float(val.min()),
                      "seconds": time.monotonic() - t0})
        if frac >= 1.0:
            break
        if c.stop_r is not None and np.mean(val >= c.stop_r) >= c.stop_fraction:
            break
    model.scale_readout(torch.as_tensor(sd, dtype=torch.float32, device=device),  # back to teacher units
                        torch.as_tensor(mu, dtype=torch.float32, device=device))
    model.materialize_readout()
    val = evaluate(model, pool[vi], targets[:, vi], device)
    return model.eval(), DistillReport(val, time.monotonic() - t0, steps, history)


@torch.no_grad()
def predict_students(model: StackedCompact, images: np.ndarray, device: torch.device | str = "cpu",
                     batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = [model(preprocess(images[i:i + batch_size], device=device)).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).T.astype(np.float64)


def evaluate(model: StackedCompact, images: np.ndarray, targets: np.ndarray,
             device: torch.device | str = "cpu") -> np.ndarray:
    """(n,) Pearson r of each student with its targets."""
    return pearson_r(predict_students(model, images, device), np.asarray(targets, np.float64))
