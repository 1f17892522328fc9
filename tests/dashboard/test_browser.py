"""The dashboard in a real headless chromium against a real ``cortexloop run --dashboard`` session.

Embedded defaults (stimserver, virtual rig, modelserver processes, embedded broker), sysid shrunk:
the page shows the trial count rising and a model version appearing; its pause button pauses the
engine (``paused`` on the bus and in the session file) and its resume button resumes it; abort ends it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.dashboard.browser import CHROMEDRIVER, CHROMIUM, chromium, latency, start_session, summary
from controller.dashboard.follow import BusLogin
from controller.store import SessionReader
from tests.conftest import require, require_module
from wire.documents import EventDoc, StopDoc
from wire.topics import SessionStatus


def wait(what: str, check: Callable[[], Any], timeout: float, session: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if session.proc.poll() is not None:
            pytest.fail(f"the session ended while waiting for {what}:\n{session.output()}")
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout} s\n{session.output()}")


def mid_block(name: str, progress: str) -> bool:
    """Whether the page shows a running block with at least 3 trials done and 15 to go."""
    m = re.match(r"(\d+) / (\d+) trials", progress)
    return bool(m and name.endswith("running") and 3 <= int(m.group(1)) <= int(m.group(2)) - 15)


def events_in(path: Path) -> list[str]:
    with SessionReader(path) as r:
        return [d.what for d in r.documents() if isinstance(d, EventDoc)]


def event_messages(path: Path, what: str) -> list[str]:
    with SessionReader(path) as r:
        return [d.message for d in r.documents() if isinstance(d, EventDoc) and d.what == what]


def bus_state(creds: Path) -> str:
    """The rig's retained status on the bus, read by a separate operator client."""
    from controller.bus.mqtt import MqttOperator

    login = BusLogin.from_file(creds)

    async def read() -> str:
        async with MqttOperator(login.rig, login.host, login.port, username=login.username,
                                password=login.password) as op:
            msg = await op.wait_for(lambda m: isinstance(m, SessionStatus), timeout=5)
        assert isinstance(msg, SessionStatus)
        return msg.state

    return asyncio.run(read())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_page_follows_a_live_session_and_its_buttons_pause_and_resume(tmp_path: Path) -> None:
    require(shutil.which("chromium") or Path(CHROMIUM).exists(), "chromium is not installed (apt-get install chromium)")
    require(Path(CHROMEDRIVER).exists(), "chromedriver is not installed (apt-get install chromium-driver)")
    require_module("selenium")
    from selenium.webdriver.common.by import By

    out = tmp_path / "out"
    session = start_session(out, "e2e")
    driver = None
    try:
        url = session.wait_for_url()
        driver = chromium(tmp_path / "profile")
        driver.get(url)
        text = lambda el_id: driver.find_element(By.ID, el_id).text  # noqa: E731

        first = wait("trials on the page", lambda: int(text("trial-count") or 0), 120, session)
        wait("the trial count rising", lambda: int(text("trial-count")) > first, 30, session)
        wait("a model version on the page", lambda: driver.find_elements(By.CSS_SELECTOR, "#model-versions li"),
             150, session)
        assert "val r" in text("model-versions")
        assert driver.find_elements(By.CSS_SELECTOR, "#heatmap") and text("state") == "running"

        # pause while a block is being shown (a pause that lands while the engine prepares the next
        # block is not passed on to the stimserver: see the report of issue 19)
        wait("a block under way", lambda: mid_block(text("block-name"), text("block-progress")), 60, session)
        # the buttons need a login with the operator's password (OUT/bus-operator.json, mode 600)
        assert not driver.find_element(By.ID, "btn-pause").is_displayed()
        driver.find_element(By.ID, "login-name").send_keys("e2e operator")
        driver.find_element(By.ID, "login-password").send_keys(BusLogin.from_file(out / "bus-operator.json").password)
        driver.find_element(By.ID, "btn-login").click()
        wait("the buttons after the login", lambda: driver.find_element(By.ID, "btn-pause").is_displayed(), 10, session)
        driver.find_element(By.ID, "btn-pause").click()
        wait("state paused on the page", lambda: text("state") == "paused", 20, session)
        assert bus_state(out / "bus-operator.json") == "paused"
        wait("a paused event in the session file", lambda: "paused" in events_in(out / "e2e.h5"), 10, session)
        assert any("e2e operator" in m for m in event_messages(out / "e2e.h5", "paused")), "who paused is recorded"
        # paused: trials stop (those shown before the pause may still be reported for a moment)
        time.sleep(2.0)
        paused_at = int(text("trial-count"))
        time.sleep(1.5)
        assert int(text("trial-count")) == paused_at, "no trial while paused"

        driver.find_element(By.ID, "btn-resume").click()
        wait("state running again", lambda: text("state") == "running", 20, session)
        assert bus_state(out / "bus-operator.json") == "running"
        wait("a resumed event in the session file", lambda: "resumed" in events_in(out / "e2e.h5"), 10, session)
        wait("trials after the resume", lambda: int(text("trial-count")) > paused_at, 60, session)

        delays = latency(driver)
        print(summary(delays))  # the figure reported in docs/dashboard.md (not a timed assertion)
        assert delays, "the page measured its updates"

        driver.find_element(By.ID, "btn-abort").click()
        driver.switch_to.alert.accept()
        code = session.proc.wait(120)
        assert code == 0, session.output()
    finally:
        if driver is not None:
            driver.quit()
        session.stop()
    with SessionReader(out / "e2e.h5") as r:
        docs = list(r.documents())
    stop = docs[-1]
    assert isinstance(stop, StopDoc) and stop.exit_status == "abort", stop
    assert [d.what for d in docs if isinstance(d, EventDoc) and d.what in ("paused", "resumed")] == ["paused",
                                                                                                   "resumed"]
