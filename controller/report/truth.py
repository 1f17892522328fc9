"""The ground-truth pages of a demo's ``summary.json``: the causal tests next to the paper's, the
learning curve with and without the shared core, active-learning picks against random picks.
Whatever the summary lacks is left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.report.figures import plt, save
from controller.report.fmt import TESTS, ci, esc, figure, neuron_label, num, pct, table


def _f(x: object) -> float:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else np.nan


def causal_tests(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    causal = summary.get("causal") or {}
    return {k: v for k, v in causal.items() if k in TESTS and isinstance(v, dict)}


def causal_figure(tests: dict[str, dict[str, Any]], out: Path) -> str | None:
    if not tests:
        return None
    fig, ax = plt().subplots(figsize=(1.5 * len(tests) + 2.5, 3.6))
    rng = np.random.default_rng(0)
    for k, t in enumerate(tests.values()):
        mean = _f(t.get("mean_percent_change"))
        lo, hi = (t.get("ci") or [None, None])[:2]
        err = [[max(0.0, mean - _f(lo))], [max(0.0, _f(hi) - mean)]] if np.isfinite(_f(lo)) else None
        ax.bar(k - 0.18, mean, 0.34, color="tab:blue", label="ground truth (this run)" if k == 0 else None)
        if err is not None and np.isfinite(mean):
            ax.errorbar([k - 0.18], [mean], yerr=np.nan_to_num(err), color="k", capsize=3)
        pts = np.array([_f(v) for v in (t.get("per_neuron") or {}).values()])
        ax.scatter(k - 0.18 + rng.uniform(-0.08, 0.08, len(pts)), pts, s=8, color="k", zorder=3,
                   label="per neuron" if k == 0 else None)
        paper = _f(t.get("paper"))
        if np.isfinite(paper):
            ax.bar(k + 0.18, paper, 0.34, color="0.75", label="paper (Cowley et al. 2023, V4)" if k == 0 else None)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(tests)), [TESTS[k] for k in tests], fontsize=7, rotation=15)
    ax.set_ylabel("% change of mean response")
    ax.set_title("causal tests on the ground truth, next to the paper's", fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, out, "truth-causal.png")


def learning_figure(summary: dict[str, Any], out: Path) -> str | None:
    learning = {k: v for k, v in (summary.get("learning") or {}).items() if isinstance(v, list) and v}
    sessions = [s for s in summary.get("sessions") or [] if isinstance(s, dict)]
    active = [_f(s.get("median_r")) for s in sessions]
    random = [_f((s.get("random_policy") or {}).get("median_r")) for s in sessions]
    panels = [p for p, ok in (("learning", bool(learning)), ("policy", np.isfinite(random).any())) if ok]
    if not panels:
        return None
    fig, axes = plt().subplots(1, len(panels), figsize=(4.6 * len(panels), 3.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "learning":
            for key, values in learning.items():
                ax.plot(range(1, len(values) + 1), [_f(v) for v in values], "o-", label=key.replace("_", " "))
            ax.set_xlabel("sysid session")
            ax.set_xticks(range(1, max(len(v) for v in learning.values()) + 1))
            ax.set_title("learning curve: held-out median r", fontsize=9)
        else:
            x = np.arange(len(sessions))
            ax.bar(x - 0.2, active, 0.4, label="active-learning picks")
            ax.bar(x + 0.2, random, 0.4, label="random pool picks in their place (same sessions, run live)")
            ax.set_xticks(x, [str(s.get("session", k)) for k, s in enumerate(sessions)], fontsize=7)
            ax.set_title("does the loop help? held-out median r", fontsize=9)
        ax.set_ylabel("median r vs ground truth")
        ax.legend(fontsize=7)
    return save(fig, out, "truth-learning.png")


def truth_section(summary: dict[str, Any], out: Path) -> str:
    """The ground-truth section's HTML (figures written to ``out``)."""
    parts = []
    facts = [(k, summary.get(k)) for k in ("ground_truth", "neurons", "device") if summary.get(k)]
    if summary.get("seconds") is not None:
        facts.append(("run time", f"{_f(summary.get('seconds')):.0f} s"))
    if facts:
        parts.append(table(None, [(k.replace("_", " "), v) for k, v in facts], "facts"))
    tests = causal_tests(summary)
    if tests:
        parts.append(figure(causal_figure(tests, out), "mean % change of the ground-truth response over "
                            "neurons (bars, 95% bootstrap interval over neurons; dots: neurons) next to the "
                            "paper's figure on real V4 neurons"))
        rows = []
        for key, t in tests.items():
            lo, hi = (t.get("ci") or [None, None])[:2]
            frac = t.get("fraction_in_direction")
            per = t.get("per_neuron") or {}
            rows.append((TESTS[key], pct(t.get("mean_percent_change")), ci(lo, hi), pct(t.get("paper")),
                         "n/a" if frac is None else pct(100 * _f(frac), sign=False), len(per),
                         ", ".join(f"{neuron_label(int(j))} {pct(v)}" for j, v in per.items() if str(j).isdigit())))
        parts.append(table(["test", "ground truth", "95% CI", "paper", "in the intended direction", "neurons",
                            "per neuron"], rows))
    learn = learning_figure(summary, out)
    if learn:
        parts.append(figure(learn, "left: held-out median r per sysid session, with the shared core and "
                            "without it (same budget); right: the same sessions with their active-learning "
                            "picks and with random picks in their place"))
        policy = [(s.get("session"), num(s.get("median_r")), num((s.get("random_policy") or {}).get("median_r")),
                   num(s.get("r2_er_median"), 3)) for s in summary.get("sessions") or [] if isinstance(s, dict)]
        parts.append(table(["session", "median r, active picks", "median r, random picks", "median r2_ER"], policy))
    return "".join(parts)


def session_facts(summary: dict[str, Any], name: str, path: Path) -> dict[str, Any] | None:
    """The summary's entry for a session file (by session id or file name)."""
    for s in summary.get("sessions") or []:
        if isinstance(s, dict) and (s.get("session") == name or Path(str(s.get("file", ""))).name == path.name):
            return s
    return None


def escape_note(text: str) -> str:
    return f"<p class='note'>{esc(text)}</p>"
