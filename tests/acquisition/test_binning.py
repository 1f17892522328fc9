"""Binning: exact counts, [start, end) edges, out-of-order arrival, late spikes, new units, clocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.acquisition.base import Heartbeat, SpikeBatch, SyncEvent
from controller.acquisition.binning import Binner, BinningConfig, ClockMap, ClockSync
from wire.errors import AcquisitionError, InvalidRequest
from wire.stim import TrialEvent

W = (0.05, 0.15)


def brute(onsets: np.ndarray, units: np.ndarray, times: np.ndarray, unit_ids: list[int],
          window: tuple[float, float]) -> np.ndarray:
    out = np.zeros((len(onsets), len(unit_ids)), dtype=int)
    for i, o in enumerate(onsets):
        for j, u in enumerate(unit_ids):
            out[i, j] = sum(1 for uu, t in zip(units, times, strict=True) if uu == u and o + window[0] <= t < o + window[1])
    return out


def test_edges_are_start_inclusive_end_exclusive() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.0))
    onset = 100.0
    b.add_trial("t0", onset)
    start, end = onset + W[0], onset + W[1]
    closed = b.add_spikes([1, 1, 1, 2], [start, np.nextafter(end, -np.inf), end, np.nextafter(start, -np.inf)])
    assert [c.trial_id for c in closed] == ["t0"]
    rec = closed[0]
    assert rec.unit_ids == (1, 2)
    assert rec.count(1) == 2 and rec.count(2) == 0
    assert rec.complete and rec.onset_acq == onset and rec.window == W


def test_trial_closes_only_after_lateness() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.1))
    b.add_trial("t0", 10.0)
    assert b.add_spikes([0], [10.1]) == []
    assert b.advance(10.0 + 0.15 + 0.0999) == []
    closed = b.advance(10.0 + 0.15 + 0.1)
    assert [c.trial_id for c in closed] == ["t0"] and closed[0].count(0) == 1


def test_out_of_order_within_allowance_and_late_spikes_after() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.2))
    b.add_trial("a", 0.0)
    b.add_trial("b", 0.5)
    assert b.add_spikes([0, 0], [0.3, 0.12]) == []  # 0.12 arrives after 0.3: still within the allowance
    assert b.add_spikes([0], [0.06]) == []
    closed = b.add_spikes([1], [0.36])  # watermark 0.36 >= 0.15 + 0.2 closes "a"
    assert [c.trial_id for c in closed] == ["a"]
    assert closed[0].counts.tolist() == [2, 0]
    before = closed[0].counts.copy()
    b.add_spikes([0, 0, 1], [0.07, 0.149, 0.2])  # two late spikes inside a's window, one outside
    assert b.stats.late_spikes == 2
    assert np.array_equal(closed[0].counts, before)
    rest = b.flush()
    assert [c.trial_id for c in rest] == ["b"] and not rest[0].complete


def test_trial_registered_after_its_spikes() -> None:
    """TrialEvents are published at the offset: the spikes of the window are already buffered."""
    b = Binner(BinningConfig(window=W, lateness=0.05))
    b.add_spikes([3, 3, 4], [1.06, 1.10, 1.19])
    closed = b.add_trial("t", 1.0)
    assert closed == []
    closed = b.advance(1.2)
    assert closed[0].counts.tolist() == [2, 0] and closed[0].unit_ids == (3, 4)


def test_new_unit_mid_session() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.0), units=[0])
    b.add_trial("t0", 0.0)
    c0 = b.add_spikes([0], [0.1]) + b.advance(0.2)
    b.add_trial("t1", 1.0)
    b.add_spikes([7], [0.98])  # unit 7 appears while t1 is open (before its window)
    c1 = b.advance(1.2)
    assert c0[0].unit_ids == (0,)
    assert c1[0].unit_ids == (0, 7) and c1[0].counts.tolist() == [0, 0]


def test_string_units_and_events_view() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.0))
    b.add_trial("t", 0.0)
    batch = SpikeBatch.of(["e1:0", "e2:1", "e1:0"], [0.06, 0.07, 0.5])
    assert [e.unit for e in batch.events()] == ["e1:0", "e2:1", "e1:0"]
    closed = b.feed(batch)
    assert closed[0].count("e1:0") == 1 and closed[0].count("e2:1") == 1
    msg = closed[0].to_message()
    assert msg.unit_ids == ["e1:0", "e2:1"] and msg.counts.dtype == np.int32


def test_trial_event_metadata_and_duplicates() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.0))
    ev = TrialEvent(block_id="B", trial_id="T", index=3, image_id="img", onset=5.0, offset=5.1, on_frames=6,
                    dropped_frames=0)
    b.add_trial_event(ev)
    with pytest.raises(AcquisitionError):
        b.add_trial_event(ev)
    rec = b.feed(Heartbeat(6.0))[0]
    assert (rec.block_id, rec.image_id, rec.index) == ("B", "img", 3)


def test_bad_config() -> None:
    with pytest.raises(InvalidRequest):
        BinningConfig(window=(0.1, 0.1))


def test_clock_map_offset_and_drift() -> None:
    clock = ClockMap(offset=1234.5, scale=1 + 50e-6)
    b = Binner(BinningConfig(window=W, lateness=0.0), clock=clock)
    onsets = np.arange(10) * 1000.0  # long session: drift alone moves onsets by 0.45 s by the end
    for i, o in enumerate(onsets):
        b.add_trial(f"t{i}", o)
    acq = clock.to_acq(onsets)
    # one spike just inside each window start on the acquisition clock, one just before it
    closed = b.add_spikes(np.zeros(20, int), np.concatenate([acq + 0.05, acq + 0.0499]))
    closed += b.advance(float(acq[-1]) + 1)
    assert [c.count(0) for c in closed] == [1] * 10
    # the identity map would have missed those windows
    b2 = Binner(BinningConfig(window=W, lateness=0.0))
    for i, o in enumerate(onsets):
        b2.add_trial(f"t{i}", o)
    b2.add_spikes(np.zeros(10, int), acq + 0.05)
    assert sum(c.counts.sum() for c in b2.flush()) == 0


def test_clock_map_fit_recovers_offset_and_drift() -> None:
    rng = np.random.default_rng(0)
    s = np.sort(rng.uniform(1e5, 1e5 + 3600, 200))
    a = 42.0 + (1 + 3e-5) * s + rng.normal(0, 1e-4, s.size)
    m = ClockMap.fit(s, a)
    assert abs(m.drift - 3e-5) < 1e-6 and abs(m.to_acq(1e5) - (42 + (1 + 3e-5) * 1e5)) < 1e-4
    assert m.residual_s < 2e-4 and m.n_pairs == 200
    assert abs(m.to_stim(m.to_acq(12345.0)) - 12345.0) < 1e-6


def test_clock_sync_from_photodiode_pulses() -> None:
    """Acquisition clock = 500 s ahead, 100 ppm fast; pulses 8 ms after flips (display latency)."""
    rng = np.random.default_rng(1)
    onsets = 1000 + np.cumsum(rng.uniform(0.25, 0.45, 60))
    true = ClockMap(offset=500.0, scale=1 + 1e-4)
    pulses = true.to_acq(onsets) + 0.008
    sync = ClockSync("photodiode", tolerance=0.02)
    b = Binner(BinningConfig(window=W, lateness=0.05), clock=sync)
    closed = []
    for i, (o, p) in enumerate(zip(onsets, pulses, strict=True)):
        closed += b.add_sync(SyncEvent("photodiode", float(p), 1))
        closed += b.add_sync(SyncEvent("photodiode", float(p) + 0.1, 0))
        closed += b.add_sync(SyncEvent("other", float(p), 1))
        closed += b.add_spikes([0, 0], [p + 0.06, p + 0.16])  # one in, one after the window (rel. pulse)
        closed += b.add_trial(f"t{i}", float(o))  # TrialEvent comes after the pulse
    closed += b.advance(float(pulses[-1]) + 1)
    assert sync.locked and sync.map is not None
    assert abs(sync.map.offset + sync.map.scale * 1000 - (true.to_acq(1000.0) + 0.008)) < 1e-6
    assert len(closed) == 60 and all(c.count(0) == 1 for c in closed)
    # early trials close on offset-only fits (drift unknown yet): sub-0.1 ms error over their short span
    assert max(abs(c.onset_acq - p) for c, p in zip(closed, pulses, strict=True)) < 1e-4


def test_pending_trial_waits_for_clock() -> None:
    sync = ClockSync("pd", tolerance=0.01)
    b = Binner(BinningConfig(window=W, lateness=0.0), clock=sync)
    b.add_trial("t0", 10.0)
    assert b.advance(30.0) == []  # no map yet: cannot close, however late it is
    assert b.open_trials == 1
    b.add_trial("t1", 10.7)
    assert b.add_sync(SyncEvent("pd", 20.0)) == []  # one pulse cannot fix the offset
    closed = b.add_sync(SyncEvent("pd", 20.7))
    assert sync.locked
    assert [round(c.onset_acq, 6) for c in closed] == [20.0, 20.7]


@settings(max_examples=60, deadline=None)
@given(
    onsets=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=8, unique=True),
    spikes=st.lists(st.tuples(st.integers(0, 4), st.floats(-1, 22, allow_nan=False)), max_size=300),
    chunk=st.integers(1, 50),
    window=st.tuples(st.floats(-0.05, 0.2), st.floats(0.01, 0.3)),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_brute_force(onsets: list[float], spikes: list[tuple[int, float]], chunk: int,
                             window: tuple[float, float], seed: int) -> None:
    w = (window[0], window[0] + window[1])
    units = np.array([u for u, _ in spikes], dtype=np.int64)
    times = np.array([t for _, t in spikes], dtype=np.float64)
    # shuffle arrival order (out of order) but keep every spike within the lateness allowance
    rng = np.random.default_rng(seed)
    order = np.argsort(times + rng.uniform(0, 0.5, times.size), kind="stable")
    b = Binner(BinningConfig(window=w, lateness=0.6, retention=100.0), units=range(5))
    for i, o in enumerate(sorted(onsets)):
        b.add_trial(f"t{i}", o)
    closed = []
    for k in range(0, len(order), chunk):
        idx = order[k:k + chunk]
        closed += b.add_spikes(units[idx], times[idx])
    closed += b.flush()
    got = np.array([c.counts for c in sorted(closed, key=lambda c: c.onset_acq)])
    want = brute(np.array(sorted(onsets)), units, times, list(range(5)), w)
    assert np.array_equal(got, want)
    assert b.stats.late_spikes == 0


def test_large_and_numpy_int_unit_ids() -> None:
    b = Binner(BinningConfig(window=W, lateness=0.0), units=np.array([3, 7]))
    b.add_trial("t", 0.0)
    b.add_spikes(np.array([5_000_000, 3, 7, 3, 2**40]), [0.06, 0.07, 0.08, 0.09, 0.1])
    rec = b.advance(1.0)[0]
    assert rec.unit_ids == (3, 7, 5_000_000, 2**40)
    assert rec.counts.tolist() == [2, 1, 1, 1]
    assert rec.to_message().unit_ids == [3, 7, 5_000_000, 2**40]
