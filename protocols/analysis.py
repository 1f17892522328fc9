"""Analyses of causal tests (numpy only): percent change of mean response, image-level tests.

Data come as :class:`TrialData`: one row per trial (its block, its condition label, its
spike counts per neuron, and the id of the image it showed). Condition labels follow
:mod:`protocols.steps`: ``"c"`` (every neuron), ``"c/neuron=k"`` (an image made for neuron
``k``: counts for neuron ``k`` only), ``"c/<label>"`` (a labelled image, e.g. a dot image)
and ``"c/fallback"`` (shown from the fallback source; never counted as ``c``).

The unit of every test is the image: the repeats of one image are averaged first (per
neuron), so that repeats, which share their image's response, are not counted as
independent samples. Without image ids each trial is its own image (``unit="trial"``).

- :func:`image_means`: mean over the repeats of each image.
- :func:`percent_change`: %dr = 100 (mean(test) - mean(base)) / mean(base) per neuron.
- :func:`permutation_test`: p-value per neuron of the difference of means (re-splitting the
  pooled samples at random; seeded; p = (1 + #{|d*| >= |d|}) / (1 + P)).
- :func:`bootstrap_ci`: percentile intervals of %dr and of both means, resampling the
  samples of each side with replacement (seeded).
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
N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class TrialData:
    """Counts of trials: ``counts`` (n_trials, n_neurons); ``conditions``/``blocks``/``images`` per trial.

    ``images`` (image id per trial) may be None: each trial is then its own image."""

    counts: np.ndarray
    conditions: Sequence[str]
    blocks: Sequence[str]
    images: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.counts.ndim != 2:
            raise InvalidRequest(f"counts must be (trials, neurons), got shape {self.counts.shape}")
        n = self.counts.shape[0]
        if len(self.conditions) != n or len(self.blocks) != n:
            raise InvalidRequest(f"{n} trials but {len(self.conditions)} conditions and {len(self.blocks)} blocks")
        if self.images is not None and len(self.images) != n:
            raise InvalidRequest(f"{n} trials but {len(self.images)} image ids")

    @property
    def n_neurons(self) -> int:
        return int(self.counts.shape[1])

    def image_ids(self) -> np.ndarray:
        """Image id per trial (object array); ``"#<row>"`` per trial when no ids were given."""
        if self.images is None:
            return np.array([f"#{i}" for i in range(self.counts.shape[0])], dtype=object)
        return np.asarray(self.images, dtype=object)

    def select_blocks(self, blocks: Sequence[str]) -> TrialData:
        keep = np.isin(np.asarray(self.blocks, dtype=object), list(blocks))
        return TrialData(self.counts[keep], [c for c, k in zip(self.conditions, keep, strict=True) if k],
                         [b for b, k in zip(self.blocks, keep, strict=True) if k],
                         None if self.images is None else list(self.image_ids()[keep]))


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


def group_means(values: np.ndarray, keys: Sequence[object] | np.ndarray) -> tuple[list[str], np.ndarray]:
    """(sorted distinct keys, mean of ``values`` rows per key); NaN entries are left out of the
    means (NaN where a key has none)."""
    values = np.asarray(values, dtype=np.float64)
    names, inverse = np.unique(np.asarray([str(k) for k in keys], dtype=str), return_inverse=True)
    ok = np.isfinite(values)
    sums = np.zeros((len(names), *values.shape[1:]))
    seen = np.zeros((len(names), *values.shape[1:]))
    np.add.at(sums, inverse, np.where(ok, values, 0.0))
    np.add.at(seen, inverse, ok.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return names.tolist(), np.where(seen > 0, sums / np.where(seen > 0, seen, 1.0), np.nan)


def image_means(values: np.ndarray, images: Sequence[object] | np.ndarray) -> np.ndarray:
    """Mean over the repeats of each image (rows in sorted id order), as :func:`group_means`."""
    return group_means(values, images)[1]


def _pc(mt: np.ndarray, mb: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mb != 0, 100.0 * (mt - mb) / np.where(mb != 0, mb, 1.0), np.nan)


def percent_change(test: np.ndarray, base: np.ndarray) -> np.ndarray:
    """%dr per neuron (last axis) of the mean of ``test`` over the mean of ``base``; NaN where
    the base mean is 0 or either side has no samples."""
    test = np.asarray(test, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    if test.shape[0] == 0 or base.shape[0] == 0:
        return np.full(test.shape[1:] or base.shape[1:], np.nan)
    return np.asarray(_pc(test.mean(axis=0), base.mean(axis=0)))


def _as2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def permutation_test(test: np.ndarray, base: np.ndarray, n_permutations: int = 2000, seed: int = 0,
                     alternative: Alternative = "two-sided", chunk: int = 500) -> np.ndarray:
    """p-value per neuron that mean(test) and mean(base) differ (``greater``: test > base).

    ``test`` (n1, N) and ``base`` (n2, N) samples (image means, for an image-level test); the
    pooled samples are re-split at random ``n_permutations`` times (seeded). NaN where a side
    has no samples.
    """
    test, base = _as2d(test), _as2d(base)
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
        s1 = sel @ pooled                       # (k, N) sums of the permuted "test" samples
        diff = s1 / n1 - (total - s1) / n2
        if alternative == "greater":
            exceed += (diff >= observed - tol).sum(axis=0)
        elif alternative == "less":
            exceed += (diff <= observed + tol).sum(axis=0)
        else:
            exceed += (np.abs(diff) >= np.abs(observed) - tol).sum(axis=0)
        done += k
    return (1.0 + exceed) / (1.0 + n_permutations)


@dataclass(frozen=True)
class Interval:
    """Bootstrap percentile intervals per neuron: of %dr and of each side's mean."""

    pc_low: np.ndarray
    pc_high: np.ndarray
    test_low: np.ndarray
    test_high: np.ndarray
    base_low: np.ndarray
    base_high: np.ndarray


