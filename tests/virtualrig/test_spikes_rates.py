"""The virtual population: rate models (calibration, determinism) and spike statistics."""

from __future__ import annotations

import numpy as np
import pytest

from virtualrig.rates import GaborEnergyRates, RateModel, RateScale, make_rate_model, reference_images
from virtualrig.spikes import ResponseParams, SpikeSynth, draw_counts
from wire.errors import InvalidRequest


def test_rate_scale_maps_percentiles() -> None:
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(500, 4)) * [1, 10, 0.1, 3] + [0, 5, -2, 1]
    s = RateScale.calibrate(raw, lo=2, hi=60, q=(1, 99))
    lo, hi = np.percentile(raw, (1, 99), axis=0)
    assert np.allclose(s(lo[None]), 2) and np.allclose(s(hi[None]), 60)
    assert (s(raw) >= 0).all()


def test_gabor_population_is_deterministic_and_plausible() -> None:
    imgs = reference_images(40, seed=11)
    a = GaborEnergyRates(8, seed=4)
    b = make_rate_model(n_units=8, seed=4)
    assert isinstance(a, RateModel)
    ra, rb = a.rates(imgs), b.rates(imgs)
    assert ra.shape == (40, 8) and np.array_equal(ra, rb)
    assert (ra >= 0).all() and 5 < ra.mean() < 60
    assert not np.array_equal(ra, GaborEnergyRates(8, seed=5).rates(imgs))
    # images of another size work too (filters are built per size)
    assert a.rates(reference_images(3, size=64, seed=1)).shape == (3, 8)
    with pytest.raises(InvalidRequest):
        a.rates(imgs.astype(np.float32))


def test_synth_driven_counts_poisson_and_fano() -> None:
    rates = np.array([0.0, 20.0, 200.0])
    for fano in (1.0, 3.0):
        synth = SpikeSynth(3, ResponseParams(latency=0.05, baseline=0.0, fano=fano), seed=1, start=0.0)
        onsets = np.arange(400) * 0.5
        for o in onsets:
            assert synth.add_trial(o, o + 0.1, rates)
        chunks = [synth.emit(t) for t in np.arange(0.013, onsets[-1] + 1, 0.037)]  # odd chunking
        units = np.concatenate([c[0] for c in chunks])
        times = np.concatenate([c[1] for c in chunks])
        assert np.all(np.diff(np.concatenate([c[1] for c in chunks])) >= 0)
        rel = times - onsets[np.searchsorted(onsets, times, side="right") - 1]
        assert rel.min() >= 0.05 and rel.max() < 0.15  # only driven spikes, inside [onset+lat, offset+lat)
        counts = np.zeros((onsets.size, 3))
        np.add.at(counts, (np.searchsorted(onsets, times, side="right") - 1, units), 1)
        assert counts[:, 0].sum() == 0
        assert abs(counts[:, 2].mean() - 20) < 1.5 and abs(counts[:, 1].mean() - 2) < 0.4
        ff = counts[:, 2].var() / counts[:, 2].mean()
        assert abs(ff - fano) < 0.35 * fano


def test_synth_baseline_and_late_trial() -> None:
    synth = SpikeSynth(5, ResponseParams(baseline=10.0), seed=2, start=0.0)
    u, t = synth.emit(100.0)
    assert abs(u.size - 5000) < 5 * np.sqrt(5000) and t.min() >= 0 and t.max() < 100
    assert set(u.tolist()) == set(range(5))
    assert not synth.add_trial(99.0, 99.1, np.ones(5))  # its response started before what was emitted
    with pytest.raises(InvalidRequest):
        synth.add_trial(200.0, 200.1, np.ones(4))


def test_draw_counts() -> None:
    rng = np.random.default_rng(0)
    c = draw_counts(np.array([10.0, 50.0]), 0.1, 4000, rng)
    assert c.shape == (4000, 2) and np.allclose(c.mean(0), [1, 5], atol=0.15)
    c2 = draw_counts(np.array([50.0]), 0.1, 4000, rng, fano=2.0)
    assert abs(c2.var() / c2.mean() - 2) < 0.3
