"""Matching recorded neurons to model neurons on held-out images (Cowley et al.).

A causal test drives a recorded neuron through a model of it; on a new day that model is a
neuron of an earlier session, chosen by how well it predicts the recorded neuron's responses to
held-out images. :func:`score_matrix` scores every (recorded, model) pair of one model session:
``pearson_r`` against the repeat means, or ``r2_er``, the noise-corrected R2 of Pospisil & Bair
carrying the sign of the correlation (an anti-correlated model is no match). :func:`assign`
chooses the pairs:

- ``best``: each recorded neuron takes its best model neuron of any session; several recorded
  neurons may take the same model neuron (neighbouring channels, one well-fitted model).
- ``one_to_one``: the recording is matched to one model population, the session whose
  assignment scores highest, and within it each model neuron serves at most one recorded neuron
  (greedy, best pairs first). This is the rule when the same population is recorded again: two
  recorded neurons driven through one model would make their causal tests one neuron's test,
  and the one whose own model lost is tested on another neuron's preference.

Pairs scoring below ``min_score`` are never matched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Metric = Literal["pearson_r", "r2_er"]
Assignment = Literal["best", "one_to_one"]

__all__ = ["Assignment", "Match", "Metric", "assign", "repeats_array", "score_matrix"]


@dataclass(frozen=True)
class Match:
    neuron: int  # recorded neuron (column of the counts)
    session: str  # model session
    model: int  # model neuron of that session
    score: float


def repeats_array(counts: np.ndarray, image_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct images (in first-shown order) and ``(neurons, images, repeats)`` single-trial
    counts, NaN where an image had fewer repeats than the most repeated one."""
    uniq = list(dict.fromkeys(image_ids))
    where = {i: k for k, i in enumerate(uniq)}
    rows = np.asarray([where[i] for i in image_ids])
    reps = np.bincount(rows, minlength=len(uniq))
    raw = np.full((counts.shape[1], len(uniq), int(reps.max(initial=0))), np.nan)
    seen = np.zeros(len(uniq), dtype=int)
    for t, k in enumerate(rows):
        raw[:, k, seen[k]] = counts[t]
        seen[k] += 1
    return uniq, raw


def score_matrix(raw: np.ndarray, pred: np.ndarray, metric: Metric = "pearson_r") -> np.ndarray:
    """``(recorded, model)`` scores of predictions ``pred`` (model neurons, images) against
    single trials ``raw`` (recorded neurons, images, repeats); NaN where a score is undefined."""
    from modelserver.training.metrics import pearson_r, r2_er  # numpy only

    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim != 2 or pred.shape[1] != raw.shape[1]:
        raise ValueError(f"predictions {pred.shape} do not match {raw.shape[1]} held-out images")
    out = np.full((raw.shape[0], pred.shape[0]), np.nan)
    if raw.shape[1] < 3:  # no correlation worth the name
        return out
    with np.errstate(invalid="ignore"):
        means = np.nanmean(raw, axis=2)
    for m, p in enumerate(pred):
        tiled = np.broadcast_to(p, means.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = pearson_r(tiled, means)
            out[:, m] = r if metric == "pearson_r" else np.sign(r) * r2_er(np.array(tiled), raw)
    return out


def assign(scores: Mapping[str, np.ndarray], how: Assignment = "best", min_score: float = 0.5) -> list[Match]:
    """Matched pairs, best first, from each model session's ``(recorded, model)`` scores."""
    if how == "best":
        best: dict[int, Match] = {}
        for sess, s in scores.items():
            for j in range(s.shape[0]):
                row = np.where(np.isfinite(s[j]), s[j], -np.inf)
                m = int(np.argmax(row)) if row.size else -1
                if m >= 0 and row[m] >= min_score and (j not in best or row[m] > best[j].score):
                    best[j] = Match(j, sess, m, float(row[m]))
        chosen = list(best.values())
    elif how == "one_to_one":
        chosen = max((_one_to_one(sess, s, min_score) for sess, s in scores.items()),
                     key=lambda ms: sum(x.score for x in ms), default=[])
    else:
        raise ValueError(f"assignment must be 'best' or 'one_to_one', got {how!r}")
    return sorted(chosen, key=lambda x: -x.score)


def _one_to_one(sess: str, s: np.ndarray, min_score: float) -> list[Match]:
    """Greedy assignment: the best remaining pair first, each recorded and model neuron once."""
    flat = np.where(np.isfinite(s), s, -np.inf).ravel()
    used_j: set[int] = set()
    used_m: set[int] = set()
    out: list[Match] = []
    for idx in np.argsort(-flat, kind="stable"):
        if flat[idx] < min_score:
            break
        j, m = divmod(int(idx), s.shape[1])
        if j not in used_j and m not in used_m:
            used_j.add(j)
            used_m.add(m)
            out.append(Match(j, sess, m, float(flat[idx])))
    return out
