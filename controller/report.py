"""``cortexloop report``: an HTML page with PNG figures (matplotlib) from session files.

Figures, each drawn only when the sessions hold what it needs:

- model versions: the ensemble's validation r after each retraining, across sessions;
- held-out performance per neuron against the ground truth, from a demo's ``summary.json``;
- the causal test (Cowley et al. Fig. 2): per neuron, % change of the mean response to its
  maximizing natural and synthesized images relative to random natural images, with the
  permutation-test p-values;
- grids of the images shown per condition (maximizing, synthesized, adversarial, ...);
- held-out noise-corrected R2 (r2_ER) per neuron, from ``summary.json``, where blocks had repeats;
- timing: dropped frames per block, and the turnaround between blocks (last counts of one block
  to the first trial of the next).

A damaged session file does not stop the report: what could be read is drawn, and a "damaged
records" section at the top of the page lists every skipped record (by position and cause) and
every file that could not be opened at all (``problems`` receives the same lines).
"""

from __future__ import annotations

import html
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from controller.store import SessionReader
from wire.documents import BlockDoc, ImageDoc, ModelVersionDoc, ResponseDoc, StepDoc, TrialDoc
from wire.errors import StoreError


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    _plt().close(fig)
    return name


def _versions(sessions: dict[str, list[Any]], out: Path) -> str | None:
    rows = [(name, d) for name, docs in sessions.items() for d in docs if isinstance(d, ModelVersionDoc)]
    if not rows:
        return None
    fig, ax = _plt().subplots(figsize=(7, 3))
    ax.plot(range(len(rows)), [d.metrics.get("val_r", np.nan) for _, d in rows], "o-")
    ax.set_xticks(range(len(rows)), [f"{n}\n{d.details.get('scope', '')}" for n, d in rows], fontsize=6)
    ax.set_ylabel("validation r (ensemble)")
    ax.set_title("model versions")
    return _save(fig, out, "versions.png")


