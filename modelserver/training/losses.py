"""Losses and regularizers of system identification (Poisson / Gaussian, L1 / L2, Laplacian).

Losses take predictions and targets of the same shape ``(..., batch, neurons)`` and return one
value per leading index summed over neurons and averaged over the batch, so members of an
ensemble stacked on a leading axis get independent losses that can be summed for one backward.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

__all__ = ["gaussian_loss", "l1", "l2", "laplacian_penalty", "loss_fn", "poisson_loss"]

LossName = Literal["poisson", "gaussian"]


def poisson_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Poisson negative log-likelihood (up to a constant): ``pred - y log pred``; pred > 0."""
    return (pred - target * torch.log(pred + eps)).sum(-1).mean(-1)


def gaussian_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian negative log-likelihood with unit variance: half the squared error."""
    return (0.5 * (pred - target) ** 2).sum(-1).mean(-1)


def loss_fn(name: LossName) -> object:
    if name == "poisson":
        return poisson_loss
    if name == "gaussian":
        return gaussian_loss
    raise ValueError(f"unknown loss {name!r}; use 'poisson' or 'gaussian'")


def l1(t: torch.Tensor, dims: int = 1) -> torch.Tensor:
    """L1 norm over all but the first ``dims`` axes (one value per member)."""
    return t.abs().flatten(dims).sum(-1)


def l2(t: torch.Tensor, dims: int = 1) -> torch.Tensor:
    """Squared L2 norm over all but the first ``dims`` axes."""
    return (t**2).flatten(dims).sum(-1)


_LAPLACE = torch.tensor([[0.5, 1.0, 0.5], [1.0, -6.0, 1.0], [0.5, 1.0, 0.5]])


def laplacian_penalty(kernels: torch.Tensor) -> torch.Tensor:
    """Squared Laplacian of 2-D kernels ``(M, ..., k, k)``: one smoothness cost per member M.

    Large for spatially rough filters / masks, zero for constant ones (Laplacian smoothness of
    the NDN / neuralpredictors line).
    """
    m = kernels.shape[0]
    k = kernels.reshape(-1, 1, *kernels.shape[-2:])
    lap = _LAPLACE.to(dtype=k.dtype, device=k.device)[None, None]
    out = F.conv2d(F.pad(k, (1, 1, 1, 1), mode="replicate"), lap)
    return (out**2).reshape(m, -1).sum(-1) / max(1, k.shape[0] // m)
