"""Open Ephys under the session's control: a local HTTP server that follows the GUI's documented API
(``/api/status`` with mode IDLE/ACQUIRE/RECORD, ``/api/recording`` and ``/api/recording/<node>``)
records every call; a real short session (stimserver child, in-process rig with TTL pulses) must
name the recording after its session id, be RECORDing before its first onset and back to ACQUIRE
after its last offset."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.acquisition.base import Heartbeat, Item, SyncEvent
from controller.acquisition.oecontrol import OpenEphysControl
from controller.assembly import assemble
from controller.config import AcquisitionConfig, BusConfig, ImagesConfig, ModelConfig, RunConfig, SyncConfig
from protocols.loader import load_protocol
from virtualrig.loopback import LoopbackRig
from virtualrig.rates import make_rate_model
from wire import clock
from wire.documents import StartDoc, StopDoc, TrialDoc
from wire.errors import AcquisitionError
from wire.stim import TrialEvent

REPO = Path(__file__).resolve().parents[2]
SHRINK = ["steps.0.repeats=1", "steps.0.images.0.n_images=4", "steps.0.images.1.n_images=4",
          "steps.3.timeout_s=0.2", "steps.3.on_timeout=resume"]


class FakeGui(ThreadingHTTPServer):
    """The GUI's HTTP server as documented; ``calls`` holds (method, path, payload, wire.clock time)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ACQUIRE"
        self.recording: dict[str, Any] = {"parent_directory": "/data", "base_text": "2026-12-01_10-00-00",
                                          "prepend_text": "", "append_text": "",
                                          "record_nodes": [{"node_id": 101, "parent_directory": "/data"}]}
        self.calls: list[tuple[str, str, dict[str, Any] | None, float]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def modes(self) -> list[str]:
        return [p["mode"] for m, path, p, _ in self.calls if m == "PUT" and path == "/api/status" and p]


class _Handler(BaseHTTPRequestHandler):
    server: FakeGui

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self, payload: dict[str, Any] | None) -> None:
        gui = self.server
        with gui.lock:
            gui.calls.append((self.command, self.path, payload, clock.now()))
            if self.path == "/api/status":
                if payload is not None:
                    if payload.get("mode") not in ("IDLE", "ACQUIRE", "RECORD"):
                        return self._answer(400, {"error": "bad mode"})
                    gui.mode = payload["mode"]
                return self._answer(200, {"mode": gui.mode})
            if self.path == "/api/recording":
                gui.recording.update(payload or {})
                return self._answer(200, gui.recording)
            if self.path.startswith("/api/recording/"):
                for node in gui.recording["record_nodes"]:
                    if str(node["node_id"]) == self.path.rsplit("/", 1)[1]:
                        node.update(payload or {})
                        return self._answer(200, gui.recording)
            return self._answer(404, {"error": "unknown endpoint"})

    def do_GET(self) -> None:
        self._handle(None)

    def do_PUT(self) -> None:
        self._handle(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))


@pytest.fixture
def gui() -> Iterator[FakeGui]:
    srv = FakeGui()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


async def test_prepare_record_stop_follow_the_api(gui: FakeGui) -> None:
    async with OpenEphysControl(gui.url, directory="/mnt/rec") as oe:
        info = await oe.prepare("20261201_rig1_sysid")
        assert info["base_text"] == "20261201_rig1_sysid" and info["prepend_text"] == info["append_text"] == ""
        assert gui.recording["record_nodes"][0]["parent_directory"] == "/mnt/rec"
        await oe.record()
        assert await oe.status() == "RECORD"
        with pytest.raises(AcquisitionError, match="already recording"):
            await oe.prepare("another")  # a second session must not rename a running recording
        await oe.stop()
        await oe.stop()  # idempotent: one PUT only
    assert gui.modes() == ["RECORD", "ACQUIRE"]


async def test_an_unreachable_gui_is_a_clear_error(gui: FakeGui) -> None:
    url = gui.url
    gui.shutdown()
    gui.server_close()
    async with OpenEphysControl(url, timeout=1.0) as oe:
        with pytest.raises(AcquisitionError, match="HTTP server on"):
            await oe.status()
    with pytest.raises(AcquisitionError, match="HTTP address"):
        OpenEphysControl("ftp://x")
    assert OpenEphysControl("10.0.0.5").url == "http://10.0.0.5:37497"


