"""The dashboard app without a browser: a finished session file, a viewer, an operator, image ids."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from controller.dashboard.app import create_app
from controller.dashboard.follow import BusFollower, BusLogin, FileFollower, session_file
from controller.dashboard.png import encode_png, valid_image_id
from controller.dashboard.server import DashboardOptions, build, check_http_bind
from controller.dashboard.state import DashboardState
from controller.store import SessionWriter
from wire.base import image_id
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)
from wire.security import InsecureBind
from wire.topics import BlockStatus, ModelProgress, SessionStatus, TrialStatus

RNG = np.random.default_rng(7)
PIXELS = [RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
IDS = [image_id(p) for p in PIXELS]
COUNTS = [[3, 0, 7], [1, 0, 2], [9, 0, 4], [2, 0, 5]]


def write_session(path: Path) -> None:
    """A finished session: 4 trials with counts in one block, an active pick, a model version, an
    analysis, a fallback event."""
    trials = [[f"b0/{i}", IDS[i % 3], "normal"] for i in range(4)]
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s1", code_version="test", rig="rig2", protocol={"protocol": "sysid"}))
        w.write_many(ImageDoc(image_id=i, pixels=p) for i, p in zip(IDS, PIXELS, strict=True))
        w.write(PickDoc(image_id=IDS[0], block_id="b0", generator="active", model_version="v1", score=0.42))
        w.write(BlockDoc(block_id="b0", index=0, source="active", n_trials=4, params={"trials": trials}))
        for i, (tid, img, _) in enumerate(trials):
            w.write(TrialDoc(trial_id=tid, block_id="b0", index=i, image_id=img, onset=i, offset=i + 0.1,
                             on_frames=6, dropped_frames=0, time=100.0 + i))
            w.write(ResponseDoc(trial_id=tid, units=["u0", "u1", "u2"], counts=np.array(COUNTS[i], np.uint16),
                                window=(0.05, 0.15), onset_acq=float(i)))
        w.write(ModelVersionDoc(version="v2", n_images=3, metrics={"val_r": 0.31}, details={"scope": "block"}))
        w.write(EventDoc(what="fallback", message="active: showing pool images instead"))
        w.write(StepDoc(index=0, step={"kind": "analyse"}, result={
            "kind": "analysis_result", "name": "gaudy_vs_normal", "analysis": "percent_change", "summary": "ok",
            "comparisons": [{"condition": "gaudy", "baseline": "normal", "neurons": [0, 1], "percent_change": [12.0, None],
                             "p_values": [0.01, 0.5], "n_trials": 2, "n_baseline_trials": 2, "n_significant": 1,
                             "median_percent_change": 12.0}]}))
        w.write(StopDoc(exit_status="success", n_trials=4))


def decode_png(data: bytes) -> np.ndarray:
    """An RGB PNG of filter-0 rows (what encode_png writes) back to pixels, checked chunk by chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + n
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, width * 3 + 1)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


@pytest.fixture
def finished(tmp_path: Path) -> tuple[DashboardState, FileFollower]:
    path = tmp_path / "s1.h5"
    write_session(path)
    state, bus, file = build(DashboardOptions(session=path))
    assert bus is None and file is not None
    return state, file


def client(app: Any) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


async def test_a_finished_file_shows_everything_and_a_viewer_gets_no_buttons(
        finished: tuple[DashboardState, FileFollower]) -> None:
    state, file = finished
    await file.run()  # returns once the whole (closed) file is read
    with client(create_app(state, file=file)) as c:
        page = c.get("/")
        data = c.get("/api/state").json()
        refused = c.post("/api/command/pause", headers={"X-Cortexloop-Token": "anything"})
        png = c.get(f"/api/image/{IDS[1]}.png")
    assert page.status_code == 200 and "<canvas id=\"heatmap\"" in page.text
    assert "btn-pause" not in page.text and "data-command" not in page.text and "cortexloop-token" not in page.text
    assert refused.status_code == 403
    s = data["session"]
    assert (s["state"], s["exit"], s["live"], s["controls"], s["rig"]) == ("done", "success", False, False, "rig2")
    assert data["counts"]["units"] == ["u0", "u1", "u2"] and data["counts"]["rows"] == COUNTS
    assert data["counts"]["max"] == 9
    assert data["trials"]["count"] == 4 and data["block"]["current"]["done"] == 4
    assert data["block"]["current"]["rate"] == pytest.approx(1.0)  # trials 1 s apart
    assert [v["version"] for v in data["model"]["versions"]] == ["v2"]
    assert data["model"]["versions"][0]["val_r"] == pytest.approx(0.31)
    (analysis,) = data["analyses"]
    assert analysis["name"] == "gaudy_vs_normal" and analysis["comparisons"][0]["n_significant"] == 1
    assert [(e["level"], e["event"]) for e in data["events"]] == [("warning", "fallback")]
    images = data["images"]["current"]["images"]
    assert [i["id"] for i in images] == IDS and all(i["available"] for i in images)
    assert images[0]["why"] == "active, score 0.42, model v1" and images[1]["why"] == "active image"
    assert data["trials"]["silent_units"] == []  # fewer than 10 trials: no verdict
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert np.array_equal(decode_png(png.content), PIXELS[1])
    file.close()


