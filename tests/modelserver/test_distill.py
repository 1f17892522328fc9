"""Batched distillation equals one-by-one distillation; export and pruning keep students exact."""

from __future__ import annotations

import numpy as np
import torch

from modelserver.compact import preprocess
from modelserver.distill import DistillConfig, StackedCompact, distill, gaudy, make_pool, predict_students
from modelserver.prune import prune

FILTERS = (4, 4, 3, 3, 3)


def _teacher(images: np.ndarray) -> np.ndarray:
    """Three smooth 'neurons': colour contrasts in different regions (a known function)."""
    x = images.astype(np.float64) / 255.0
    return np.stack([x[:, 30:80, 30:80, 0].mean((1, 2)) - x[:, 30:80, 30:80, 2].mean((1, 2)),
                     x[:, :56, :, 1].mean((1, 2)) - x[:, 56:, :, 1].mean((1, 2)),
                     np.abs(np.diff(x.mean(-1), axis=2)).mean((1, 2))])


def test_pool_has_crops_gaudy_and_noise() -> None:
    base = np.random.default_rng(0).integers(0, 256, (10, 112, 112, 3), dtype=np.uint8)
    pool = make_pool(base, 40, seed=1)
    assert pool.shape == (40, 112, 112, 3) and pool.dtype == np.uint8
    g = gaudy(base[:2])
    assert set(np.unique(g)) <= {0, 255}


def test_batched_distillation_matches_one_by_one() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    pool = make_pool(base, 48, seed=0)
    targets = _teacher(pool)
    cfg = DistillConfig(filters=FILTERS, epochs=2, batch_size=8, lr=3e-3, val_fraction=0.25)
    torch.manual_seed(0)
    init = StackedCompact(3, FILTERS)
    singles = [init.select([j]) for j in range(3)]
    batched, rep = distill(pool, targets, cfg, model=init)
    assert rep.steps == 2 * (36 // 8)
    out_b = predict_students(batched, pool[:10])
    for j in range(3):
        one, _ = distill(pool, targets[j:j + 1], cfg, model=singles[j])
        out_1 = predict_students(one, pool[:10])[0]
        np.testing.assert_allclose(out_b[j], out_1, rtol=2e-3, atol=2e-3 * np.abs(out_1).max())


def test_prune_removes_filters_within_tolerance_and_export_matches() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    pool = make_pool(base, 64, seed=2)
    targets = _teacher(pool)
    model, _ = distill(pool, targets, DistillConfig(filters=(6, 6, 4, 4, 4), epochs=3, batch_size=8))
    rep = prune(model, pool[:32], targets[:, :32], tolerance=0.05)
    assert np.all(rep.filters_after <= rep.filters_before)
    assert rep.filters_after.sum() < rep.filters_before.sum()
    assert np.all(rep.filters_after >= 1)
    assert np.all(rep.r_after >= rep.r_before - 0.05 - 1e-9)
    x = preprocess(pool[:6])
    out = predict_students(model, pool[:6])
    for j in range(3):
        cm = model.export(j)
        assert list(cm.filters) == rep.filters_after[j].tolist()
        with torch.no_grad():
            np.testing.assert_allclose(cm(x).numpy(), out[j], rtol=1e-4, atol=1e-4)


def test_shared_layer0_students_export_and_prune_exactly() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    pool = make_pool(base, 48, seed=3)
    targets = _teacher(pool)
    model, _ = distill(pool, targets, DistillConfig(filters=(6, 5, 4, 4, 4), shared_layer0=True, epochs=2,
                                                    batch_size=8))
    assert model.conv0.weight.shape[0] == 1  # one layer 0 for all students
    rep = prune(model, pool[:24], targets[:, :24], tolerance=0.05)
    assert rep.filters_after[:, 0].min() >= 1
    x = preprocess(pool[:5])
    out = predict_students(model, pool[:5])
    one = model.select([1])
    np.testing.assert_allclose(predict_students(one, pool[:5])[0], out[1], rtol=1e-4, atol=1e-5)
    for j in range(3):
        cm = model.export(j)
        assert list(cm.filters) == rep.filters_after[j].tolist()
        with torch.no_grad():
            np.testing.assert_allclose(cm(x).numpy(), out[j], rtol=1e-4, atol=1e-4)
