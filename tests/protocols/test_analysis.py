"""Analyses on synthetic data with known effects."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.analysis import (
    TrialData,
    condition_mask,
    label_value,
    percent_change,
    permutation_test,
    run_analysis,
    tuning_test,
)
from protocols.steps import Alternative, Analyse


def test_percent_change_known_values() -> None:
    test = np.array([[15.0, 5.0, 1.0], [15.0, 5.0, 3.0]])
    base = np.array([[10.0, 10.0, 0.0], [10.0, 10.0, 0.0]])
    pc = percent_change(test, base)
    assert pc[0] == pytest.approx(50.0) and pc[1] == pytest.approx(-50.0) and np.isnan(pc[2])


def test_permutation_test_detects_effects_and_is_calibrated_under_the_null() -> None:
    rng = np.random.default_rng(1)
    base = rng.poisson(10.0, size=(40, 200)).astype(float)
    null = rng.poisson(10.0, size=(40, 200)).astype(float)
    p_null = permutation_test(null, base, n_permutations=400, seed=3)
    assert 0.01 <= float((p_null < 0.05).mean()) <= 0.11      # about 5% false positives
    up = rng.poisson(14.0, size=(40, 200)).astype(float)        # +40%
    p_up = permutation_test(up, base, n_permutations=400, seed=3, alternative="greater")
    assert float((p_up < 0.05).mean()) > 0.95
    p_wrong_side = permutation_test(up, base, n_permutations=400, seed=3, alternative="less")
    assert float((p_wrong_side > 0.5).mean()) > 0.95
    # seeded: the same seed gives the same p-values, the smallest possible p is 1/(P+1)
    assert np.array_equal(p_up, permutation_test(up, base, n_permutations=400, seed=3, alternative="greater"))
    assert p_up.min() == pytest.approx(1 / 401)


def test_permutation_test_edge_cases() -> None:
    assert np.isnan(permutation_test(np.zeros((0, 2)), np.ones((3, 2)))).all()
    p = permutation_test(np.ones(5), np.ones(5), n_permutations=50)
    assert p.shape == (1,) and p[0] == 1.0                     # identical samples: no evidence


def test_tuning_test() -> None:
    rng = np.random.default_rng(2)
    groups = ["a", "b", "c"] * 30
    tuned = np.array([{"a": 5.0, "b": 10.0, "c": 15.0}[g] for g in groups])
    counts = np.stack([rng.poisson(tuned), rng.poisson(np.full(90, 10.0))], axis=1).astype(float)
    names, means, p = tuning_test(counts, groups, n_permutations=300, seed=0)
    assert names == ["a", "b", "c"] and means.shape == (3, 2)
    assert p[0] < 0.01 and p[1] > 0.01
    assert means[2, 0] > means[0, 0]


def test_condition_labels() -> None:
    labels = ["max", "max/neuron=1", "max/neuron=2", "max/fallback", "dots/size=2,n=1", "base"]
    assert condition_mask(labels, "max", 1).tolist() == [True, True, False, False, False, False]
    assert condition_mask(labels, "dots", 0).tolist() == [False, False, False, False, True, False]
    assert label_value("dots/size=2,n=1", "n") == "1" and label_value("dots/size=2", "loc") is None


def test_run_analysis_uses_each_neurons_own_images() -> None:
    rng = np.random.default_rng(5)
    n = 60
    labels = ["random"] * n + ["max/neuron=0"] * n + ["max/neuron=1"] * n
    rates = np.full((3 * n, 2), 10.0)
    rates[n:2 * n, 0] = 20.0          # neuron 0's own images drive it (+100%)
    rates[n:2 * n, 1] = 40.0          # ... and neuron 1 too, but those are not neuron 1's images
    counts = rng.poisson(rates).astype(float)
    data = TrialData(counts, labels, ["blk"] * (3 * n))
    step = Analyse(analysis="percent_change", name="m", blocks=["blk"], conditions=["max"], baseline="random",
                   neurons=[0, 1], alternative="greater", n_permutations=500)
    result = run_analysis(step, data)
    (comp,) = result.comparisons
    assert comp.percent_change[0] == pytest.approx(100.0, abs=15.0)
    assert comp.percent_change[1] == pytest.approx(0.0, abs=15.0)
    assert comp.p_values[0] < 0.01 and comp.p_values[1] > 0.01
    assert comp.n_significant == 1 and comp.n_trials == n and comp.n_baseline_trials == n
    assert "1/2 neurons p<0.05" in result.summary
    other = Analyse(analysis="percent_change", name="m", blocks=["other"], conditions=["max"], baseline="random")
    empty = run_analysis(other, data).comparisons[0]
    assert empty.percent_change == [None, None] and empty.p_values == [1.0, 1.0]


@settings(max_examples=40, deadline=None)
@given(n1=st.integers(1, 12), n2=st.integers(1, 12), neurons=st.integers(1, 4), seed=st.integers(0, 10_000),
       scale=st.floats(0.1, 100.0), alternative=st.sampled_from(["two-sided", "greater", "less"]))
def test_permutation_p_values_are_bounded_and_scale_invariant(n1: int, n2: int, neurons: int, seed: int,
                                                             scale: float, alternative: Alternative) -> None:
    rng = np.random.default_rng(seed)
    test = rng.poisson(5.0, size=(n1, neurons)).astype(float)
    base = rng.poisson(5.0, size=(n2, neurons)).astype(float)
    p = permutation_test(test, base, n_permutations=50, seed=seed, alternative=alternative)
    assert p.shape == (neurons,) and np.all(p >= 1 / 51) and np.all(p <= 1.0)
    # rescaling the counts changes neither the p-values nor the percent change
    assert np.allclose(p, permutation_test(test * scale, base * scale, n_permutations=50, seed=seed,
                                           alternative=alternative))
    assert np.allclose(percent_change(test, base), percent_change(test * scale, base * scale), equal_nan=True)
