"""The Open Ephys source fed by a ZeroMQ publisher speaking the Event Broadcaster's JSON format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
import zmq.asyncio

from controller.acquisition.base import SourceSilent, SyncEvent
from controller.acquisition.binning import Binner, BinningConfig, ClockMap, ClockSync
from controller.acquisition.openephys import MalformedEvent, OpenEphysSource, parse_event
from controller.acquisition.pipeline import AcquisitionPipeline
from wire.errors import AcquisitionError
from wire.stim import TrialEvent

RATE = 30000
W = (0.05, 0.15)


def spike(sample: int, electrode: str = "Electrode 1", sorted_id: int = 1, stream: str = "probeA") -> list[bytes]:
    return [b"1", json.dumps({"event_type": "spike", "stream": stream, "source_node": 105, "electrode": electrode,
                              "num_channels": 4, "sample_rate": RATE, "sample_number": sample,
                              "sorted_id": sorted_id, "amp1": 210, "amp2": 150, "amp3": 20,
                              "amp4": 5}).encode()]


def ttl(sample: int, line: int = 2, state: int = 1, stream: str = "probeA") -> list[bytes]:
    return [b"0", json.dumps({"event_type": "ttl", "stream": stream, "source_node": 101, "sample_rate": RATE,
                              "channel_name": "TTL Event Channel", "sample_number": sample, "line": line,
                              "state": state}).encode()]


class Publisher:
    """An XPUB (a PUB that sees subscriptions), so the test can wait for the source to connect."""

    def __init__(self) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.XPUB)
        self.sock.linger = 0
        self.sock.bind("tcp://127.0.0.1:0")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    async def wait_subscribed(self) -> None:
        msg = await self.sock.recv()
        assert msg[:1] == b"\x01"

    async def send(self, frames: list[bytes]) -> None:
        await self.sock.send_multipart(frames)

    def close(self) -> None:
        self.sock.close(0)


def test_parse_event_formats() -> None:
    assert parse_event(spike(30000)[1]) == ("Electrode 1:1", 1.0)
    assert parse_event(ttl(15000, line=3, state=0)[1]) == SyncEvent("ttl3", 0.5, 0)
    assert parse_event(spike(3, sorted_id=0)[1], include_unsorted=False) is None
    assert parse_event(spike(3, stream="other")[1], streams={"probeA"}) is None
    old = json.dumps({"event_type": "spike", "electrode": "E", "sorted_id": 2, "sample_rate": 1000,
                      "timestamp": 1500}).encode()
    assert parse_event(old) == ("E:2", 1.5)
    for bad in [b"{not json", b"[1, 2]", b'{"event_type": "spike"}', b'{"event_type": "lfp"}',
                json.dumps({"event_type": "ttl", "line": 1, "state": 1, "sample_rate": 0,
                            "sample_number": 4}).encode(), b"\xff\xfe"]:
        with pytest.raises(MalformedEvent):
            parse_event(bad)


async def test_exact_counts_with_offset_drift_and_malformed_json() -> None:
    """Sample clock starts near 0, stim clock near 8000 s, 50 ppm drift: the TTL line 2 fits the map."""
    rng = np.random.default_rng(3)
    true = ClockMap(offset=-8000.0, scale=1 + 5e-5)
    onsets_stim = 8000.5 + np.cumsum(rng.uniform(0.3, 0.6, 20))
    onsets_acq = np.asarray(true.to_acq(onsets_stim))
    spikes: list[tuple[int, str]] = []
    for o in onsets_acq:
        for e in ("Electrode 1", "Electrode 2"):
            spikes += [(round((o + r) * RATE), e) for r in rng.uniform(-0.05, 0.3, rng.integers(0, 8))]
    spikes.sort()
    pub = Publisher()
    src = OpenEphysSource(pub.endpoint, silence_timeout=10)
    binner = Binner(BinningConfig(window=W, lateness=0.02), clock=ClockSync("ttl2", tolerance=0.005))
    try:
        async with AcquisitionPipeline(src, binner) as acq:
            await pub.wait_subscribed()
            for i, o in enumerate(onsets_stim):
                acq.add_trial(TrialEvent(block_id="b", trial_id=f"t{i}", index=i, image_id="x", onset=float(o),
                                         offset=float(o) + 0.1, on_frames=6, dropped_frames=0))
            pulses = iter(round(o * RATE) for o in onsets_acq)
            next_pulse = next(pulses)
            for k, (sample, e) in enumerate(spikes):
                while next_pulse is not None and next_pulse <= sample:
                    await pub.send(ttl(next_pulse, line=2, state=1))
                    await pub.send(ttl(next_pulse, line=5, state=1))  # another line: ignored by the sync
                    next_pulse = next(pulses, None)
                if k % 7 == 0:
                    await pub.send([b"1", b"{malformed"])
                await pub.send(spike(sample, e))
            await pub.send(spike(spikes[-1][0] + RATE, "Electrode 1"))  # moves the watermark past every window
            closed = [await acq.next_closed(timeout=10) for _ in onsets_stim]
    finally:
        pub.close()
    assert src.stats["malformed"] == len(range(0, len(spikes), 7))
    assert binner.stats.late_spikes == 0
    for c, o in zip(closed, onsets_acq, strict=True):
        assert c.complete
        for e in ("Electrode 1", "Electrode 2"):
            lo, hi = (o + W[0]) * RATE, (o + W[1]) * RATE
            want = sum(1 for s, ee in spikes if ee == e and lo <= s < hi)
            assert (c.count(f"{e}:1") if f"{e}:1" in c.unit_ids else 0) == want


async def test_silent_source_keeps_closed_trials_and_reports() -> None:
    pub = Publisher()
    src = OpenEphysSource(pub.endpoint, silence_timeout=0.3)
    binner = Binner(BinningConfig(window=W, lateness=0.0))
    try:
        async with AcquisitionPipeline(src, binner) as acq:
            await pub.wait_subscribed()
            acq.add_trial(TrialEvent(block_id="b", trial_id="t0", index=0, image_id="x", onset=1.0, offset=1.1,
                                     on_frames=6, dropped_frames=0))
            acq.add_trial(TrialEvent(block_id="b", trial_id="t1", index=1, image_id="x", onset=2.0, offset=2.1,
                                     on_frames=6, dropped_frames=0))
            for s in (1.06, 1.1, 1.2, 1.5):
                await pub.send(spike(int(s * RATE)))
            first = await acq.next_closed(timeout=5)
            assert first.trial_id == "t0" and first.complete and first.count("Electrode 1:1") == 2
            # then the rig goes quiet: t1 is flushed as incomplete, then the error is raised
            second = await acq.next_closed(timeout=5)
            assert second.trial_id == "t1" and not second.complete
            with pytest.raises(SourceSilent, match=r"no data received for 0\.3 s"):
                await acq.next_closed(timeout=5)
            with pytest.raises(AcquisitionError):
                acq.add_trial(TrialEvent(block_id="b", trial_id="t2", index=2, image_id="x", onset=3.0, offset=3.1,
                                         on_frames=6, dropped_frames=0))
    finally:
        pub.close()
    assert isinstance(acq.error, SourceSilent)
