"""Batched distillation equals one-by-one distillation; export and pruning keep students exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.compact.distill import (
    DistillConfig,
    StackedCompact,
    distill,
    evaluate,
    gaudy,
    make_pool,
    predict_students,
    teacher_targets,
)
from modelserver.compact.distill_teacher import fold_compact
from modelserver.compact.model import CompactModel, find_compact_models, load_compact_model, preprocess
from modelserver.compact.prune import prune

FILTERS = (4, 4, 3, 3, 3)


def _teacher(images: np.ndarray) -> np.ndarray:
    """Three smooth 'neurons': colour contrasts in different regions (a known function)."""
    x = images.astype(np.float64) / 255.0
    return np.stack([x[:, 30:80, 30:80, 0].mean((1, 2)) - x[:, 30:80, 30:80, 2].mean((1, 2)),
                     x[:, :56, :, 1].mean((1, 2)) - x[:, 56:, :, 1].mean((1, 2)),
                     np.abs(np.diff(x.mean(-1), axis=2)).mean((1, 2))])


def _randomized(model: torch.nn.Module, seed: int) -> None:
    """Perturb all weights and batch-norm statistics (so that exactness tests can fail)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def _members(conv: torch.nn.Module) -> int:
    """How many copies of a stacked convolution there are (1: shared by all students)."""
    w = conv.weight
    assert isinstance(w, torch.Tensor)
    return int(w.shape[0])


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
        np.testing.assert_allclose(out_b[j], out_1, rtol=5e-3, atol=5e-3 * np.abs(out_1).max())


@pytest.mark.parametrize("shared", [0, 1, 2, 3, 4, 6])
def test_masked_students_equal_their_exports_with_filters_removed(shared: int) -> None:
    """A masked filter is a removed filter, for every trunk depth (pending masks included)."""
    torch.manual_seed(shared)
    model = StackedCompact(3, (5, 4, 3, 3, 2), shared=shared)
    _randomized(model, shared)
    g = torch.Generator().manual_seed(10 + shared)
    with torch.no_grad():
        for i in range(5):
            m = (torch.rand(model.mask(i).shape, generator=g) > 0.4).float()
            m[:, 0] = 1.0
            model.mask(i).copy_(m)
    model.eval()
    assert (model.kept_filters() < np.array([5, 4, 3, 3, 2])).any()
    x = torch.randn(4, 3, 112, 112, generator=g) * 60
    with torch.no_grad():
        out = model(x)
        for j in range(3):
            cm = model.export(j)
            assert isinstance(cm, CompactModel) and list(cm.filters) == model.kept_filters()[j].tolist()
            np.testing.assert_allclose(cm(x).numpy(), out[:, j].numpy(), rtol=1e-4,
                                       atol=1e-4 * float(out[:, j].abs().max()))
        np.testing.assert_allclose(model.select([2, 0])(x).numpy(), out[:, [2, 0]].numpy(), rtol=1e-5, atol=1e-5)


def test_shared_trunk_is_computed_once_and_splits_into_students() -> None:
    model = StackedCompact(5, (6, 5, 4, 3, 3), shared=4).eval()
    assert _members(model.conv0) == 1 and _members(model.point[0]) == 1
    assert _members(model.depth[1]) == 1 and _members(model.point[1]) == 5
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a2 = model.layer_input(x, 2)
        a3 = model.layer_input(x, 3)
    assert not isinstance(a2, torch.Tensor) and not a2.stacked and a2.h.shape[1] == 5  # one trunk
    assert not isinstance(a3, torch.Tensor) and a3.stacked and a3.h.shape[1] == 5 * 4  # one map per student


def test_folded_teacher_equals_the_compact_model() -> None:
    torch.manual_seed(0)
    m = CompactModel((6, 5, 3, 4, 2))
    _randomized(m, 1)
    m.eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = m(preprocess(images)).double().numpy()
        np.testing.assert_allclose(fold_compact(m)(preprocess(images)).double().numpy(), ref, rtol=1e-4,
                                   atol=1e-4 * np.abs(ref).max())
    np.testing.assert_allclose(teacher_targets([m, m], images, batch_size=2), np.stack([ref, ref]), rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("shared", [0, 4])
def test_prune_removes_filters_within_tolerance_and_export_matches(shared: int) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)
    pool = make_pool(base, 64, seed=2)
    targets = _teacher(pool)
    model, _ = distill(pool, targets, DistillConfig(filters=(6, 6, 4, 4, 4), shared=shared, epochs=3, batch_size=8))
    joint = (0,) if shared >= 3 else ()
    rep = prune(model, pool[:32], targets[:, :32], tolerance=0.05, chunk=12, joint=joint)
    if joint:  # the trunk's layer 0 lost the same filters in every student: still one computation
        assert bool((model.mask(0) == model.mask(0)[:1]).all())
        assert not model.unmasked(model.layer_input(preprocess(pool[:2]), 1), 1).stacked
    assert np.all(rep.filters_after <= rep.filters_before)
    assert rep.filters_after.sum() < rep.filters_before.sum()
    assert np.all(rep.filters_after >= 1)
    assert np.all(rep.r_after >= rep.r_before - 0.05 - 1e-9)
    np.testing.assert_allclose(rep.r_after, evaluate(model, pool[:32], targets[:, :32]), atol=1e-6)
    x = preprocess(pool[:6])
    out = predict_students(model, pool[:6])
    for j in range(3):
        cm = model.export(j)
        assert list(cm.filters) == rep.filters_after[j].tolist()
        with torch.no_grad():
            np.testing.assert_allclose(cm(x).numpy(), out[j], rtol=1e-4, atol=1e-4 * np.abs(out[j]).max())


