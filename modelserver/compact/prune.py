"""Filter pruning of compact students by Abbasi-Asl & Yu's greedy accuracy-reduction index (RAR).

For each layer, deepest first: try removing each remaining filter, keep the removal that costs
the least accuracy (correlation with the teacher on held-out images), and repeat until the next
removal would fall below the tolerance. All students of a :class:`~modelserver.compact.distill.StackedCompact`
are pruned at once: trying "filter j of layer L" masks that filter in every student in one
forward pass, and each student then takes its own decision. Layer L's activity is cached while
layer L is pruned, so a candidate costs only the layers above it; on a shared trunk a candidate's
mask stays pending until the students' computations split (see :mod:`modelserver.compact.distill_stack`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from modelserver.compact.distill import StackedCompact
from modelserver.compact.distill_stack import Act
from modelserver.compact.model import preprocess
from modelserver.training.metrics import pearson_r

__all__ = ["PruneReport", "prune"]


@dataclass
class PruneReport:
    filters_before: np.ndarray  # (n, 5)
    filters_after: np.ndarray  # (n, 5)
    r_before: np.ndarray  # (n,)
    r_after: np.ndarray  # (n,)
    evaluations: int
    seconds: float
    complete: bool = True  # False where the time budget ended pruning early


@torch.no_grad()
def prune(model: StackedCompact, images: np.ndarray, targets: np.ndarray, *, tolerance: float = 0.02,
          min_r: float | None = None, layers: tuple[int, ...] = (4, 3, 2, 1, 0),
          device: torch.device | str = "cpu", chunk: int = 32, joint: tuple[int, ...] = (),
          lazy: bool = True, time_budget_s: float | None = None) -> PruneReport:
    """Prune ``model`` in place (its masks). ``targets``: (n, K) teacher outputs on ``images``.

    A student stops losing filters in a layer when its best removal would leave its correlation
    below ``r_before - tolerance``, or below ``min_r`` where given; a student below ``min_r``
    before pruning loses only filters whose removal does not lower its correlation at all.
    Every layer keeps at least one filter. Images go through in chunks of ``chunk``.

    ``joint``: layers whose filters are removed from all students at once (the removal that
    leaves the smallest margin above the students' floors largest, while every student stays
    above its floor). Meant for a shared trunk layer whose per-student pruning would split the
    trunk into per-student full-resolution computations (layer 0 below a shared layer 1): jointly
    pruned, the trunk stays one computation and a candidate costs one shared forward pass.

    ``lazy``: lazy greedy evaluation (Minoux 1978). A candidate's r measured in an earlier round
    bounds its r now from above (removing filters lowers r), so each round measures candidates in
    order of their bounds and stops once every student's best measured removal beats all its
    remaining bounds (or no bound reaches its floor). Exact where removals never raise r, and
    several times fewer evaluations; ``lazy=False`` measures every candidate in every round.
    ``time_budget_s``: no new round starts after that many seconds (``complete`` is then False).
    """
    t0 = time.monotonic()
    model.eval()
    xs = [preprocess(images[i:i + chunk], device=device) for i in range(0, len(images), chunk)]
    y = np.asarray(targets, np.float64)
    before = model.kept_filters()

    def score(outs: list[torch.Tensor]) -> np.ndarray:
        return np.nan_to_num(pearson_r(torch.cat(outs).T.double().cpu().numpy(), y), nan=-1.0)

    r0 = score([model(x) for x in xs])
    floor = r0 - tolerance
    if min_r is not None:  # never below min_r; a student already below it loses nothing more
        floor = np.maximum(floor, np.minimum(r0, min_r))
    evals = 0
    n = model.n

    stopped = [False]

    def out_of_time() -> bool:
        if time_budget_s is not None and time.monotonic() - t0 > time_budget_s:
            stopped[0] = True
        return stopped[0]

    for layer in layers:
        mask = model.mask(layer)
        pres = [model.unmasked(model.layer_input(x, layer), layer) for x in xs]

        def trial(j: int, rows: np.ndarray, mask: torch.Tensor = mask, layer: int = layer,
                  pres: list[Act] = pres) -> np.ndarray:
            """Every student's r with filter ``j`` removed from the students ``rows``."""
            saved = mask[:, j].clone()
            mask[torch.as_tensor(rows, device=mask.device), j] = 0.0
            r = score([model.from_pre(p, layer) for p in pres])
            mask[:, j] = saved
            return r

        k = mask.shape[1]
        if layer in joint:
            bound = np.full(k, np.inf)
            while bool((mask.sum(1) > 1).all()) and not out_of_time():
                alive = mask.cpu().numpy().any(0)
                fresh, done = np.full(k, -np.inf), np.zeros(k, dtype=bool)
                if not lazy:
                    bound[:] = np.inf
                while True:
                    rem = np.where(alive & ~done, bound, -np.inf)
                    if rem.max() <= fresh.max() or rem.max() < 0:
                        break
                    j = int(rem.argmax())
                    fresh[j] = bound[j] = (trial(j, np.ones(n, dtype=bool)) - floor).min()
                    done[j] = True
                    evals += 1
                best = int(fresh.argmax())
                if fresh[best] < 0:
                    break
                mask[:, best] = 0.0
            continue
        active = np.ones(n, dtype=bool)
        bounds = np.full((n, k), np.inf)
        while not out_of_time():
            active &= mask.sum(1).cpu().numpy() > 1
            if not active.any():
                break
            alive = (mask.cpu().numpy() > 0) & active[:, None]
            cand, done = np.full((n, k), -np.inf), np.zeros(k, dtype=bool)
            if not lazy:
                bounds[:] = np.inf
            while True:
                rem = np.where(alive & ~done, bounds, -np.inf)
                rem_max = rem.max(1)
                need = active & (rem_max > cand.max(1)) & (rem_max >= floor)
                if not need.any():
                    break
                j = int(rem[need].max(0).argmax())
                rows = alive[:, j]
                r = trial(j, rows)
                cand[rows, j] = bounds[rows, j] = r[rows]
                done[j] = True
                evals += 1
            best = cand.argmax(1)
            best_r = cand[np.arange(n), best]
            remove = active & (best_r >= floor)
            if not remove.any():
                break
            idx = np.flatnonzero(remove)
            mask[torch.as_tensor(idx, device=mask.device), torch.as_tensor(best[idx], device=mask.device)] = 0.0
            active &= remove
    r1 = score([model(x) for x in xs])
    return PruneReport(before, model.kept_filters(), r0, r1, evals, time.monotonic() - t0, not stopped[0])
