"""The virtual monkey: the pure gaze generator in simulated time, and its LSL stream from the rig in real time."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import uuid
from typing import Any

import numpy as np
import pylsl
import pytest

from virtualrig.__main__ import build_monkey, parse_args
from virtualrig.monkey import MonkeyConfig, VirtualMonkey
from virtualrig.rates import GaborEnergyRates
from virtualrig.rig import GAZE_SOURCE_ID, VirtualRig
from wire.acq import LSL_GAZE_TYPE
from wire.behavior import FixationRule, RewardEvent
from wire.errors import InvalidRequest
from wire.stim import TrialEvent
from wire.transport import EventPublisher

RULE = FixationRule()  # 2-deg window, 0.1-s blink grace, 0.3-s hold, 4 images
SEQUENCE_S = RULE.hold_s + RULE.images_per_fixation * (0.1 + 0.1)  # 1.1 s


def nan_runs(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of NaN samples."""
    edges = np.diff(np.concatenate([[0], np.isnan(xy[:, 0]).astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def excursions(xy: np.ndarray, inner: float = 2.5, outer: float = 3.5) -> int:
    """Fixation breaks seen in a trace: moves from within ``inner`` deg of the spot to beyond ``outer``."""
    r = np.hypot(xy[:, 0], xy[:, 1])
    state = np.where(r > outer, 1, np.where(r < inner, 0, -1))[~np.isnan(r)]
    state = state[state >= 0]
    return int(np.sum((state[1:] == 1) & (state[:-1] == 0)))


def rewarded_trace(monkey: VirtualMonkey, duration: float, every: float | None) -> tuple[np.ndarray, np.ndarray]:
    """``duration`` s of gaze from 0, with a reward every ``every`` s (None: never)."""
    step = every or 10.0
    parts = []
    for k in range(math.ceil(duration / step)):
        parts.append(monkey.samples(k * step, min(duration, (k + 1) * step)))
        if every is not None:
            monkey.reward((k + 1) * step)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def broken_at(times: np.ndarray, xy: np.ndarray, rate: float) -> float:
    """When a sequence over this stretch of gaze broke (inf: it did not): the first sample outside the
    window, or the moment a gap without an eye outlasted the blink grace."""
    r = np.hypot(xy[:, 0].astype(np.float64), xy[:, 1])
    out = np.flatnonzero(~np.isnan(r) & (r > RULE.window_deg))
    first = float(times[out[0]]) if out.size else math.inf
    starts, ends = nan_runs(xy)
    long = (ends - starts) / rate > RULE.blink_grace_s + 1e-9
    if long.any():
        first = min(first, float(times[starts[long][0]]) + RULE.blink_grace_s)
    return first


# --- the generator ------------------------------------------------------------------------------
def test_deterministic_given_a_seed_and_independent_of_the_call_boundaries() -> None:
    t_a, xy_a = VirtualMonkey(seed=7).samples(10.0, 70.0)
    t_b, xy_b = VirtualMonkey(seed=7).samples(10.0, 70.0)
    assert np.array_equal(t_a, t_b) and np.array_equal(xy_a, xy_b, equal_nan=True)
    _, xy_c = VirtualMonkey(seed=8).samples(10.0, 70.0)
    assert not np.array_equal(xy_a, xy_c, equal_nan=True)
    monkey = VirtualMonkey(seed=7)  # the same trace, cut into uneven calls
    cuts = np.concatenate([[10.0], np.sort(np.random.default_rng(0).uniform(10, 70, 300)), [70.0]])
    parts = [monkey.samples(a, b) for a, b in itertools.pairwise(cuts)]
    t_d, xy_d = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    assert np.array_equal(t_a, t_d)
    assert np.array_equal(np.isnan(xy_a), np.isnan(xy_d))
    np.testing.assert_allclose(xy_a, xy_d, atol=1e-4, equal_nan=True)
    assert np.isnan(xy_a).any() and (np.hypot(*xy_a[~np.isnan(xy_a[:, 0])].T) > 4).any()  # blinks and breaks


@pytest.mark.parametrize("rate", [1000.0, 500.0, 120.0])
def test_samples_on_the_grid_of_consecutive_intervals(rate: float) -> None:
    monkey = VirtualMonkey(MonkeyConfig(rate_hz=rate), seed=1)
    t0 = 12345.6789
    edges = t0 + np.cumsum(np.random.default_rng(2).uniform(0.0001, 0.02, 400))
    parts = [monkey.samples(a, b) for a, b in zip(np.concatenate([[t0], edges[:-1]]), edges, strict=True)]
    times = np.concatenate([p[0] for p in parts])
    for (t, xy), a, b in zip(parts, np.concatenate([[t0], edges[:-1]]), edges, strict=True):
        assert t.dtype == np.float64 and xy.dtype == np.float32 and xy.shape == (t.size, 2)
        assert np.all((t >= a - 1e-9) & (t < b))
    k = np.round(times * rate)
    np.testing.assert_allclose(times, k / rate, rtol=0, atol=1e-9)  # on the grid k / rate_hz
    assert np.array_equal(np.diff(k), np.ones(k.size - 1))  # no gap, no repeat
    assert k[0] == math.ceil(t0 * rate) and k[-1] == math.ceil(edges[-1] * rate) - 1
    assert monkey.samples(edges[-1] - 1.0, edges[-1])[0].size == 0  # what was given is not given again


def test_fixation_drift_tremor_and_microsaccades() -> None:
    quiet = MonkeyConfig(break_rate=0.0, blink_rate=0.0)
    monkey = VirtualMonkey(quiet, seed=3)
    _, xy = monkey.samples(0, 600)
    r = np.hypot(*xy.T)
    assert r.max() < RULE.window_deg and np.median(r) < 0.5  # microsaccades bring it back to the spot
    assert 1.2 < monkey.microsaccades / 600 < 1.8
    _, walk = VirtualMonkey(dataclasses.replace(quiet, micro_rate=0.0, tremor_deg=0.0), seed=3).samples(0, 600)
    step = walk[1000:] - walk[:-1000]  # drift over 1 s: RMS 0.2 deg
    assert 0.17 < np.sqrt(np.mean(np.sum(step.astype(np.float64) ** 2, axis=1))) < 0.23
    _, tremor = VirtualMonkey(dataclasses.replace(quiet, micro_rate=0.0, drift_deg_s=0.0), seed=3).samples(0, 60)
    assert 0.018 < tremor.std() < 0.022


def test_blinks_are_nan_runs_of_the_documented_lengths() -> None:
    cfg = MonkeyConfig()
    _, xy = rewarded_trace(VirtualMonkey(cfg, seed=4), 1800, 1.5)
    assert np.array_equal(np.isnan(xy[:, 0]), np.isnan(xy[:, 1]))
    starts, ends = nan_runs(xy)
    inner = (starts > 0) & (ends < len(xy))
    lengths = (ends - starts)[inner] / cfg.rate_hz
    assert lengths.min() >= cfg.blink_s[0] - 1.5e-3 and lengths.max() <= cfg.blink_s[1] + 1.5e-3
    assert np.ptp(lengths) > 0.1  # spread over the range
    assert 0.04 < len(lengths) / 1800 < 0.12  # held back while fixating
    _, free = rewarded_trace(VirtualMonkey(MonkeyConfig(blink_fixating=1.0), seed=4), 1800, 1.5)
    assert 0.17 < len(nan_runs(free)[0]) / 1800 < 0.23  # blink_rate itself where nothing holds them back


def test_fraction_of_time_in_the_window_is_high_but_not_all() -> None:
    _, xy = rewarded_trace(VirtualMonkey(seed=5), 600, 1.5)
    r = np.hypot(*xy[~np.isnan(xy[:, 0])].astype(np.float64).T)
    inside = np.mean(r < RULE.window_deg)
    assert 0.7 < inside < 0.95, inside
    assert r.max() < 12 + 2 and (r > 4).any()  # breaks go 4-12 deg away


def test_break_hazard_rises_without_reward_and_reward_resets_it() -> None:
    monkey = VirtualMonkey(seed=6)
    monkey.reward(100.0)
    assert monkey.hazard(100.0) == pytest.approx(0.2) and monkey.hazard(110.0) == pytest.approx(0.4)
    monkey.reward(110.0)
    assert monkey.hazard(110.0) == pytest.approx(0.2)
    assert monkey.hazard(10_000.0) == pytest.approx(0.2 * 3)  # capped: a bored monkey still works now and then
    minutes = 30
    fed = VirtualMonkey(seed=6)
    _, xy_fed = rewarded_trace(fed, minutes * 60, 1.5)
    hungry = VirtualMonkey(seed=6)
    _, xy_hungry = rewarded_trace(hungry, minutes * 60, None)
    seen_fed, seen_hungry = excursions(xy_fed), excursions(xy_hungry)
    assert abs(seen_fed - fed.breaks) <= 0.03 * fed.breaks  # the trace shows the breaks the monkey made
    fixating_s = np.mean(np.hypot(*xy_fed[~np.isnan(xy_fed[:, 0])].astype(np.float64).T) < 2) * minutes * 60
    assert 0.17 < fed.breaks / fixating_s < 0.27  # break_rate 0.2 plus the boredom of < 1.5 s without reward
    assert hungry.breaks > 1.8 * fed.breaks and seen_hungry > 1.8 * seen_fed, (fed.breaks, hungry.breaks)


def test_about_a_quarter_of_the_sequences_break() -> None:
    """Closed loop in simulated time: acquire (gaze in the window), a 1.1-s sequence scanned with the
    2-deg window and the 0.1-s blink grace, reward after a completed one then 0.5 s, time-out after a break."""
    monkey = VirtualMonkey(seed=11)
    t, outcomes = 0.0, list[float]()
    while len(outcomes) < 1500:
        while True:  # acquisition, checked every 5 ms
            times, xy = monkey.samples(t, t + 0.005)
            t += 0.005
            if times.size and np.hypot(*xy[-1]) < RULE.window_deg:
                break
        times, xy = monkey.samples(t, t + SEQUENCE_S)
        t += SEQUENCE_S
        tb = broken_at(times, xy, monkey.rate_hz)
        if math.isfinite(tb):
            outcomes.append(1.0 if np.isnan(xy[np.searchsorted(times, tb - 1e-9) - 1, 0]) else 2.0)
            t = max(t, tb + RULE.timeout_s)
        else:
            outcomes.append(0.0)
            monkey.reward(t)
            t += 0.5
    kinds = np.array(outcomes)
    share = float(np.mean(kinds > 0))
    print(f"broken sequences: {share:.3f} of {kinds.size} ({np.sum(kinds == 1)} by blinks, "
          f"{np.sum(kinds == 2)} by gaze out of the window)")
    assert 0.15 < share < 0.40, share
    assert np.sum(kinds == 1) > 20 and np.sum(kinds == 2) > 100  # both ways of breaking happen


def test_broken_at_checks_window_and_blink_grace() -> None:
    times = np.arange(1000) / 1000.0
    xy = np.zeros((1000, 2), np.float32)
    assert broken_at(times, xy, 1000.0) == math.inf
    gap = xy.copy()
    gap[200:300] = np.nan  # 0.1 s: forgiven
    assert broken_at(times, gap, 1000.0) == math.inf
    gap[200:301] = np.nan
    assert broken_at(times, gap, 1000.0) == pytest.approx(0.3)
    out = xy.copy()
    out[500] = (1.5, 1.5)  # 2.12 deg
    assert broken_at(times, out, 1000.0) == pytest.approx(0.5)


def test_config_is_checked_and_the_cli_builds_the_monkey() -> None:
    bad: dict[str, Any]
    for bad in ({"rate_hz": 0.0}, {"break_rate": -1.0}, {"blink_s": (0.3, 0.1)}, {"blink_fixating": 2.0},
                {"boredom": math.nan}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(MonkeyConfig(), **bad)
    base = ["--stim-events", "tcp://127.0.0.1:1", "--seed", "4"]
    assert build_monkey(parse_args(base)) is None
    monkey = build_monkey(parse_args([*base, "--gaze", "--gaze-rate", "500", "--break-rate", "0.3"]))
    assert monkey is not None and monkey.config == MonkeyConfig(rate_hz=500.0, break_rate=0.3)
    assert np.array_equal(monkey.samples(0, 5)[1], VirtualMonkey(monkey.config, seed=4).samples(0, 5)[1],
                          equal_nan=True)
    seeded = build_monkey(parse_args([*base, "--gaze", "--gaze-seed", "9"]))
    assert seeded is not None and np.array_equal(seeded.samples(0, 5)[1], VirtualMonkey(seed=9).samples(0, 5)[1],
                                                 equal_nan=True)
    with pytest.raises(InvalidRequest, match="rate_hz"):
        build_monkey(parse_args([*base, "--gaze", "--gaze-rate", "0"]))


# --- the rig's LSL stream ----------------------------------------------------------------------------
def _channels(info: Any) -> list[tuple[str, str, str]]:
    ch, out = info.desc().child("channels").child("channel"), []
    while not ch.empty():
        out.append((ch.child_value("label"), ch.child_value("unit"), ch.child_value("type")))
        ch = ch.next_sibling()
    return out


async def test_rig_streams_gaze_in_real_time_over_lsl_and_feeds_the_monkey() -> None:
    tag = uuid.uuid4().hex[:8]
    monkey = VirtualMonkey(seed=12)
    async with EventPublisher("tcp://127.0.0.1:0") as pub, \
            VirtualRig(GaborEnergyRates(3, seed=1), stim_events=pub.endpoint, spike_name=f"sp-{tag}",
                       sync_name=f"sy-{tag}", monkey=monkey, gaze_name=f"gz-{tag}") as rig:
        found = await asyncio.to_thread(pylsl.resolve_bypred, f"name='gz-{tag}' and type='{LSL_GAZE_TYPE}'", 1, 10)
        assert found, "no gaze stream"
        inlet = pylsl.StreamInlet(found[0], max_buflen=10)
        info = await asyncio.to_thread(inlet.info, 10)
        assert info.channel_count() == 2 and info.nominal_srate() == 1000.0
        assert info.channel_format() == pylsl.cf_float32 and info.source_id() == GAZE_SOURCE_ID
        assert _channels(info) == [("x", "deg", "ScreenX"), ("y", "deg", "ScreenY")]
        await asyncio.to_thread(inlet.open_stream, 10)
        stamps, values, lags = [], [], []
        start = pylsl.local_clock()
        while pylsl.local_clock() - start < 0.6:
            chunk, ts = inlet.pull_chunk(timeout=0.0)
            now = pylsl.local_clock()
            if ts:
                stamps += ts
                values += chunk
                lags.append(now - ts[-1])
            await asyncio.sleep(0.01)
        inlet.close_stream()
        await pub.wait_for_subscribers(2, timeout=10)  # trial and reward topics
        t_reward = pylsl.local_clock()
        assert monkey.hazard(t_reward) > monkey.config.break_rate  # bored since it started
        await pub.publish(RewardEvent(time=t_reward, duration_s=0.1, sequence=1, streak=1))
        await pub.publish(TrialEvent(block_id="b", trial_id="t0", index=0, image_id="never-loaded",
                                     onset=t_reward - 0.2, offset=t_reward - 0.1, on_frames=6, dropped_frames=0))
        for _ in range(500):
            if rig.rewards_seen and rig.trials_seen:
                break
            await asyncio.sleep(0.01)
    ts_arr, xy = np.array(stamps), np.array(values, dtype=np.float32)
    assert xy.ndim == 2 and xy.shape[1] == 2
    assert 400 < ts_arr.size < 700, ts_arr.size  # ~0.5 s at 1000 Hz
    np.testing.assert_allclose(np.diff(ts_arr), 1e-3, atol=1e-6)  # every sample, stamped on its grid instant
    assert (ts_arr[-1] - ts_arr[0]) / (ts_arr.size - 1) == pytest.approx(1e-3, rel=1e-6)
    assert len(lags) > 10 and max(lags[1:]) < 0.05, lags  # real time: not behind the spike delay
    on_spot = xy[~np.isnan(xy[:, 0])]
    assert on_spot.size and np.isfinite(on_spot).all() and np.abs(on_spot).max() < 15
    assert rig.rewards_seen == 1 and rig.trials_seen == 1 and rig.trials_unknown_image == 1
    assert monkey.hazard(t_reward) == pytest.approx(monkey.config.break_rate)  # the reward reset the boredom
