"""Presentation timing validated against the sync line: every onset checked against its pulse.

:class:`TimingMonitor` pairs each trial's onset flip (stimulus clock) with the photodiode/TTL
rising edge it should cause (acquisition clock). The expected pulse time is the flip itself when
both clocks are one (``same_clock``: LSL rigs and the virtual rig, whose timestamps LSL moves onto
the local clock), else the flip mapped through the session's fitted clock map (Open Ephys sample
clock: a constant display latency is then part of the map, and latency is the deviation from it).
A pulse within ``tolerance`` of ``expected + median latency`` (before the first match: anywhere in
``[expected - tolerance, expected + max_latency]``) is the trial's measured onset. A trial gets no
pulse once the acquisition stream has passed its window by ``decide_after`` s; after
``lost_after`` such trials in a row the monitor reports ``photodiode_lost`` (the session writes an
event document and the bus shows a warning), and ``photodiode_back`` at the next match. Checked
trials are written in batches as ``onset_timing`` event documents, which :func:`timing_section`
draws for ``cortexloop report``. :class:`MonitoredBinner` feeds a monitor from the engine's binner.
"""

from __future__ import annotations

import bisect
import html
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.acquisition.base import Item, SyncEvent
from controller.acquisition.binning import Binner, BinningConfig, ClosedTrial
from controller.acquisition.clock import ClockMap, ClockSync

log = logging.getLogger(__name__)

__all__ = ["MonitoredBinner", "OnsetCheck", "TimingMonitor", "timing_section", "timing_summary"]

#: the columns of an ``onset_timing`` event document's ``details["trials"]`` rows
COLUMNS = ("trial_id", "block_id", "index", "flip", "expected", "measured")
EventSink = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class OnsetCheck:
    """One trial: its onset flip (stim clock), the expected and measured pulse (acq clock; None: no pulse)."""

    trial_id: str
    block_id: str | None
    index: int | None
    flip: float
    expected: float | None
    measured: float | None

    @property
    def latency(self) -> float | None:
        return None if self.measured is None or self.expected is None else self.measured - self.expected