def test_control_needs_kind_openephys() -> None:
    with pytest.raises(ValueError, match="needs kind openephys"):
        AcquisitionConfig(kind="lsl", control="http://127.0.0.1:37497")


class TtlRig(LoopbackRig):
    """The in-process rig plus a TTL line: a rising edge ``latency_s`` after each onset, until
    ``pulses`` edges were sent (the sensor is then 'taken off')."""

    def __init__(self, *args: Any, ttl_latency: float = 0.012, pulses: int | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ttl_latency, self.pulses_left = ttl_latency, pulses
        self._edges: list[float] = []

    def _schedule(self, ev: TrialEvent) -> None:
        super()._schedule(ev)
        if self.pulses_left is None or self.pulses_left > 0:
            self._edges.append(ev.onset + self.ttl_latency)
            self._edges.sort()
            if self.pulses_left is not None:
                self.pulses_left -= 1

    async def _items(self) -> AsyncIterator[Item]:
        async for item in super()._items():
            if isinstance(item, Heartbeat):
                while self._edges and self._edges[0] <= item.t:
                    yield SyncEvent("ttl1", self._edges.pop(0), 1)
            yield item


def ttl_session_config(out: Path, control: str | None, sid: str) -> RunConfig:
    return RunConfig(out_dir=out, session_id=sid, model=ModelConfig(kind="none"), bus=BusConfig(broker="none"),
                     images=ImagesConfig(synthetic=20),
                     acquisition=AcquisitionConfig(kind="openephys", control=control,
                                                   sync=SyncConfig(channel="ttl1", lost_after=3)))


def ttl_rig(pulses: int | None = None) -> Any:
    model = make_rate_model(n_units=4, seed=0)

    def factory(events: str, pixels: dict[str, np.ndarray]) -> TtlRig:
        return TtlRig(events, model, pixels.__getitem__, delay=0.3, pulses=pulses)

    return factory


async def test_a_real_session_records_from_before_its_first_block_to_after_its_last(gui: FakeGui,
                                                                                      tmp_path: Path) -> None:
    proto = load_protocol(REPO / "protocols" / "examples" / "script.yaml", overrides=SHRINK)
    cfg = ttl_session_config(tmp_path, gui.url, "oe-check")
    async with assemble(cfg, proto, source_factory=ttl_rig()) as s:
        assert gui.mode == "RECORD"
        stop = await s.run()
    assert stop.exit_status == "success", stop.reason
    assert gui.mode == "ACQUIRE"
    with_time = [(m, path, p, t) for m, path, p, t in gui.calls if m == "PUT"]
    named = next(t for m, path, p, t in with_time if path == "/api/recording" and p and "base_text" in p)
    rec = next(t for m, path, p, t in with_time if p == {"mode": "RECORD"})
    back = next(t for m, path, p, t in with_time if p == {"mode": "ACQUIRE"})
    assert gui.recording["base_text"] == "oe-check" and gui.modes() == ["RECORD", "ACQUIRE"]
    with clock_docs(s.path) as docs:
        trials = [d for d in docs if isinstance(d, TrialDoc)]
        start = docs[0]
        assert isinstance(start, StartDoc) and start.config["openephys_recording"]["base_text"] == "oe-check"
        assert isinstance(docs[-1], StopDoc)
    assert len(trials) == 8
    assert named < rec < min(t.onset for t in trials) and back > max(t.offset for t in trials)


class clock_docs:
    def __init__(self, path: Path) -> None:
        from controller.store import SessionReader

        self.reader = SessionReader(path)

    def __enter__(self) -> list[Any]:
        return list(self.reader.documents())

    def __exit__(self, *exc: object) -> None:
        self.reader.close()


async def test_a_failed_session_still_stops_the_recording(gui: FakeGui, tmp_path: Path) -> None:
    proto = load_protocol(REPO / "protocols" / "examples" / "script.yaml", overrides=SHRINK)
    cfg = ttl_session_config(tmp_path, gui.url, "oe-fail")
    with pytest.raises(RuntimeError, match="boom"):
        async with assemble(cfg, proto, source_factory=ttl_rig()):
            assert gui.mode == "RECORD"
            raise RuntimeError("boom")
    assert gui.modes() == ["RECORD", "ACQUIRE"] and gui.mode == "ACQUIRE"
