"""Analyses of causal tests (numpy only): percent change of mean response and permutation tests.

Data come as :class:`TrialData`: one row per trial (its block, its condition label, its
spike counts per neuron). Condition labels follow :mod:`protocols.steps`: ``"c"`` (every
neuron), ``"c/neuron=k"`` (an image made for neuron ``k``: counts for neuron ``k`` only),
``"c/<label>"`` (a labelled image, e.g. a dot image) and ``"c/fallback"`` (shown from the
fallback source; never counted as ``c``).

- :func:`percent_change`: %dr = 100 (mean(test) - mean(base)) / mean(base) per neuron.
- :func:`permutation_test`: p-value per neuron of the difference of means (shuffling the
  test/base labels of the pooled trials; seeded; p = (1 + #{|d*| >= |d|}) / (1 + P)).
- :func:`tuning_test`: per neuron, whether the mean response differs across conditions
  (between-condition sum of squares against label shuffles).
- :func:`run_analysis`: executes an :class:`~protocols.steps.Analyse` step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from protocols.steps import Alternative, Analyse, AnalysisResult, Comparison, Tuning
from wire.errors import InvalidRequest

FALLBACK = "fallback"


@dataclass(frozen=True)
class TrialData:
    """Counts of trials: ``counts`` (n_trials, n_neurons); ``conditions``/``blocks`` per trial."""

    counts: np.ndarray
    conditions: Sequence[str]
    blocks: Sequence[str]

    def __post_init__(self) -> None:
        if self.counts.ndim != 2:
            raise InvalidRequest(f"counts must be (trials, neurons), got shape {self.counts.shape}")
        n = self.counts.shape[0]
        if len(self.conditions) != n or len(self.blocks) != n:
            raise InvalidRequest(f"{n} trials but {len(self.conditions)} conditions and {len(self.blocks)} blocks")

    @property
    def n_neurons(self) -> int:
        return int(self.counts.shape[1])

    def select_blocks(self, blocks: Sequence[str]) -> TrialData:
        keep = np.isin(np.asarray(self.blocks, dtype=object), list(blocks))
        return TrialData(self.counts[keep], [c for c, k in zip(self.conditions, keep, strict=True) if k],
                         [b for b, k in zip(self.blocks, keep, strict=True) if k])


def condition_mask(conditions: Sequence[str], condition: str, neuron: int) -> np.ndarray:
    """Trials of ``condition`` that count for ``neuron`` (see the module docstring)."""
    own = f"{condition}/neuron={neuron}"
    prefix = f"{condition}/"
    out = np.zeros(len(conditions), dtype=bool)
    for i, label in enumerate(conditions):
        if label == condition or label == own:
            out[i] = True
        elif label.startswith(prefix):
            rest = label[len(prefix):]
            out[i] = not rest.startswith("neuron=") and rest != FALLBACK
    return out


def percent_change(test: np.ndarray, base: np.ndarray) -> np.ndarray:
    """%dr per neuron (last axis) of the mean of ``test`` over the mean of ``base``; NaN where
    the base mean is 0 or either side has no trials."""
    test = np.asarray(test, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    if test.shape[0] == 0 or base.shape[0] == 0:
        return np.full(test.shape[1:] or base.shape[1:], np.nan)
    mt, mb = test.mean(axis=0), base.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mb != 0, 100.0 * (mt - mb) / np.where(mb != 0, mb, 1.0), np.nan)


def permutation_test(test: np.ndarray, base: np.ndarray, n_permutations: int = 2000, seed: int = 0,
                     alternative: Alternative = "two-sided", chunk: int = 500) -> np.ndarray:
    """p-value per neuron that mean(test) and mean(base) differ (``greater``: test > base).

    ``test`` (n1, N) and ``base`` (n2, N) trials; the pooled trials are re-split at random
    ``n_permutations`` times (seeded). NaN where a side has no trials.
    """
    test = np.asarray(test, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    test = test[:, None] if test.ndim == 1 else test
    base = base[:, None] if base.ndim == 1 else base
    if test.shape[1] != base.shape[1]:
        raise InvalidRequest(f"test has {test.shape[1]} neurons, base {base.shape[1]}")
    n1, n2 = test.shape[0], base.shape[0]
    n_neurons = test.shape[1]
    if n1 == 0 or n2 == 0:
        return np.full(n_neurons, np.nan)
    pooled = np.concatenate([test, base], axis=0)
    n = n1 + n2
    observed = test.mean(axis=0) - base.mean(axis=0)
    total = pooled.sum(axis=0)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(n_neurons, dtype=np.int64)
    tol = 1e-12 * np.maximum(1.0, np.abs(observed))
    done = 0
    while done < n_permutations:
        k = min(chunk, n_permutations - done)
        # k random subsets of size n1: the first n1 of a random permutation of each row
        order = np.argsort(rng.random((k, n)), axis=1)[:, :n1]
        sel = np.zeros((k, n), dtype=np.float64)
        np.put_along_axis(sel, order, 1.0, axis=1)
        s1 = sel @ pooled                       # (k, N) sums of the permuted "test" trials
        diff = s1 / n1 - (total - s1) / n2
        if alternative == "greater":
            exceed += (diff >= observed - tol).sum(axis=0)
        elif alternative == "less":
            exceed += (diff <= observed + tol).sum(axis=0)
        else:
            exceed += (np.abs(diff) >= np.abs(observed) - tol).sum(axis=0)
        done += k
    return (1.0 + exceed) / (1.0 + n_permutations)


def tuning_test(counts: np.ndarray, groups: Sequence[str], n_permutations: int = 2000,
                seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per neuron, do the group means differ? Returns (group names, means [group, neuron], p)."""
    counts = np.asarray(counts, dtype=np.float64)
    names = sorted(set(groups))
    if len(names) < 2:
        raise InvalidRequest(f"tuning needs at least 2 conditions, got {names}")
    index = {g: i for i, g in enumerate(names)}
    g = np.array([index[x] for x in groups])
    sizes = np.bincount(g, minlength=len(names)).astype(np.float64)

    def between_ss(labels: np.ndarray) -> np.ndarray:
        onehot = np.zeros((len(labels), len(names)))
        onehot[np.arange(len(labels)), labels] = 1.0
        means = (onehot.T @ counts) / sizes[:, None]
        return np.asarray((sizes[:, None] * (means - counts.mean(axis=0)) ** 2).sum(axis=0))

    observed = between_ss(g)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(counts.shape[1], dtype=np.int64)
    for _ in range(n_permutations):
        exceed += between_ss(rng.permutation(g)) >= observed * (1 - 1e-12)
    onehot = np.zeros((len(g), len(names)))
    onehot[np.arange(len(g)), g] = 1.0
    means = (onehot.T @ counts) / sizes[:, None]
    return names, means, (1.0 + exceed) / (1.0 + n_permutations)


