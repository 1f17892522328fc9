"""What the report reads from a session file: its documents, and its analyses at image level."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.engine import _natural_key
from protocols.analysis import TrialData, run_analysis
from protocols.steps import Analyse, AnalysisResult
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
)
from wire.errors import InvalidRequest


@dataclass
class Session:
    """One session file's documents, by kind."""

    name: str
    path: Path
    docs: list[Any]
    images: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def start(self) -> StartDoc | None:
        return next((d for d in self.docs if isinstance(d, StartDoc)), None)

    @property
    def protocol(self) -> str:
        start = self.start
        return str(start.protocol.get("protocol", "")) if start is not None else ""

    @property
    def title(self) -> str:
        start = self.start
        return str(start.protocol.get("title", "")) if start is not None else ""

    def blocks(self) -> list[BlockDoc]:
        return [d for d in self.docs if isinstance(d, BlockDoc)]

    def versions(self) -> list[ModelVersionDoc]:
        return [d for d in self.docs if isinstance(d, ModelVersionDoc)]

    def events(self, what: str) -> list[EventDoc]:
        return [d for d in self.docs if isinstance(d, EventDoc) and d.what == what]

    def picks(self, block_id: str) -> dict[str, list[PickDoc]]:
        """Why each image of ``block_id`` was shown (its pick documents: one per image set), by image id."""
        out: dict[str, list[PickDoc]] = {}
        for d in self.docs:
            if isinstance(d, PickDoc) and d.block_id == block_id:
                out.setdefault(d.image_id, []).append(d)
        return out

    def generate_params(self) -> dict[str, dict[str, Any]]:
        """The parameters of each image request, by request id (what the picks were asked for)."""
        return {str(d.step.get("request_id")): dict(d.step.get("params") or {}) for d in self.docs
                if isinstance(d, StepDoc) and d.step.get("kind") == "generate_images"}

    def trial_data(self, blocks: list[str]) -> TrialData:
        """The trials of ``blocks`` that have counts, with their image ids (the engine's columns:
        units in natural order, so neuron ``j`` of an analysis is column ``j`` here too)."""
        responses: dict[str, ResponseDoc] = {}
        for d in self.docs:
            if isinstance(d, ResponseDoc):
                responses.setdefault(d.trial_id.removesuffix(".again"), d)
        rows: list[tuple[ResponseDoc, str, str, str]] = []
        for b in self.blocks():
            if b.block_id in blocks:
                for tid, image, cond in b.params.get("trials", []):
                    if tid in responses:
                        rows.append((responses[tid], str(cond), b.block_id, str(image)))
        units = sorted({u for r, *_ in rows for u in r.units}, key=_natural_key)
        col = {u: j for j, u in enumerate(units)}
        counts = np.full((len(rows), len(units)), np.nan)
        for i, (r, *_) in enumerate(rows):
            counts[i, [col[u] for u in r.units]] = r.counts
        return TrialData(counts, [c for _, c, _, _ in rows], [b for _, _, b, _ in rows], [i for *_, i in rows])

    def analyses(self) -> list[tuple[Analyse, AnalysisResult, bool]]:
        """(step, result, recomputed) of every recorded analysis. A result stored without image ids
        (trial-level) is recomputed here at image level from the recorded trials."""
        out = []
        for d in self.docs:
            if not (isinstance(d, StepDoc) and d.step.get("kind") == "analyse"):
                continue
            step = Analyse.model_validate(d.step)
            result = AnalysisResult.model_validate(d.result)
            units = [c.unit for c in result.comparisons] + ([result.tuning.unit] if result.tuning else [])
            if all(u == "image" for u in units) and units:
                out.append((step, result, False))
                continue
            data = self.trial_data(list(step.blocks))
            try:
                out.append((step, run_analysis(step, data), True))
            except InvalidRequest:  # the trials it used are not all readable: keep what was recorded
                out.append((step, result, False))
        return out


def load_images(docs: list[Any]) -> dict[str, np.ndarray]:
    return {d.image_id: d.pixels for d in docs if isinstance(d, ImageDoc)}
