"""The report's session-wide figures: model versions, held-out performance, timing."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from controller.report.data import Session
from wire.documents import BlockDoc, ResponseDoc, TrialDoc


def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def save(fig: Any, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt().close(fig)
    return name


def versions(session: Session, out: Path) -> str | None:
    """Validation r of the ensemble after each retraining of one session."""
    rows = session.versions()
    if not rows:
        return None
    fig, ax = plt().subplots(figsize=(6, 2.6))
    ax.plot(range(1, len(rows) + 1), [d.metrics.get("val_r", np.nan) for d in rows], "o-")
    ax.set_xticks(range(1, len(rows) + 1), [f"v{k}\n{d.details.get('scope', '')}" for k, d in
                                             enumerate(rows, 1)], fontsize=7)
    ax.set_ylabel("validation r (ensemble)")
    ax.set_title(f"{session.name}: model versions", fontsize=9)
    return save(fig, out, f"{session.name}-versions.png")


def heldout(summary: dict[str, Any], out: Path) -> str | None:
    """Held-out r (and r2_ER) per neuron against the ground truth, by session (summary.json)."""
    sessions = [s for s in summary.get("sessions") or [] if isinstance(s, dict)]
    if not any(s.get("r_per_neuron") for s in sessions):
        return None
    panels = [("r_per_neuron", "r vs ground truth\n(images never shown)")]
    if any(s.get("r2_er_per_neuron") for s in sessions):
        panels.append(("r2_er_per_neuron", "noise-corrected R2 (r2_ER)\nheld-out block, recorded repeats"))
    fig, axes = plt().subplots(1, len(panels), figsize=(5 * len(panels), 3), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for k, s in enumerate(sessions):
            r = np.array([np.nan if v is None else v for v in s.get(key) or []], dtype=float)
            ax.scatter(np.full(len(r), k) + np.random.default_rng(k).uniform(-0.1, 0.1, len(r)), r, s=12)
            if np.isfinite(r).any():
                ax.plot([k - 0.25, k + 0.25], [np.nanmedian(r)] * 2, "k-")
        ax.set_xticks(range(len(sessions)), [str(s.get("session", k)) for k, s in enumerate(sessions)], fontsize=7)
        ax.set_ylabel(label, fontsize=8)
    fig.suptitle("prediction performance per neuron across sessions (black: median)", fontsize=10)
    return save(fig, out, "heldout.png")


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


def timing(sessions: list[Session], out: Path) -> str | None:
    """Dropped frames per block and the turnaround between blocks, every session."""
    rows = []
    turns = []
    for s in sessions:
        for b in s.blocks():
            trials = [d for d in s.docs if isinstance(d, TrialDoc) and d.block_id == b.block_id]
            rows.append((f"{s.name}:{b.block_id}", len(trials), sum(t.dropped_frames for t in trials)))
        turns += [(f"{s.name}:{b}", t) for b, t in turnarounds(s.docs)]
    if not rows:
        return None
    fig, axes = plt().subplots(1, 2, figsize=(10, 3.2), squeeze=False)
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
    return save(fig, out, "timing.png")