def _resampled_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) means of ``x`` (n, N) resampled with replacement (as count weights times x)."""
    n = x.shape[0]
    weights = np.zeros((n_boot, n))
    np.add.at(weights, (np.repeat(np.arange(n_boot), n), rng.integers(0, n, n_boot * n)), 1.0)
    return np.asarray(weights @ x) / n


def bootstrap_ci(test: np.ndarray, base: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0,
                 level: float = 0.95) -> Interval:
    """Percentile ``level`` intervals, resampling the samples (images) of each side on their own."""
    test, base = _as2d(test), _as2d(base)
    n_neurons = test.shape[1]
    if test.shape[0] == 0 or base.shape[0] == 0:
        nan = np.full(n_neurons, np.nan)
        return Interval(nan, nan, nan, nan, nan, nan)
    rng = np.random.default_rng(seed)
    mt = _resampled_means(test, n_boot, rng)
    mb = _resampled_means(base, n_boot, rng)
    q = [50 * (1 - level), 50 * (1 + level)]
    pc = _pc(mt, mb)
    with np.errstate(all="ignore"):
        pci = np.nanpercentile(pc, q, axis=0) if np.isfinite(pc).any() else np.full((2, n_neurons), np.nan)
    t, b = np.percentile(mt, q, axis=0), np.percentile(mb, q, axis=0)
    return Interval(pci[0], pci[1], t[0], t[1], b[0], b[1])


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


def _side(data: TrialData, mask: np.ndarray, neuron: int, ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(image means of ``neuron`` over the trials of ``mask`` with counts, number of those trials)."""
    values = data.counts[mask, neuron].astype(np.float64)
    ok = np.isfinite(values)
    return image_means(values[ok], ids[mask][ok]), int(ok.sum())


