"""The documents of one session file, read and grouped for an NWB export."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wire.documents import (
    BlockDoc,
    EventDoc,
    GazeDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    RewardDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import StoreError

if TYPE_CHECKING:
    from controller.store import Damage

log = logging.getLogger(__name__)

#: the suffix of an invalid showing's trial id (``controller.engine.blocks``: ``<trial id>~x<n>``)
_INVALID_SHOWING = re.compile(r"~x\d+$")

STIM_CLOCK = ("the stimulus server's monotonic clock (CLOCK_MONOTONIC of the stimulus machine, seconds); "
              "not shifted to session_start_time")


@dataclass
class Session:
    """The documents of one session file, grouped by kind."""

    path: Path
    start: StartDoc
    docs: list[Any]
    problems: list[str]
    damage: list[Damage] = field(default_factory=list)
    stop: StopDoc | None = None
    blocks: list[BlockDoc] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    trials: list[TrialDoc] = field(default_factory=list)
    responses: dict[str, ResponseDoc] = field(default_factory=dict)
    model_versions: list[ModelVersionDoc] = field(default_factory=list)
    picks: list[PickDoc] = field(default_factory=list)
    events: list[EventDoc] = field(default_factory=list)
    steps: list[StepDoc] = field(default_factory=list)
    rewards: list[RewardDoc] = field(default_factory=list)
    gaze: list[GazeDoc] = field(default_factory=list)

    def since_start(self, t: float) -> float:
        """A document's wall-clock time as seconds after the session's start document."""
        return t - self.start.time

    def counted(self, t: TrialDoc) -> ResponseDoc | None:
        """The response whose counts are exported for trial ``t``: None when nothing was counted or the
        trial is invalid (the animal did not hold fixation; its counts stay in the session file, never
        exported as counts: docs/behavior.md)."""
        return self.responses.get(t.trial_id) if t.valid else None


def read_session(path: Path, *, allow_damaged: bool = False) -> Session:
    """The session's documents; DamagedSession when damage matters for an export (``Damage.matters``:
    a start, block, image, trial or response record, one of unknown kind, or the file itself) unless
    ``allow_damaged``. Whatever was skipped is listed in ``problems`` (and in the NWB file's notes)."""
    from controller.store import DamagedSession, SessionReader, damage_that_matters

    with SessionReader(path) as reader:
        docs = list(reader.documents())
        damage = reader.damage
    serious = damage_that_matters(damage)
    if serious and not allow_damaged:
        raise DamagedSession(path, serious, "an NWB export")
    for d in damage:
        log.warning("export of %s skips %s", path.name, d)
    if not docs or not isinstance(docs[0], StartDoc):
        raise StoreError(f"{path} has no start document; it cannot be exported"
                         + (" (its first record is damaged)" if any(d.index == 0 for d in damage) else ""))
    s = Session(path=path, start=docs[0], docs=docs, problems=[str(d) for d in damage], damage=damage)
    for d in docs[1:]:
        if isinstance(d, BlockDoc):
            s.blocks.append(d)
        elif isinstance(d, ImageDoc):
            s.images.setdefault(d.image_id, d.pixels)
        elif isinstance(d, TrialDoc):
            s.trials.append(d)
        elif isinstance(d, ResponseDoc):
            if d.trial_id in s.responses:
                log.warning("%s: trial %s has more than one response; the last is exported", path, d.trial_id)
            s.responses[d.trial_id] = d
        elif isinstance(d, ModelVersionDoc):
            s.model_versions.append(d)
        elif isinstance(d, PickDoc):
            s.picks.append(d)
        elif isinstance(d, EventDoc):
            s.events.append(d)
        elif isinstance(d, StepDoc):
            s.steps.append(d)
        elif isinstance(d, RewardDoc):
            s.rewards.append(d)
        elif isinstance(d, GazeDoc):
            s.gaze.append(d)
        elif isinstance(d, StopDoc):
            s.stop = d
    s.trials.sort(key=lambda t: t.onset)  # stable: trials recovered late keep their place by onset
    s.rewards.sort(key=lambda r: r.onset)
    shown = {t.trial_id for t in s.trials}
    orphans = [tid for tid in s.responses if tid not in shown]
    if orphans:
        log.warning("%s: %d responses have no trial document (kept in scratch/cortexloop_documents only): %s",
                    path, len(orphans), ", ".join(orphans[:5]))
    missing = sorted({t.image_id for t in s.trials} - s.images.keys())
    lost = {d.image_id for d in damage if d.kind == "image" and d.image_id} | (
        set(missing) if any(d.kind in ("image", None) for d in damage) else set())
    if set(missing) - lost:
        raise StoreError(f"{path}: trials show images that were never stored: "
                         f"{', '.join(sorted(set(missing) - lost)[:5])}")
    if missing:
        log.warning("%s: %d images shown are lost to damage; their trials have image_index -1 and are left "
                    "out of stimulus_presentations", path, len(missing))
    return s


def conditions(s: Session) -> list[str]:
    """The condition of each trial, from its block's trial list.

    A trial re-shown after a resume has the id ``<id>.again``, and an invalid showing (awake animal) the
    id ``<id>~x<n>``; each takes the condition of ``<id>``. A trial missing from its block's list takes the
    condition its image has in that block, else "".
    """
    by_trial: dict[str, str] = {}
    by_image: dict[tuple[str, str], str] = {}
    for b in s.blocks:
        for tid, image, cond in b.params.get("trials", []):
            by_trial[str(tid)] = str(cond)
            by_image.setdefault((b.block_id, str(image)), str(cond))
    out = []
    for t in s.trials:
        tid = t.trial_id
        if tid not in by_trial:
            tid = _INVALID_SHOWING.sub("", tid)
        while tid not in by_trial and tid.endswith(".again"):
            tid = tid.removesuffix(".again")
        out.append(by_trial.get(tid, by_image.get((t.block_id, t.image_id), "")))
    return out


def units_of(s: Session) -> list[str]:
    """The units of the exported counts (those of valid trials), in order of first appearance."""
    return list(dict.fromkeys(u for t in s.trials if (r := s.counted(t)) is not None for u in r.units))


def count_matrix(s: Session, units: list[str]) -> np.ndarray:
    """Counts (trials x units) in the order of the trials table; NaN where nothing was counted or the
    trial is invalid."""
    col = {u: j for j, u in enumerate(units)}
    out = np.full((len(s.trials), len(units)), np.nan)
    for i, t in enumerate(s.trials):
        r = s.counted(t)
        if r is not None:
            out[i, [col[u] for u in r.units]] = np.asarray(r.counts, dtype=np.float64).reshape(-1)
    return out


def safe_name(name: str) -> str:
    """An NWB object name: no slashes (nwbinspector: CRITICAL) and no colons."""
    return re.sub(r"[/\\:]", "-", name)


def column_name(key: str) -> str:
    return re.sub(r"\W", "_", key)


def nan_if_none(v: float | None) -> float:
    return math.nan if v is None else float(v)


