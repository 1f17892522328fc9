"""The awake trial state machine on the fake presenter's simulated clock, driven by synthetic gaze.

Gaze is a function of time (and of what is on the screen), sampled at 1 kHz; the frame loop reads the
samples that arrived before each frame. Every figure is exact on the simulated clock, so the tests
can assert frame-level timing: a break blanks the screen at the first flip after the breaking sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from stimserver.fake_presenter import FakePresenter
from stimserver.fixation import GAZE_CHUNK_S, FixationBlock
from stimserver.frameloop import BlockControl
from stimserver.gaze import GazeSource
from stimserver.reward import RewardLine
from tests.stimserver.helpers import random_images
from wire.base import Message
from wire.behavior import BehaviorEvent, FixationRule, GazeChunk, GazeSample, InvalidReason, RewardEvent
from wire.stim import BlockStatus, FixationSpot, PresentBlock, TrialEvent, TrialSpec

HZ = 100.0
PERIOD = 1 / HZ


class Screen:
    """The fake presenter and the simulated 'now': half a refresh after the latest flip."""

    def __init__(self, ids: list[str], pixels: np.ndarray) -> None:
        self.p = FakePresenter(realtime=False, refresh_hz=HZ, keep_frames=1_000_000)
        self.p.open()
        for i, a in zip(ids, pixels, strict=True):
            self.p.prepare(i, a)

    @property
    def t0(self) -> float:
        """The block's first flip: gaze functions get time from there."""
        return self.p.frames[0].time if self.p.frames else 0.0

    def now(self) -> float:
        return self.p.frames[-1].time + PERIOD / 2 if self.p.frames else 0.0

    def showing(self) -> str | None:
        return self.p.frames[-1].image_id if self.p.frames else None


class FunctionGaze(GazeSource):
    """1 kHz samples of ``fn(t, image on screen)`` up to the screen's 'now'."""

    name = "function"

    def __init__(self, screen: Screen, fn: Callable[[float, str | None], tuple[float, float]]) -> None:
        self.screen, self.fn, self.t = screen, fn, None

    def open(self) -> None:
        pass

    def poll(self) -> list[GazeSample]:
        now = self.screen.now()
        if self.t is None:
            self.t = now - 0.001
        out = []
        while self.t + 0.001 <= now:
            self.t += 0.001
            x, y = self.fn(self.t - self.screen.t0, self.screen.showing())
            out.append(GazeSample(t=self.t, x=x, y=y))
        return out

    def close(self) -> None:
        pass


class CountingReward(RewardLine):
    """Records the flip count at each pulse (the pulse must follow the sequence's last offset flip)."""

    name = "test"

    def __init__(self, screen: Screen) -> None:
        super().__init__()
        self.screen = screen
        self.at_flip: list[int] = []
        self.is_open = True

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        pass

    def _start(self, t: float, duration_s: float) -> None:
        self.at_flip.append(len(self.screen.p.frames))


RULE = FixationRule(window_deg=2.0, acquire_s=0.5, hold_s=0.2, images_per_fixation=4, blink_grace_s=0.05,
                    timeout_s=0.3, count_window_s=0.15, max_attempts=3, max_no_fixation=5)


def run(n: int, fn: Callable[[float, str | None], tuple[float, float]], rule: FixationRule = RULE,
        on: int = 10, off: int = 10) -> tuple[Screen, list[Message], CountingReward, object]:
    ids, px = random_images(n)
    screen = Screen(ids, px)
    cmd = PresentBlock(block_id="b", trials=[TrialSpec(image_id=i, on_frames=on, off_frames=off) for i in ids],
                       behavior=rule, fixation=FixationSpot())
    out: list[Message] = []
    reward = CountingReward(screen)
    block = FixationBlock(screen.p, cmd, BlockControl(), out.append, FunctionGaze(screen, fn), reward, now=screen.now)
    return screen, out, reward, block.run_block()


def centre(t: float, img: str | None) -> tuple[float, float]:
    return 0.3 * math.sin(t), 0.2 * math.cos(3 * t)  # drifting, always inside 2 deg


