"""Readouts from a core's feature maps to one session's neurons.

* :class:`FactorizedReadout` (Klindt et al. 2017): per neuron a spatial mask (h x w) times a
  channel mixing vector (C), for all ensemble members at once (leading axis M).
* :func:`fit_ridge` / :class:`RidgeReadout`: closed-form ridge regression from (pooled,
  flattened) features, with the penalty chosen on held-out images; used for new sessions on a
  frozen core, and for fixed front ends (e.g. the Gabor baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FactorizedReadout", "RidgeReadout", "fit_ridge"]


class FactorizedReadout(nn.Module):
    """(B, M, C, h, w) -> (B, M, N) through softplus; parameters per member and neuron."""

    def __init__(self, members: int, channels: int, h: int, w: int, neurons: int,
                 mean_response: np.ndarray | None = None) -> None:
        super().__init__()
        self.members, self.channels, self.h, self.w, self.neurons = members, channels, h, w, neurons
        self.mask = nn.Parameter(torch.rand(members, neurons, h, w) * (1.0 / (h * w)))
        self.features = nn.Parameter(torch.randn(members, neurons, channels) * (1.0 / channels))
        bias = torch.zeros(members, neurons)
        if mean_response is not None:  # start at the mean rate: softplus^-1(mean)
            m = torch.as_tensor(np.maximum(np.asarray(mean_response, dtype=np.float64), 1e-3)).float()
            bias[:] = m + torch.log(-torch.expm1(-m))
        self.bias = nn.Parameter(bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        spatial = torch.einsum("bmchw,mnhw->bmnc", feats, self.mask)
        out = (spatial * self.features[None]).sum(-1) + self.bias[None]
        return F.softplus(out)

    def regularizer(self, mask_l1: float, feature_l1: float) -> torch.Tensor:
        """One value per member: L1 on masks and channel weights (sparse, localized readouts)."""
        return mask_l1 * self.mask.abs().sum((1, 2, 3)) + feature_l1 * self.features.abs().sum((1, 2))


def fit_ridge(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              alphas: Sequence[float] = tuple(10.0 ** np.arange(-2, 6))) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge from features x (K, D) to responses y (K, N); alpha picked by validation correlation.

    Features are standardized with the training statistics (folded into the weights).
    Returns (weights (D, N), bias (N,), alpha).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs = (x - mu) / sd
    xv = (np.asarray(x_val, np.float64) - mu) / sd
    ym = y.mean(0)
    yc = y - ym
    # solve in the smaller of the two spaces with one eigendecomposition
    k, d = xs.shape
    best: tuple[float, float, np.ndarray] | None = None
    if d <= k:
        evals, evecs = np.linalg.eigh(xs.T @ xs)
        xty = evecs.T @ (xs.T @ yc)
        for a in alphas:
            w = evecs @ (xty / (evals + a)[:, None])
            score = _median_r(xv @ w + ym, y_val)
            if best is None or score > best[0]:
                best = (score, a, w)
    else:
        evals, evecs = np.linalg.eigh(xs @ xs.T)
        uty = evecs.T @ yc
        for a in alphas:
            w = xs.T @ (evecs @ (uty / (evals + a)[:, None]))
            score = _median_r(xv @ w + ym, y_val)
            if best is None or score > best[0]:
                best = (score, a, w)
    assert best is not None
    _, alpha, w = best
    weights = w / sd[:, None]
    bias = ym - mu @ weights
    return weights, bias, float(alpha)


def _median_r(pred: np.ndarray, y: np.ndarray) -> float:
    from modelserver.training.metrics import pearson_r

    r = pearson_r(pred.T, np.asarray(y, np.float64).T)
    return float(np.nanmedian(r)) if np.any(np.isfinite(r)) else -1.0


class RidgeReadout(nn.Module):
    """A fitted linear readout (D -> N) as a module (features flattened first)."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weights, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        w: torch.Tensor = self.weight  # type: ignore[assignment]
        b: torch.Tensor = self.bias  # type: ignore[assignment]
        return feats.flatten(1) @ w + b
