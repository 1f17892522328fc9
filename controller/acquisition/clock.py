"""Mapping stimulus-clock times into the acquisition clock.

The model is affine: ``t_acq = offset + scale * t_stim`` where ``scale = 1 + drift``
(drift is the relative rate error of the two clocks, e.g. 20 ppm = 2e-5). A
:class:`ClockMap` is either given (identity on one machine; LSL's time correction for an
LSL rig, whose timestamps are already in the local clock) or fitted by least squares from
matched pairs (stimulus flip time, sync-pulse time) by :class:`ClockSync`, which also does
the matching: each photodiode/TTL rising edge is paired with the flip it reports.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import overload

import numpy as np

from wire.errors import AcquisitionError

log = logging.getLogger(__name__)

__all__ = ["ClockMap", "ClockSync"]


@dataclass(frozen=True, slots=True)
class ClockMap:
    """``t_acq = offset + scale * t_stim``; ``residual_s`` is the RMS fit residual (0 when given)."""

    offset: float = 0.0
    scale: float = 1.0
    residual_s: float = 0.0
    n_pairs: int = 0

    @property
    def drift(self) -> float:
        return self.scale - 1.0

    @overload
    def to_acq(self, t_stim: float) -> float: ...
    @overload
    def to_acq(self, t_stim: np.ndarray) -> np.ndarray: ...

    def to_acq(self, t_stim: float | np.ndarray) -> float | np.ndarray:
        return self.offset + self.scale * t_stim

    @overload
    def to_stim(self, t_acq: float) -> float: ...
    @overload
    def to_stim(self, t_acq: np.ndarray) -> np.ndarray: ...

    def to_stim(self, t_acq: float | np.ndarray) -> float | np.ndarray:
        return (t_acq - self.offset) / self.scale

    @classmethod
    def identity(cls) -> ClockMap:
        return cls()

    @classmethod
    def fit(cls, t_stim: np.ndarray, t_acq: np.ndarray, *, fit_drift: bool = True) -> ClockMap:
        """Least-squares fit from matched pairs; one pair (or ``fit_drift=False``) fits the offset only."""
        s = np.asarray(t_stim, dtype=np.float64)
        a = np.asarray(t_acq, dtype=np.float64)
        if s.shape != a.shape or s.ndim != 1 or s.size == 0:
            raise AcquisitionError(f"clock fit needs equal, non-empty 1-d pair arrays, got {s.shape} {a.shape}")
        s0 = float(s.mean())  # centre for numerical stability (monotonic times are large)
        a0 = float(a.mean())
        ds = s - s0
        if fit_drift and s.size >= 2 and float(np.ptp(s)) > 0:
            scale = float(np.dot(ds, a - a0) / np.dot(ds, ds))
        else:
            scale = 1.0
        offset = a0 - scale * s0
        resid = a - (offset + scale * s)
        return cls(offset=offset, scale=scale, residual_s=float(np.sqrt(np.mean(resid**2))), n_pairs=int(s.size))


class ClockSync:
    """Pairs stimulus onsets with sync pulses and keeps a least-squares :class:`ClockMap` of them.

    ``add_onset(t_stim)`` for every flip that lights the photodiode; ``add_pulse(t_acq)`` for
    every rising edge of the sync channel. Until pulses have been matched the map is
    ``initial`` (possibly None: trials wait). The first offset is found by trying every
    (pulse - onset) difference among the first ``search`` of each and keeping the one that
    lines up most pulses within ``tolerance`` (at least ``min_pairs``), so the two clocks may
    differ by anything (use jittered inter-trial intervals, or give ``initial``, if the first
    pulses may be missing). Afterwards each onset is matched to the pulse nearest its
    predicted time (within ``tolerance``) and the map is refitted by least squares on the
    last ``max_pairs`` pairs (tracking drift).
    """

    def __init__(self, channel: str = "photodiode", *, tolerance: float = 0.02, initial: ClockMap | None = None,
                 min_pairs: int = 2, max_pairs: int = 200, fit_drift: bool = True, search: int = 24) -> None:
        self.channel = channel
        self.tolerance = tolerance
        self.min_pairs = min_pairs
        self.fit_drift = fit_drift
        self._search = search
        self._map: ClockMap | None = initial
        self._locked = False
        self._onsets: list[float] = []  # unmatched onsets (stim clock), sorted
        self._pulses: list[float] = []  # unmatched pulses (acq clock), sorted
        self._pairs: deque[tuple[float, float]] = deque(maxlen=max_pairs)
        self.unmatched_pulses = 0
        self.unmatched_onsets = 0
        #: unmatched pulses younger than this (s, behind the newest) wait for their onset
        self.keep_pulses_s = 30.0

    @property
    def map(self) -> ClockMap | None:
        """The current map (None until one is known)."""
        return self._map

    @property
    def locked(self) -> bool:
        """True once the map comes from matched pulses (not only from ``initial``)."""
        return self._locked

    @property
    def n_pairs(self) -> int:
        return len(self._pairs)

    def add_onset(self, t_stim: float) -> None:
        self._onsets.append(float(t_stim))
        self._onsets.sort()
        self._match()

    def add_pulse(self, t_acq: float, state: int = 1) -> None:
        if state != 1:
            return
        self._pulses.append(float(t_acq))
        self._pulses.sort()
        self._match()

    def to_acq(self, t_stim: float) -> float | None:
        """Acquisition time of a stimulus time, or None while no map is known."""
        return None if self._map is None else float(self._map.to_acq(t_stim))

    def _find_offset(self) -> float | None:
        ons = np.asarray(self._onsets[: self._search])
        pul = np.asarray(self._pulses[: self._search])
        if ons.size < self.min_pairs or pul.size < self.min_pairs:
            return None
        best_n, best_d = 0, 0.0
        for d in (pul[:, None] - ons[None, :]).ravel():
            err = np.abs(pul[None, :] - (ons[:, None] + d)).min(axis=1)
            n = int(np.count_nonzero(err <= self.tolerance))
            if n > best_n:
                best_n, best_d = n, float(d)
        return best_d if best_n >= self.min_pairs else None

    def _match(self) -> None:
        base = self._map
        if not self._locked:
            d = self._find_offset()
            if d is None:
                return  # keep ``initial`` (possibly None) until the pulses line up
            base = ClockMap(offset=d)
        assert base is not None
        matched = False
        remaining: list[float] = []
        pulses = np.asarray(self._pulses)
        taken = np.zeros(pulses.size, dtype=bool)
        for t in self._onsets:
            pred = float(base.to_acq(t))
            if pulses.size:
                err = np.abs(pulses - pred)
                err[taken] = np.inf
                i = int(np.argmin(err))
                if err[i] <= self.tolerance:
                    self._pairs.append((t, float(pulses[i])))
                    taken[i] = True
                    matched = True
                    continue
            remaining.append(t)
        self._pulses = pulses[~taken].tolist()
        if matched:
            s, a = np.asarray(self._pairs).T
            self._map = ClockMap.fit(s, a, fit_drift=self.fit_drift and len(self._pairs) >= 3)
            self._locked = True
            base = self._map
        # an onset whose pulse should long have come (a later pulse exists) will never match: drop it;
        # likewise pulses older than every pending onset (and any backlog beyond 1000)
        if self._pulses:
            last = self._pulses[-1]
            keep = [t for t in remaining if float(base.to_acq(t)) > last - 10 * self.tolerance]
            self.unmatched_onsets += len(remaining) - len(keep)
            remaining = keep
        self._onsets = remaining
        if self._locked and self._pulses:
            # a pulse usually comes before its onset is known (TrialEvents are sent at the offset)
            horizon = (float(base.to_acq(self._onsets[0])) - 10 * self.tolerance if self._onsets
                       else self._pulses[-1] - self.keep_pulses_s)
            keep_p = [p for p in self._pulses if p >= horizon][-1000:]
            self.unmatched_pulses += len(self._pulses) - len(keep_p)
            self._pulses = keep_p
