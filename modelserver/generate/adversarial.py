"""Adversarial images: small pixel changes to base images that raise (adv+) or lower (adv-) a response.

Projected gradient steps (PGD) on the neuron's response, the change kept within a
maximum absolute pixel change (``max_abs``, 0..255 units) and, optionally, an L2 norm
(``max_l2``) and within valid pixels. Steps are signed gradients (``step`` pixels each) unless
``blur`` > 0: then each step is the gradient Gaussian-blurred by ``blur`` pixels and scaled to an
L2 length of 2.5 x ``max_l2`` / steps, so the change is smooth rather than pixel noise. Smooth
changes are what carry over from the model to another one (or to the neuron): on the ground
truth of ``bench/adversarial_bench.py`` at L2 8 (0..1 units) and ``max_abs`` 16, signed steps
raised neurons 0-7 by +10% (88% of them), blurred steps by +21% (100%); see docs/generation.md. The final change is rounded to whole pixel values
(dropping the smallest changes where rounding would break the L2 threshold), so the
returned uint8 images respect both thresholds exactly.

With ``jitter`` / ``scale_jitter`` each step's gradient is taken on a randomly shifted (up to
``jitter`` pixels) and rescaled (1 +- ``scale_jitter``) view of the image, as synthesis does: the
change must raise or lower the model's response wherever the image falls by a few pixels, which
carries over to the neuron better than a change tuned to one exact position (the "input
diversity" of transfer attacks). Re-made offline with a 0-7 demo's own models and base
images (``bench/adversarial_live.py``), 8 pixels and 0.15 raised adv+ from +14.0% to +17.7% (7 to 8
of 8 neurons) and, on another run's, from +18.6% to +25.4%; see docs/generation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from modelserver.generate.imageops import gaussian_blur
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
from modelserver.generate.synthesize import random_view
from wire.base import image_id
from wire.errors import InvalidRequest


def _project(delta: torch.Tensor, base: torch.Tensor, max_abs: float, max_l2: float | None) -> torch.Tensor:
    d = delta.clamp(-max_abs, max_abs)
    if max_l2 is not None:
        norm = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d = d * torch.clamp(max_l2 / (norm + 1e-12), max=1.0)
    return (base + d).clamp(0, 255) - base


def _integerize(delta: torch.Tensor, max_abs: float, max_l2: float | None) -> torch.Tensor:
    """Round the change to whole pixel values; where that breaks the L2 threshold, keep only the
    largest changes (by their unrounded size) that fit within it."""
    r = delta.round().clamp(-math.floor(max_abs), math.floor(max_abs))
    if max_l2 is None:
        return r
    flat, mag = r.flatten(1), delta.abs().flatten(1)
    order = torch.argsort(mag, dim=1, descending=True, stable=True)
    sq = flat.gather(1, order).pow(2).cumsum(1)
    keep_sorted = sq <= max_l2 ** 2 + 1e-6
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return (flat * keep).view_as(delta)


def adversarial(model: ResponseModel, base_images: np.ndarray, neurons: Sequence[int],
                direction: Literal["+", "-"] = "+", max_abs: float = 8.0, max_l2: float | None = None,
                step: float = 1.0, steps: int | None = None, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, should_stop: StopCheck | None = None,
                blur: float = 0.0, jitter: int = 0, scale_jitter: float = 0.0, seed: int = 0) -> Generated:
    """One adversarial image per (base image, neuron) pair: ``base_images[i]`` for ``neurons[i]``.

    ``should_stop`` is tested before every step (a true answer raises ``Cancelled``)."""
    base_u8 = np.asarray(base_images)
    if base_u8.dtype != np.uint8 or base_u8.ndim != 4 or base_u8.shape[-1] != 3:
        raise InvalidRequest(f"base images must be uint8 (N, H, W, 3), got {base_u8.dtype} {base_u8.shape}")
    neurons = check_neurons(neurons, model.n_neurons)
    if len(neurons) != len(base_u8):
        raise InvalidRequest(f"one neuron per base image: {len(neurons)} neurons, {len(base_u8)} images")
    if direction not in ("+", "-"):
        raise InvalidRequest(f"direction must be '+' or '-', got {direction!r}")
    if max_abs <= 0 or step <= 0 or (max_l2 is not None and max_l2 <= 0) or blur < 0:
        raise InvalidRequest("max_abs, max_l2 and step must be positive, blur >= 0")
    if jitter < 0 or not 0 <= scale_jitter < 0.5:
        raise InvalidRequest(f"jitter must be >= 0 and scale_jitter in [0, 0.5), got {jitter}, {scale_jitter}")
    if blur > 0 and max_l2 is None:
        raise InvalidRequest("blurred (L2) steps need an L2 budget max_l2")
    sign = 1.0 if direction == "+" else -1.0
    n_steps = steps if steps is not None else int(np.ceil(2 * max_abs / step)) + 4
    l2_step = 2.5 * max_l2 / n_steps if max_l2 is not None else 0.0  # blurred steps' length
    which = torch.tensor(neurons, device=device)
    base = torch.as_tensor(base_u8, device=device).permute(0, 3, 1, 2).to(dtype)
    with torch.no_grad():
        r0 = paired_responses(model, pixels_to_input(base), which)
    delta = torch.zeros_like(base)
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(n_steps):
        stop_point(should_stop, "gen.adversarial")
        delta.requires_grad_(True)
        view = random_view(base + delta, jitter, scale_jitter, gen)
        r = paired_responses(model, pixels_to_input(view), which)
        g, = torch.autograd.grad(sign * r.sum(), delta)
        with torch.no_grad():
            if blur > 0:
                g = gaussian_blur(g, blur)
                g = g * l2_step / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
            else:
                g = step * g.sign()
            delta = _project(delta.detach() + g, base, max_abs, max_l2)
    delta = _integerize(delta.detach(), max_abs, max_l2)
    images = to_uint8(base + delta)
    with torch.no_grad():
        adv = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).to(dtype)
        r1 = paired_responses(model, pixels_to_input(adv), which)
        change = adv - base
    name = model_name(model)
    picks = []
    for i in range(len(neurons)):
        base_r, new_r = float(r0[i]), float(r1[i])
        picks.append(Pick(f"adversarial{direction}", name, neurons[i], new_r, f"base:{image_id(base_u8[i])}",
                          {"base_response": base_r,
                           "percent_change": 100.0 * (new_r - base_r) / abs(base_r) if base_r else float("nan"),
                           "max_abs_change": float(change[i].abs().max()),
                           "l2_change": float(change[i].flatten().norm())}))
    return Generated(np.ascontiguousarray(images), picks)
