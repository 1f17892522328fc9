"""Generation without data: random small compact models, tiny pools, bad input -> typed errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from modelserver.compact.model import preprocess
from modelserver.generate.active import active_pool, pairwise_rms, thumbnails
from modelserver.generate.adversarial import adversarial
from modelserver.generate.dots import dot_stimuli
from modelserver.generate.maximize import StreamingTopK, maximize_pool
from modelserver.generate.models import (
    CompactStack,
    Generated,
    MemberEnsemble,
    paired_responses,
    perturbed_ensemble,
    pixels_to_input,
)
from modelserver.generate.pool import (
    ImagePool,
    PoolFormatError,
    build_pool,
    fit_image,
    gaudy,
    natural_crops,
    responses_of,
)
from modelserver.generate.smooth import smooth_images
from modelserver.generate.synthesize import SynthesisConfig, synthesize
from tests.generate.conftest import random_images, random_stack
from wire.base import image_id
from wire.errors import InvalidRequest, NotFound


def test_pool_roundtrip_and_ids(small_pool: Path) -> None:
    imgs = random_images(40, seed=3)
    with ImagePool(small_pool) as pool:
        assert len(pool) == 40
        np.testing.assert_array_equal(pool.read([5, 2, 5, 39]), imgs[[5, 2, 5, 39]])
        assert pool.ids([3]) == [image_id(imgs[3])]
        seen = np.concatenate([b for _, b in pool.batches(16)])
        np.testing.assert_array_equal(seen, imgs)
        with pytest.raises(InvalidRequest):
            pool.read([40])


@pytest.mark.parametrize("dtype,shape", [(np.float32, (4, 112, 112, 3)), (np.uint8, (4, 64, 64, 3)),
                                         (np.uint8, (4, 112, 112))])
def test_pool_with_wrong_dtype_or_shape_is_a_typed_error(tmp_path: Path, dtype: type, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["images"] = np.zeros(shape, dtype=dtype)
        f["ids"] = np.array([b"x" * 32] * shape[0])
    with pytest.raises(PoolFormatError) as err:
        ImagePool(path)
    assert isinstance(err.value, InvalidRequest) and err.value.code == "invalid"


def test_missing_or_non_hdf5_pool(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        ImagePool(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(PoolFormatError):
        ImagePool(tmp_path / "junk.h5")


def test_gaudy_crops_and_fit() -> None:
    imgs = random_images(3)
    g = gaudy(imgs)
    assert set(np.unique(g)) <= {0, 255} and g.shape == imgs.shape
    src = [np.full((200, 300, 3), 7, np.uint8), random_images(1)[0]]
    crops = np.concatenate(list(natural_crops(src, 10, seed=4, batch_size=4)))
    assert crops.shape == (10, 112, 112, 3) and crops.dtype == np.uint8
    again = np.concatenate(list(natural_crops(src, 10, seed=4, batch_size=4)))
    np.testing.assert_array_equal(crops, again)
    assert fit_image(np.zeros((50, 80, 3), np.uint8)).shape == (112, 112, 3)


def test_streaming_topk_matches_full_sort() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(103, 3))
    top = StreamingTopK(7, 3)
    for s in range(0, 103, 10):
        top.update(s, torch.as_tensor(scores[s: s + 10]))
    want = np.argsort(-scores, axis=0, kind="stable")[:7]
    np.testing.assert_array_equal(top.indices.numpy(), want)


def test_paired_responses_match_full_forward(small_stack: CompactStack) -> None:
    x = preprocess(random_images(5, seed=9))
    which = torch.tensor([3, 0, 3, 1, 2])
    with torch.no_grad():
        full = small_stack(x)
        paired = paired_responses(small_stack, x, which)
    torch.testing.assert_close(paired, full[torch.arange(5), which])


def test_maximize_is_the_true_top_k(small_stack: CompactStack, small_pool: Path) -> None:
    imgs = random_images(40, seed=3)
    r = responses_of(small_stack, imgs)
    with ImagePool(small_pool) as pool:
        gen = maximize_pool(small_stack, pool, [2, 0], k=3, batch_size=16)
    for j, n in enumerate([2, 0]):
        want = np.argsort(-r[:, n], kind="stable")[:3]
        np.testing.assert_array_equal(gen.images[3 * j: 3 * j + 3], imgs[want])
        assert [p.neuron for p in gen.picks[3 * j: 3 * j + 3]] == [n] * 3
        np.testing.assert_allclose([p.score for p in gen.picks[3 * j: 3 * j + 3]], r[want, n], rtol=1e-4)


def test_bad_k_and_unknown_neuron(small_stack: CompactStack, small_pool: Path) -> None:
    with ImagePool(small_pool) as pool:
        with pytest.raises(InvalidRequest, match="larger than the pool"):
            maximize_pool(small_stack, pool, [0], k=41)
        with pytest.raises(NotFound):
            maximize_pool(small_stack, pool, [4], k=1)
        ens = perturbed_ensemble(small_stack, 2, seed=0)
        with pytest.raises(InvalidRequest):
            active_pool(ens, pool, k=100)
        with pytest.raises(NotFound):
            active_pool(ens, pool, k=2, neurons=[9])
    with pytest.raises(NotFound):
        synthesize(small_stack, [-1], config=SynthesisConfig(steps=1))
    with pytest.raises(InvalidRequest):
        adversarial(small_stack, random_images(2).astype(np.float32).astype(np.uint16).astype(np.uint8)[:1],
                    [0, 1])


def test_active_picks_disagreement_without_near_duplicates(small_stack: CompactStack, tmp_path: Path) -> None:
    ens = perturbed_ensemble(random_stack(2, seed=7), 3, rel_noise=0.3, seed=2)
    base = random_images(24, seed=5)
    with torch.no_grad():
        var = ens(preprocess(base)).var(0, unbiased=False)
    score = (var / var.mean(0)).sum(1).numpy()
    top = np.argsort(-score)[:4]
    dup = np.clip(base[top].astype(int) + 1, 0, 255).astype(np.uint8)  # near-duplicates of the best images
    path = tmp_path / "dup.h5"
    build_pool(path, [base, dup])
    with ImagePool(path) as pool:
        gen = active_pool(ens, pool, k=6, min_distance=0.02, reference=16, batch_size=16)
        loose = active_pool(ens, pool, k=6, min_distance=0.0, reference=16, batch_size=16)
    th = thumbnails(gen.images)
    d = pairwise_rms(th, th) + np.eye(6)
    assert d.min() >= 0.02
    th_loose = thumbnails(loose.images)
    assert (pairwise_rms(th_loose, th_loose) + np.eye(6)).min() < 0.02  # without the rule, duplicates come in
    assert all(p.method == "active" and p.neuron is None for p in gen.picks)
    assert [p.score for p in gen.picks] == sorted([p.score for p in gen.picks], reverse=True)


def test_synthesis_is_deterministic_and_raises_response(small_stack: CompactStack) -> None:
    cfg = SynthesisConfig(steps=8)
    a = synthesize(small_stack, [0, 3], seed=5, config=cfg)
    b = synthesize(small_stack, [0, 3], seed=5, config=cfg)
    c = synthesize(small_stack, [0, 3], seed=6, config=cfg)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    start = synthesize(small_stack, [0, 3], seed=5, config=SynthesisConfig(steps=0))
    assert all(p.score > q.score for p, q in zip(a.picks, start.picks, strict=True))


def test_synthesized_images_of_one_neuron_differ(small_stack: CompactStack) -> None:
    """The diversity term keeps a neuron's restarts apart (without it they converge together)."""
    def spread(diversity: float) -> float:
        g = synthesize(small_stack, [1], per_neuron=3, seed=2, config=SynthesisConfig(steps=12, diversity=diversity))
        th = thumbnails(g.images)
        return float(pairwise_rms(th, th)[np.triu_indices(3, 1)].mean())

    assert spread(1.0) > 2 * spread(0.0)


