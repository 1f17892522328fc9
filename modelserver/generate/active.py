"""Active-learning picks: pool images on which the ensemble members disagree most, kept diverse.

Score of an image = sum over neurons of (variance across members of the predicted response)
/ (that neuron's mean variance over a random reference sample of the pool), so every
neuron counts alike whatever its response scale. Picks are taken greedily in score order,
skipping any image closer than ``min_distance`` (RMS difference on 0..1 pixels, 4x
average-pooled) to one already picked: no near-duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from modelserver.compact import preprocess
from modelserver.generate.models import Ensemble, Generated, Pick, check_neurons, model_name
from modelserver.generate.pool import ImagePool, check_k, score_batches
from wire.errors import InvalidRequest


def member_variance(ensemble: Ensemble, x: torch.Tensor) -> torch.Tensor:
    """(N, neurons) variance across members of the predicted responses."""
    out = ensemble(x)
    if out.ndim != 3:
        raise InvalidRequest(f"an ensemble must return (members, N, neurons), got {tuple(out.shape)}")
    return out.var(dim=0, unbiased=False)


def thumbnails(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, features) 0..1 pixels average-pooled by ``factor``."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    return F.avg_pool2d(x, factor).flatten(1).numpy()


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


def active_pool(ensemble: Ensemble, pool: ImagePool, k: int, min_distance: float = 0.04,
                neurons: Sequence[int] | None = None, reference: int = 1024, seed: int = 0,
                batch_size: int = 256, device: torch.device | str = "cpu") -> Generated:
    """Top ``k`` pool images by normalized ensemble disagreement, without near-duplicates."""
    k = check_k(k, len(pool))
    cols = torch.tensor(check_neurons(neurons if neurons is not None else range(ensemble.n_neurons),
                                      ensemble.n_neurons))
    rng = np.random.default_rng(seed)
    ref_idx = np.sort(rng.choice(len(pool), size=min(reference, len(pool)), replace=False))
    with torch.no_grad():
        ref = torch.cat([member_variance(ensemble, preprocess(pool.read(ref_idx[s: s + batch_size]),
                                                              device=device))[:, cols]
                         for s in range(0, len(ref_idx), batch_size)])
    scale = ref.mean(0).clamp_min(1e-12)
    scores = np.empty(len(pool), dtype=np.float64)
    ens_fn = lambda x: member_variance(ensemble, x)  # noqa: E731
    for start, var in score_batches(pool, ens_fn, batch_size, device):
        scores[start: start + len(var)] = (var[:, cols] / scale).sum(1).double().cpu().numpy()
    order = np.argsort(-scores, kind="stable")
    chosen = diverse_greedy(order, pool.read, k, min_distance)
    if len(chosen) < k:
        raise InvalidRequest(f"only {len(chosen)} pool images are at least {min_distance} apart; asked for {k}")
    ids = pool.ids(chosen)
    name = model_name(ensemble, "ensemble")
    picks = [Pick("active", name, None, float(scores[i]), f"pool:{i}:{iid}",
                  {"rank": float(r), "neurons": float(len(cols))})
             for r, (i, iid) in enumerate(zip(chosen, ids, strict=True))]
    return Generated(np.ascontiguousarray(pool.read(chosen)), picks)