def _distilled(seed: int, pool_seed: int, n: int, epochs: int) -> tuple[np.ndarray, np.ndarray, StackedCompact]:
    """A pool of ``n`` images of random bases, the known teacher's targets, three students distilled on it."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    pool = make_pool(rng.integers(0, 256, (12, 112, 112, 3), dtype=np.uint8), n, seed=pool_seed)
    targets = _teacher(pool)
    model, _ = distill(pool, targets, DistillConfig(filters=(6, 6, 4, 4, 4), epochs=epochs, batch_size=8))
    return pool, targets, model


def test_prune_time_budget_and_lazy_evaluation() -> None:
    pool, targets, model = _distilled(seed=4, pool_seed=4, n=48, epochs=2)
    copy = model.select(range(3)).eval()
    rep = prune(model, pool[:24], targets[:, :24], time_budget_s=0.0)
    assert not rep.complete and rep.evaluations == 0 and (rep.filters_after == rep.filters_before).all()
    lazy = prune(model, pool[:24], targets[:, :24], tolerance=0.05)
    full = prune(copy, pool[:24], targets[:, :24], tolerance=0.05, lazy=False)
    assert lazy.complete and full.complete and lazy.evaluations < full.evaluations
    for rep in (lazy, full):
        assert rep.filters_after.sum() < rep.filters_before.sum()
        assert np.all(rep.r_after >= rep.r_before - 0.05 - 1e-9)


def test_prune_floor_min_r_keeps_good_students_above_it_and_weak_ones_as_they_are() -> None:
    pool, targets, model = _distilled(seed=5, pool_seed=6, n=64, epochs=6)
    r0 = evaluate(model, pool[:32], targets[:, :32])
    order = np.sort(r0)
    min_r = float((order[0] + order[1]) / 2)  # one student below the floor, two above it
    free = prune(model.select(range(3)).eval(), pool[:32], targets[:, :32], tolerance=0.5)
    rep = prune(model, pool[:32], targets[:, :32], tolerance=0.5, min_r=min_r)
    weak, good = int(np.argmin(r0)), r0 >= min_r
    assert free.r_after[weak] < r0[weak] - 1e-6  # without the floor, a loose tolerance costs the weak one
    assert rep.r_after[weak] >= r0[weak] - 1e-9
    assert np.all(rep.r_after[good] >= min_r - 1e-9)
    assert rep.filters_after.sum() < rep.filters_before.sum()


def test_shared_layer0_flag_still_means_one_layer0() -> None:
    model = StackedCompact(3, FILTERS, shared_layer0=True)
    assert model.shared == 1 and _members(model.conv0) == 1 and _members(model.depth[0]) == 3


@pytest.mark.v4
@pytest.mark.slow
def test_two_published_teachers_are_distilled_to_a_high_correlation(v4_dir: Path) -> None:
    """Two real V4 compact models as teachers: batched students reach a high r on unseen pool images."""
    from modelserver.training.data import load_images

    torch.set_num_threads(1)
    teachers = [load_compact_model(p) for p in find_compact_models(v4_dir / "compact_models", "190923")[1:3]]
    pool = make_pool(load_images(v4_dir, "190925"), 1664, seed=0)
    y = teacher_targets(teachers, pool, bfloat16=True)
    np.testing.assert_allclose(y[:, :8], teacher_targets(teachers, pool[:8]), rtol=0.05,
                               atol=0.02 * float(np.abs(y).max()))
    cfg = DistillConfig(filters=(8, 16, 4, 4, 4), shared=4, readout_rank=2, epochs=5, batch_size=32, lr=5e-3,
                        val_fraction=0.05)
    students, _ = distill(pool[:1536], y[:, :1536], cfg)
    r = evaluate(students, pool[1536:], y[:, 1536:])
    assert r.min() >= 0.8, r
    with torch.no_grad():
        x = preprocess(pool[1536:1544])
        np.testing.assert_allclose(students.export(1)(x).numpy(), predict_students(students, pool[1536:1544])[1],
                                   rtol=1e-4, atol=1e-4 * float(np.abs(y[1]).max()))
