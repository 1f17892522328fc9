"""``cortexloop report``: session files as a paper's figure pages (HTML with PNG figures, matplotlib).

The page has a contents list, then:

- **ground truth** (a demo's ``summary.json``, whatever it holds): the causal tests scored on the
  ground truth next to the paper's figures, the learning curve with and without the shared core,
  active-learning picks against random picks, held-out r (and r2_ER) per neuron by session;
- **a section per session**: its model versions (validation r), its held-out r against the ground
  truth (from the summary), each causal test as Cowley et al. (2023) Fig. 2 (per neuron, the mean
  response to its chosen images against the baseline images, bootstrap intervals over images,
  image-level permutation p-values; recomputed from the recorded trials where the stored result
  was trial-level), tuning analyses, every block's images in rows labelled by condition with why
  each was picked, and the onset-timing fragment of :mod:`controller.timing` where it exists;
- **timing**: dropped frames per block and the turnaround between blocks, all sessions.

Numbers are rounded as a paper prints them (``controller.report.fmt``); neurons are ``n<j>``
(column ``j`` of the counts) in every figure, grid and table. A damaged session file does not stop
the report: what could be read is drawn, and a "damaged records" section at the top lists every
skipped record and every file that could not be opened (``problems`` receives the same lines).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from controller.report.figures import turnarounds
from controller.report.page import write_report

__all__ = ["load_summary", "turnarounds", "write_report"]


def load_summary(path: Path | None) -> dict[str, Any]:
    """A demo's summary.json ({} when absent or not an object)."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
