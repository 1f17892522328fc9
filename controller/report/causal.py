"""Causal tests of a session as figure pages: per comparison, Cowley et al. (2023) Fig. 2's scatter
(per neuron, the mean response to its chosen images against the response to the baseline images,
identity line, bootstrap intervals) and a table; per tuning analysis, tuning curves and a table."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.report.data import Session
from controller.report.figures import plt, save
from controller.report.fmt import ci, condition_name, esc, figure, neuron_label, num, pct, pval, table
from protocols.steps import Analyse, AnalysisResult, Comparison, Tuning

_SIDE = {"greater": "one-sided, chosen > baseline", "less": "one-sided, chosen < baseline",
         "two-sided": "two-sided"}


def _err(mean: list[float | None], cis: list[tuple[float | None, float | None]]) -> np.ndarray:
    m = np.array([np.nan if v is None else v for v in mean], dtype=float)
    lo = np.array([np.nan if c[0] is None else c[0] for c in cis], dtype=float)
    hi = np.array([np.nan if c[1] is None else c[1] for c in cis], dtype=float)
    return np.nan_to_num(np.stack([m - lo, hi - m]), nan=0.0).clip(min=0.0)


def scatter(c: Comparison, alpha: float, title: str, out: Path, name: str) -> str | None:
    """Fig. 2 layout: one point per neuron, x = baseline images, y = its chosen images."""
    if not c.mean_test or not c.mean_baseline:
        return None
    x = np.array([np.nan if v is None else v for v in c.mean_baseline], dtype=float)
    y = np.array([np.nan if v is None else v for v in c.mean_test], dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    fig, ax = plt().subplots(figsize=(4.4, 4.2))
    sig = np.array([p < alpha for p in c.p_values], dtype=bool)
    xerr, yerr = _err(c.mean_baseline, c.mean_baseline_ci), _err(c.mean_test, c.mean_test_ci)
    top = float(np.nanmax(np.concatenate([x[ok] + xerr[1][ok], y[ok] + yerr[1][ok]]))) * 1.1 or 1.0
    ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--", label="identity")
    for mask, face, label in ((sig, "tab:red", f"p < {alpha:g}"), (~sig, "white", f"p >= {alpha:g}")):
        m = mask & ok
        if m.any():
            ax.errorbar(x[m], y[m], xerr=xerr[:, m], yerr=yerr[:, m], fmt="o", mfc=face, mec="tab:red",
                        ecolor="0.5", elinewidth=0.8, capsize=2, label=label)
    for j, neuron in enumerate(c.neurons):
        if ok[j]:
            ax.annotate(neuron_label(neuron), (x[j], y[j]), xytext=(4, 3), textcoords="offset points", fontsize=7)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel(f"mean response to {condition_name(c.baseline)} images\n(spikes per trial)", fontsize=8)
    ax.set_ylabel(f"mean response to its {condition_name(c.condition)} images", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right" if np.nanmedian(y[ok] - x[ok]) >= 0 else "upper left")
    return save(fig, out, name)


def _comparison(session: Session, step: Analyse, c: Comparison, recomputed: bool, out: Path, png: str) -> str:
    title = f"{condition_name(c.condition)} vs {condition_name(c.baseline)}"
    valid = [v for v in c.percent_change if v is not None]
    unit = ("image-level permutation test: repeats of an image averaged first, image labels shuffled"
            if c.unit == "image" else "trial-level permutation test (no image ids: repeats counted as independent)")
    lines = [
        f"median %dr {pct(c.median_percent_change)}, mean {pct(np.mean(valid) if valid else None)}; "
        f"{c.n_significant} of {len(c.neurons)} neurons p < {step.alpha:g} ({_SIDE[step.alternative]})",
        f"{unit}; {step.n_permutations} permutations; 95% intervals: bootstrap over images",
        f"per neuron: {c.n_images} vs {c.n_baseline_images} images, {c.n_trials} vs {c.n_baseline_trials} trials"]
    if recomputed:
        lines.append("recomputed here from the recorded trials (the stored result was trial-level)")
    fig = scatter(c, step.alpha, title, out, png)
    rows = [(neuron_label(n), num(c.mean_test[j] if c.mean_test else None),
             num(c.mean_baseline[j] if c.mean_baseline else None), pct(c.percent_change[j]),
             ci(c.ci_low[j], c.ci_high[j]) if c.ci_low else "n/a", pval(c.p_values[j]))
            for j, n in enumerate(c.neurons)]
    return ("".join(f"<p class='note'>{esc(x)}</p>" for x in lines)
            + figure(fig, f"{session.name}, {title}: per neuron (labels as in the image grids), the mean "
                     "response to its own chosen images against the baseline images; error bars: bootstrap "
                     "95% intervals over images; dashed: identity")
            + table(["neuron", f"mean, {condition_name(c.condition)}", f"mean, {condition_name(c.baseline)}",
                     "%dr", "95% CI", "p"], rows))


def _tuning_title(step: Analyse) -> str:
    return f"tuning of {step.conditions[0]} to {step.factor or 'condition'} ({step.name})"


def _tuning(session: Session, step: Analyse, t: Tuning, out: Path, png: str) -> str:
    title = _tuning_title(step)
    means = np.array(t.means, dtype=float)
    fig, ax = plt().subplots(figsize=(5, 3))
    for j, n in enumerate(t.neurons):
        ax.plot(range(len(t.conditions)), means[:, j], "o-", ms=3, label=neuron_label(n))
    ax.set_xticks(range(len(t.conditions)), t.conditions, fontsize=7)
    ax.set_xlabel(step.factor or "condition")
    ax.set_ylabel("mean response (spikes per trial)")
    ax.set_title(title, fontsize=9)
    if len(t.neurons) <= 12:
        ax.legend(fontsize=6, ncol=2)
    name = save(fig, out, png)
    rows = [[neuron_label(n), *(num(means[k, j]) for k in range(len(t.conditions))), pval(t.p_values[j])]
            for j, n in enumerate(t.neurons)]
    return (f"<p class='note'>{t.n_significant} of {len(t.neurons)} neurons p &lt; {step.alpha:g}; "
            f"{esc(t.unit)}-level permutation test of the between-condition variance</p>"
            + figure(name, f"{session.name}: mean response per {step.factor or 'condition'}, per neuron")
            + table(["neuron", *t.conditions, "p"], rows))


def causal_sections(session: Session, analyses: list[tuple[Analyse, AnalysisResult, bool]],
                    out: Path) -> list[tuple[str, str]]:
    """(title, HTML) of each comparison and tuning analysis of one session."""
    parts: list[tuple[str, str]] = []
    for step, result, recomputed in analyses:
        for c in result.comparisons:
            k = len(parts)
            png = f"{session.name}-causal.png" if k == 0 else f"{session.name}-causal-{k + 1}.png"
            parts.append((f"{condition_name(c.condition)} vs {condition_name(c.baseline)}",
                          _comparison(session, step, c, recomputed, out, png)))
        if result.tuning is not None:
            png = f"{session.name}-tuning-{step.name}.png"
            parts.append((_tuning_title(step), _tuning(session, step, result.tuning, out, png)))
    return parts