@pytest.mark.parametrize("bad", ["..", "a.b", "x" * 65, "%2e%2e%2fetc", "a%00b", "a b", "é"])
async def test_image_ids_are_checked_against_a_strict_pattern(
        finished: tuple[DashboardState, FileFollower], bad: str) -> None:
    state, file = finished
    await file.run()
    with client(create_app(state, file=file)) as c:
        got = c.get(f"/api/image/{bad}.png")
        unknown = c.get(f"/api/image/{'0' * 32}.png")
        other_host = c.get("/api/state", headers={"Host": "attacker.example"})
    assert got.status_code in (400, 404) and got.headers["content-type"] != "image/png"
    assert unknown.status_code == 404
    assert other_host.status_code == 400  # DNS rebinding: only loopback host names are served
    assert not valid_image_id(bad) and valid_image_id(IDS[0]) and valid_image_id("v4_img-12")
    file.close()


class RecordingBus(BusFollower):
    """A bus follower whose commands are recorded instead of published (the browser test sends real ones)."""

    def __init__(self, state: DashboardState, password: str | None = "op-secret") -> None:
        super().__init__(state, lambda: None)
        self.password = password
        self.sent: list[tuple[str, str | None]] = []

    async def send(self, kind: str, reason: str = "", *, operator: str | None = None, **fields: object) -> str:
        self.sent.append((kind, operator))
        return f"id-{len(self.sent)}"


def test_commands_need_a_login_with_the_operators_password_not_the_page() -> None:
    """Loading the page gives nothing to command with (it used to carry the command token, so any local
    account that could reach the port could pause or abort); a login with the operator's password sets
    an HttpOnly, SameSite=Strict cookie, and each command names who logged in."""
    state = DashboardState(controls=True)
    bus = RecordingBus(state)
    with client(create_app(state, bus=bus)) as c:
        page = c.get("/").text
        before = c.post("/api/command/pause")
        wrong = c.post("/api/login", json={"name": "mallory", "password": "guess"})
        bad = [c.post("/api/login", content=body).status_code
               for body in (b"", b"{", b"[]", b'{"name": 1, "password": "x"}', b'{"name": "", "password": "x"}',
                            '{"name": "\u00e9\u0000", "password": "\u00ff"}'.encode())]
        weird_cookie = c.post("/api/command/pause", headers={"Cookie": 'cortexloop_operator=%00%ff"; x=' + "y" * 5000})
        ok = c.post("/api/login", json={"name": "Ada  Lovelace", "password": "op-secret"})
        cookie = ok.headers["set-cookie"].lower()
        sent = c.post("/api/command/pause")
        unknown = c.post("/api/command/explode")
        get = c.get("/api/command/pause")
        me = c.get("/api/whoami").json()
        c.post("/api/logout")
        after = c.post("/api/command/resume")
    assert 'id="btn-pause"' in page and 'id="login-password"' in page
    assert "token" not in page.lower() and "op-secret" not in page  # no secret in what any client can load
    assert (before.status_code, wrong.status_code, weird_cookie.status_code) == (401, 403, 401)
    assert all(400 <= code < 500 for code in bad), bad
    assert ok.status_code == 200 and ok.json() == {"operator": "Ada Lovelace"}
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert sent.status_code == 200 and sent.json() == {"sent": "pause", "command_id": "id-1"}
    assert (unknown.status_code, get.status_code, after.status_code) == (404, 405, 401)
    assert me == {"operator": "Ada Lovelace", "controls": True}
    assert bus.sent == [("pause", "Ada Lovelace")]  # who sent it goes with the command
    # read-only: operator credentials, no buttons, no login
    viewer = DashboardState(controls=False)
    with client(create_app(viewer, bus=RecordingBus(viewer))) as c:
        assert "data-command" not in c.get("/").text
        assert c.post("/api/login", json={"name": "x", "password": "op-secret"}).status_code == 403
        assert c.post("/api/command/pause").status_code == 403
    # before the dashboard has read the credentials, nobody can log in
    early = DashboardState(controls=True)
    with client(create_app(early, bus=RecordingBus(early, password=None))) as c:
        assert c.post("/api/login", json={"name": "x", "password": ""}).status_code in (400, 503)
        assert c.post("/api/login", json={"name": "x", "password": "anything"}).status_code == 503


