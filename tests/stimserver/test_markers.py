"""LSL markers of trial onsets: read by a pylsl inlet in ANOTHER process, and through an XDF file.

No recorder that writes XDF is on PyPI (LabRecorder is a C++ application; pyxdf only reads), so
the XDF test writes the received samples with :func:`write_xdf`, a minimal writer that follows the
XDF specification (magic, FileHeader, StreamHeader, Samples, ClockOffset, StreamFooter chunks), and
loads the file with ``pyxdf.load_xdf``, as a lab would load LabRecorder's file.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from stimserver.fake_presenter import FakePresenter
from stimserver.markers import MarkerOutlet
from stimserver.process import StimServerProcess
from stimserver.server import StimServer
from tests.conftest import require_module
from tests.stimserver.helpers import block, random_images
from wire.stim import BlockResult, BlockStatus, ImagesLoaded, LoadImages, TrialEvent
from wire.transport import RpcClient

#: the other process: resolve the stream by name, print its header, then every sample as it comes
READER = r"""
import json, sys, pylsl
name, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
found = pylsl.resolve_byprop("name", name, 1, timeout)
if not found:
    print(json.dumps({"error": "no stream"}), flush=True); sys.exit(2)
inlet = pylsl.StreamInlet(found[0], max_buflen=60)
inlet.open_stream(timeout)
i = inlet.info()
print(json.dumps({"type": i.type(), "source_id": i.source_id(), "format": i.channel_format(),
                  "rate": i.nominal_srate(), "channels": i.channel_count(), "xml": i.as_xml()}), flush=True)
got, end = 0, pylsl.local_clock() + timeout
while got < n and pylsl.local_clock() < end:
    s, ts = inlet.pull_sample(timeout=0.5)
    if s is not None:
        print(json.dumps({"sample": s[0], "ts": ts}), flush=True)
        got += 1
print(json.dumps({"correction": inlet.time_correction(timeout=5)}), flush=True)
"""


class Reader:
    """The reader process: ``header`` once connected, then ``samples()``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.header: dict[str, Any] = {}

    @classmethod
    async def start(cls, name: str, n: int, timeout: float = 20.0) -> Reader:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", READER, name, str(n), str(timeout),
                                                    stdout=asyncio.subprocess.PIPE)
        r = cls(proc)
        r.header = await r._line(timeout + 10)
        assert "error" not in r.header, r.header
        return r

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "the reader process ended early"
        out: dict[str, Any] = json.loads(line)
        return out

    async def samples(self, n: int) -> tuple[list[tuple[dict[str, Any], float]], float]:
        got = [await self._line(30) for _ in range(n)]
        correction = float((await self._line(30))["correction"])
        assert await asyncio.wait_for(self.proc.wait(), 10) == 0
        return [(json.loads(g["sample"]), float(g["ts"])) for g in got], correction


    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def check_markers(got: list[tuple[dict[str, Any], float]], correction: float, trials: list[TrialEvent],
                  lsl_offset: float) -> None:
    """Every trial, in order, ids as sent, onset within 1 ms of its flip (on LSL's clock)."""
    assert [m["trial_id"] for m, _ in got] == [t.trial_id for t in trials]
    for (m, ts), t in zip(got, trials, strict=True):
        assert (m["event"], m["image_id"], m["block_id"], m["index"]) == ("onset", t.image_id, t.block_id, t.index)
        assert m["flip"] == t.onset and m["offset"] == t.offset
        assert abs(ts + correction - (t.onset + lsl_offset)) < 1e-3, (ts, t.onset)


Got = tuple[BlockResult, Reader, MarkerOutlet, list[tuple[dict[str, Any], float]], float]


async def present_on_fake(name: str, tmp: str) -> Got:
    """A 9-trial block on the fake presenter, its markers read by the other process while the server runs."""
    ids, px = random_images(3)
    outlet = MarkerOutlet(name, source_id=f"{name}-rig")
    async with StimServer(FakePresenter(refresh_hz=120.0, realtime=False), f"ipc://{tmp}/rpc", f"ipc://{tmp}/ev",
                          markers=outlet) as srv:
        reader = await Reader.start(name, 9)
        try:
            assert outlet.wait_for_consumers(10)
            async with RpcClient(srv.rpc_endpoint, timeout=10.0) as client:
                await client.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
                res = await client.request(block(ids, on=3, off=2, repeats=3, block_id="blk-lsl"), BlockResult)
            got, correction = await reader.samples(9)
        finally:
            await reader.close()
    return res, reader, outlet, got, correction


