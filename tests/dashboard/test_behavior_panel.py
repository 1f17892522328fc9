"""The dashboard's behaviour panel in a real headless chromium: after a ``behavior`` status arrives it shows
the block's share of completed sequences, rewards, breaks and invalid trials, the last gaze sample as a
dot in the fixation window, and the "not working" warning; its reward button sends the reward command
like the other buttons (after a login with the operator's password)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from controller.dashboard.app import create_app
from controller.dashboard.browser import CHROMEDRIVER, CHROMIUM, chromium
from controller.dashboard.follow import BusFollower
from controller.dashboard.state import DashboardState
from tests.conftest import require, require_module
from wire.topics import BehaviorCounters, BehaviorStatus, SessionStatus


class RecordingBus(BusFollower):
    """A bus follower whose commands are recorded instead of published."""

    def __init__(self, state: DashboardState) -> None:
        super().__init__(state, lambda: None)
        self.password = "op-secret"
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, kind: str, reason: str = "", *, operator: str | None = None, **fields: Any) -> str:
        assert operator == "tester", "a command names who logged in"
        self.sent.append((kind, fields))
        return f"id-{len(self.sent)}"


def status(gaze: tuple[float, float] | None, *, idle: bool = False, block_id: str = "b2") -> BehaviorStatus:
    block = BehaviorCounters(started=8, completed=6, share_completed=0.75, breaks=2, no_fixation=3, rewards=7,
                             manual_rewards=1, invalid=5)
    session = BehaviorCounters(started=20, completed=12, share_completed=0.6, breaks=8, no_fixation=4, rewards=13,
                               manual_rewards=1, invalid=19)
    return BehaviorStatus(session_id="s1", block_id=block_id, session=session, block=block, gaze=gaze,
                          gaze_time=55.0, gaze_wall=1.7e9, last="break" if idle else "completed", window_deg=2.0,
                          centre=(0.0, 0.0), idle=idle, idle_s=31.0 if idle else None,
                          warning="the animal is not working: no sequence completed for 31 s" if idle else "")


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """The app on a free loopback port, on this event loop (as ``controller.dashboard.server`` serves it)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)
        sock.close()