def test_steady_fixation_every_trial_counts_and_each_sequence_is_rewarded() -> None:
    _screen, out, reward, res = run(10, centre)
    assert res.status is BlockStatus.COMPLETED
    trials = [e for e in out if isinstance(e, TrialEvent)]
    assert len(trials) == 10 and all(t.valid for t in trials) and res.invalid == [] and res.missing == []
    assert sorted(t.spec_index for t in res.trials) == list(range(10))
    assert res.sequences == res.completed_sequences == 3  # 4 + 4 + 2 images
    assert len([e for e in out if isinstance(e, RewardEvent)]) == len(res.rewards) == 3
    # each pulse comes right after a sequence's last offset flip, before any other flip
    last_offsets = [res.trials[k].offset_frame for k in (3, 7, 9)]
    lead_in = 0  # frames are numbered from the block's first flip, which is frame 0 of p.frames here
    assert [f - 1 - lead_in for f in reward.at_flip] == last_offsets
    # a trial is published only once its counting window has passed with the eyes in the window
    assert all(t.dropped_frames == 0 for t in res.trials)


def test_break_blanks_at_the_next_flip_and_the_spoiled_image_comes_back() -> None:
    ids_order: list[str] = []
    broke_at: list[float] = []

    def fn(t: float, img: str | None) -> tuple[float, float]:
        if img is not None and img not in ids_order:
            ids_order.append(img)
        # the third image of the first sequence: 40 ms after it appears, a saccade 6 deg away, for 0.25 s
        if len(ids_order) == 3 and img == ids_order[2] and not broke_at:
            broke_at.append(t + 0.04)  # (times relative to the first flip)
        if broke_at and broke_at[0] <= t < broke_at[0] + 0.25:
            return 6.0, 0.0
        return 0.1, 0.1

    screen, out, _reward, res = run(8, fn)
    assert res.status is BlockStatus.COMPLETED and broke_at
    t_break = broke_at[0] + screen.t0
    frames = screen.p.frames
    # the sample reaches the loop at the first 'now' (half a refresh after a flip) at or after its time;
    # the very next flip is blank: no image, no spot
    arrival = next(f.time + PERIOD / 2 for f in frames if f.time + PERIOD / 2 >= t_break)
    first_after = next(f for f in frames if f.time > arrival)
    assert first_after.image_id is None and not first_after.fixation, "the flip after the break must be blank"
    assert first_after.time - arrival <= PERIOD / 2 + 1e-9
    before = [f for f in frames if f.time < arrival]
    assert before[-1].image_id == ids_order[2], "the image was still on until the break arrived"
    # image 3 was cut: invalid (break_fixation); images 1-2 had their windows end before the break: valid
    (bad,) = res.invalid
    assert bad.image_id == ids_order[2] and bad.invalid_reason == InvalidReason.BREAK_FIXATION
    assert bad.shown_frames < bad.on_frames
    assert bad.broke_at is not None and t_break - 1e-9 <= bad.broke_at < t_break + 0.001  # the first sample out
    assert bad.offset == first_after.time  # an image cut short ends at the blanking flip
    # every image ends up valid exactly once; the spoiled one is shown again later in the block
    assert sorted(t.spec_index for t in res.trials) == list(range(8))
    again = next(t for t in res.trials if t.image_id == ids_order[2])
    assert again.onset > bad.onset and again.attempt == 1
    assert res.completed_sequences == len(res.rewards) == res.sequences - 1
    assert any(isinstance(e, BehaviorEvent) and e.what == "break" for e in out)


def test_blinks_within_the_grace_are_forgiven_longer_ones_break() -> None:
    def short_blinks(t: float, img: str | None) -> tuple[float, float]:
        return (math.nan, math.nan) if (t % 0.5) < 0.03 else (0.0, 0.0)  # 30 ms blinks, grace 50 ms

    _, _, _, res = run(8, short_blinks)
    assert res.invalid == [] and res.completed_sequences == res.sequences

    def long_blinks(t: float, img: str | None) -> tuple[float, float]:
        return (math.nan, math.nan) if 0.5 <= t < 0.7 else (0.0, 0.0)  # one 200 ms blink, mid-sequence

    _, _out, _, res = run(8, long_blinks)
    assert res.sequences > res.completed_sequences
    assert sorted(t.spec_index for t in res.trials) == list(range(8))