def _heldout(summary: dict[str, Any], out: Path) -> str | None:
    sessions = summary.get("sessions") or []
    if not sessions:
        return None
    panels = [("r_per_neuron", "r vs ground truth\n(images never shown)")]
    if any(s.get("r2_er_per_neuron") for s in sessions):
        panels.append(("r2_er_per_neuron", "noise-corrected R2 (r2_ER)\nheld-out block, recorded repeats"))
    fig, axes = _plt().subplots(1, len(panels), figsize=(5 * len(panels), 3), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for k, s in enumerate(sessions):
            r = np.array([np.nan if v is None else v for v in s.get(key, [])], dtype=float)
            ax.scatter(np.full(len(r), k) + np.random.default_rng(k).uniform(-0.1, 0.1, len(r)), r, s=12)
            if np.isfinite(r).any():
                ax.plot([k - 0.25, k + 0.25], [np.nanmedian(r)] * 2, "k-")
        ax.set_xticks(range(len(sessions)), [s["session"] for s in sessions], fontsize=7)
        ax.set_ylabel(label, fontsize=8)
    fig.suptitle("prediction performance per neuron across sessions (black: median)")
    return _save(fig, out, "heldout.png")


def _causal(docs: list[Any], out: Path, stem: str) -> tuple[str | None, list[dict[str, Any]]]:
    analyses = [d for d in docs if isinstance(d, StepDoc) and d.step.get("kind") == "analyse"]
    comps = [c for a in analyses for c in a.result.get("comparisons", [])]
    if not comps:
        return None, []
    fig, ax = _plt().subplots(figsize=(7, 3))
    width = 0.8 / len(comps)
    for k, c in enumerate(comps):
        pc = np.array([np.nan if v is None else v for v in c["percent_change"]], dtype=float)
        x = np.arange(len(pc)) + k * width
        ax.bar(x, pc, width, label=f"{c['condition']} vs {c['baseline']}")
        for xi, p, v in zip(x, c["p_values"], pc, strict=False):
            if p < 0.05 and np.isfinite(v):
                ax.text(xi, v, "*", ha="center")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("neuron")
    ax.set_ylabel("% change of mean response")
    ax.legend(fontsize=7)
    ax.set_title("causal test (* p < 0.05, permutation test)")
    return _save(fig, out, f"{stem}-causal.png"), comps


def _grids(docs: list[Any], images: dict[str, np.ndarray], out: Path, stem: str) -> list[str]:
    names = []
    for block in (d for d in docs if isinstance(d, BlockDoc)):
        by_cond: dict[str, list[str]] = {}
        for _, image, cond in block.params.get("trials", []):
            if image not in by_cond.setdefault(cond, []):
                by_cond[cond].append(image)
        conds = sorted(c for c in by_cond if not c.startswith(("normal", "random_normal", "heldout", "gaudy")))
        if not conds:
            continue
        cols = max(len(by_cond[c][:8]) for c in conds)
        fig, axes = _plt().subplots(len(conds), cols, figsize=(cols * 1.1, len(conds) * 1.2), squeeze=False)
        for i, c in enumerate(conds):
            for j in range(cols):
                ax = axes[i][j]
                ax.axis("off")
                if j < len(by_cond[c][:8]):
                    px = images.get(by_cond[c][j])
                    if px is None:  # its record is damaged: say so where it would have been
                        ax.text(0.5, 0.5, "image\nlost", ha="center", va="center", fontsize=6, color="red")
                    else:
                        ax.imshow(px)
            axes[i][0].set_title(c, fontsize=6, loc="left")
        names.append(_save(fig, out, f"{stem}-{block.block_id}-images.png"))
    return names


def turnarounds(docs: list[Any]) -> list[tuple[str, float]]:
    """(block, seconds) from the last counts of the previous block to this block's first trial,
    by the documents' wall-clock times (what the loop spent ingesting, retraining, generating, loading)."""
    blocks = [d for d in docs if isinstance(d, BlockDoc)]
    block_of = {tid: b.block_id for b in blocks for tid, _, _ in b.params.get("trials", [])}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for d in docs:
        if isinstance(d, TrialDoc):
            first.setdefault(d.block_id, d.time)
        elif isinstance(d, ResponseDoc) and d.trial_id.removesuffix(".again") in block_of:
            b = block_of[d.trial_id.removesuffix(".again")]
            last[b] = max(last.get(b, d.time), d.time)
    out = []
    for prev, nxt in itertools.pairwise(blocks):
        if prev.block_id in last and nxt.block_id in first:
            out.append((nxt.block_id, first[nxt.block_id] - last[prev.block_id]))
    return out


def _timing(sessions: dict[str, list[Any]], out: Path) -> str | None:
    rows = []
    turns = []
    for name, docs in sessions.items():
        for b in (d for d in docs if isinstance(d, BlockDoc)):
            trials = [d for d in docs if isinstance(d, TrialDoc) and d.block_id == b.block_id]
            rows.append((f"{name}:{b.block_id}", len(trials), sum(t.dropped_frames for t in trials)))
        turns += [(f"{name}:{b}", t) for b, t in turnarounds(docs)]
    if not rows:
        return None
    fig, axes = _plt().subplots(1, 2, figsize=(10, 3.2), squeeze=False)
    ax = axes[0][0]
    ax.bar(range(len(rows)), [r[2] for r in rows])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=60, fontsize=5, ha="right")
    ax.set_ylabel("dropped frames")
    ax.set_title("dropped frames per block", fontsize=9)
    ax = axes[0][1]
    ax.bar(range(len(turns)), [t for _, t in turns], color="tab:orange")
    ax.set_xticks(range(len(turns)), [n for n, _ in turns], rotation=60, fontsize=5, ha="right")
    ax.set_ylabel("seconds")
    ax.set_title("turnaround: last counts of the previous block -> first trial", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "timing.png")


