"""The report's behaviour figures of awake sessions: per block, how the animal worked.

From each block's ``behavior`` event (sequences started and completed, invalid trials, failed
acquisitions, rewards, images given up), written by the engine from the stimulus server's reply:
one bar chart per file of sequences completed and broken, with invalid trials and rewards, and a
table with the same figures. Sessions without an awake animal have no such events and no section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.report.data import Session
from controller.report.figures import plt, save
from controller.report.fmt import esc
from wire.documents import EventDoc


def rows(sessions: list[Session]) -> list[dict[str, Any]]:
    """One row per block of an awake session: session, block and the behaviour event's counts."""
    out = []
    for s in sessions:
        for d in s.docs:
            if isinstance(d, EventDoc) and d.what == "behavior":
                det = d.details
                out.append({"session": s.name, "block": str(det.get("block_id", "")),
                            **{k: int(det.get(k, 0) or 0) for k in ("sequences", "completed", "invalid",
                                                                     "no_fixation", "rewards", "missing")}})
    return out


def figure(table: list[dict[str, Any]], out: Path) -> str | None:
    """Bars per block: completed and broken sequences, invalid trials; None without awake blocks."""
    if not table:
        return None
    labels = [f"{r['session']}:{r['block']}" for r in table]
    x = range(len(table))
    fig, ax = plt().subplots(figsize=(max(5.0, 0.5 * len(table) + 2), 3.2))
    done = [r["completed"] for r in table]
    broke = [r["sequences"] - r["completed"] for r in table]
    ax.bar(x, done, label="sequences completed (rewarded)", color="#1e8e3e")
    ax.bar(x, broke, bottom=done, label="sequences broken", color="#c5221f")
    ax.plot(x, [r["invalid"] for r in table], "ko-", label="invalid trials", markersize=4)
    ax.set_xticks(list(x), labels, rotation=60, fontsize=6, ha="right")
    ax.set_ylabel("count per block", fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.suptitle("the animal's behaviour per block", fontsize=10)
    return save(fig, out, "behavior.png")


def table_html(table: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("block", "sequences", "completed", "share", "invalid trials",
                                               "failed acquisitions", "rewards", "images given up"))
    body = "".join(
        f"<tr><td>{esc(r['session'])}:{esc(r['block'])}</td><td>{r['sequences']}</td><td>{r['completed']}</td>"
        f"<td>{(r['completed'] / r['sequences'] if r['sequences'] else 0):.0%}</td><td>{r['invalid']}</td>"
        f"<td>{r['no_fixation']}</td><td>{r['rewards']}</td><td>{r['missing']}</td></tr>" for r in table)
    return f"<table><tr>{head}</tr>{body}</table>"