def label_value(label: str, key: str) -> str | None:
    """Value of ``key`` in a label ``c/k1=v1,k2=v2`` (None if absent)."""
    tail = label.split("/", 1)[1] if "/" in label else label
    for part in tail.split(","):
        k, _, v = part.partition("=")
        if k == key:
            return v
    return None


def _clean(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def compare(data: TrialData, condition: str, baseline: str, neurons: Sequence[int], *,
            n_permutations: int, seed: int, alternative: Alternative, alpha: float) -> Comparison:
    """One condition vs the baseline for each neuron (own-image trials per neuron)."""
    pcs: list[float | None] = []
    ps: list[float] = []
    n_test = n_base = 0
    for j, neuron in enumerate(neurons):
        tm = condition_mask(data.conditions, condition, neuron)
        bm = condition_mask(data.conditions, baseline, neuron)
        test = data.counts[tm][:, [neuron]]
        base = data.counts[bm][:, [neuron]]
        pcs.append(_clean(float(percent_change(test, base)[0])))
        p = float(permutation_test(test, base, n_permutations, seed + j, alternative)[0])
        ps.append(p if np.isfinite(p) else 1.0)
        n_test += int(tm.sum())
        n_base += int(bm.sum())
    n_test = round(n_test / max(1, len(neurons)))
    n_base = round(n_base / max(1, len(neurons)))
    valid = [x for x in pcs if x is not None]
    return Comparison(
        condition=condition, baseline=baseline, neurons=list(neurons), percent_change=pcs, p_values=ps,
        n_trials=n_test, n_baseline_trials=n_base, n_significant=sum(p < alpha for p in ps),
        median_percent_change=float(np.median(valid)) if valid else None)


def run_analysis(step: Analyse, data: TrialData) -> AnalysisResult:
    """Execute an :class:`Analyse` step on the trials of its blocks."""
    d = data.select_blocks(step.blocks)
    neurons = list(step.neurons) if step.neurons is not None else list(range(d.n_neurons))
    bad = [n for n in neurons if n >= d.n_neurons]
    if bad:
        raise InvalidRequest(f"analysis {step.name!r}: neurons {bad} out of range ({d.n_neurons} recorded)")
    if step.analysis == "percent_change":
        assert step.baseline is not None
        comps = [compare(d, c, step.baseline, neurons, n_permutations=step.n_permutations,
                         seed=step.seed, alternative=step.alternative, alpha=step.alpha)
                 for c in step.conditions]
        result = AnalysisResult(name=step.name, analysis="percent_change", comparisons=comps)
    else:
        keep: list[int] = []
        groups: list[str] = []
        for i, label in enumerate(d.conditions):
            head = label.split("/", 1)[0]
            if head not in step.conditions or label.endswith("/" + FALLBACK):
                continue
            key = label_value(label, step.factor) if step.factor else label
            if key is not None:
                keep.append(i)
                groups.append(key)
        names, means, p = tuning_test(d.counts[keep][:, neurons], groups, step.n_permutations, step.seed)
        result = AnalysisResult(name=step.name, analysis="tuning", tuning=Tuning(
            conditions=names, neurons=neurons, means=means.tolist(), p_values=p.tolist(),
            n_significant=int((p < step.alpha).sum())))
    return result.model_copy(update={"summary": summarize(result, step.alpha)})


def summarize(result: AnalysisResult, alpha: float = 0.05) -> str:
    """One line per comparison (or the tuning), e.g. for the operator and the session log."""
    lines: list[str] = []
    for c in result.comparisons:
        med = "n/a" if c.median_percent_change is None else f"{c.median_percent_change:+.1f}%"
        lines.append(f"{result.name}: {c.condition} vs {c.baseline}: median %dr {med}, "
                     f"{c.n_significant}/{len(c.neurons)} neurons p<{alpha:g} "
                     f"({c.n_trials} vs {c.n_baseline_trials} trials)")
    if result.tuning is not None:
        t = result.tuning
        lines.append(f"{result.name}: {len(t.conditions)} conditions, "
                     f"{t.n_significant}/{len(t.neurons)} neurons tuned p<{alpha:g}")
    return "\n".join(lines)