def _damage_section(skipped: list[str], unreadable: list[str], empty: list[str]) -> str:
    items = [f"<li>{html.escape(p)}</li>" for p in unreadable + skipped]
    items += [f"<li>{html.escape(name)}: no document could be read</li>" for name in empty]
    what = []
    if unreadable:
        what.append(f"{len(unreadable)} file(s) could not be opened")
    if skipped:
        what.append(f"{len(skipped)} damaged part(s) were skipped")
    if empty:
        what.append(f"{len(empty)} file(s) hold no readable document")
    return ("<section id='damaged' style='border:2px solid #c00;padding:0 1em;background:#fee'>"
            "<h2>damaged records</h2>"
            f"<p><b>{html.escape('; '.join(what))}</b>: the figures below leave them out.</p>"
            f"<ul>{''.join(items)}</ul></section>")


def write_report(session_files: list[Path], out: Path, summary_file: Path | None = None,
                 problems: list[str] | None = None) -> Path:
    """Write ``out/index.html`` and its PNGs; returns the page's path.

    Damaged records are skipped and a file that cannot be opened is left out; both are listed in a
    "damaged records" section at the top of the page and appended to ``problems`` (when given)."""
    out.mkdir(parents=True, exist_ok=True)
    sessions: dict[str, list[Any]] = {}
    images: dict[str, dict[str, np.ndarray]] = {}
    skipped: list[str] = []
    unreadable: list[str] = []
    for f in session_files:
        try:
            with SessionReader(f) as r:
                docs = list(r.documents())
                skipped += r.problems
        except StoreError as exc:
            unreadable.append(str(exc))
            continue
        sessions[f.stem] = docs
        images[f.stem] = {d.image_id: d.pixels for d in docs if isinstance(d, ImageDoc)}
    empty = [name for name, docs in sessions.items() if not docs]
    if problems is not None:
        problems += unreadable + skipped + [f"{name}: no document could be read" for name in empty]
    parts = ["<h1>cortexloop report</h1>",
             f"<p>{len(sessions)} session(s): {html.escape(', '.join(sessions))}</p>"]
    if skipped or unreadable or empty:
        parts.append(_damage_section(skipped, unreadable, empty))

    def img(name: str | None, caption: str) -> None:
        if name:
            parts.append(f"<figure><img src='{name}'><figcaption>{html.escape(caption)}</figcaption></figure>")

    summary = json.loads(summary_file.read_text()) if summary_file and summary_file.is_file() else {}
    if summary:
        parts.append(f"<p>ground truth: {html.escape(str(summary.get('ground_truth')))}; "
                     f"device {html.escape(str(summary.get('device')))}</p>")
        img(_heldout(summary, out), "held-out prediction performance per neuron (ground truth), by session")
    img(_versions(sessions, out), "model versions")
    for stem, docs in sessions.items():
        name, comps = _causal(docs, out, stem)
        if name:
            img(name, f"{stem}: causal test")
            rows = "".join(f"<tr><td>{html.escape(c['condition'])}</td><td>{c['median_percent_change']}</td>"
                           f"<td>{c['n_significant']}/{len(c['neurons'])}</td></tr>" for c in comps)
            parts.append(f"<table border=1><tr><th>condition</th><th>median %dr</th><th>p&lt;0.05</th></tr>"
                         f"{rows}</table>")
        for g in _grids(docs, images[stem], out, stem):
            img(g, f"{stem}: images per condition")
    img(_timing(sessions, out), "dropped frames per block; turnaround between blocks")
    if not any(p.startswith("<figure>") for p in parts):
        parts.append("<p>Nothing to draw: " + ("no session file could be read." if not sessions else
                     "the sessions hold no model versions, causal tests, image blocks, trials or summary.")
                     + "</p>")
    page = out / "index.html"
    page.write_text("<!doctype html><meta charset=utf-8><title>cortexloop report</title>\n" + "\n".join(parts))
    return page
