"""A fixed Gabor-energy front end: the classical V1-like baseline for V4 prediction.

Quadrature pairs of Gabor filters (orientations x spatial frequencies) on the luminance image,
energy ``sqrt(even^2 + odd^2)``, average-pooled on a coarse grid, plus the pooled colour
channels; a ridge readout (:func:`modelserver.training.readouts.fit_ridge`) maps them to responses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from modelserver.compact.model import CHANNEL_MEANS

__all__ = ["GaborFrontend", "gabor_bank", "gabor_features"]


def gabor_bank(orientations: int = 8, frequencies: Sequence[float] = (0.04, 0.08, 0.16, 0.3),
               size: int = 25) -> torch.Tensor:
    """(2 * orientations * len(frequencies), 1, size, size): even and odd filters, zero-mean, unit norm."""
    half = size // 2
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    kernels = []
    for f in frequencies:
        sigma = 0.56 / f  # about one octave bandwidth
        env = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for k in range(orientations):
            th = math.pi * k / orientations
            u = xx * math.cos(th) + yy * math.sin(th)
            for phase in (0.0, math.pi / 2):
                g = env * torch.cos(2 * math.pi * f * u + phase)
                g = g - g.mean() * env / env.mean()
                kernels.append(g / g.norm())
    return torch.stack(kernels)[:, None]


@torch.no_grad()
def gabor_features(images: np.ndarray, size: int = 56, grid: int = 7, batch_size: int = 128) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, D) Gabor energies pooled on a ``grid`` x ``grid`` layout + colour."""
    bank = gabor_bank()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.as_tensor(images[i:i + batch_size]).float() - torch.tensor(CHANNEL_MEANS)
        x = F.interpolate(x.permute(0, 3, 1, 2) / 64.0, size=(size, size), mode="area")
        lum = x.mean(1, keepdim=True)
        resp = F.conv2d(F.pad(lum, (12, 12, 12, 12), mode="reflect"), bank)
        energy = torch.sqrt(resp[:, 0::2] ** 2 + resp[:, 1::2] ** 2 + 1e-6)
        pooled = F.adaptive_avg_pool2d(energy, grid).flatten(1)
        colour = F.adaptive_avg_pool2d(x, grid).flatten(1)
        out.append(torch.cat([pooled, colour], 1))
    return torch.cat(out).numpy().astype(np.float64)


class GaborFrontend(torch.nn.Module):
    """A fixed V1-like front end for the ensemble's trainable core (no parameters).

    (B, 3, S, S) normalized pixels -> (B, 3 + O*F, S/2, S/2): the colour channels and the Gabor
    quadrature energies of the luminance (``O`` orientations x ``F`` frequencies), each average-
    pooled by 2 and brought to roughly unit scale.
    """

    def __init__(self, orientations: int = 8, frequencies: Sequence[float] = (0.04, 0.08, 0.16, 0.3),
                 size: int = 25) -> None:
        super().__init__()
        self.register_buffer("bank", gabor_bank(orientations, frequencies, size))
        self.pad = size // 2
        self.out_channels = 3 + orientations * len(frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no torch.no_grad here: it has no parameters, but synthesis and adversarial images need
        # gradients with respect to the pixels through it
        bank: torch.Tensor = self.bank  # type: ignore[assignment]
        lum = x.mean(1, keepdim=True)
        p = self.pad
        resp = F.conv2d(F.pad(lum, (p, p, p, p), mode="reflect"), bank)
        energy = torch.sqrt(resp[:, 0::2] ** 2 + resp[:, 1::2] ** 2 + 1e-6)
        return F.avg_pool2d(torch.cat([x, torch.log1p(energy) - 0.5], 1), 2)