async def test_markers_read_in_another_process_fake_presenter(ipc_dir: str) -> None:
    name = f"cl-markers-{uuid.uuid4().hex[:8]}"
    res, reader, outlet, got, correction = await present_on_fake(name, ipc_dir)
    h = reader.header
    assert (h["type"], h["format"], h["rate"], h["channels"]) == ("Markers", 3, 0.0, 1)  # 3: cf_string
    assert h["source_id"] == f"{name}-rig"
    assert res.status is BlockStatus.COMPLETED and len(res.trials) == 9 and outlet.pushed == 9
    assert abs(correction) < 0.01  # one machine: LSL's correction is ~0
    check_markers(got, correction, res.trials, outlet.offset)


@pytest.mark.display
async def test_markers_from_the_psychopy_presenter_under_xvfb(xdisplay: str) -> None:
    name = f"cl-markers-{uuid.uuid4().hex[:8]}"
    srv = StimServerProcess(["--presenter", "psychopy", "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
                             "--size", "320x240", "--monitor-resolution", "320x240", "--markers-name", name],
                            env={"DISPLAY": xdisplay})
    try:
        assert srv.display_error is None, srv.ready
        reader = await Reader.start(name, 6)
        try:
            ids, px = random_images(2)
            async with RpcClient(srv.rpc, timeout=30) as c:
                await c.request(LoadImages(image_ids=ids, pixels=px), ImagesLoaded)
                res = await c.request(block(ids, on=2, off=1, repeats=3, block_id="blk-pp"), BlockResult)
            got, correction = await reader.samples(6)
        finally:
            await reader.close()
        # the server process measured its own LSL offset (~µs on Linux, where both clocks are MONOTONIC)
        check_markers(got, correction, res.trials, 0.0)
    finally:
        assert srv.stop() == 0, "".join(srv.output)


# --- a minimal XDF writer (https://github.com/sccn/xdf/wiki/Specifications) ------------------------------
def _varlen(n: int) -> bytes:
    if n < 256:
        return struct.pack("<BB", 1, n)
    if n < 2**32:
        return struct.pack("<BI", 4, n)
    return struct.pack("<BQ", 8, n)


def _chunk(tag: int, content: bytes) -> bytes:
    return _varlen(len(content) + 2) + struct.pack("<H", tag) + content


def write_xdf(path: Path, header_xml: str, samples: list[tuple[str, float]], clock_offset: float = 0.0) -> None:
    """One string stream (stream id 1) in an XDF file, as LabRecorder lays it out."""
    sid = struct.pack("<I", 1)
    body = _varlen(len(samples))
    for value, ts in samples:
        raw = value.encode()
        body += struct.pack("<Bd", 8, ts) + _varlen(len(raw)) + raw
    first, last = (samples[0][1], samples[-1][1]) if samples else (0.0, 0.0)
    footer = (f"<?xml version='1.0'?><info><first_timestamp>{first}</first_timestamp><last_timestamp>{last}"
              f"</last_timestamp><sample_count>{len(samples)}</sample_count></info>")
    with path.open("wb") as f:
        f.write(b"XDF:")
        f.write(_chunk(1, b"<?xml version='1.0'?><info><version>1.0</version></info>"))
        f.write(_chunk(2, sid + header_xml.encode()))
        f.write(_chunk(3, sid + body))
        f.write(_chunk(4, sid + struct.pack("<dd", last, clock_offset)))
        f.write(_chunk(6, sid + footer.encode()))


async def test_markers_through_an_xdf_file(ipc_dir: str, tmp_path: Path) -> None:
    pyxdf: Any = require_module("pyxdf")
    name = f"cl-markers-{uuid.uuid4().hex[:8]}"
    res, reader, outlet, got, correction = await present_on_fake(name, ipc_dir)
    path = tmp_path / "session.xdf"
    write_xdf(path, reader.header["xml"], [(json.dumps(m), ts) for m, ts in got], correction)
    streams, header = pyxdf.load_xdf(str(path), synchronize_clocks=True, dejitter_timestamps=False)
    assert header["info"]["version"] == ["1.0"]
    (s,) = streams
    assert s["info"]["name"] == [name] and s["info"]["type"] == ["Markers"]
    markers = [(json.loads(v[0]), float(t)) for v, t in zip(s["time_series"], s["time_stamps"], strict=True)]
    check_markers(markers, 0.0, res.trials, outlet.offset)  # load_xdf applied the clock offset itself
