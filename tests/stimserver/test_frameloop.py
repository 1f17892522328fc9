"""The frame loop on the fake presenter's virtual clock: exact frames, onsets, drops, photodiode."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from stimserver.fake_presenter import FakePresenter
from stimserver.frameloop import BlockControl, run_block
from stimserver.presenter import PresenterConfig
from tests.stimserver.helpers import block, random_images
from wire.stim import BlockStatus, PresentBlock, TrialEvent, TrialSpec


def _open(ids: list[str], pixels: np.ndarray, **kw: object) -> FakePresenter:
    p = FakePresenter(realtime=False, refresh_hz=100.0, keep_frames=100_000, **kw)  # type: ignore[arg-type]
    p.open()
    for i, a in zip(ids, pixels, strict=True):
        p.prepare(i, a)
    return p


def test_exact_frames_onsets_offsets_and_photodiode() -> None:
    ids, px = random_images(3)
    p = _open(ids, px)
    cmd = PresentBlock(block_id="b", trials=[TrialSpec(image_id=ids[0], on_frames=3, off_frames=2, repeats=2),
                                             TrialSpec(image_id=ids[1], on_frames=1, off_frames=4),
                                             TrialSpec(image_id=ids[2], on_frames=5, off_frames=1)])
    emitted: list[TrialEvent] = []
    res = run_block(p, cmd, BlockControl(), emitted.append)
    assert res.status is BlockStatus.COMPLETED
    assert emitted == res.trials
    assert [t.image_id for t in res.trials] == [ids[0], ids[0], ids[1], ids[2]]
    assert [(t.spec_index, t.repeat) for t in res.trials] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert [t.index for t in res.trials] == [0, 1, 2, 3]
    assert len({t.trial_id for t in res.trials}) == 4
    period = 0.01
    for t in res.trials:
        assert t.offset_frame - t.onset_frame == t.on_frames == t.shown_frames
        assert t.offset - t.onset == pytest.approx(t.on_frames * period)
        assert t.dropped_frames == 0
        assert res.flip_times[t.onset_frame] == t.onset and res.flip_times[t.offset_frame] == t.offset
    # OFF periods: next onset comes off_frames refreshes after the offset
    offs = [2, 2, 4]
    for a, b, off in zip(res.trials, res.trials[1:], offs, strict=False):
        assert b.onset_frame - a.offset_frame == off
    # what the "screen" showed, frame by frame: 1 lead-in blank, then exactly the ON frames
    shown = [f.image_id for f in p.frames]
    expected = [None] + [ids[0]] * 3 + [None] * 2 + [ids[0]] * 3 + [None] * 2 + [ids[1]] + [None] * 4 \
        + [ids[2]] * 5 + [None]
    assert shown == expected
    # the photodiode patch toggles at each onset and stays for the whole trial
    assert [t.photodiode for t in res.trials] == [True, False, True, False]
    assert all(f.photodiode == res.trials[0].photodiode for f in p.frames[1:4])
    assert len(res.flip_times) == len(expected) and res.dropped_frames == 0


def test_injected_drops_are_counted_in_their_trial() -> None:
    ids, px = random_images(2)
    # flips: 1 lead-in, trial 0 ON = flips 2..5, offset flip 6; drop flip 4 (inside trial 0's ON period)
    p = _open(ids, px, drop_flips={4, 13})
    res = run_block(p, block(ids, on=4, off=3), BlockControl(), lambda e: None)
    t0, t1 = res.trials
    assert t0.dropped_frames == 1 and t0.offset - t0.onset == pytest.approx(5 * 0.01)
    assert t0.offset_frame - t0.onset_frame == 4  # frame count stays exact, duration does not
    # flip 13 is trial 1's offset flip (onset 9 + 4 frames) -> counted in trial 1
    assert t1.onset_frame == 8 and t1.dropped_frames == 1
    assert res.dropped_frames == 2
    assert res.refresh_period == pytest.approx(0.01)


def test_abort_from_another_thread_stops_within_a_frame() -> None:
    ids, px = random_images(4)
    p = _open(ids, px)
    control = BlockControl()
    seen: list[TrialEvent] = []

    def emit(e: TrialEvent) -> None:
        seen.append(e)
        if len(seen) == 2:
            control.request_abort()

    res = run_block(p, block(ids, on=3, off=3, repeats=5), control, emit)
    assert res.status is BlockStatus.ABORTED
    assert len(res.trials) == 2
    # the abort arrived at trial 1's offset flip: at most the abort's own check precedes one more frame
    assert len(res.flip_times) - 1 == res.trials[-1].offset_frame


def test_pause_mid_trial_reshows_it_after_resume() -> None:
    ids, px = random_images(3)
    p = _open(ids, px)
    control = BlockControl()
    flips_at_pause: list[int] = []
    original_flip = p.flip

    def flip() -> float:
        t = original_flip()
        if p.flips == 4 and not flips_at_pause:  # lead-in + 3 ON frames of trial 0 (on=5)
            flips_at_pause.append(p.flips)
            control.request_pause()
        elif control.paused:  # the blank flip that removed the image: resume from another thread
            assert p.frames[-1].image_id is None
            th = threading.Thread(target=control.request_resume)
            th.start()
            th.join()
        return t

    p.flip = flip  # type: ignore[method-assign]
    res = run_block(p, block(ids, on=5, off=2), control, lambda e: None)
    assert res.status is BlockStatus.COMPLETED
    assert [t.image_id for t in res.trials] == ids
    assert len(res.interrupted) == 1
    cut = res.interrupted[0]
    assert cut.image_id == ids[0] and cut.shown_frames == 3 and cut.offset_frame - cut.onset_frame == 3
    assert all(t.shown_frames == t.on_frames == 5 for t in res.trials)


def test_fixation_timeout_counts_frames() -> None:
    ids, px = random_images(1)
    p = _open(ids, px)
    cmd = block(ids).model_copy(update={"wait_for_fixation": True, "fixation_timeout": 0.1})
    res = run_block(p, cmd, BlockControl(), lambda e: None)
    assert res.status is BlockStatus.FIXATION_TIMEOUT and res.trials == []
    assert len(res.flip_times) == 1 + 10  # lead-in + 0.1 s of 10 ms frames


def test_refresh_override_and_measure() -> None:
    p = FakePresenter(PresenterConfig(refresh_hz=50.0), realtime=False, refresh_hz=100.0)
    p.open()
    assert p.refresh_period == pytest.approx(0.02)
    assert p.measure_refresh(10) == pytest.approx(0.01)
