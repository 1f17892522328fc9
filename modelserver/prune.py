"""Filter pruning of compact students by Abbasi-Asl & Yu's greedy accuracy-reduction index (RAR).

For each layer, deepest first: try removing each remaining filter, keep the removal that costs
the least accuracy (correlation with the teacher on held-out images), and repeat until the next
removal would fall below the tolerance. All students of a :class:`~modelserver.distill.StackedCompact`
are pruned at once: trying "filter j of layer L" masks that filter in every student in one
forward pass, and each student then takes its own decision. The activity below layer L is cached
while layer L is pruned, so a candidate costs only the layers above it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from modelserver.compact import preprocess
from modelserver.distill import StackedCompact
from modelserver.metrics import pearson_r

__all__ = ["PruneReport", "prune"]


@dataclass
class PruneReport:
    filters_before: np.ndarray  # (n, 5)
    filters_after: np.ndarray  # (n, 5)
    r_before: np.ndarray  # (n,)
    r_after: np.ndarray  # (n,)
    evaluations: int
    seconds: float


@torch.no_grad()
def prune(model: StackedCompact, images: np.ndarray, targets: np.ndarray, *, tolerance: float = 0.02,
          min_r: float | None = None, layers: tuple[int, ...] = (4, 3, 2, 1, 0),
          device: torch.device | str = "cpu") -> PruneReport:
    """Prune ``model`` in place (its masks). ``targets``: (n, K) teacher outputs on ``images``.

    A student stops losing filters in a layer when its best removal would leave its correlation
    below ``r_before - tolerance`` (and below ``min_r``, where given and reached before pruning).
    Every layer keeps at least one filter.
    """
    t0 = time.monotonic()
    model.eval()
    x = preprocess(images, device=device)
    y = np.asarray(targets, np.float64)
    before = model.kept_filters()

    def score(out: torch.Tensor) -> np.ndarray:
        return np.nan_to_num(pearson_r(out.T.double().cpu().numpy(), y), nan=-1.0)

    r0 = score(model(x))
    floor = r0 - tolerance
    if min_r is not None:
        floor = np.where(r0 >= min_r, np.maximum(floor, min_r), floor)
    evals = 0
    for layer in layers:
        mask = model.mask(layer)
        pre = model.unmasked(model.layer_input(x, layer), layer)
        active = np.ones(model.n, dtype=bool)
        while True:
            active &= mask.sum(1).cpu().numpy() > 1
            if not active.any():
                break
            cand = np.full((model.n, mask.shape[1]), -np.inf)
            act_t = torch.as_tensor(active, device=mask.device)
            for j in range(mask.shape[1]):
                alive = (mask[:, j] > 0) & act_t
                if not bool(alive.any()):
                    continue
                saved = mask[:, j].clone()
                mask[alive, j] = 0.0
                r = score(model.from_pre(pre, layer))
                mask[:, j] = saved
                evals += 1
                sel = alive.cpu().numpy()
                cand[sel, j] = r[sel]
            best = cand.argmax(1)
            best_r = cand[np.arange(model.n), best]
            remove = active & (best_r >= floor)
            if not remove.any():
                break
            idx = np.flatnonzero(remove)
            mask[torch.as_tensor(idx, device=mask.device), torch.as_tensor(best[idx], device=mask.device)] = 0.0
            active &= remove
    r1 = score(model(x))
    return PruneReport(before, model.kept_filters(), r0, r1, evals, time.monotonic() - t0)
