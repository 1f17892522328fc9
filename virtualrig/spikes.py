"""Spike trains of the virtual population: Poisson (or gamma-Poisson) with latency and baseline.

The rate of every unit is piecewise constant: ``baseline`` spikes/s, except during a trial's
driven segment ``[onset + latency, offset + latency)`` where it is the unit's rate for the
image shown, times a per-trial gain. With ``fano == 1`` the gain is 1 (Poisson counts);
with ``fano > 1`` the gain is gamma distributed with mean 1 so that each trial's count over
the driven segment has variance ``fano * mean`` (a gamma-Poisson / negative binomial).
Overlapping driven segments: the later trial wins from its start.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from wire.errors import InvalidRequest

__all__ = ["ResponseParams", "SpikeSynth", "draw_counts"]


@dataclass(frozen=True, slots=True)
class ResponseParams:
    latency: float = 0.05
    baseline: float = 5.0
    fano: float = 1.0

    def __post_init__(self) -> None:
        if self.latency < 0 or self.baseline < 0 or self.fano < 1:
            raise InvalidRequest("latency and baseline must be >= 0 and fano >= 1")


def _gain(rng: np.random.Generator, mean_counts: np.ndarray, fano: float) -> np.ndarray:
    if fano == 1.0:
        return np.ones_like(mean_counts)
    k = np.maximum(mean_counts, 1e-9) / (fano - 1.0)
    return rng.gamma(k, 1.0 / k)


def draw_counts(rates: np.ndarray, duration: float, repeats: int, rng: np.random.Generator,
                fano: float = 1.0) -> np.ndarray:
    """Counts of ``repeats`` trials over ``duration`` s: (repeats, *rates.shape), without spike times."""
    mu = np.broadcast_to(np.asarray(rates, dtype=np.float64) * duration, (repeats, *np.shape(rates)))
    return rng.poisson(mu * _gain(rng, mu, fano))


class SpikeSynth:
    """Generates the population's spikes in time order, interval by interval (``emit(until)``)."""

    def __init__(self, n_units: int, params: ResponseParams | None = None, *, seed: int | None = None,
                 start: float = 0.0) -> None:
        self.n_units = n_units
        self.params = params or ResponseParams()
        self.rng = np.random.default_rng(seed)
        self.emitted_until = start
        self._segments: deque[tuple[float, float, np.ndarray]] = deque()  # (start, end, rates), by start
        self._base = np.full(n_units, self.params.baseline)

    def add_trial(self, onset: float, offset: float, rates: np.ndarray | None) -> bool:
        """Schedule a trial's driven segment; False if it starts before what was already emitted."""
        p = self.params
        start, end = onset + p.latency, offset + p.latency
        if end <= start:
            return True
        r = self._base if rates is None else np.asarray(rates, dtype=np.float64)
        if r.shape != (self.n_units,):
            raise InvalidRequest(f"rates must be ({self.n_units},), got {r.shape}")
        r = r * _gain(self.rng, r * (end - start), p.fano)
        late = start < self.emitted_until
        seg = (start, end, r)
        i = len(self._segments)
        while i and self._segments[i - 1][0] > start:
            i -= 1
        self._segments.insert(i, seg)
        return not late

    def _spikes(self, a: float, b: float, rates: np.ndarray, units: list[np.ndarray], times: list[np.ndarray]) -> None:
        if b <= a:
            return
        n = self.rng.poisson(rates * (b - a))
        total = int(n.sum())
        if total:
            units.append(np.repeat(np.arange(self.n_units, dtype=np.int32), n))
            times.append(self.rng.uniform(a, b, total))

    def emit(self, until: float) -> tuple[np.ndarray, np.ndarray]:
        """All spikes in ``[emitted_until, until)``, sorted by time: (units int32, times float64)."""
        a = self.emitted_until
        if until <= a:
            return np.empty(0, np.int32), np.empty(0)
        units: list[np.ndarray] = []
        times: list[np.ndarray] = []
        t = a
        segs = [s for s in self._segments if s[1] > a and s[0] < until]
        for k, (s0, s1, r) in enumerate(segs):
            s0 = max(s0, a)
            nxt = segs[k + 1][0] if k + 1 < len(segs) else np.inf
            s1 = min(s1, until, max(nxt, s0))
            if s0 > t:
                self._spikes(t, s0, self._base, units, times)
                t = s0
            if s1 > t:
                self._spikes(t, s1, r, units, times)
                t = s1
        self._spikes(t, until, self._base, units, times)
        while self._segments and self._segments[0][1] <= until:
            self._segments.popleft()
        self.emitted_until = until
        if not times:
            return np.empty(0, np.int32), np.empty(0)
        u, tt = np.concatenate(units), np.concatenate(times)
        order = np.argsort(tt, kind="stable")
        return u[order], tt[order]