def test_bus_messages_update_only_their_sections_and_quiet_trials_warn() -> None:
    now = [1000.0]
    state = DashboardState(controls=False, quiet_after=5.0, clock=lambda: now[0])
    watcher = state.watch()
    assert watcher.take() == set(state.snapshot())  # a new page gets everything first
    state.on_bus(SessionStatus(rig="r", state="running", session_id="s", protocol="sysid", step_index=2,
                               step_kind="present_block", time=1000.0))
    assert watcher.take() == {"session", "trials"}
    state.on_bus(BlockStatus(block_id="b1", state="running", n_trials=10, time=1000.0))
    for i in range(4):
        state.on_bus(TrialStatus(block_id="b1", index=i, image_id=IDS[0], time=1000.0 + 0.5 * i))
    assert watcher.take() == {"block", "trials", "images"}
    now[0] = 1001.5
    block = state.section("block")["current"]
    assert block["done"] == 4 and block["rate"] == pytest.approx(2.0) and block["eta_s"] == pytest.approx(3.0)
    assert not state.section("trials")["quiet"]
    now[0] = 1008.0  # 6.5 s without a trial while the block is presenting
    trials = state.section("trials")
    assert trials["quiet"] and "no trial for 6 s while block b1" in trials["warning"]
    assert trials["last_bus_time"] == pytest.approx(1001.5)
    state.on_bus(SessionStatus(rig="r", state="paused", session_id="s", time=1008.0))
    assert not state.section("trials")["quiet"]  # paused: silence is expected
    for epoch in (1, 2):
        state.on_bus(ModelProgress(task="retrain", fraction=epoch / 2, epoch=epoch, max_epochs=2, val_r=0.1 * epoch))
    state.on_bus(ModelProgress(task="retrain", fraction=1.0, epoch=2, max_epochs=2, val_r=0.25, model_version="v9"))
    model = state.section("model")
    assert [e["epoch"] for e in model["epochs"]] == [1, 2]
    assert [(v["version"], v["val_r"]) for v in model["versions"]] == [("v9", 0.25)]
    assert "model" in watcher.take()
    json.dumps(state.snapshot())


def test_a_non_loopback_bind_needs_insecure() -> None:
    check_http_bind("127.0.0.1", insecure=False)
    check_http_bind("::1", insecure=False)
    with pytest.raises(InsecureBind, match="--insecure"):
        check_http_bind("0.0.0.0", insecure=False)
    with pytest.raises(InsecureBind):
        check_http_bind("192.168.1.20", insecure=False)
    check_http_bind("0.0.0.0", insecure=True)


def test_session_ids_from_the_bus_only_name_files_inside_the_folder(tmp_path: Path) -> None:
    assert session_file(tmp_path, "20261202_rig1_sysid") == tmp_path.resolve() / "20261202_rig1_sysid.h5"
    for bad in ("../up", "a/b", "/etc/passwd", "", None, ".hidden", "a..b"):
        assert session_file(tmp_path, bad) is None, bad
    creds = tmp_path / "bus-operator.json"
    creds.write_text(json.dumps({"broker": "127.0.0.1:1999", "rig": "rig4", "username": "operator", "password": "p"}))
    login = BusLogin.from_file(creds, rig=None, username="alice")
    assert (login.host, login.port, login.rig, login.username, login.password) == ("127.0.0.1", 1999, "rig4",
                                                                                    "alice", "p")


def test_png_encoder_round_trip_and_refusals() -> None:
    img = RNG.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(img)), img)
    for bad in (np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3, 3), np.uint8)):
        with pytest.raises(ValueError):
            encode_png(bad)


def test_the_cli_refuses_a_network_address_without_insecure_and_needs_a_source(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from controller.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["dashboard", str(tmp_path / "s.h5"), "--host", "0.0.0.0", "--port", "0"])
    assert isinstance(refused.exception, InsecureBind) and "--insecure" in str(refused.exception)
    nothing = runner.invoke(app, ["dashboard"])
    assert nothing.exit_code == 2 and "session file" in nothing.output
    assert "--dashboard" in runner.invoke(app, ["run", "--help"]).output


# --- the fuzz target (bench/fuzz.py, "dashboard.request") -------------------------------------------------
_FUZZ_CLIENT: list[TestClient] = []


def dashboard_request_seeds() -> list[bytes]:
    return [b'{"name": "ada", "password": "op-secret"}', b'{"duration_ms": 100}', b"{}", b""]


def fuzz_dashboard_request(data: bytes) -> None:
    """Fuzz target: ``data`` as the body (and, its printable half, the cookie) of login and command
    requests to an operator's dashboard; every answer must be 2xx or 4xx, never a server error."""
    import controller.dashboard.app as app_module

    if not _FUZZ_CLIENT:
        app_module.LOGIN_DELAY_S = 0.0  # the brute-force delay would make every wrong password a 1 s case
        state = DashboardState(controls=True)
        c = TestClient(create_app(state, bus=RecordingBus(state)), base_url="http://127.0.0.1")
        c.__enter__()
        _FUZZ_CLIENT.append(c)
    c = _FUZZ_CLIENT[0]
    cookie = bytes(b for b in data[: len(data) // 2] if 0x21 <= b <= 0x7E and b not in b';,"\\').decode()
    for path in ("/api/login", "/api/command/reward", "/api/command/pause", "/api/logout"):
        r = c.post(path, content=data, headers={"Cookie": f"cortexloop_operator={cookie}",
                                                "Content-Type": "application/json"})
        assert r.status_code < 500, (path, r.status_code, r.text[:200])


def test_the_dashboard_fuzz_target_on_its_seeds() -> None:
    for seed in dashboard_request_seeds():
        fuzz_dashboard_request(seed)
