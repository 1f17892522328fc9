"""Small differentiable image operations shared by the generators (float pixels, (N, 3, H, W))."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
                    ) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflect padding; ``sigma <= 0`` returns ``x``."""
    if sigma <= 0:
        return x
    k = gaussian_kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[(k.numel() - 1) // 2 - r: (k.numel() - 1) // 2 + r + 1]
    k = k / k.sum()
    kh = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    kv = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kh, groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), kv, groups=c)


def total_variation(x: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Isotropic total variation per image (N,), smoothed by ``eps`` (pixel units)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return torch.sqrt(dx * dx + dy * dy + eps * eps).sum(dim=(1, 2, 3))


def lp_norm_term(x: torch.Tensor, p: float = 6.0, scale: float = 128.0) -> torch.Tensor:
    """sum |x - channel mean|^p / (p scale^(p-1)) per image (N,): its pixel gradient is (d/scale)^(p-1)."""
    d = x - x.mean(dim=(2, 3), keepdim=True)
    return (d.abs() / scale).pow(p).sum(dim=(1, 2, 3)) * scale / p