class TimingMonitor:
    """Onsets in (``add_onset``), pulses in (``add_pulse``), time in (``advance``); checks out."""

    def __init__(self, channel: str = "photodiode", *, tolerance: float = 0.02, lost_after: int = 5,
                 max_latency: float = 0.1, decide_after: float = 0.5, same_clock: bool = True,
                 to_acq: Callable[[float], float | None] | None = None, on_event: EventSink | None = None,
                 write: Callable[[list[OnsetCheck]], None] | None = None, batch: int = 50) -> None:
        self.channel = channel
        self.tolerance = tolerance
        self.lost_after = lost_after
        self.max_latency = max_latency
        self.decide_after = decide_after
        self.same_clock = same_clock
        self.to_acq: Callable[[float], float | None] = to_acq or (lambda t: t)
        self.on_event = on_event
        self.write = write
        self.batch = batch
        self.checks: list[OnsetCheck] = []
        self.lost = False
        self.misses_in_row = 0
        self._pending: list[tuple[str, str | None, int | None, float]] = []
        self._pulses: list[float] = []  # unmatched rising edges, sorted
        self._latencies: deque[float] = deque(maxlen=25)
        self._now = -np.inf
        self._unwritten: list[OnsetCheck] = []
        self._unlocked_reported = False
        self._since: float | None = None  # acquisition time when onsets began to wait for a clock map

    # --- input ---------------------------------------------------------------------------------
    def add_onset(self, trial_id: str, flip: float, *, block_id: str | None = None, index: int | None = None) -> None:
        self._pending.append((trial_id, block_id, index, float(flip)))
        self._decide()

    def add_pulse(self, t_acq: float, state: int = 1) -> None:
        if state != 1:
            return
        bisect.insort(self._pulses, float(t_acq))
        self.advance(t_acq)  # a marker stream is in order: this edge proves the earlier ones are in

    def advance(self, t_acq: float) -> None:
        """The acquisition stream has reached ``t_acq``."""
        if t_acq > self._now:
            self._now = float(t_acq)
        self._decide()

    def flush(self) -> None:
        """Decide every pending trial now (end of session) and write what is unwritten."""
        self._decide(final=True)
        self._write()

    # --- matching ------------------------------------------------------------------------------
    def _window(self, expected: float) -> tuple[float, float]:
        if not self._latencies:
            return expected - self.tolerance, expected + self.max_latency
        pred = expected + float(np.median(self._latencies))
        return pred - self.tolerance, pred + self.tolerance

    def _decide(self, final: bool = False) -> None:
        while self._pending:
            trial_id, block_id, index, flip = self._pending[0]
            expected = self.to_acq(flip)
            if expected is None:  # no clock map yet (sample clock): wait for the first pulses to line up
                if final:
                    self._settle(OnsetCheck(trial_id, block_id, index, flip, None, None), judged=False)
                    continue
                if self._since is None and np.isfinite(self._now):
                    self._since = self._now
                if self._since is not None and len(self._pending) >= self.lost_after:
                    wait = self.decide_after + self.max_latency
                    if self._pulses and self._pulses[-1] >= self._since:
                        wait *= 5  # edges came meanwhile and may still lock the map: give them longer
                    if self._now >= self._since + wait:
                        self._unlocked()
                return
            self._since = None
            lo, hi = self._window(expected)
            i, j = bisect.bisect_left(self._pulses, lo), bisect.bisect_right(self._pulses, hi)
            if j > i:
                centre = (lo + hi) / 2
                k = min(range(i, j), key=lambda n: abs(self._pulses[n] - centre))
                measured = self._pulses.pop(k)
                del self._pulses[:i]  # older edges can belong to no later onset
                self._settle(OnsetCheck(trial_id, block_id, index, flip, expected, measured))
            elif self._now >= hi + self.decide_after:
                self._settle(OnsetCheck(trial_id, block_id, index, flip, expected, None))
            elif final:  # the session ended before the stream passed it: recorded, never an alarm
                self._settle(OnsetCheck(trial_id, block_id, index, flip, expected, None), judged=False)
            else:
                return

    def _settle(self, check: OnsetCheck, judged: bool = True) -> None:
        self._pending.pop(0)
        self.checks.append(check)
        self._unwritten.append(check)
        if not judged:
            pass
        elif check.measured is not None:
            assert check.latency is not None
            self._latencies.append(check.latency)
            if self.lost:
                self.lost = False
                self._emit("photodiode_back", f"sync line {self.channel!r} agrees with the flips again "
                           f"(trial {check.trial_id}, latency {1000 * check.latency:.1f} ms)",
                           check.trial_id, check.block_id)
            self.misses_in_row = 0
        else:
            self.misses_in_row += 1
            if self.misses_in_row >= self.lost_after and not self.lost:
                self.lost = True
                self._emit("photodiode_lost", f"no {self.channel!r} pulse within {1000 * self.tolerance:.0f} ms of "
                           f"the last {self.misses_in_row} onsets: is the sensor still on the screen's patch?",
                           check.trial_id, check.block_id)
        if len(self._unwritten) >= self.batch:
            self._write()

    def _unlocked(self) -> None:
        if not self._unlocked_reported:
            self._unlocked_reported = True
            self.lost = True
            trial_id, block_id, _, _ = self._pending[0]
            self._emit("photodiode_lost", f"no {self.channel!r} pulses line up with the first {len(self._pending)} "
                       "onsets: the clock map cannot be fitted (sensor off the screen, or wrong channel?)",
                       trial_id, block_id)

    def _emit(self, what: str, message: str, trial_id: str, block_id: str | None) -> None:
        if what == "photodiode_lost":
            log.warning("%s", message)
        self._write()
        if self.on_event is not None:
            self.on_event(what, message, {"channel": self.channel, "trial_id": trial_id, "block_id": block_id,
                                          "misses_in_row": self.misses_in_row})

    def _write(self) -> None:
        if self._unwritten and self.write is not None:
            out, self._unwritten = self._unwritten, []
            self.write(out)


def timing_details(checks: Sequence[OnsetCheck], channel: str, same_clock: bool) -> dict[str, Any]:
    """The ``details`` of an ``onset_timing`` event document."""
    return {"channel": channel, "same_clock": same_clock, "columns": list(COLUMNS),
            "trials": [[c.trial_id, c.block_id, c.index, c.flip, c.expected, c.measured] for c in checks]}


class MonitoredBinner(Binner):
    """A :class:`Binner` that also shows its trials and sync edges to a :class:`TimingMonitor`.

    With ``same_clock`` False the monitor's expected pulse time is the flip through this binner's
    clock (a :class:`ClockSync` fitted from the same pulses); with True it is the flip itself."""

    def __init__(self, config: BinningConfig | None, clock: ClockMap | ClockSync | None,
                 monitor: TimingMonitor) -> None:
        super().__init__(config, clock=clock)
        self.monitor = monitor
        if not monitor.same_clock:
            monitor.to_acq = self._expected

    def _expected(self, flip: float) -> float | None:
        if isinstance(self.clock, ClockSync):
            return self.clock.to_acq(flip)
        return float(self.clock.to_acq(flip))

    def add_trial(self, trial_id: str, onset_stim: float, *, block_id: str | None = None,
                  image_id: str | None = None, index: int | None = None) -> list[ClosedTrial]:
        closed = super().add_trial(trial_id, onset_stim, block_id=block_id, image_id=image_id, index=index)
        self.monitor.add_onset(trial_id, onset_stim, block_id=block_id, index=index)
        return closed

    def feed(self, item: Item) -> list[ClosedTrial]:
        closed = super().feed(item)
        if isinstance(item, SyncEvent):
            if item.channel == self.monitor.channel:
                self.monitor.add_pulse(item.t, item.state)
        elif np.isfinite(self.watermark):
            self.monitor.advance(self.watermark)
        return closed



