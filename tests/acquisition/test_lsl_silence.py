"""A silent LSL rig never produces counts: real pylsl outlets, no mocks.

The spike outlet stays alive (the stream exists) but stops sending after a first trial. That
trial closes with its exact counts; the second one must stay open, uncounted, until the
source gives up with :class:`SourceSilent` within its silence timeout. The marker outlet is
absent, silent too, or still sending (a dead spike sorter next to a live sync line).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import numpy as np
import pylsl
import pytest

from controller.acquisition.base import SourceSilent
from controller.acquisition.binning import Binner, BinningConfig, ClosedTrial
from controller.acquisition.lsl import LslSource

W = (0.05, 0.15)
LATENESS = 0.05
SILENCE = 1.5
# trial 1: spike times relative to its onset, per unit, all >= 5 ms away from the window edges
SPIKES = {0: [0.0, 0.06, 0.10, 0.145], 1: [0.045, 0.12, 0.155], 2: [0.2], 3: [-0.1, 0.07]}
LAST = 0.3  # one more spike (unit 0) past window end + lateness: the data that closes trial 1


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("markers", ["none", "silent", "live"])
async def test_silent_spike_outlet_never_closes_open_trials(markers: str) -> None:
    tag = uuid.uuid4().hex[:12]
    spike_name, marker_name = f"sil-sp-{tag}", f"sil-mk-{tag}"
    spike_out = pylsl.StreamOutlet(pylsl.StreamInfo(spike_name, "Spikes", 1, pylsl.IRREGULAR_RATE,
                                                    pylsl.cf_int32, f"{spike_name}-src"))
    marker_out = None
    if markers != "none":
        marker_out = pylsl.StreamOutlet(pylsl.StreamInfo(marker_name, "Markers", 1, pylsl.IRREGULAR_RATE,
                                                         pylsl.cf_string, f"{marker_name}-src"))
    src = LslSource(spike_name=spike_name, spike_type=None,
                    marker_name=marker_name if marker_out else None, marker_type=None,
                    resolve_timeout=10, silence_timeout=SILENCE, max_delay=0.2, poll=0.01)
    binner = Binner(BinningConfig(window=W, lateness=LATENESS))  # identity clock: stim clock = local clock
    closed: list[ClosedTrial] = []
    stop_markers = asyncio.Event()

    async def consume() -> None:
        async for item in src:
            closed.extend(binner.feed(item))

    async def push_markers() -> None:  # a sync line that keeps running while the spikes have stopped
        assert marker_out is not None
        while not stop_markers.is_set():
            marker_out.push_sample(["photodiode 1"], pylsl.local_clock())
            await asyncio.sleep(0.05)

    async with src:
        assert await asyncio.to_thread(spike_out.wait_for_consumers, 10)
        if marker_out is not None:
            assert await asyncio.to_thread(marker_out.wait_for_consumers, 10)
        consumer = asyncio.create_task(consume())
        pusher = asyncio.create_task(push_markers()) if markers == "live" else None
        try:
            # trial 1: spikes around its window, then one past window end + lateness -> closes, exact counts
            o1 = pylsl.local_clock()
            closed += binner.add_trial("t1", o1)
            units = [u for u, rel in SPIKES.items() for _ in rel] + [0]
            stamps = [o1 + r for rel in SPIKES.values() for r in rel] + [o1 + LAST]
            order = np.argsort(stamps)
            spike_out.push_chunk([[units[i]] for i in order], [stamps[i] for i in order])
            await wait_until(lambda: any(c.trial_id == "t1" for c in closed), 10, "trial 1 to close")
            c1 = closed[0]
            assert c1.trial_id == "t1" and c1.complete
            for u, rel in SPIKES.items():
                want = sum(1 for r in rel if W[0] <= r < W[1])
                assert (c1.count(u) if u in c1.unit_ids else 0) == want, u

            # trial 2: the spike outlet stays open but sends nothing more
            o2 = max(pylsl.local_clock(), o1 + LAST) + 0.01
            closed += binner.add_trial("t2", o2)
            silent_since = pylsl.local_clock()
            outcome: BaseException | None = None
            try:
                await asyncio.wait_for(consumer, SILENCE + 5)
            except (SourceSilent, TimeoutError) as exc:
                outcome = exc
            waited = pylsl.local_clock() - silent_since
        finally:
            stop_markers.set()
            for task in (consumer, pusher):
                if task is not None and not task.done():
                    task.cancel()
                    try:
                        await asyncio.wait_for(task, 5)
                    except (asyncio.CancelledError, SourceSilent):
                        pass
    # the open trial was never closed: no counts for it, complete or not, while the rig was silent
    assert [c.trial_id for c in closed] == ["t1"], [(c.trial_id, c.complete, c.counts) for c in closed]
    assert binner.open_trials == 1
    # and the silence is reported within its timeout (from the last data; a little slack for the poll)
    assert isinstance(outcome, SourceSilent), repr(outcome)
    assert waited <= SILENCE + 1.0, waited
