"""Synthesized maximizing images: smooth-DeepTune gradient ascent from white noise (or given images).

All requested neurons are optimized at once (one image per neuron and restart in the batch).
Each step: the gradient of the objective, normalized to mean absolute value 1 per image, minus
the gradients of an Lp penalty (p = 6) on the mean-subtracted image and a total-variation
penalty (both in pixel units per unit weight), Gaussian-blurred (sigma decaying over the run),
times a decaying step size; pixels are clamped to 0..255.

The objective is the neuron's response. Given an *ensemble* (a model whose output is
(members, N, neurons)), it is the members' mean minus ``spread_weight`` times their standard
deviation, so the ascent goes where the members agree rather than into one member's quirks.
With ``jitter`` / ``scale_jitter`` each step sees the images randomly shifted (up to ``jitter``
pixels) and rescaled (by 1 +- ``scale_jitter``), so the images must drive the neuron robustly,
not through a pixel-exact pattern another model (or the neuron) would not share. With
``diversity`` > 0 and several images per neuron, each image's step also moves it away from the
mean of its neuron's other images (weight decaying to 0 over the run). ``init_images`` starts
the ascent from given images (e.g. the best pool images) instead of noise.

With ``max_contrast`` > 1 a contrast phase comes first: each start image's contrast about its
own mean is scaled by a gain in 1..``max_contrast``, which ``contrast_steps`` signed steps of the
same objective's gradient (0.05 in log gain, jittered views) set per image. One number per image
is a direction a model fitted on a few hundred images gets right far more often than its pixel
gradient: on the ground truth of ``bench/causal_bench.py`` (ascent from the top pool images of
models fitted to 575 images), the pixel ascent alone beat the start images by 1 to 24 points of
percent change, the contrast phase then pixels by 13 to 26 (docs/generation.md, Evidence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.nn import functional as F

from modelserver.generate.imageops import gaussian_blur, lp_norm_term, total_variation
from modelserver.generate.limits import StopCheck, stop_point
from modelserver.generate.models import (
    Generated,
    Pick,
    ResponseModel,
    check_neurons,
    model_name,
    paired_responses,
    pixels_to_input,
    to_uint8,
)
from wire.errors import InvalidRequest


@dataclass(frozen=True)
class SynthesisConfig:
    steps: int = 150
    step_size: float = 3.0          # pixels per step for a unit-normalized gradient (start of the run)
    final_step_fraction: float = 0.1
    lp_p: float = 6.0
    lp_weight: float = 1.0
    lp_scale: float = 100.0         # pixel deviation at which the Lp gradient equals lp_weight
    tv_weight: float = 0.4
    grad_sigma: tuple[float, float] = (2.0, 0.5)  # gradient blur, start -> end
    init_std: float = 10.0          # white noise around mid-grey (or added to init_images)
    diversity: float = 1.0          # push each image away from its neuron's other images (x response gradient)
    spread_weight: float = 1.0      # ensembles: objective = members' mean - spread_weight x members' std
    jitter: int = 4                 # random shift per step, pixels (0: none)
    scale_jitter: float = 0.1       # random rescale per step, 1 +- this (0: none)
    max_contrast: float = 1.0       # > 1: contrast phase first, gain 1..this per image (1: none)
    contrast_steps: int = 20
    size: int = 112

    @property
    def contrast_phase_steps(self) -> int:
        return self.contrast_steps if self.max_contrast > 1 else 0

    @property
    def gradient_steps(self) -> int:
        """Model passes with gradients per image: the contrast phase's and the pixel ascent's."""
        return self.contrast_phase_steps + self.steps

    def validate(self) -> None:
        if (self.steps < 0 or self.step_size <= 0 or self.size < 8 or self.spread_weight < 0
                or not 0 <= self.jitter < self.size // 2 or not 0 <= self.scale_jitter < 0.5
                or not 1 <= self.max_contrast <= 8 or self.contrast_steps < 0):
            raise InvalidRequest(f"bad synthesis settings: {asdict(self)}")


def _away_from_siblings(x: torch.Tensor, per_neuron: int) -> torch.Tensor:
    """Direction from the mean of each image's siblings (same neuron) to the image, unit mean |.|."""
    g = x.reshape(-1, per_neuron, *x.shape[1:])
    d = g - (g.sum(1, keepdim=True) - g) / (per_neuron - 1)
    d = d / (d.abs().mean(dim=(2, 3, 4), keepdim=True) + 1e-12)
    return d.reshape_as(x)