# --- the report's timing page ------------------------------------------------------------------------
def timing_summary(docs: Sequence[Any]) -> dict[str, Any]:
    """Per-trial timing of a session's documents: flips, latencies (s, NaN: no pulse), dropped frames."""
    from wire.documents import EventDoc, TrialDoc

    trials = [d for d in docs if isinstance(d, TrialDoc)]
    rows: dict[str, list[Any]] = {}
    same_clock, channel = True, None
    for d in docs:
        if isinstance(d, EventDoc) and d.what == "onset_timing":
            same_clock, channel = bool(d.details.get("same_clock", True)), d.details.get("channel")
            for r in d.details.get("trials", []):
                rows[str(r[0])] = r
    checked = [rows[t.trial_id] for t in trials if t.trial_id in rows]
    lat = np.array([np.nan if r[4] is None or r[5] is None else r[5] - r[4] for r in checked], np.float64)
    found = lat[np.isfinite(lat)]
    blocks: dict[str, int] = {}
    for t in trials:
        blocks[t.block_id] = blocks.get(t.block_id, 0) + t.dropped_frames
    return {
        "channel": channel, "same_clock": same_clock, "n_trials": len(trials), "n_checked": len(checked),
        "n_pulses": int(found.size), "n_missing": int(lat.size - found.size),
        "trial_ids": [str(r[0]) for r in checked], "flip": np.array([r[3] for r in checked], np.float64),
        "latency": lat,
        "median_ms": float(np.median(found) * 1000) if found.size else None,
        "p95_ms": float(np.percentile(found, 95) * 1000) if found.size else None,
        "sd_ms": float(np.std(found) * 1000) if found.size else None,
        "dropped_frames": sum(blocks.values()), "dropped_by_block": blocks,
        "lost": [d for d in docs if isinstance(d, EventDoc) and d.what in ("photodiode_lost", "photodiode_back")],
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def timing_section(reader: Any, out_dir: Path, name: str | None = None) -> str:
    """An HTML fragment (with PNGs written to ``out_dir``): expected vs measured onsets, the latency
    distribution, dropped frames per block and the sync line's lost/back events of one session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = name or Path(getattr(reader, "path", "session")).stem
    s = timing_summary(list(reader.documents()))
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    flip, lat = s["flip"], s["latency"]
    t0 = float(flip[0]) if flip.size else 0.0
    ok = np.isfinite(lat)
    what = "flip -> pulse latency" if s["same_clock"] else "pulse - fitted clock map"
    axes[0].plot(flip[ok] - t0, lat[ok] * 1000, ".", ms=3, label="pulse")
    floor = float(np.nanmin(lat) * 1000) if ok.any() else 0.0
    axes[0].plot(flip[~ok] - t0, np.full(int((~ok).sum()), floor), "rx", ms=5, label="no pulse")
    at = dict(zip(s["trial_ids"], flip.tolist(), strict=True))
    for e in s["lost"]:  # dashed lines: the sync line lost (red) and back (green)
        x = at.get(e.details.get("trial_id"))
        if x is not None:
            axes[0].axvline(x - t0, color="red" if e.what == "photodiode_lost" else "green", lw=0.8, ls="--")
    axes[0].set_xlabel("onset (s from first trial)")
    axes[0].set_title(f"{what} (ms)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].hist(lat[ok] * 1000, bins=40)
    axes[1].set_xlabel("ms")
    axes[1].set_title("latency distribution", fontsize=9)
    by = s["dropped_by_block"]
    axes[2].bar(range(len(by)), list(by.values()))
    axes[2].set_xticks(range(len(by)), list(by), rotation=60, fontsize=5, ha="right")
    axes[2].set_title("dropped frames per block", fontsize=9)
    fig.tight_layout()
    png = f"timing_{stem}.png"
    fig.savefig(out_dir / png, dpi=100)
    plt.close(fig)
    chan = html.escape(str(s["channel"])) if s["channel"] else "none configured"
    events = "".join(f"<li>{html.escape(e.what)}: {html.escape(e.message)}</li>" for e in s["lost"])
    return (f"<section class='timing'><h3>{html.escape(stem)}: onset timing (sync channel {chan})</h3>"
            f"<figure><img src='{png}'><figcaption>{html.escape(what)} per trial (red x: no pulse), its "
            "distribution, dropped frames per block</figcaption></figure>"
            f"<table border=1><tr><th>trials</th><th>checked</th><th>with pulse</th><th>no pulse</th>"
            f"<th>median ms</th><th>p95 ms</th><th>SD ms</th><th>dropped frames</th></tr><tr>"
            f"<td>{s['n_trials']}</td><td>{s['n_checked']}</td><td>{s['n_pulses']}</td><td>{s['n_missing']}</td>"
            f"<td>{_fmt(s['median_ms'])}</td><td>{_fmt(s['p95_ms'])}</td><td>{_fmt(s['sd_ms'])}</td>"
            f"<td>{s['dropped_frames']}</td></tr></table>"
            + (f"<ul>{events}</ul>" if events else "") + "</section>")
