"""The dashboard's bus follower against a lab's mosquitto: statuses in, an operator's command out,
a viewer's login following without buttons. (The embedded broker is covered by test_browser.py.)"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path

from controller.bus import BusUser, MosquittoBroker, mosquitto_binary
from controller.bus.mqtt import MqttBus
from controller.dashboard.server import DashboardOptions, build
from tests.conftest import require
from wire.topics import ModelProgress, PauseCommand, SessionStatus, TrialStatus

USERS = [BusUser("ctl", "pw-ctl", "controller", "rig5"), BusUser("op", "pw-op", "operator", "rig5"),
         BusUser("eve", "pw-eve", "viewer", "rig5")]


async def until(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``check`` (state the followers change from their own tasks) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_follows_a_rig_on_mosquitto_and_sends_the_operators_commands(tmp_path: Path) -> None:
    require(mosquitto_binary() is not None and shutil.which("mosquitto_passwd"),
            "mosquitto / mosquitto_passwd not installed (apt-get install mosquitto)")
    with MosquittoBroker(tmp_path / "mosquitto", USERS) as broker:
        where = f"{broker.host}:{broker.port}"
        state, bus, file = build(DashboardOptions(broker=where, rig="rig5", username="op", password="pw-op"))
        viewer, vbus, _ = build(DashboardOptions(broker=where, rig="rig5", username="eve", password="pw-eve",
                                                 read_only=True))
        assert bus is not None and vbus is not None and file is None
        assert state.session["controls"] and not viewer.session["controls"]
        async with MqttBus("rig5", broker.host, broker.port, username="ctl", password="pw-ctl") as ctl:
            await ctl.publish(SessionStatus(rig="rig5", state="running", session_id="s5", protocol="sysid"))
            tasks = [asyncio.create_task(bus.run()), asyncio.create_task(vbus.run())]
            try:
                await until(lambda: bus.connected and vbus.connected)
                await until(lambda: state.session["state"] == "running" and viewer.session["state"] == "running")
                await ctl.publish(TrialStatus(block_id="b0", index=0, image_id="a" * 32))
                await ctl.publish(ModelProgress(task="retrain", fraction=1.0, epoch=3, val_r=0.4, model_version="v7"))
                await until(lambda: state.section("trials")["count"] == 1 and state.model["versions"])
                assert state.session["bus"] == "connected" and state.session["session_id"] == "s5"
                assert [v["version"] for v in viewer.model["versions"]] == ["v7"]
                await bus.send("pause")
                cmd = await asyncio.wait_for(anext(aiter(ctl.commands())), 10)
                assert isinstance(cmd, PauseCommand) and cmd.issued_by == "op"
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        assert state.session["bus"] == "lost"