def test_adversarial_respects_thresholds(small_stack: CompactStack) -> None:
    base = random_images(4, seed=11)
    up = adversarial(small_stack, base, [0, 1, 2, 3], "+", max_abs=3, max_l2=150.0, step=1.0, steps=4)
    down = adversarial(small_stack, base, [0, 1, 2, 3], "-", max_abs=2.5, step=1.0, steps=4)
    for gen in (up, down):
        change = gen.images.astype(int) - base.astype(int)
        assert 1 <= np.abs(change).max() <= 3
    up_change = (up.images.astype(float) - base).reshape(4, -1)
    assert np.linalg.norm(up_change, axis=1).max() <= 150.0
    for p, q in zip(up.picks, down.picks, strict=True):
        assert p.score > p.details["base_response"] > q.score


def test_smooth_and_controls(small_stack: CompactStack) -> None:
    base = random_images(2, seed=13)
    sm, ctrl = smooth_images(small_stack, base, [0, 1], grid=4, max_patches=3, seed=0)
    assert sm.images.shape == ctrl.images.shape == base.shape
    for p, q in zip(sm.picks, ctrl.picks, strict=True):
        assert p.details["smoothed_pixels"] == q.details["smoothed_pixels"] == 3 * 28 * 28
        assert p.score <= p.details["base_response"]
    with pytest.raises(InvalidRequest):
        smooth_images(small_stack, base, [0, 1], grid=2, max_patches=5)