def test_an_image_never_looked_at_is_given_up_after_max_attempts() -> None:
    hated: list[str] = []

    def fn(t: float, img: str | None) -> tuple[float, float]:
        if img is not None and not hated:
            hated.append(img)
        return (8.0, 8.0) if img is not None and img == hated[0] else (0.0, 0.0)

    _, _, _, res = run(5, fn)
    assert res.status is BlockStatus.COMPLETED
    assert res.missing == [0]
    assert [t.image_id for t in res.invalid] == [hated[0]] * RULE.max_attempts
    assert [t.attempt for t in res.invalid] == [0, 1, 2]
    assert sorted(t.spec_index for t in res.trials) == [1, 2, 3, 4]


def test_no_fixation_ends_the_block_as_fixation_timeout() -> None:
    _, _out, _, res = run(4, lambda t, img: (10.0, 0.0))
    assert res.status is BlockStatus.FIXATION_TIMEOUT
    assert res.no_fixation == RULE.max_no_fixation and res.trials == [] and res.sequences == 0


def test_without_count_before_break_a_broken_sequence_counts_nothing() -> None:
    rule = RULE.model_copy(update={"count_before_break": False})
    seen: list[str] = []

    def fn(t: float, img: str | None) -> tuple[float, float]:
        if img is not None and img not in seen:
            seen.append(img)
        return (6.0, 0.0) if len(seen) == 4 and img == seen[3] else (0.0, 0.0)

    _, _, _, res = run(4, fn, rule)
    first_try = res.invalid[:4]
    assert {t.image_id for t in first_try} == set(seen[:4])
    assert {t.invalid_reason for t in first_try[:3]} == {InvalidReason.SEQUENCE_BROKEN}
    assert first_try[3].invalid_reason == InvalidReason.BREAK_FIXATION


class RecordingGaze(FunctionGaze):
    """FunctionGaze that remembers every sample it delivered."""

    def __init__(self, screen: Screen, fn: Callable[[float, str | None], tuple[float, float]]) -> None:
        super().__init__(screen, fn)
        self.delivered: list[GazeSample] = []

    def poll(self) -> list[GazeSample]:
        out = super().poll()
        self.delivered += out
        return out


def test_gaze_chunks_cover_every_sample_the_source_delivered() -> None:
    def fn(t: float, img: str | None) -> tuple[float, float]:
        if 0.9 <= t < 0.96:
            return math.nan, math.nan  # a blink within the grace
        if 1.5 <= t < 1.7:
            return 6.0, 0.0  # a break: the samples after the breaking one in the same poll are kept too
        return 0.3 * math.sin(t), 0.2 * math.cos(3 * t)

    ids, px = random_images(12)
    screen = Screen(ids, px)
    cmd = PresentBlock(block_id="b~0", trials=[TrialSpec(image_id=i, on_frames=10, off_frames=10) for i in ids],
                       behavior=RULE, fixation=FixationSpot())
    out: list[Message] = []
    gaze = RecordingGaze(screen, fn)
    res = FixationBlock(screen.p, cmd, BlockControl(), out.append, gaze, CountingReward(screen),
                        now=screen.now).run_block()
    assert res.status is BlockStatus.COMPLETED and res.sequences > res.completed_sequences  # it did break
    chunks = [e for e in out if isinstance(e, GazeChunk)]
    assert chunks and all(c.block_id == "b~0" for c in chunks)
    t = np.concatenate([c.t for c in chunks])
    xy = np.concatenate([c.xy for c in chunks])
    assert t.dtype == np.float64 and xy.dtype == np.float32 and xy.shape == (len(t), 2)
    np.testing.assert_array_equal(t, [s.t for s in gaze.delivered])  # every sample, once, in order
    np.testing.assert_array_equal(xy, np.array([(s.x, s.y) for s in gaze.delivered], np.float32))
    assert np.isnan(xy).any() and len(t) > 0.9 * 1000 * (screen.now() - screen.t0)
    # chunks go out at most every GAZE_CHUNK_S and the last one at the block's end; a chunk spans about
    # GAZE_CHUNK_S, more only after a time-out (its blank screen reads no gaze; the next frame reads it all)
    spans = [c.t[-1] - c.t[0] for c in chunks]
    assert max(spans) <= GAZE_CHUNK_S + RULE.timeout_s + 2 * PERIOD
    assert sum(GAZE_CHUNK_S - 2 * PERIOD <= x <= GAZE_CHUNK_S + 2 * PERIOD for x in spans) >= len(chunks) // 2
    assert len(chunks) <= (screen.now() - screen.t0) / GAZE_CHUNK_S + 2
    assert out[-1] is chunks[-1], "the block's last samples go out after its last trial"
