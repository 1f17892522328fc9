"""A second LSL stream of the rig's name (another rig left on the defaults, a test outlet) must never be
read silently: resolution takes every stream that matches, refuses an ambiguous name naming each
candidate, and lets the rig file pin the rig's stream by source id (or host)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from controller.acquisition.lsl import LslSource, resolve_stream
from wire.errors import AcquisitionError

OUTLET = """
import sys, time, pylsl
name, source = sys.argv[1], sys.argv[2]
o = pylsl.StreamOutlet(pylsl.StreamInfo(name, "Spikes", 1, pylsl.IRREGULAR_RATE, "int32", source))
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def two_outlets() -> Iterator[str]:
    """Two outlets named alike, each in its own process: the rig's and an impostor."""
    name = f"impostor-test-{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen([sys.executable, "-c", OUTLET, name, src], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for src in ("rig-A", "impostor-B")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield name
    finally:
        for p in procs:
            p.communicate(timeout=10)


def test_two_streams_of_one_name_are_refused_with_both_named(two_outlets: str) -> None:
    with pytest.raises(AcquisitionError) as err:
        resolve_stream(two_outlets, "Spikes", 5.0)
    text = str(err.value)
    assert "2 LSL streams" in text and "rig-A" in text and "impostor-B" in text and "host" in text


def test_a_pinned_source_id_picks_the_rigs_stream(two_outlets: str) -> None:
    info = resolve_stream(two_outlets, "Spikes", 5.0, source_id="rig-A")
    assert info.source_id() == "rig-A"
    with pytest.raises(AcquisitionError, match="no LSL stream"):
        resolve_stream(two_outlets, "Spikes", 1.0, source_id="rig-C")


async def test_the_source_records_which_stream_it_reads(two_outlets: str) -> None:
    src = LslSource(spike_name=two_outlets, marker_name=None, marker_type=None, silence_timeout=None,
                    pin={"spikes": {"source_id": "impostor-B", "host": None}})
    await src.open()
    try:
        assert src.stream_records["spikes"]["source_id"] == "impostor-B" and src.stream_records["spikes"]["hostname"]
    finally:
        await src.close()


@pytest.mark.parametrize("bad", ["x' or name='y", "a]b", "na\\me", 'q"', "n" * 201])
def test_names_that_would_change_the_query_are_refused(bad: str) -> None:
    with pytest.raises(AcquisitionError, match="use letters"):
        resolve_stream(bad, None, 0.1)
    with pytest.raises(AcquisitionError, match="use letters"):
        resolve_stream("cortexloop-spikes", "Spikes", 0.1, source_id=bad)
