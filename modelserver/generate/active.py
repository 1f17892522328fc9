"""Active-learning picks: pool images on which the ensemble members disagree most, kept diverse.

Strategies (the protocol's ``active.strategy``): ``ensemble_variance`` scores an image by the
sum over neurons of (variance across members of the predicted response) / (that neuron's mean
variance over a random reference sample of the pool), so every neuron counts alike whatever its
response scale; ``max_entropy`` by the entropy of the predicted count distribution (Poisson
noise plus member disagreement); ``random`` is the control. Only ``candidates`` random pool
images are scored when given (the protocol's ``pool_size``). Picks are taken greedily in score order,
skipping any image closer than ``min_distance`` (RMS difference on 0..1 pixels, 4x
average-pooled) to one already picked: no near-duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Literal

import numpy as np
import torch

from modelserver.generate.limits import StopCheck, stop_point
from modelserver.generate.models import Ensemble, Generated, Pick, check_neurons, model_name
from modelserver.generate.pool import ImagePool, check_k, score_rows
from wire.errors import InvalidRequest


def member_variance(ensemble: Ensemble, x: torch.Tensor) -> torch.Tensor:
    """(N, neurons) variance across members of the predicted responses."""
    out = ensemble(x)
    if out.ndim != 3:
        raise InvalidRequest(f"an ensemble must return (members, N, neurons), got {tuple(out.shape)}")
    return out.var(dim=0, unbiased=False)


def thumbnails(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, features) 0..1 pixels average-pooled by ``factor``.

    Bookkeeping on the pool's uint8 pixels (numpy), not model compute."""
    x = np.asarray(images)
    n, h, w = x.shape[0], x.shape[1] // factor, x.shape[2] // factor
    x = x[:, :h * factor, :w * factor].reshape(n, h, factor, w, factor, 3).astype(np.float32)
    return (x.mean(axis=(2, 4)) / 255.0).reshape(n, -1)


def pairwise_rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS distance between rows of thumbnail matrices a (n, d) and b (m, d) -> (n, m)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0) / a.shape[1])


def diverse_greedy(order: np.ndarray, images_of: Callable[[np.ndarray], np.ndarray], k: int, min_distance: float,
                   block: int = 512) -> list[int]:
    """Walk ``order`` (best first) and keep items at least ``min_distance`` from all kept ones."""
    kept: list[int] = []
    kept_thumbs: list[np.ndarray] = []
    for s in range(0, len(order), block):
        ids = order[s: s + block]
        th = thumbnails(images_of(ids))
        for i, t in zip(ids, th, strict=True):
            if kept_thumbs and min_distance > 0:
                if pairwise_rms(t[None], np.stack(kept_thumbs)).min() < min_distance:
                    continue
            kept.append(int(i))
            kept_thumbs.append(t)
            if len(kept) == k:
                return kept
    return kept


Strategy = Literal["ensemble_variance", "max_entropy", "random"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]


def _scores(ensemble: Ensemble, pool: ImagePool, cand: np.ndarray, cols: torch.Tensor, strategy: str,
            ref_idx: np.ndarray, batch_size: int, device: torch.device | str,
            should_stop: StopCheck | None = None) -> np.ndarray:
    """Acquisition score of each candidate (higher: more informative).

    ``ensemble_variance``: sum over neurons of the members' variance, each neuron's divided by its
    mean over the reference sample. ``max_entropy``: sum over neurons of the entropy of a Gaussian
    approximation of the predictive count distribution, variance = mean prediction (Poisson noise)
    + member variance, relative to the reference sample (0.5 log(v / mean reference v)).
    """
    def stats(idx: np.ndarray) -> torch.Tensor:
        out = []
        def shards() -> Iterator[tuple[int, np.ndarray]]:
            for s in range(0, len(idx), batch_size):
                stop_point(should_stop, "gen.active")
                yield s, pool.read(idx[s: s + batch_size])

        with torch.no_grad():
            for _, pred in score_rows(ensemble, shards(), device):  # here, or on a cluster's scorers
                if pred.ndim != 3:
                    raise InvalidRequest(f"an ensemble must return (members, N, neurons), got {tuple(pred.shape)}")
                var = pred.var(dim=0, unbiased=False)
                if strategy == "max_entropy":
                    var = var + pred.mean(0).clamp_min(0.0)
                out.append(var[:, cols].double().cpu())
        return torch.cat(out)

    scale = stats(ref_idx).mean(0).clamp_min(1e-12)
    v = stats(cand) / scale
    return (0.5 * v.clamp_min(1e-12).log() if strategy == "max_entropy" else v).sum(1).numpy()


def active_pool(ensemble: Ensemble, pool: ImagePool, k: int, min_distance: float = 0.04,
                neurons: Sequence[int] | None = None, reference: int = 1024, seed: int = 0,
                batch_size: int = 256, device: torch.device | str = "cpu", strategy: str = "ensemble_variance",
                candidates: int | None = None, exclude: Collection[str] = (),
                should_stop: StopCheck | None = None) -> Generated:
    """Top ``k`` of ``candidates`` random pool images (all: None) by ``strategy``, without near-duplicates
    and without the images in ``exclude`` (ids already shown or picked: a prefetched request made
    before the last picks were shown must not pick them again).

    ``random`` scores nothing: a seeded random order of the candidates (the control policy).
    ``should_stop`` is tested before every scored batch (a true answer raises ``Cancelled``).
    """
    if strategy not in STRATEGIES:
        raise InvalidRequest(f"unknown active-learning strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    k = check_k(k, len(pool))
    if candidates is not None and candidates < k:
        raise InvalidRequest(f"{candidates} candidates cannot give {k} picks")
    cols = torch.tensor(check_neurons(neurons if neurons is not None else range(ensemble.n_neurons),
                                      ensemble.n_neurons))
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(len(pool), size=min(reference, len(pool)), replace=False))
    n = len(pool) if candidates is None else min(candidates, len(pool))
    cand = np.arange(len(pool)) if n == len(pool) else np.sort(rng.choice(len(pool), size=n, replace=False))
    if exclude:
        skip = set(exclude)
        cand = cand[[i not in skip for i in pool.ids(cand)]]
        if len(cand) < k:
            raise InvalidRequest(f"only {len(cand)} candidates are left after excluding {len(skip)} images; "
                                 f"asked for {k}")
    if strategy == "random":
        scores = np.zeros(len(cand))
        order = rng.permutation(len(cand))
    else:
        scores = _scores(ensemble, pool, cand, cols, strategy, ref_idx, batch_size, device, should_stop)
        order = np.argsort(-scores, kind="stable")
    chosen_pos = diverse_greedy(order, lambda pos: pool.read(cand[pos]), k, min_distance)
    if len(chosen_pos) < k:
        raise InvalidRequest(f"only {len(chosen_pos)} pool images are at least {min_distance} apart; asked for {k}")
    chosen = [int(cand[p]) for p in chosen_pos]
    ids = pool.ids(chosen)
    name = model_name(ensemble, "ensemble")
    picks = [Pick("active", name, None, float(scores[p]), f"pool:{i}:{iid}",
                  {"rank": float(r), "neurons": float(len(cols))})
             for r, (p, i, iid) in enumerate(zip(chosen_pos, chosen, ids, strict=True))]
    return Generated(np.ascontiguousarray(pool.read(chosen)), picks)