async def until(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``check`` (blocking browser calls) in a thread, until it holds; the server goes on meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")


@pytest.mark.timeout(120)
async def test_the_panel_shows_counters_gaze_and_warning_and_its_button_rewards(tmp_path: Path) -> None:
    require(shutil.which("chromium") or Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    require(Path(CHROMEDRIVER).exists(), "chromedriver is not installed (apt-get install chromium-driver)")
    require_module("selenium")
    from selenium.webdriver.common.by import By

    state = DashboardState(controls=True)
    bus = RecordingBus(state)
    async with serving(create_app(state, bus=bus)) as url:
        driver = await asyncio.to_thread(chromium, tmp_path / "profile")
        try:
            find = lambda el_id: driver.find_element(By.ID, el_id)  # noqa: E731
            text = lambda el_id: find(el_id).text  # noqa: E731
            attr = lambda el_id, name: find(el_id).get_attribute(name)  # noqa: E731
            await asyncio.to_thread(driver.get, url)
            await until("the page's first state", lambda: driver.execute_script("return document.body.dataset.updated"))
            # no awake session yet: no panel
            assert not await asyncio.to_thread(lambda: find("behavior-panel").is_displayed())

            state.on_bus(SessionStatus(rig="r", state="running", session_id="s1", protocol="sysid"))
            state.on_bus(status((1.0, 0.5)))
            await until("the behaviour panel", lambda: find("behavior-panel").is_displayed())
            await until("the block's counters", lambda: text("behavior-share") == "75% (6 of 8)")
            got = await asyncio.to_thread(lambda: {k: text(f"behavior-{k}") for k in
                                                   ("block", "rewards", "breaks", "nofix", "invalid", "session")})
            assert got["block"] == "b2" and got["rewards"] == "7 (1 manual)" and got["breaks"] == "2"
            assert got["nofix"] == "3" and got["invalid"] == "5"
            assert "60% (12 of 20) sequences completed" in got["session"] and "19 invalid trials" in got["session"]
            assert "gaze (1.00, 0.50) deg" in await asyncio.to_thread(text, "behavior-gaze")
            # the dot at the gaze (SVG y points down: -0.5), inside the 2 deg window
            dot = await asyncio.to_thread(lambda: {k: attr("gaze-dot", k) for k in ("cx", "cy", "visibility", "class")})
            assert (float(dot["cx"]), float(dot["cy"]), dot["visibility"], dot["class"]) == (1.0, -0.5, "visible",
                                                                                            "inside")
            assert float(await asyncio.to_thread(attr, "gaze-window", "r")) == 2.0
            assert not await asyncio.to_thread(lambda: find("behavior-warning").is_displayed())
            assert await asyncio.to_thread(lambda: find("gaze-dot").is_displayed())

            # the animal looks away and stops working: a red dot at the edge of the view, and the warning
            state.on_bus(status((7.0, -0.4), idle=True))
            await until("the not-working warning", lambda: find("behavior-warning").is_displayed())
            assert "not working" in await asyncio.to_thread(text, "behavior-warning")
            dot = await asyncio.to_thread(lambda: {k: attr("gaze-dot", k) for k in ("cx", "cy", "class")})
            assert (float(dot["cx"]), float(dot["cy"]), dot["class"]) == (3.0, 0.4, "outside")  # clamped to the view
            # no eye: no dot
            state.on_bus(status(None))
            await until("the dot hidden", lambda: attr("gaze-dot", "visibility") == "hidden")
            assert not await asyncio.to_thread(lambda: find("behavior-warning").is_displayed())

            # log in as the operator, then the reward button, with a length, sends the reward command
            await asyncio.to_thread(lambda: find("login-name").send_keys("tester"))
            await asyncio.to_thread(lambda: find("login-password").send_keys("op-secret"))
            await asyncio.to_thread(lambda: find("btn-login").click())
            await until("the controls after the login", lambda: find("btn-reward").is_displayed())
            await asyncio.to_thread(lambda: find("reward-ms").send_keys("150"))
            await asyncio.to_thread(lambda: find("btn-reward").click())
            await until("the reward sent", lambda: text("command-note") == "reward sent")
            await asyncio.to_thread(lambda: find("reward-ms").clear())
            await asyncio.to_thread(lambda: find("btn-reward").click())
            await until("the second reward sent", lambda: len(bus.sent) == 2)
        finally:
            await asyncio.to_thread(driver.quit)
    assert bus.sent == [("reward", {"duration_ms": 150.0}), ("reward", {})]


def test_reward_commands_need_an_operator_login_and_a_valid_length() -> None:
    state = DashboardState(controls=True)
    bus = RecordingBus(state)
    with TestClient(create_app(state, bus=bus), base_url="http://127.0.0.1") as c:
        page = c.get("/").text
        h: dict[str, str] = {}
        no_token = c.post("/api/command/reward")
        assert c.post("/api/login", json={"name": "tester", "password": "op-secret"}).status_code == 200
        bad = [c.post("/api/command/reward", headers=h, content=body).status_code
               for body in (b'{"duration_ms": 0}', b'{"duration_ms": 9000}', b'{"duration_ms": "x"}',
                            b'{"duration_ms": true}', b'{"volume": 3}', b"[1]", b"{nope", b'{"duration_ms": NaN}')]
        ok = c.post("/api/command/reward", headers=h, json={"duration_ms": 80})
        plain = c.post("/api/command/reward", headers=h)
    assert 'id="btn-reward"' in page and 'data-command="reward"' in page and 'id="behavior-panel"' in page
    assert no_token.status_code == 401 and bad == [400] * 8
    assert ok.status_code == 200 and ok.json()["sent"] == "reward" and plain.status_code == 200
    assert bus.sent == [("reward", {"duration_ms": 80.0}), ("reward", {})]
    viewer = DashboardState(controls=False)
    with TestClient(create_app(viewer, bus=RecordingBus(viewer)), base_url="http://127.0.0.1") as c:
        assert 'id="btn-reward"' not in c.get("/").text
        assert c.post("/api/command/reward").status_code == 403


def test_behaviour_status_updates_only_its_section() -> None:
    state = DashboardState(controls=False)
    watcher = state.watch()
    watcher.take()
    assert state.section("behavior") == {"active": False}
    state.on_bus(status((0.2, 0.1)))
    assert watcher.take() == {"behavior"}
    b = state.section("behavior")
    assert b["active"] and b["block"]["invalid"] == 5 and b["gaze"] == [0.2, 0.1] and b["window_deg"] == 2.0
    assert "kind" not in b and b["session_id"] == "s1"
