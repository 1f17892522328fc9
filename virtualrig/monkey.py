"""The virtual monkey: the eye gaze of an awake animal that fixates a spot, blinks and gets bored.

Pure numpy (no I/O, no clock): ``VirtualMonkey.samples(t0, t1)`` returns the gaze at the sample
instants of ``[t0, t1)`` on the grid ``k / rate_hz`` (degrees from the screen centre, x right, y up;
NaN during a blink), to be called with consecutive intervals; ``reward(t)`` tells it it was rewarded.
The rig (``virtualrig.rig``) streams it over LSL in real time; tests drive it in simulated time.

What it does (``MonkeyConfig`` defaults in brackets):

* fixation of ``target`` [(0, 0)]: a slow random-walk drift [``drift_deg_s`` 0.2: RMS displacement
  after 1 s, both axes together], tremor noise [``tremor_deg`` 0.02 SD per axis, white] and
  microsaccades [``micro_rate`` 1.5/s, amplitude uniform in ``micro_amp`` (0.1, 0.5) deg, aimed back
  at the spot (+-45 deg SD) once the eye is more than 0.1 deg off it];
* blinks [``blink_rate`` 0.2/s, each ``blink_s`` (0.1, 0.25) s of NaN samples, >= 0.3 s apart]; while
  it fixates only a share ``blink_fixating`` [0.25] of them happens (monkeys hold back blinks while
  they work for juice: 0.05/s on the spot, 0.2/s away from it);
* fixation breaks: while fixating, the hazard (per s) is ``break_rate * min(1 + boredom * s / 10, boredom_cap)``
  [``break_rate`` 0.2, ``boredom`` 1.0, ``boredom_cap`` 3] where ``s`` is the time since the last reward (or since the
  first sample), so the animal gets restless without juice; a break is a saccade to a random point
  ``break_amp`` (4, 12) deg from the spot, a stay there of ``away_s`` (0.3, 1.5) s, and a saccade back
  landing ``landing_deg`` (0.3 SD per axis) from the spot. Saccades follow the main sequence
  (21 ms + 2.2 ms/deg) with a minimum-jerk profile.

With the defaults and ``wire.behavior.FixationRule``'s (2-deg window, 0.1-s blink grace, 0.3-s hold and
4 images of 0.1 s ON / 0.1 s OFF: 1.1-s sequences, rewarded when completed), about a quarter of the
sequences break: breaks (~0.22/s with the boredom of a working animal) and blinks (0.05/s while
fixating, nearly all longer than the grace) give ~0.27 events/s (tests/virtualrig/test_monkey.py
measures the share: 0.15..0.40).

Every random process has its own seeded stream and events are scheduled in absolute time, so the
trace depends only on the seed and the reward times, not on how time is cut into calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["MonkeyConfig", "VirtualMonkey"]

_BLINK_GAP_S = 0.3  # shortest time between two blinks (they never merge into one NaN run)
_MICRO_AIM_SD = math.pi / 4  # scatter of a microsaccade's direction around the spot's


@dataclass(frozen=True)
class MonkeyConfig:
    """The virtual monkey's behaviour (see the module docstring); a ValueError names a bad value."""

    rate_hz: float = 1000.0
    target: tuple[float, float] = (0.0, 0.0)
    drift_deg_s: float = 0.2
    tremor_deg: float = 0.02
    micro_rate: float = 1.5
    micro_amp: tuple[float, float] = (0.1, 0.5)
    blink_rate: float = 0.2
    blink_s: tuple[float, float] = (0.1, 0.25)
    blink_fixating: float = 0.25
    break_rate: float = 0.2
    boredom: float = 1.0
    #: the hazard rises to at most this many times ``break_rate``: a monkey left without juice for minutes
    #: (a long wait between blocks) works badly, but still completes a sequence now and then and recovers
    boredom_cap: float = 3.0
    break_amp: tuple[float, float] = (4.0, 12.0)
    away_s: tuple[float, float] = (0.3, 1.5)
    landing_deg: float = 0.3

    def __post_init__(self) -> None:
        if not 0 < self.rate_hz <= 100_000:
            raise ValueError(f"rate_hz must be in (0, 100000], got {self.rate_hz}")
        for name in ("drift_deg_s", "tremor_deg", "micro_rate", "blink_rate", "break_rate", "boredom", "boredom_cap",
                     "landing_deg"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not 0 <= self.blink_fixating <= 1:
            raise ValueError(f"blink_fixating must be in [0, 1], got {self.blink_fixating}")
        for name in ("micro_amp", "blink_s", "break_amp", "away_s"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        if self.blink_rate * (sum(self.blink_s) / 2 + _BLINK_GAP_S) >= 1:
            raise ValueError(f"blink_rate {self.blink_rate}/s leaves no time between blinks of {self.blink_s} s")


def _saccade_s(amplitude: float) -> float:
    """A saccade's duration from its amplitude (deg): the main sequence."""
    return 0.021 + 0.0022 * amplitude


class VirtualMonkey:
    """``monkey.samples(t0, t1) -> (times, xy)``: gaze in deg at ``rate_hz``; ``monkey.reward(t)``.

    ``breaks`` and ``microsaccades`` count what it did so far. Times are any clock's seconds; the first
    ``samples`` call starts the monkey there (its boredom counts from that first sample).
    """

    def __init__(self, config: MonkeyConfig | None = None, *, seed: int | None = None) -> None:
        self.config = cfg = config or MonkeyConfig()
        self._drift_rng, self._tremor_rng, self._micro_rng, self._break_rng, self._blink_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
        self._target = np.array(cfg.target, dtype=np.float64)
        self._step = cfg.drift_deg_s / math.sqrt(2 * cfg.rate_hz)  # per axis, per sample
        self._next_k: int | None = None  # grid index of the next sample (None: not started)
        self._walk = np.zeros(2)  # the drift's random walk, added to the saccades' position
        self._move = (self._target.copy(), np.zeros(2), -math.inf, 1.0)  # from, delta, start, duration
        self._fixating = True
        self._hazard_acc = 0.0  # integrated break hazard since fixation began
        self._budget = math.inf  # the integrated hazard at which the next break comes
        self._return_t = math.inf
        self._next_micro = math.inf
        self._blink = (math.inf, math.inf, 0.0)  # the current or next blink: (start, end, keep draw)
        self._blink_on: bool | None = None  # whether the current blink happens (None: not decided yet)
        self._last_reward: float | None = None
        self.breaks = 0
        self.microsaccades = 0

    @property
    def rate_hz(self) -> float:
        return self.config.rate_hz

    @property
    def fixating(self) -> bool:
        """Whether it is on the spot (False from a break's saccade until the saccade back starts)."""
        return self._fixating

    def reward(self, t: float) -> None:
        """Juice at time ``t``: the boredom (and with it the break hazard) starts again from there."""
        self._last_reward = t if self._last_reward is None else max(self._last_reward, t)

    def hazard(self, t: float) -> float:
        """The break hazard (per s) at time ``t`` while fixating."""
        return float(self._hazards(np.array([t]))[0])

    def _hazards(self, t: np.ndarray) -> np.ndarray:
        since = np.maximum(0.0, t - (t[:1] if self._last_reward is None else self._last_reward))
        c = self.config
        return c.break_rate * np.minimum(1 + c.boredom * since / 10, max(1.0, c.boredom_cap))

    def samples(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Gaze at the grid instants ``k / rate_hz`` in ``[t0, t1)`` not returned before: float64 times
        (N,) and float32 xy (N, 2) in deg (NaN: a blink). An interval that starts later than the last
        one ended skips those samples (the monkey goes on behaving meanwhile)."""
        rate = self.config.rate_hz
        k0, k1 = math.ceil(t0 * rate - 1e-6), math.ceil(t1 * rate - 1e-6)
        if self._next_k is not None:
            k0 = max(k0, self._next_k)
        if k1 <= k0:
            return np.empty(0), np.empty((0, 2), dtype=np.float32)
        times = np.arange(k0, k1, dtype=np.float64) / rate
        if self._next_k is None:
            self._start(float(times[0]))
        self._next_k = k1
        n = times.size
        walk = self._walk + np.cumsum(self._drift_rng.standard_normal((n, 2)) * self._step, axis=0)
        self._walk = walk[-1].copy()
        base, fix = np.empty((n, 2)), np.empty(n, dtype=bool)
        i = 0
        while i < n:
            i = self._segment(times, walk, base, fix, i)
        xy = base + walk + self._tremor_rng.standard_normal((n, 2)) * self.config.tremor_deg
        xy[self._blinks(times, fix)] = np.nan
        return times, xy.astype(np.float32)

    # --- internals ------------------------------------------------------------------------------
    def _start(self, t: float) -> None:
        if self._last_reward is None:
            self._last_reward = t
        self._budget = float(self._break_rng.exponential())
        self._next_micro = t + self._interval(self._micro_rng, self.config.micro_rate)
        self._schedule_blink(t)

    @staticmethod
    def _interval(rng: np.random.Generator, rate: float) -> float:
        return float(rng.exponential(1 / rate)) if rate > 0 else math.inf

    def _schedule_blink(self, after: float) -> None:
        cfg = self.config
        self._blink_on = None
        if cfg.blink_rate <= 0:
            self._blink = (math.inf, math.inf, 0.0)
            return
        rng, mean_gap = self._blink_rng, 1 / cfg.blink_rate - sum(cfg.blink_s) / 2 - _BLINK_GAP_S
        start = after + _BLINK_GAP_S + float(rng.exponential(mean_gap))
        self._blink = (start, start + float(rng.uniform(*cfg.blink_s)), float(rng.uniform()))

    def _blinks(self, times: np.ndarray, fix: np.ndarray) -> np.ndarray:
        """The samples inside blinks: scheduled in absolute time; one that starts while fixating
        happens with probability ``blink_fixating``."""
        mask = np.zeros(times.size, dtype=bool)
        first, last = float(times[0]), float(times[-1])
        while self._blink[0] <= last:
            start, end, keep = self._blink
            if end > first:
                a, b = int(np.searchsorted(times, start)), int(np.searchsorted(times, end))
                if self._blink_on is None:
                    self._blink_on = not fix[a] or keep < self.config.blink_fixating
                mask[a:b] = self._blink_on
            if end > last:
                break  # it goes on into the next call
            self._schedule_blink(end if end > first - 10 else first)  # after a long skip: from now
        return mask

    def _position(self, t: np.ndarray) -> np.ndarray:
        """The saccadic part of the gaze at ``t`` (a minimum-jerk ramp during a saccade)."""
        start_pos, delta, t_start, duration = self._move
        u = np.clip((t - t_start) / duration, 0.0, 1.0)
        s = u ** 3 * (10 - 15 * u + 6 * u ** 2)
        return start_pos + s[:, None] * delta

    def _saccade(self, t: float, delta: np.ndarray) -> float:
        """Start a saccade of ``delta`` deg at ``t``; returns its duration."""
        duration = _saccade_s(float(np.hypot(*delta)))
        self._move = (self._position(np.array([t]))[0], delta, t, duration)
        return duration

    def _segment(self, times: np.ndarray, walk: np.ndarray, base: np.ndarray, fix: np.ndarray, i: int) -> int:
        """Fill ``base`` and ``fix`` (fixating) from sample ``i`` up to the next event and run it there;
        returns the event's sample (``times.size``: none in this call)."""
        event: Callable[[float, np.ndarray], None]
        if self._fixating:  # a microsaccade, or a break where the integrated hazard reaches the budget
            e = i + int(np.searchsorted(times[i:], self._next_micro))
            acc = self._hazard_acc + np.cumsum(self._hazards(times[i:e])) / self.config.rate_hz
            j = i + int(np.searchsorted(acc, self._budget))
            self._hazard_acc = float(acc[-1]) if acc.size else self._hazard_acc
            e, event = (j, self._break) if j < e else (e, self._microsaccade)
        else:
            e, event = i + int(np.searchsorted(times[i:], self._return_t)), self._come_back
        base[i:e], fix[i:e] = self._position(times[i:e]), self._fixating
        if e < times.size:
            event(float(times[e]), walk[e])
        return e

    def _microsaccade(self, t: float, walk: np.ndarray) -> None:
        cfg, rng = self.config, self._micro_rng
        self._next_micro = t + self._interval(rng, cfg.micro_rate)
        start_pos, _, t_start, duration = self._move
        if t < t_start + duration:
            return  # no microsaccade during a saccade
        off = start_pos + self._move[1] + walk - self._target
        if float(np.hypot(*off)) > 0.1:
            angle = math.atan2(-off[1], -off[0]) + float(rng.normal(0.0, _MICRO_AIM_SD))
        else:
            angle = float(rng.uniform(0, 2 * math.pi))
        amp = float(rng.uniform(*cfg.micro_amp))
        self._saccade(t, amp * np.array([math.cos(angle), math.sin(angle)]))
        self.microsaccades += 1

    def _break(self, t: float, walk: np.ndarray) -> None:
        cfg, rng = self.config, self._break_rng
        angle, dist = float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(*cfg.break_amp))
        away = self._target + dist * np.array([math.cos(angle), math.sin(angle)])
        duration = self._saccade(t, away - walk - self._position(np.array([t]))[0])
        self._return_t = t + duration + float(rng.uniform(*cfg.away_s))
        self._fixating = False
        self.breaks += 1

    def _come_back(self, t: float, walk: np.ndarray) -> None:
        cfg, rng = self.config, self._break_rng
        land = self._target + rng.normal(0.0, cfg.landing_deg, 2)
        duration = self._saccade(t, land - walk - self._position(np.array([t]))[0])
        self._fixating, self._return_t = True, math.inf
        self._hazard_acc, self._budget = 0.0, float(rng.exponential())
        self._next_micro = t + duration + self._interval(self._micro_rng, cfg.micro_rate)
