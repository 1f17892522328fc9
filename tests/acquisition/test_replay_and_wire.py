"""Replay of recorded counts, and the acquisition messages on the wire."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from controller.acquisition.binning import ClosedTrial
from controller.acquisition.replay import CountsReplay, InMemoryReplay
from wire.acq import RigLoadImages, TrialCounts
from wire.codec import decode, encode
from wire.errors import InvalidRequest, NotFound
from wire.stim import TrialEvent
from wire.transport import union_adapter


def ev(i: int, image: str) -> TrialEvent:
    return TrialEvent(block_id="b", trial_id=f"t{i}", index=i, image_id=image, onset=float(i), offset=i + 0.1,
                      on_frames=6, dropped_frames=0)


async def test_in_memory_replay_cycles_repeats_and_skips_nan() -> None:
    data = {"a": np.array([[1, 2], [np.nan, np.nan], [3, 4]]), "b": np.array([5.0, 6.0])}
    rep = InMemoryReplay(data, unit_ids=["u0", "u1"])
    assert isinstance(rep, CountsReplay)

    async def events() -> AsyncIterator[TrialEvent]:
        for i, img in enumerate(["a", "a", "a", "b"]):
            yield ev(i, img)

    got = [c async for c in rep.trials(events())]
    assert [c.counts.tolist() for c in got] == [[1, 2], [3, 4], [1, 2], [5, 6]]
    assert got[0].unit_ids == ("u0", "u1") and got[3].image_id == "b" and got[3].trial_id == "t3"
    with pytest.raises(NotFound):
        rep.close_trial(ev(9, "zzz"))
    with pytest.raises(InvalidRequest):
        InMemoryReplay({"a": np.ones((2, 3))}, unit_ids=[0, 1])


def test_trial_counts_round_trip() -> None:
    rec = ClosedTrial(trial_id="t", unit_ids=(0, "e1:2"), counts=np.array([3, 0], dtype=np.int32),
                      window=(0.05, 0.15), onset_acq=10.0, onset_stim=9.0, complete=False, block_id="b",
                      image_id="img", index=4)
    msg = rec.to_message()
    _, back = decode(encode(msg), union_adapter([TrialCounts, RigLoadImages]))
    assert isinstance(back, TrialCounts)
    assert back.unit_ids == [0, "e1:2"] and back.counts.tolist() == [3, 0] and not back.complete
    assert (back.window_start, back.window_end, back.onset_acq, back.index) == (0.05, 0.15, 10.0, 4)