def test_dots() -> None:
    stack = random_stack(2, seed=4)
    gen = dot_stimuli(radii=(3, 8), counts=(1, 3), per_condition=2, seed=1, model=stack)
    assert gen.images.shape == (8, 112, 112, 3)
    assert {p.details["count"] for p in gen.picks} == {1.0, 3.0}
    assert all(p.neuron in (0, 1) for p in gen.picks)
    again = dot_stimuli(radii=(3, 8), counts=(1, 3), per_condition=2, seed=1)
    np.testing.assert_array_equal(gen.images, again.images)
    with pytest.raises(InvalidRequest):
        dot_stimuli(radii=(40,), counts=(20,))


def test_member_ensemble_needs_matching_members() -> None:
    with pytest.raises(InvalidRequest):
        MemberEnsemble([random_stack(2), random_stack(3)])


def test_active_strategies_differ_and_random_is_seeded(tmp_path: Path) -> None:
    """ensemble_variance, max_entropy and random pick differently; candidates limits what is scored."""
    ens = perturbed_ensemble(random_stack(3, seed=7), 4, rel_noise=0.3, seed=2)
    path = tmp_path / "pool.h5"
    build_pool(path, [random_images(48, seed=5)])
    kw = {"min_distance": 0.0, "reference": 16, "batch_size": 16}
    with ImagePool(path) as pool:
        picks = {s: active_pool(ens, pool, k=5, strategy=s, **kw).picks  # type: ignore[arg-type]
                 for s in ("ensemble_variance", "max_entropy", "random")}
        again = active_pool(ens, pool, k=5, strategy="random", **kw)  # type: ignore[arg-type]
        few = active_pool(ens, pool, k=5, candidates=8, seed=2, **kw)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="unknown active-learning strategy"):
            active_pool(ens, pool, k=2, strategy="greedy")
        with pytest.raises(InvalidRequest, match="3 candidates cannot give 5"):
            active_pool(ens, pool, k=5, candidates=3)
    ids = {s: [p.source for p in ps] for s, ps in picks.items()}
    assert ids["random"] == [p.source for p in again.picks]
    assert len({tuple(v) for v in ids.values()}) == 3, ids
    for s in ("ensemble_variance", "max_entropy"):
        scores = [p.score for p in picks[s]]
        assert scores == sorted(scores, reverse=True)
    assert len({p.source for p in few.picks}) == 5


def test_active_never_picks_excluded_images(tmp_path: Path) -> None:
    """A prefetched request made before the last picks were shown must not pick them again."""
    ens = perturbed_ensemble(random_stack(3, seed=7), 4, rel_noise=0.3, seed=2)
    path = tmp_path / "pool.h5"
    build_pool(path, [random_images(20, seed=5)])
    kw = {"min_distance": 0.0, "reference": 16, "batch_size": 16}
    with ImagePool(path) as pool:
        first = active_pool(ens, pool, k=5, **kw)  # type: ignore[arg-type]
        shown = [image_id(im) for im in first.images]
        second = active_pool(ens, pool, k=5, exclude=shown, **kw)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="only 10 candidates are left"):
            active_pool(ens, pool, k=11, exclude=shown + [image_id(im) for im in second.images], **kw)  # type: ignore[arg-type]
    assert not {image_id(im) for im in second.images} & set(shown)