def random_view(x: torch.Tensor, jitter: int, scale_jitter: float, gen: torch.Generator) -> torch.Tensor:
    """Each image shifted by up to ``jitter`` pixels and rescaled by 1 +- ``scale_jitter`` about its centre
    (bilinear, reflected at the borders); differentiable in ``x``. No jitter returns ``x``."""
    if jitter <= 0 and scale_jitter <= 0:
        return x
    n, _, h, w = x.shape
    u = torch.rand((n, 3), generator=gen, dtype=torch.float64) * 2 - 1
    zoom = 1 + scale_jitter * u[:, 0]
    theta = torch.zeros((n, 2, 3), dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    theta[:, 0, 2] = 2 * jitter * u[:, 1] / w  # grid units: 2 / width per pixel
    theta[:, 1, 2] = 2 * jitter * u[:, 2] / h
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def objective(out: torch.Tensor, which: torch.Tensor, spread_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, members' std) per image for neuron ``which[i]`` of image ``i``.

    ``out`` is (N,) already paired, (N, neurons) from a response model (std 0 for both) or
    (members, N, neurons) from an ensemble."""
    if out.ndim == 1:
        return out, torch.zeros_like(out)
    idx = which.view(-1, 1).to(out.device)
    if out.ndim == 2:
        r = out.gather(1, idx)[:, 0]
        return r, torch.zeros_like(r)
    if out.ndim != 3:
        raise InvalidRequest(f"a model for synthesis returns (N, neurons) or (members, N, neurons), "
                             f"got {tuple(out.shape)}")
    r = out.gather(2, idx[None].expand(out.shape[0], -1, 1))[..., 0]  # (members, N)
    sd = r.std(0, unbiased=False) if r.shape[0] > 1 else torch.zeros_like(r[0])
    return r.mean(0) - spread_weight * sd, sd


def model_output(model: ResponseModel, x: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """The model on ``x``: paired (N,) where the model runs one neuron per image (``CompactStack``)."""
    paired = getattr(model, "paired", None)
    return paired_responses(model, x, which) if callable(paired) else model(x)


def _start(n: int, cfg: SynthesisConfig, gen: torch.Generator, init_images: np.ndarray | None) -> torch.Tensor:
    base = torch.full((n, 3, cfg.size, cfg.size), 127.5, dtype=torch.float64)
    if init_images is not None:
        a = np.asarray(init_images)
        if a.dtype != np.uint8 or a.shape != (n, cfg.size, cfg.size, 3):
            raise InvalidRequest(f"init_images must be uint8 ({n}, {cfg.size}, {cfg.size}, 3), "
                                 f"got {a.dtype} {a.shape}")
        base = torch.as_tensor(a).permute(0, 3, 1, 2).to(torch.float64)
    return (base + cfg.init_std * torch.randn(base.shape, generator=gen, dtype=torch.float64)).clamp(0, 255)


CONTRAST_STEP = 0.05  # log gain per signed step


def contrast_phase(model: ResponseModel, x: torch.Tensor, which: torch.Tensor, cfg: SynthesisConfig,
                   gen: torch.Generator, should_stop: StopCheck | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, gains): each image's contrast about its own mean scaled by the gain in 1..``max_contrast``
    that ``contrast_steps`` signed steps of the objective's gradient reach (see the module docstring)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    log_gain = torch.zeros_like(mean)
    top = math.log(cfg.max_contrast)
    for _ in range(cfg.contrast_phase_steps):
        stop_point(should_stop, "gen.synthesize")
        log_gain.requires_grad_(True)
        y = (mean + torch.exp(log_gain) * (x - mean)).clamp(0, 255)
        view = random_view(y, cfg.jitter, cfg.scale_jitter, gen)
        obj, _ = objective(model_output(model, pixels_to_input(view), which), which, cfg.spread_weight)
        g, = torch.autograd.grad(obj.sum(), log_gain)
        with torch.no_grad():
            log_gain = (log_gain.detach() + CONTRAST_STEP * g.sign()).clamp(0.0, top)
    gain = torch.exp(log_gain.detach())
    return (mean + gain * (x - mean)).clamp(0, 255), gain.flatten()


def synthesize(model: ResponseModel, neurons: Sequence[int], per_neuron: int = 1, seed: int = 0,
               config: SynthesisConfig | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, should_stop: StopCheck | None = None,
               init_images: np.ndarray | None = None) -> Generated:
    """``per_neuron`` synthesized images for each requested neuron (neuron-major order).

    ``model`` is a response model or an ensemble (see the module docstring); ``init_images``
    (uint8, one per output image) replace the grey start. ``should_stop`` is tested before every
    step (a true answer raises ``Cancelled``)."""
    cfg = config or SynthesisConfig()
    cfg.validate()
    neurons = check_neurons(neurons, model.n_neurons)
    if per_neuron < 1:
        raise InvalidRequest("per_neuron must be >= 1")
    which = torch.tensor([n for n in neurons for _ in range(per_neuron)], device=device)
    gen = torch.Generator().manual_seed(int(seed))
    x = _start(len(which), cfg, gen, init_images).to(device, dtype)
    x, gain = contrast_phase(model, x, which, cfg, gen, should_stop)
    for t in range(cfg.steps):
        stop_point(should_stop, "gen.synthesize")
        frac = t / max(cfg.steps - 1, 1)
        x.requires_grad_(True)
        view = random_view(x, cfg.jitter, cfg.scale_jitter, gen)
        obj, _ = objective(model_output(model, pixels_to_input(view), which), which, cfg.spread_weight)
        g_r, = torch.autograd.grad(obj.sum(), x)
        g_r = g_r / (g_r.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
        with torch.enable_grad():
            reg = (cfg.lp_weight * lp_norm_term(x, cfg.lp_p, cfg.lp_scale)
                   + cfg.tv_weight * total_variation(x)).sum()
            g_reg, = torch.autograd.grad(reg, x)
        if cfg.diversity > 0 and per_neuron > 1:
            g_r = g_r + cfg.diversity * (1 - frac) * _away_from_siblings(x.detach(), per_neuron)
        sigma = cfg.grad_sigma[0] + (cfg.grad_sigma[1] - cfg.grad_sigma[0]) * frac
        step = cfg.step_size * (cfg.final_step_fraction + (1 - cfg.final_step_fraction)
                                * 0.5 * (1 + math.cos(math.pi * frac)))
        with torch.no_grad():
            x = (x.detach() + step * gaussian_blur(g_r - g_reg, sigma)).clamp(0, 255)
    images = to_uint8(x)
    with torch.no_grad():
        final_x = pixels_to_input(torch.as_tensor(images, device=device).permute(0, 3, 1, 2).to(dtype))
        final, spread = objective(model_output(model, final_x, which), which, 0.0)
    name = model_name(model)
    source = "noise" if init_images is None else "init"
    picks = [Pick("synthesize", name, int(which[i]), float(final[i]), f"{source}:seed{seed}:{i}",
                  {"steps": float(cfg.steps), "spread": float(spread[i]), "contrast": float(gain[i])})
             for i in range(len(which))]
    return Generated(np.ascontiguousarray(images), picks)
