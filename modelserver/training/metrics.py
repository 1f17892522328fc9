"""The field's own metrics: Pearson r per neuron, explainable variance, noise-corrected R2.

Shapes: predictions and repeat-averaged responses are ``(neurons, images)``; single-repeat
responses are ``(neurons, images, repeats)`` with NaN in unused repeat slots (unequal repeat
counts per image are allowed).

:func:`r2_er` is the unbiased estimator of the fraction of explainable variance explained by a
model, Pospisil & Bair (2021), "The unbiased estimation of the fraction of variance explained by
a model", PLoS Comput Biol 17(8):e1009212 (the "r2_ER" that Cowley et al. 2023 report),
generalised here to unequal repeat counts n_j per image:

* with x the centred predictions and ybar the repeat means, ``E[(x . ybar)^2] = (x . mu)^2 +
  sum_j x_j^2 v_j`` and ``E[|ybar - mean(ybar)|^2] = |mu - mean(mu)|^2 + (1 - 1/m) sum_j v_j``,
  where ``v_j = sigma^2 / n_j`` is the variance of image j's repeat mean;
* subtracting those noise terms from the numerator and denominator of ``r^2`` gives the
  estimator; with equal n it reduces to Pospisil & Bair's formula exactly.

``sigma^2`` is pooled over images (weights n_j - 1), as in the paper, or per image
(``noise="per_image"``, robust to Poisson-like heteroscedasticity). Like the paper's estimator,
single estimates can leave [0, 1] when the data are noisy; they are not clipped.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "explainable_variance",
    "naive_r2",
    "noise_variance",
    "pearson_r",
    "r2_er",
    "repeat_counts",
]


def _as2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[None, :] if a.ndim == 1 else a


def pearson_r(pred: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """Pearson r per neuron between ``pred`` and ``resp`` (both (neurons, images) or (images,)).

    Images where either is NaN are skipped; a constant row gives NaN.
    """
    x, y = _as2d(pred), _as2d(resp)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    ok = ~(np.isnan(x) | np.isnan(y))
    n = ok.sum(1)
    x = np.where(ok, x, 0.0)
    y = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = x.sum(1, keepdims=True) / n[:, None]
        ym = y.sum(1, keepdims=True) / n[:, None]
        xc = np.where(ok, x - xm, 0.0)
        yc = np.where(ok, y - ym, 0.0)
        r = (xc * yc).sum(1) / np.sqrt((xc**2).sum(1) * (yc**2).sum(1))
    return r


def naive_r2(pred: np.ndarray, resp: np.ndarray) -> np.ndarray:
    """Squared Pearson r: the uncorrected R2 (biased low by trial-to-trial noise)."""
    return pearson_r(pred, resp) ** 2


def repeat_counts(raw: np.ndarray) -> np.ndarray:
    """Number of non-NaN repeats per (neuron, image) of a (neurons, images, repeats) array."""
    return (~np.isnan(np.asarray(raw, dtype=np.float64))).sum(-1)


def _check_raw(raw: np.ndarray) -> np.ndarray:
    r = np.asarray(raw, dtype=np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3:
        raise ValueError(f"raw responses must be (neurons, images, repeats), got {r.shape}")
    return r


def noise_variance(raw: np.ndarray, noise: Literal["pooled", "per_image"] = "pooled") -> np.ndarray:
    """Variance of each image's repeat mean, ``v_j`` (neurons, images); NaN where n_j = 0.

    ``pooled``: sigma^2 = sum_j (n_j - 1) s_j^2 / sum_j (n_j - 1) (one per neuron), v_j = sigma^2/n_j.
    ``per_image``: v_j = s_j^2 / n_j where n_j >= 2, the pooled value where n_j = 1.
    """
    r = _check_raw(raw)
    n = repeat_counts(r).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(r, -1) / n
        ss = np.nansum((r - mean[..., None]) ** 2, -1)  # NaN slots vanish in nansum
        dof = np.clip(n - 1, 0, None)
        sigma2 = ss.sum(1) / dof.sum(1)  # (neurons,)
        v = sigma2[:, None] / n
        if noise == "per_image":
            s2 = ss / dof
            v = np.where(n >= 2, s2 / n, v)
        elif noise != "pooled":
            raise ValueError(f"noise must be 'pooled' or 'per_image', got {noise!r}")
    return np.where(n > 0, v, np.nan)


def _means(raw: np.ndarray) -> np.ndarray:
    r = _check_raw(raw)
    n = repeat_counts(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(r, -1) / n, np.nan)


def explainable_variance(raw: np.ndarray, noise: Literal["pooled", "per_image"] = "pooled") -> np.ndarray:
    """Fraction of the variance of the repeat means that is not trial-to-trial noise, per neuron.

    ``1 - mean_j(v_j) / var(ybar)`` with ``var`` over images (ddof=1), ``v_j`` the noise variance
    of image j's mean (:func:`noise_variance`): the ceiling a perfect model's R2 against the
    repeat means can reach.
    """
    ybar = _means(raw)
    v = noise_variance(raw, noise)
    ok = ~np.isnan(ybar)
    out = np.full(ybar.shape[0], np.nan)
    for k in range(ybar.shape[0]):
        y = ybar[k, ok[k]]
        if y.size < 2:
            continue
        total = y.var(ddof=1)
        out[k] = 1.0 - np.mean(v[k, ok[k]]) / total if total > 0 else np.nan
    return out


def r2_er(pred: np.ndarray, raw: np.ndarray, noise: Literal["pooled", "per_image"] = "pooled") -> np.ndarray:
    """Unbiased noise-corrected R2 (Pospisil & Bair 2021) per neuron, unequal repeats allowed.

    ``pred``: (neurons, images) model predictions; ``raw``: (neurons, images, repeats) single
    trials, NaN for missing repeats. Images without any repeat are ignored.
    """
    x_all = _as2d(pred)
    ybar_all = _means(raw)
    if x_all.shape != ybar_all.shape:
        raise ValueError(f"predictions {x_all.shape} do not match responses {ybar_all.shape[:2]}")
    v_all = noise_variance(raw, noise)
    out = np.full(x_all.shape[0], np.nan)
    for k in range(x_all.shape[0]):
        ok = ~(np.isnan(ybar_all[k]) | np.isnan(x_all[k]))
        m = int(ok.sum())
        if m < 3:
            continue
        x = x_all[k, ok] - x_all[k, ok].mean()
        y = ybar_all[k, ok] - ybar_all[k, ok].mean()
        v = v_all[k, ok]
        x2 = float(x @ x)
        if x2 == 0:
            continue
        num = float(x @ y) ** 2 - float((x**2) @ v)
        den = x2 * (float(y @ y) - (1.0 - 1.0 / m) * float(v.sum()))
        out[k] = num / den if den != 0 else np.nan
    return out
