"""Spike counts per (trial, unit) in a window after each stimulus onset.

Window semantics: a trial with acquisition-clock onset ``o`` counts the spikes with
``o + window[0] <= t < o + window[1]`` (start included, end excluded).

Onsets come from the stimserver's flip times (stim clock) and are mapped into the
acquisition clock by a :class:`~controller.acquisition.clock.ClockMap` (given) or a
:class:`~controller.acquisition.clock.ClockSync` (fitted from sync pulses, e.g. a photodiode
TTL per onset). The mapping is applied when the trial is closed, so a trial registered
before its pulse arrived still gets the best map.

Flow control: the *watermark* is the latest acquisition time known to have passed (the
newest spike or heartbeat; not sync edges, which may travel on another stream than the
spikes and run ahead of them). A trial closes as soon as ``watermark >= o +
window[1] + lateness``; until then spikes may arrive in any order. A spike that arrives
after its trial closed is counted in ``stats.late_spikes`` and never alters the closed
counts. Spikes are kept for ``retention`` seconds behind the watermark (and as long as an
open trial needs them) because a TrialEvent is only published at the trial's offset, i.e.
after its spikes.

Units: columns are created on a unit's first spike (or up front with ``units=``). A closed
record lists the units known *when it closed*: a trial that was still open when a new unit
first fired gets that unit's column (0 if it did not fire in the window); trials closed
before the unit appeared do not list it (a reader fills NaN, not 0: the unit may not have
been isolated yet).

Speed: spikes are kept in one time-sorted buffer (sorted lazily, chunks usually arrive in
order); a trial's counts are one ``searchsorted`` pair and a ``bincount``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from controller.acquisition.base import Heartbeat, Item, SpikeBatch, SyncEvent, Unit
from controller.acquisition.clock import ClockMap, ClockSync
from wire.acq import TrialCounts
from wire.clock import now as clock_now
from wire.errors import AcquisitionError, InvalidRequest
from wire.stim import TrialEvent

log = logging.getLogger(__name__)

__all__ = ["Binner", "BinningConfig", "BinningStats", "ClockMap", "ClockSync", "ClosedTrial"]


@dataclass(frozen=True, slots=True)
class BinningConfig:
    """``window`` (s after onset, [start, end)); ``lateness``: extra acquisition time waited after a
    window's end before closing it; ``retention``: seconds of spikes kept behind the watermark."""

    window: tuple[float, float] = (0.05, 0.15)
    lateness: float = 0.05
    retention: float = 10.0

    def __post_init__(self) -> None:
        if not self.window[1] > self.window[0]:
            raise InvalidRequest(f"window end must be after its start, got {self.window}")
        if self.lateness < 0 or self.retention <= 0:
            raise InvalidRequest("lateness must be >= 0 and retention > 0")


@dataclass(frozen=True, slots=True)
class ClosedTrial:
    """The counts of one closed trial: ``counts[i]`` spikes of ``unit_ids[i]``."""

    trial_id: str
    unit_ids: tuple[Unit, ...]
    counts: np.ndarray
    window: tuple[float, float]
    onset_acq: float
    onset_stim: float
    complete: bool = True
    block_id: str | None = None
    image_id: str | None = None
    index: int | None = None
    closed_at: float = field(default=0.0, compare=False)  # wire.clock.now() when closed (latency stats)

    def count(self, unit: Unit) -> int:
        return int(self.counts[self.unit_ids.index(unit)])

    def to_message(self) -> TrialCounts:
        return TrialCounts(trial_id=self.trial_id, block_id=self.block_id, image_id=self.image_id,
                           index=self.index,
                           unit_ids=[u.item() if isinstance(u, np.generic) else u for u in self.unit_ids],
                           counts=np.ascontiguousarray(self.counts, dtype=np.int32),
                           window_start=self.window[0], window_end=self.window[1],
                           onset_stim=self.onset_stim, onset_acq=self.onset_acq, complete=self.complete)


@dataclass(slots=True)
class BinningStats:
    spikes: int = 0
    late_spikes: int = 0
    trials_closed: int = 0
    trials_incomplete: int = 0
    sync_events: int = 0


