"""What an awake animal did over one or more sessions, from their files (the demo's --awake summary).

Counts come from the documents the engine writes: each block's ``behavior`` event (sequences started
and completed, invalid trials, failed acquisitions, images given up), the ``reward`` documents and the
``trial`` documents; the break-to-blank lag is the blanking flip (``offset`` of an image cut short by a
break) minus the breaking sample's time (``broke_at``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.store import SessionReader
from wire.documents import EventDoc, RewardDoc, TrialDoc


def summarize(files: list[Path]) -> dict[str, Any]:
    """Totals over ``files`` (each read once, duplicates ignored)."""
    out: dict[str, Any] = {"sessions": 0, "sequences": 0, "completed": 0, "no_fixation": 0, "missing": 0,
                           "trials": 0, "invalid": 0, "rewards": 0, "reasons": {}}
    lags: list[float] = []
    for path in dict.fromkeys(files):
        with SessionReader(path) as r:
            docs = list(r.documents())
        out["sessions"] += 1
        for d in docs:
            if isinstance(d, EventDoc) and d.what == "behavior":
                for key in ("sequences", "completed", "no_fixation", "missing"):
                    out[key] += int(d.details.get(key, 0))
            elif isinstance(d, RewardDoc):
                out["rewards"] += 1
            elif isinstance(d, TrialDoc):
                out["trials"] += 1
                if not d.valid:
                    out["invalid"] += 1
                    reason = d.invalid_reason or "unknown"
                    out["reasons"][reason] = out["reasons"].get(reason, 0) + 1
                    if d.broke_at is not None and d.offset > d.broke_at and d.offset - d.broke_at < 1.0:
                        lags.append(d.offset - d.broke_at)
    out["completed_share"] = out["completed"] / out["sequences"] if out["sequences"] else 0.0
    if lags:
        a = np.asarray(lags) * 1000
        out["break_to_blank_ms"] = {"median": float(np.median(a)), "max": float(a.max()), "n": int(a.size)}
    return out