def compare(data: TrialData, condition: str, baseline: str, neurons: Sequence[int], *,
            n_permutations: int, seed: int, alternative: Alternative, alpha: float,
            n_bootstrap: int = N_BOOTSTRAP) -> Comparison:
    """One condition vs the baseline for each neuron (own-image trials per neuron), image-level."""
    ids = data.image_ids()
    col: dict[str, list[float]] = {k: [] for k in ("pc", "p", "lo", "hi", "mt", "mb", "tl", "th", "bl", "bh")}
    sizes = np.zeros(4)
    for j, neuron in enumerate(neurons):
        test, nt = _side(data, condition_mask(data.conditions, condition, neuron), neuron, ids)
        base, nb = _side(data, condition_mask(data.conditions, baseline, neuron), neuron, ids)
        sizes += (nt, nb, len(test), len(base))
        p = float(permutation_test(test, base, n_permutations, seed + j, alternative)[0])
        ci = bootstrap_ci(test, base, n_bootstrap, seed=seed + 7919 * (j + 1))
        values = (float(percent_change(test, base)), p if np.isfinite(p) else 1.0, ci.pc_low[0], ci.pc_high[0],
                  test.mean() if len(test) else np.nan, base.mean() if len(base) else np.nan,
                  ci.test_low[0], ci.test_high[0], ci.base_low[0], ci.base_high[0])
        for key, v in zip(col, values, strict=True):
            col[key].append(float(v))
    pcs = [_clean(x) for x in col["pc"]]
    n_test, n_base, n_img, n_base_img = (round(float(s) / max(1, len(neurons))) for s in sizes)
    valid = [x for x in pcs if x is not None]

    def clean(key: str) -> list[float | None]:
        return [_clean(x) for x in col[key]]

    return Comparison(
        condition=condition, baseline=baseline, neurons=list(neurons), percent_change=pcs, p_values=col["p"],
        n_trials=n_test, n_baseline_trials=n_base, n_significant=sum(p < alpha for p in col["p"]),
        median_percent_change=float(np.median(valid)) if valid else None,
        unit="trial" if data.images is None else "image", n_images=n_img, n_baseline_images=n_base_img,
        ci_low=clean("lo"), ci_high=clean("hi"), mean_test=clean("mt"), mean_baseline=clean("mb"),
        mean_test_ci=list(zip(clean("tl"), clean("th"), strict=True)),
        mean_baseline_ci=list(zip(clean("bl"), clean("bh"), strict=True)))


def _tuning(step: Analyse, d: TrialData, neurons: list[int]) -> Tuning:
    """Tuning on image means: each image's repeats averaged first, then images' groups shuffled
    (an image without counts for one of ``neurons`` is left out)."""
    keep: list[int] = []
    units: list[str] = []
    ids = d.image_ids()
    for i, label in enumerate(d.conditions):
        head = label.split("/", 1)[0]
        if head not in step.conditions or label.endswith("/" + FALLBACK):
            continue
        key = label_value(label, step.factor) if step.factor else label
        if key is not None:
            keep.append(i)
            units.append(f"{key}\x00{ids[i]}")
    names, means = group_means(d.counts[keep][:, neurons], units)
    ok = np.isfinite(means).all(axis=1)
    groups = [n.split("\x00", 1)[0] for n, k in zip(names, ok, strict=True) if k]
    conds, cond_means, p = tuning_test(means[ok], groups, step.n_permutations, step.seed)
    return Tuning(conditions=conds, neurons=neurons, means=cond_means.tolist(), p_values=p.tolist(),
                  n_significant=int((p < step.alpha).sum()), unit="trial" if d.images is None else "image")


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
        result = AnalysisResult(name=step.name, analysis="tuning", tuning=_tuning(step, d, neurons))
    return result.model_copy(update={"summary": summarize(result, step.alpha)})


def summarize(result: AnalysisResult, alpha: float = 0.05) -> str:
    """One line per comparison (or the tuning), e.g. for the operator and the session log."""
    lines: list[str] = []
    for c in result.comparisons:
        med = "n/a" if c.median_percent_change is None else f"{c.median_percent_change:+.0f}%"
        sizes = (f"{c.n_images} vs {c.n_baseline_images} images, {c.n_trials} vs {c.n_baseline_trials} trials"
                 if c.unit == "image" else f"{c.n_trials} vs {c.n_baseline_trials} trials, no image ids")
        lines.append(f"{result.name}: {c.condition} vs {c.baseline}: median %dr {med}, "
                     f"{c.n_significant}/{len(c.neurons)} neurons p<{alpha:g} ({c.unit}-level test; "
                     f"{sizes} per neuron)")
    if result.tuning is not None:
        t = result.tuning
        lines.append(f"{result.name}: {len(t.conditions)} conditions, "
                     f"{t.n_significant}/{len(t.neurons)} neurons tuned p<{alpha:g} ({t.unit}-level test)")
    return "\n".join(lines)
