"""Metrics against simulations where the truth is known."""

from __future__ import annotations

import numpy as np

from modelserver.training.metrics import explainable_variance, naive_r2, noise_variance, pearson_r, r2_er


def _simulate(rng: np.random.Generator, sims: int, m: int, noise_sd: float, max_rep: int,
              model_sd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu = rng.normal(0.0, 1.0, (sims, m))
    x = mu + rng.normal(0.0, model_sd, (sims, m))
    true = np.array([np.corrcoef(x[i], mu[i])[0, 1] ** 2 for i in range(sims)])
    n = rng.integers(2, max_rep + 1, (sims, m))  # unequal repeats per image
    raw = mu[..., None] + rng.normal(0.0, noise_sd, (sims, m, max_rep))
    raw[np.arange(max_rep)[None, None, :] >= n[..., None]] = np.nan  # NaN padding
    return x, raw, true, mu


def test_pearson_matches_numpy_and_skips_nan() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 50)), rng.normal(size=(3, 50))
    expect = [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(pearson_r(a, b), expect, atol=1e-12)
    b2 = b.copy()
    b2[0, :5] = np.nan
    np.testing.assert_allclose(pearson_r(a, b2)[0], np.corrcoef(a[0, 5:], b[0, 5:])[0, 1], atol=1e-12)


def test_r2_er_is_unbiased_where_naive_r2_is_not() -> None:
    rng = np.random.default_rng(0)
    x, raw, true, _ = _simulate(rng, sims=400, m=150, noise_sd=1.5, max_rep=8, model_sd=0.6)
    est = r2_er(x, raw)
    naive = naive_r2(x, np.nanmean(raw, -1))
    bias = float(np.mean(est - true))
    naive_bias = float(np.mean(naive - true))
    assert abs(bias) < 0.02, bias
    assert naive_bias < -0.1, naive_bias
    assert abs(bias) < abs(naive_bias) / 5


def test_r2_er_per_image_noise_is_unbiased_too() -> None:
    rng = np.random.default_rng(3)
    x, raw, true, _ = _simulate(rng, sims=300, m=150, noise_sd=1.0, max_rep=6, model_sd=0.5)
    est = r2_er(x, raw, noise="per_image")
    assert abs(float(np.mean(est - true))) < 0.02


def test_r2_er_reduces_to_pospisil_bair_with_equal_repeats() -> None:
    rng = np.random.default_rng(2)
    m, n = 80, 5
    x = rng.normal(size=m)
    raw = rng.normal(size=(1, m, n)) + x[None, :, None]
    # Pospisil & Bair (2021), eq. for r2_ER with n repeats and m stimuli
    y = raw[0].mean(-1)
    sigma2 = raw[0].var(-1, ddof=1).mean()
    xc, yc = x - x.mean(), y - y.mean()
    num = (xc @ yc) ** 2 - sigma2 / n * (xc @ xc)
    den = (xc @ xc) * (yc @ yc) - (m - 1) * sigma2 / n * (xc @ xc)
    np.testing.assert_allclose(r2_er(x[None], raw)[0], num / den, rtol=1e-10)


def test_perfect_model_scores_about_one() -> None:
    rng = np.random.default_rng(4)
    _, raw, _, mu = _simulate(rng, sims=200, m=150, noise_sd=1.0, max_rep=8, model_sd=0.0)
    assert abs(float(np.mean(r2_er(mu, raw))) - 1.0) < 0.03


def test_explainable_variance_matches_truth() -> None:
    rng = np.random.default_rng(5)
    _, raw, _, _ = _simulate(rng, sims=300, m=200, noise_sd=2.0, max_rep=4, model_sd=0.0)
    n = (~np.isnan(raw)).sum(-1)
    truth = 1.0 / (1.0 + np.mean(4.0 / n, 1))  # signal variance 1, variance of the means 4/n_j
    fev = explainable_variance(raw)
    assert abs(float(np.mean(fev - truth))) < 0.02
    v = noise_variance(raw)
    np.testing.assert_allclose(np.nanmean(v * n), 4.0, rtol=0.05)
