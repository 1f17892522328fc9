"""The dashboard's running views of blocks, trials, counts and images (parts of ``DashboardState``)."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wire.documents import BlockDoc, PickDoc, ResponseDoc
from wire.topics import BlockStatus

#: images listed per block at most
MAX_IMAGES = 48
#: trial times kept per block for its rate and ETA
RATE_TRIALS = 20


@dataclass
class _Block:
    block_id: str
    n_trials: int = 0
    source: str | None = None
    fallback: bool = False
    state: str | None = None
    started: float | None = None
    shown: set[int] = field(default_factory=set)
    times: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_TRIALS))


class BlockTrack:
    """Blocks, trials and the counts of the last ``heat_trials`` trials."""

    def __init__(self, heat_trials: int) -> None:
        self.blocks: OrderedDict[str, _Block] = OrderedDict()
        self.current_block: str | None = None
        self.trials: set[tuple[str, int]] = set()
        self.last_time: float | None = None
        self.last_bus_time: float | None = None
        self.units: list[str] = []
        self.rows: deque[tuple[str, dict[str, float]]] = deque(maxlen=heat_trials)

    def _block(self, block_id: str) -> _Block:
        b = self.blocks.get(block_id)
        if b is None:
            b = self.blocks[block_id] = _Block(block_id)
        return b

    def on_block_status(self, msg: BlockStatus) -> None:
        b = self._block(msg.block_id)
        b.state, b.n_trials = msg.state, max(b.n_trials, msg.n_trials)
        b.fallback = b.fallback or msg.fallback_used
        b.source = msg.image_source or b.source
        if msg.state == "running":
            b.started = b.started or msg.time
            self.current_block = msg.block_id

    def on_block_doc(self, doc: BlockDoc) -> None:
        b = self._block(doc.block_id)
        b.n_trials, b.source, b.fallback = doc.n_trials, doc.source, b.fallback or doc.fallback
        b.started = b.started or doc.time
        if self.current_block is None:
            self.current_block = doc.block_id

    def on_trial(self, block_id: str, index: int, when: float, *, bus_time: float | None = None,
                 trial_id: str | None = None) -> None:
        b = self._block(block_id)
        if index not in b.shown:
            b.shown.add(index)
            b.times.append(when)
        self.trials.add((block_id, index))
        self.current_block = block_id
        self.last_time = max(self.last_time or when, when)
        if bus_time is not None:
            self.last_bus_time = bus_time

    def on_response(self, doc: ResponseDoc) -> None:
        for u in doc.units:
            if u not in self.units:
                self.units.append(u)
        values = np.asarray(doc.counts, dtype=np.float64).ravel()
        self.rows.append((doc.trial_id, {u: float(v) for u, v in zip(doc.units, values, strict=False)}))

    # -- views ---------------------------------------------------------------------------------------
    def block_view(self, now: float) -> dict[str, Any]:
        b = self.blocks.get(self.current_block) if self.current_block else None
        recent = [{"block_id": x.block_id, "n_trials": x.n_trials, "done": len(x.shown), "source": x.source,
                   "fallback": x.fallback, "state": x.state} for x in list(self.blocks.values())[-12:]]
        if b is None:
            return {"current": None, "blocks": recent}
        done = len(b.shown)
        rate = eta = None
        if len(b.times) >= 2 and b.times[-1] > b.times[0]:
            rate = (len(b.times) - 1) / (b.times[-1] - b.times[0])
            if b.n_trials > done and b.state not in ("completed", "aborted", "failed"):
                eta = (b.n_trials - done) / rate
        return {"current": {"block_id": b.block_id, "state": b.state, "n_trials": b.n_trials, "done": done,
                            "fraction": done / b.n_trials if b.n_trials else None, "rate": rate, "eta_s": eta,
                            "source": b.source, "fallback": b.fallback}, "blocks": recent}

    def trials_view(self, now: float, quiet_after: float, state: str) -> dict[str, Any]:
        b = self.blocks.get(self.current_block) if self.current_block else None
        since = None
        reference = max(filter(None, [self.last_time, b.started if b else None]), default=None)
        if reference is not None:
            since = max(0.0, now - reference)
        presenting = (state == "running" and b is not None and b.state in ("running", None)
                      and len(b.shown) < b.n_trials)
        quiet = bool(presenting and since is not None and since > quiet_after)
        silent: list[str] = []
        if len(self.rows) >= 10:
            silent = [u for u in self.units if all(r.get(u, 0.0) == 0.0 for _, r in self.rows)]
        return {"count": len(self.trials), "last_time": self.last_time, "last_bus_time": self.last_bus_time,
                "since_last_s": since, "quiet": quiet, "silent_units": silent,
                "warning": (f"no trial for {since:.0f} s while block {b.block_id} is presenting" if quiet and b
                            and since is not None else "")}

    def counts_view(self) -> dict[str, Any]:
        rows = [[_num(r.get(u)) for u in self.units] for _, r in self.rows]
        finite = [v for row in rows for v in row if v is not None]
        return {"units": self.units, "trial_ids": [t for t, _ in self.rows], "rows": rows,
                "max": max(finite, default=0.0)}


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else v


def why(pick: PickDoc) -> str:
    """Why an image was picked, in a few words."""
    g = pick.generator
    if g.startswith("fallback:"):
        return f"fallback ({g.split(':', 1)[1]} images) instead of {pick.details.get('instead_of', 'model images')}"
    parts = [g]
    if pick.neuron is not None:
        parts.append(f"neuron {pick.neuron}")
    if pick.score is not None and math.isfinite(pick.score):
        parts.append(f"score {pick.score:.3g}")
    if pick.model_version:
        parts.append(f"model {pick.model_version}")
    if pick.model_version is None and pick.score is None and "seed" in pick.details:
        parts.append(f"random draw, seed {pick.details['seed']}")
    return ", ".join(parts)


class ImageBook:
    """Where each image is in the file, each block's images, and why each was picked."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}
        self.blocks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.picks: dict[str, dict[str, PickDoc]] = {}

    def on_image(self, image_id: str, pos: int) -> None:
        self.positions.setdefault(image_id, pos)

    def on_pick(self, pick: PickDoc) -> None:
        self.picks.setdefault(pick.block_id, {})[pick.image_id] = pick

    def on_block(self, doc: BlockDoc) -> None:
        conditions: dict[str, str | None] = {}
        for row in doc.params.get("trials", []):
            if isinstance(row, list | tuple) and len(row) >= 2 and isinstance(row[1], str):
                conditions.setdefault(row[1], row[2] if len(row) > 2 and isinstance(row[2], str) else None)
        self.blocks[doc.block_id] = {"block_id": doc.block_id, "index": doc.index, "source": doc.source,
                                     "fallback": doc.fallback, "conditions": conditions}

    def _block(self, block_id: str) -> dict[str, Any]:
        info = self.blocks.get(block_id, {"block_id": block_id, "index": None, "source": None, "fallback": False,
                                          "conditions": {}})
        picks = self.picks.get(block_id, {})
        ids = list(info["conditions"]) or list(picks)
        images = []
        for i in ids[:MAX_IMAGES]:
            p = picks.get(i)
            images.append({"id": i, "available": i in self.positions, "condition": info["conditions"].get(i),
                           "generator": p.generator if p else info["source"],
                           "why": why(p) if p else f"{info['source'] or 'block'} image"})
        return {"block_id": block_id, "index": info["index"], "source": info["source"], "fallback": info["fallback"],
                "n_images": len(ids), "images": images}

    def view(self, current: str | None) -> dict[str, Any]:
        order = list(self.blocks)
        if current is None and order:
            current = order[0]
        nxt: str | None = None
        if current is not None and current in self.blocks:
            later = order[order.index(current) + 1:]
            nxt = later[0] if later else None
        if nxt is None:
            pending = [b for b in self.picks if b not in self.blocks and b != current]
            nxt = pending[-1] if pending else None
        return {"current": self._block(current) if current else None, "next": self._block(nxt) if nxt else None}