def test_adversarial_smooth_steps_stay_in_budget_and_are_smooth(small_stack: CompactStack) -> None:
    base = random_images(4, seed=11)
    signed = adversarial(small_stack, base, [0, 1, 2, 3], "+", max_abs=16, max_l2=400.0, steps=20)
    smooth = adversarial(small_stack, base, [0, 1, 2, 3], "+", max_abs=16, max_l2=400.0, steps=20, blur=2.0)
    for gen in (signed, smooth):
        change = gen.images.astype(float) - base
        assert np.abs(change).max() <= 16
        assert np.linalg.norm(change.reshape(4, -1), axis=1).max() <= 400.0
        assert all(p.score > p.details["base_response"] for p in gen.picks)

    def roughness(gen: Generated) -> float:  # neighbour differences of the change relative to its size
        d = gen.images.astype(float) - base
        return float(np.abs(np.diff(d, axis=2)).mean() / (np.abs(d).mean() + 1e-9))
    assert roughness(smooth) < 0.5 * roughness(signed)
    with pytest.raises(InvalidRequest, match="L2 budget"):
        adversarial(small_stack, base, [0, 1, 2, 3], "+", blur=2.0)


def test_adversarial_jittered_steps_hold_under_shifts(small_stack: CompactStack) -> None:
    """Steps taken on shifted and rescaled views: the budget holds, the seed fixes the result, and
    the change raises the response of shifted copies of the image more than a change tuned to one
    position does."""
    base = random_images(4, seed=17)
    kw = {"max_abs": 16, "max_l2": 400.0, "steps": 20, "blur": 2.0}
    still = adversarial(small_stack, base, [0, 1, 2, 3], "+", **kw)  # type: ignore[arg-type]
    moved = adversarial(small_stack, base, [0, 1, 2, 3], "+", jitter=6, scale_jitter=0.1, seed=3, **kw)  # type: ignore[arg-type]
    again = adversarial(small_stack, base, [0, 1, 2, 3], "+", jitter=6, scale_jitter=0.1, seed=3, **kw)  # type: ignore[arg-type]
    other = adversarial(small_stack, base, [0, 1, 2, 3], "+", jitter=6, scale_jitter=0.1, seed=4, **kw)  # type: ignore[arg-type]
    assert np.array_equal(moved.images, again.images) and not np.array_equal(moved.images, other.images)
    change = moved.images.astype(float) - base
    assert np.abs(change).max() <= 16 and np.linalg.norm(change.reshape(4, -1), axis=1).max() <= 400.0
    assert all(p.score > p.details["base_response"] for p in moved.picks)

    def gain_under_shifts(gen: Generated) -> float:  # mean rise over shifts of base and change alike
        def shifted(images: np.ndarray, dy: int, dx: int) -> torch.Tensor:
            moved = np.roll(images, (dy, dx), axis=(1, 2))
            with torch.no_grad():
                out: torch.Tensor = small_stack(pixels_to_input(torch.as_tensor(moved).permute(0, 3, 1, 2).float()))
            return out
        rises = []
        for dy, dx in ((-5, 0), (5, 0), (0, -5), (0, 5), (4, 4), (-4, -4)):
            r, r0 = shifted(gen.images, dy, dx), shifted(base, dy, dx)
            rises.append((r - r0)[torch.arange(4), torch.arange(4)].mean().item())
        return float(np.mean(rises))
    assert gain_under_shifts(moved) > 1.5 * gain_under_shifts(still)
    with pytest.raises(InvalidRequest, match="scale_jitter"):
        adversarial(small_stack, base, [0, 1, 2, 3], "+", scale_jitter=0.6, **kw)  # type: ignore[arg-type]


def test_smooth_shortlist_tries_fewer_patches_and_still_lowers(small_stack: CompactStack) -> None:
    base = random_images(3, seed=13)
    calls: list[int] = []

    class Counting:
        n_neurons = small_stack.n_neurons

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return small_stack(x)
    exact, _ = smooth_images(Counting(), base, [0, 1, 2], grid=6, max_patches=6, seed=0)  # type: ignore[arg-type]
    n_exact, calls[:] = sum(calls), []
    quick, ctrl = smooth_images(Counting(), base, [0, 1, 2], grid=6, max_patches=6, seed=0,  # type: ignore[arg-type]
                                shortlist=4)
    assert sum(calls) < 0.3 * n_exact
    drop = [p.details["base_response"] - p.score for p in exact.picks]
    quick_drop = [p.details["base_response"] - p.score for p in quick.picks]
    assert all(d > 0 for d in quick_drop)
    assert sum(quick_drop) >= 0.7 * sum(drop), (quick_drop, drop)
    assert all(p.details["patches"] == q.details["patches"] == 6 for p, q in zip(quick.picks, ctrl.picks, strict=True))