@dataclass(slots=True)
class _Open:
    trial_id: str
    onset_stim: float
    meta: dict[str, Any]


class _SpikeBuffer:
    """Growable (time, column) arrays, sorted by time on demand."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.t = np.empty(capacity, dtype=np.float64)
        self.c = np.empty(capacity, dtype=np.int32)
        self.n = 0
        self.sorted = True
        self.horizon = -np.inf  # spikes before this time may have been pruned

    def append(self, t: np.ndarray, c: np.ndarray) -> None:
        k = t.shape[0]
        if k == 0:
            return
        need = self.n + k
        if need > self.t.shape[0]:
            cap = max(need, 2 * self.t.shape[0])
            self.t = np.concatenate([self.t[: self.n], np.empty(cap - self.n)])
            self.c = np.concatenate([self.c[: self.n], np.empty(cap - self.n, dtype=np.int32)])
        if self.sorted and (
                (self.n and t[0] < self.t[self.n - 1]) or (k > 1 and bool(np.any(t[1:] < t[:-1])))):
            self.sorted = False
        self.t[self.n:need] = t
        self.c[self.n:need] = c
        self.n = need

    def _sort(self) -> None:
        if not self.sorted:
            order = np.argsort(self.t[: self.n], kind="stable")
            self.t[: self.n] = self.t[: self.n][order]
            self.c[: self.n] = self.c[: self.n][order]
            self.sorted = True

    def counts(self, start: float, end: float, n_units: int) -> np.ndarray:
        self._sort()
        lo, hi = np.searchsorted(self.t[: self.n], (start, end), side="left")
        return np.bincount(self.c[lo:hi], minlength=n_units).astype(np.int32, copy=False)

    def prune(self, before: float) -> None:
        self._sort()
        k = int(np.searchsorted(self.t[: self.n], before, side="left"))
        if k:
            rest = self.n - k
            self.t[:rest] = self.t[k:self.n]
            self.c[:rest] = self.c[k:self.n]
            self.n = rest
        self.horizon = max(self.horizon, before)


class Binner:
    """Counts spikes per (trial, unit); feed it items and trials, collect :class:`ClosedTrial` records.

    Every feeding method returns the trials it closed (in onset order). ``clock`` is a
    :class:`ClockMap` (fixed), a :class:`ClockSync` (fed by sync edges of its channel), or None
    (identity: stim and acquisition clocks are the same clock).
    """

    def __init__(self, config: BinningConfig | None = None, clock: ClockMap | ClockSync | None = None,
                 units: Sequence[Unit] | np.ndarray = ()) -> None:
        self.config = config or BinningConfig()
        self.clock: ClockMap | ClockSync = clock if clock is not None else ClockMap.identity()
        self.stats = BinningStats()
        self._units: list[Unit] = []
        self._col: dict[Unit, int] = {}
        self._lut = np.full(64, -1, dtype=np.int32)  # int unit id -> column, -1 unknown
        for u in units:
            self._column(u)
        self._buf = _SpikeBuffer()
        self._prune_at = 4096
        self._open: dict[str, _Open] = {}
        self._known: set[str] = set()
        self.watermark = -np.inf
        # closed windows (acq clock) for late-spike detection, sorted by start
        self._closed_starts: list[float] = []
        self._closed_ends: list[float] = []
        self._closed_arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._closed_max_end = -np.inf
        self._max_closed_history = 100_000
        self._last_late_log = 0.0

    # --- units ---------------------------------------------------------------------------
    @property
    def unit_ids(self) -> tuple[Unit, ...]:
        return tuple(self._units)

    def _column(self, unit: Unit) -> int:
        col = self._col.get(unit)
        if col is None:
            if isinstance(unit, int) and 0 <= unit < self._lut.size:
                self._lut[unit] = len(self._units)
            col = self._col[unit] = len(self._units)
            self._units.append(unit)
        return col

    def _columns(self, units: np.ndarray) -> np.ndarray:
        if units.dtype.kind in "iu" and units.size:  # fast path: small non-negative ints via a lookup table
            lo, hi = int(units.min()), int(units.max())
            if lo >= 0 and hi < 1 << 20:
                if hi >= self._lut.size:
                    self._lut = np.concatenate([self._lut, np.full(max(hi + 1, 2 * self._lut.size) - self._lut.size,
                                                                   -1, dtype=np.int32)])
                cols = self._lut[units]
                if (cols < 0).any():
                    for u in np.unique(units[cols < 0]).tolist():
                        self._lut[u] = self._column(u)
                    cols = self._lut[units]
                return cols
        try:
            uniq, inv = np.unique(units, return_inverse=True)
        except TypeError:  # mixed int/str ids cannot be sorted together
            return np.fromiter((self._column(u) for u in units.tolist()), dtype=np.int32, count=units.shape[0])
        lut = np.fromiter((self._column(u) for u in uniq.tolist()), dtype=np.int32, count=uniq.shape[0])
        return lut[inv.reshape(-1)]

    # --- trials ------------------------------------------------------------------------------
    def add_trial(self, trial_id: str, onset_stim: float, *, block_id: str | None = None,
                  image_id: str | None = None, index: int | None = None) -> list[ClosedTrial]:
        """Register a trial by its onset on the stimulus clock; returns trials this closed (maybe itself)."""
        if trial_id in self._known:
            raise AcquisitionError(f"trial {trial_id!r} registered twice")
        self._known.add(trial_id)
        self._open[trial_id] = _Open(trial_id, float(onset_stim),
                                     {"block_id": block_id, "image_id": image_id, "index": index})
        if isinstance(self.clock, ClockSync):
            self.clock.add_onset(float(onset_stim))
        return self._close_due()

    def add_trial_event(self, ev: TrialEvent) -> list[ClosedTrial]:
        return self.add_trial(ev.trial_id, ev.onset, block_id=ev.block_id, image_id=ev.image_id, index=ev.index)

    @property
    def open_trials(self) -> int:
        return len(self._open)

    def _onset_acq(self, tr: _Open) -> float | None:
        if isinstance(self.clock, ClockSync):
            return self.clock.to_acq(tr.onset_stim)
        return float(self.clock.to_acq(tr.onset_stim))

    # --- acquisition items --------------------------------------------------------------------
    def feed(self, item: Item) -> list[ClosedTrial]:
        if isinstance(item, SpikeBatch):
            return self.add_spikes(item.units, item.times)
        if isinstance(item, SyncEvent):
            return self.add_sync(item)
        if isinstance(item, Heartbeat):
            return self.advance(item.t)
        raise TypeError(f"not an acquisition item: {type(item).__name__}")

    def add_spikes(self, units: np.ndarray | Sequence[Unit], times: np.ndarray | Sequence[float]) -> list[ClosedTrial]:
        """A chunk of spikes (any order); returns trials closed by the time it reaches."""
        t = np.asarray(times, dtype=np.float64)
        u = np.asarray(units)
        if t.shape != u.shape or t.ndim != 1:
            raise AcquisitionError(f"spike chunk with units {u.shape} and times {t.shape}")
        if t.size == 0:
            return []
        finite = np.isfinite(t)
        if not finite.all():
            log.warning("dropped %d spikes with non-finite times", int((~finite).sum()))
            t, u = t[finite], u[finite]
            if t.size == 0:
                return []
        cols = self._columns(u)
        self.stats.spikes += int(t.size)
        if t.min() < self._closed_max_end:
            self._count_late(t)
        self._buf.append(t, cols)
        tmax = float(t.max())
        if tmax > self.watermark:
            self.watermark = tmax
        return self._close_due()

    def add_sync(self, ev: SyncEvent) -> list[ClosedTrial]:
        self.stats.sync_events += 1
        if isinstance(self.clock, ClockSync) and ev.channel == self.clock.channel:
            self.clock.add_pulse(ev.t, ev.state)
        # a sync edge does not advance the watermark: it may come on another stream (LSL markers)
        # than the spikes, ahead of them; it can still close trials that were waiting for the clock
        return self._close_due()

    def advance(self, t_acq: float) -> list[ClosedTrial]:
        """The acquisition clock has reached ``t_acq`` (a heartbeat)."""
        if t_acq > self.watermark:
            self.watermark = float(t_acq)
        return self._close_due()

    def flush(self) -> list[ClosedTrial]:
        """Close every open trial now (end of session or failed source); unfinished ones are incomplete."""
        out: list[ClosedTrial] = []
        for tr in sorted(self._open.values(), key=lambda o: o.onset_stim):
            onset = self._onset_acq(tr)
            if onset is None:
                onset = float("nan")
            out.append(self._close(tr, onset))
        return out

    # --- closing --------------------------------------------------------------------------------
    def _close_due(self) -> list[ClosedTrial]:
        if not self._open:
            self._maybe_prune()
            return []
        w1 = self.config.window[1] + self.config.lateness
        due: list[tuple[float, _Open]] = []
        for tr in self._open.values():
            onset = self._onset_acq(tr)
            if onset is not None and onset + w1 <= self.watermark:
                due.append((onset, tr))
        out = [self._close(tr, onset) for onset, tr in sorted(due, key=lambda x: x[0])]
        self._maybe_prune()
        return out

    def _close(self, tr: _Open, onset: float) -> ClosedTrial:
        del self._open[tr.trial_id]
        w0, w1 = self.config.window
        start, end = onset + w0, onset + w1
        n_units = len(self._units)
        if np.isfinite(onset):
            counts = self._buf.counts(start, end, n_units)
            complete = start >= self._buf.horizon and self.watermark >= end + self.config.lateness
        else:
            counts = np.zeros(n_units, dtype=np.int32)
            complete = False
        if not complete:
            self.stats.trials_incomplete += 1
            log.warning("trial %s closed incomplete (window [%.4f, %.4f), watermark %.4f, buffer from %.4f)",
                        tr.trial_id, start, end, self.watermark, self._buf.horizon)
        if np.isfinite(onset):
            self._remember_closed(start, end)
        self.stats.trials_closed += 1
        return ClosedTrial(trial_id=tr.trial_id, unit_ids=tuple(self._units), counts=counts,
                           window=(w0, w1), onset_acq=onset, onset_stim=tr.onset_stim, complete=complete,
                           closed_at=clock_now(), **tr.meta)

    def _remember_closed(self, start: float, end: float) -> None:
        i = int(np.searchsorted(self._closed_starts, start))
        self._closed_starts.insert(i, start)
        self._closed_ends.insert(i, end)
        if len(self._closed_starts) > self._max_closed_history:
            del self._closed_starts[0], self._closed_ends[0]
        self._closed_max_end = max(self._closed_max_end, end)
        self._closed_arrays = None

    def _count_late(self, t: np.ndarray) -> None:
        if self._closed_arrays is None:
            starts = np.asarray(self._closed_starts)
            self._closed_arrays = (starts, np.maximum.accumulate(np.asarray(self._closed_ends)))
        starts, max_ends = self._closed_arrays
        cand = t[t < self._closed_max_end]
        idx = np.searchsorted(starts, cand, side="right") - 1
        ok = idx >= 0
        late = int(np.count_nonzero(cand[ok] < max_ends[idx[ok]]))
        if late:
            self.stats.late_spikes += late
            now = time.monotonic()
            if now - self._last_late_log > 5.0:
                self._last_late_log = now
                log.warning("%d spike(s) arrived after their trial closed (late_spikes=%d); raise the "
                            "lateness allowance (now %.3f s) if this recurs", late, self.stats.late_spikes,
                            self.config.lateness)

    def _maybe_prune(self) -> None:
        if self._buf.n < self._prune_at:  # amortised: prune when the buffer has doubled since the last time
            return
        cutoff = self.watermark - self.config.retention
        for tr in self._open.values():
            onset = self._onset_acq(tr)
            if onset is not None:
                cutoff = min(cutoff, onset + self.config.window[0])
        if cutoff > self._buf.horizon and self._buf.n and self._buf.t[0] < cutoff:
            self._buf.prune(cutoff)
        self._prune_at = max(4096, 2 * self._buf.n)
