"""Matching recorded neurons to model neurons (controller/matching.py)."""

from __future__ import annotations

import numpy as np
import pytest

from controller.matching import Match, assign, repeats_array, score_matrix


def test_repeats_array_groups_trials_by_image_in_first_shown_order() -> None:
    counts = np.array([[1.0, 10], [2, 20], [3, 30], [4, 40], [5, 50]])
    uniq, raw = repeats_array(counts, ["b", "a", "b", "b", "a"])
    assert uniq == ["b", "a"] and raw.shape == (2, 2, 3)
    np.testing.assert_array_equal(raw[0, 0], [1, 3, 4])
    np.testing.assert_array_equal(raw[1, 1, :2], [20, 50])
    assert np.isnan(raw[1, 1, 2])


def _population(seed: int = 0, images: int = 40, repeats: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Tuning of 4 neurons over images, and noisy single trials of them."""
    rng = np.random.default_rng(seed)
    tuning = rng.gamma(2.0, 2.0, (4, images))
    raw = rng.poisson(np.repeat(tuning[..., None], repeats, axis=2)).astype(float)
    return tuning, raw


def test_scores_find_each_neurons_own_model_and_refuse_anticorrelated_ones() -> None:
    tuning, raw = _population()
    for metric in ("pearson_r", "r2_er"):
        s = score_matrix(raw, tuning, metric)  # type: ignore[arg-type]
        assert s.shape == (4, 4)
        assert (np.argmax(s, axis=1) == np.arange(4)).all(), (metric, s)
        anti = score_matrix(raw, -tuning, metric)  # type: ignore[arg-type]
        assert (np.diag(anti) < 0).all(), (metric, anti)
    # a noise-free model explains all the explainable variance: r2_er near 1 though r < 1
    r2, r = score_matrix(raw, tuning, "r2_er"), score_matrix(raw, tuning, "pearson_r")
    assert np.median(np.diag(r2)) > 0.8 and (np.diag(r2) > np.diag(r) ** 2).all()
    with pytest.raises(ValueError, match="held-out images"):
        score_matrix(raw, tuning[:, :5])
    assert np.isnan(score_matrix(raw[:, :2], tuning[:, :2])).all()  # two images: no score


def test_best_lets_a_neuron_take_a_neighbours_model_and_one_to_one_does_not() -> None:
    # recorded 1's own model (1) predicts it worse than model 0 does; model 0 fits recorded 0 best
    s = np.array([[0.9, 0.2, 0.1],
                  [0.7, 0.6, 0.0],
                  [0.1, 0.1, 0.8]])
    best = assign({"s": s}, "best", 0.3)
    assert [(m.neuron, m.model) for m in best] == [(0, 0), (2, 2), (1, 0)]
    one = assign({"s": s}, "one_to_one", 0.3)
    assert one == [Match(0, "s", 0, 0.9), Match(2, "s", 2, 0.8), Match(1, "s", 1, 0.6)]
    # below min_score nothing is matched, not even as a second choice
    assert [(m.neuron, m.model) for m in assign({"s": s}, "one_to_one", 0.65)] == [(0, 0), (2, 2)]


def test_best_searches_every_session_and_one_to_one_keeps_one_population() -> None:
    early = np.array([[0.95, 0.1], [0.2, 0.3]])
    late = np.array([[0.8, 0.1], [0.1, 0.7]])
    best = assign({"early": early, "late": late}, "best", 0.0)
    assert {(m.neuron, m.session, m.model) for m in best} == {(0, "early", 0), (1, "late", 1)}
    one = assign({"early": early, "late": late}, "one_to_one", 0.0)  # 1.5 beats 1.25
    assert {(m.neuron, m.session, m.model) for m in one} == {(0, "late", 0), (1, "late", 1)}
    assert assign({}, "one_to_one") == [] and assign({}, "best") == []
    nan = np.full((2, 2), np.nan)
    assert assign({"s": nan}, "best", -1.0) == [] and assign({"s": nan}, "one_to_one", -1.0) == []
    with pytest.raises(ValueError, match="assignment"):
        assign({"s": late}, "hungarian")  # type: ignore[arg-type]


def test_one_to_one_recovers_a_shuffled_population_where_best_collapses() -> None:
    """Two neurons with correlated tuning, one of them badly modelled: best sends both through the
    good model; one-to-one gives each its own."""
    rng = np.random.default_rng(3)
    base = rng.gamma(2.0, 2.0, 60)
    tuning = np.stack([base, 0.8 * base + 0.6 * rng.gamma(2.0, 2.0, 60), rng.gamma(2.0, 2.0, 60)])
    raw = rng.poisson(np.repeat(tuning[..., None], 3, axis=2)).astype(float)
    models = tuning.copy()
    models[1] = 0.3 * tuning[1] + rng.normal(0, 2.0, 60)  # a poor model of neuron 1
    order = np.array([2, 0, 1])  # the model session lists its neurons in another order
    s = score_matrix(raw, models[order])
    best = {m.neuron: order[m.model] for m in assign({"s": s}, "best", 0.1)}
    one = {m.neuron: order[m.model] for m in assign({"s": s}, "one_to_one", 0.1)}
    assert best[1] == 0 and one == {0: 0, 1: 1, 2: 2}, (s, best, one)
