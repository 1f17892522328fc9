"""Synthesized maximizing images: smooth-DeepTune gradient ascent from white noise.

All requested neurons are optimized at once (one image per neuron and restart in the
batch). Each step: the gradient of the neuron's response, normalized to mean absolute
value 1 per image, minus the gradients of an Lp penalty (p = 6) on the mean-subtracted
image and a total-variation penalty (both in pixel units per unit weight), Gaussian-blurred
(sigma decaying over the run), times a decaying step size; pixels are clamped to 0..255.
With ``diversity`` > 0 and several images per neuron, each image's step also moves it away from
the mean of its neuron's other images (weight decaying to 0 over the run), so the restarts do
not all converge to the same image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

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
    init_std: float = 10.0          # white noise around mid-grey
    diversity: float = 1.0          # push each image away from its neuron's other images (x response gradient)
    size: int = 112

    def validate(self) -> None:
        if self.steps < 0 or self.step_size <= 0 or self.size < 8:
            raise InvalidRequest(f"bad synthesis settings: {asdict(self)}")


def _away_from_siblings(x: torch.Tensor, per_neuron: int) -> torch.Tensor:
    """Direction from the mean of each image's siblings (same neuron) to the image, unit mean |.|."""
    g = x.reshape(-1, per_neuron, *x.shape[1:])
    d = g - (g.sum(1, keepdim=True) - g) / (per_neuron - 1)
    d = d / (d.abs().mean(dim=(2, 3, 4), keepdim=True) + 1e-12)
    return d.reshape_as(x)


def synthesize(model: ResponseModel, neurons: Sequence[int], per_neuron: int = 1, seed: int = 0,
               config: SynthesisConfig | None = None, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, should_stop: StopCheck | None = None) -> Generated:
    """``per_neuron`` synthesized images for each requested neuron (neuron-major order).

    ``should_stop`` is tested before every step (a true answer raises ``Cancelled``)."""
    cfg = config or SynthesisConfig()
    cfg.validate()
    neurons = check_neurons(neurons, model.n_neurons)
    if per_neuron < 1:
        raise InvalidRequest("per_neuron must be >= 1")
    which = torch.tensor([n for n in neurons for _ in range(per_neuron)], device=device)
    gen = torch.Generator().manual_seed(int(seed))
    x = (127.5 + cfg.init_std * torch.randn((len(which), 3, cfg.size, cfg.size), generator=gen,
                                            dtype=torch.float64)).clamp(0, 255).to(device, dtype)
    for t in range(cfg.steps):
        stop_point(should_stop, "gen.synthesize")
        frac = t / max(cfg.steps - 1, 1)
        x.requires_grad_(True)
        resp = paired_responses(model, pixels_to_input(x), which)
        g_r, = torch.autograd.grad(resp.sum(), x)
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
        final = paired_responses(model, pixels_to_input(torch.as_tensor(images, device=device)
                                                         .permute(0, 3, 1, 2).to(dtype)), which)
    name = model_name(model)
    picks = [Pick("synthesize", name, int(which[i]), float(final[i]), f"noise:seed{seed}:{i}",
                  {"steps": float(cfg.steps)}) for i in range(len(which))]
    return Generated(np.ascontiguousarray(images), picks)
