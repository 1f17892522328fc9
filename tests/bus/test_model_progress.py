"""``cortexloop status`` shows the latest model progress (retained on the broker), and does not
hang when none was ever published; against the embedded amqtt broker and a real mosquitto."""

from __future__ import annotations

import asyncio
import time

import pytest
from typer.testing import CliRunner, Result

from controller.bus import EmbeddedBroker, MosquittoBroker, MqttBus, MqttOperator
from controller.cli import app
from tests.bus.bus_scenario import CRED, RIG
from wire.topics import ModelProgress, SessionStatus

runner = CliRunner()


@pytest.fixture(params=["amqtt_broker", "mosquitto"])
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | MosquittoBroker:
    b: EmbeddedBroker | MosquittoBroker = request.getfixturevalue(request.param)
    return b


async def status_cli(broker: EmbeddedBroker | MosquittoBroker, *extra: str) -> Result:
    viewer = CRED["viewer"]
    args = ["status", "--broker", f"{broker.host}:{broker.port}", "--rig", RIG,
            "--username", viewer["username"], "--password", viewer["password"], *extra]
    return await asyncio.to_thread(runner.invoke, app, args)


def progress(epoch: int, version: str | None = None) -> ModelProgress:
    return ModelProgress(task="retrain", scope="session", epoch=epoch, max_epochs=5,
                         fraction=1.0 if version else epoch / 5, val_r=0.1 * epoch, loss=2.0 / epoch,
                         model_version=version, session_id="s1")


async def test_status_shows_the_latest_model_progress(broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus:
        await bus.publish(SessionStatus(rig=RIG, state="running", session_id="s1", step_kind="retrain"))
        for epoch in (1, 2, 3):
            await bus.publish(progress(epoch))
        # a viewer connecting now gets the retained progress: the latest only
        async with MqttOperator(RIG, port=broker.port, **CRED["viewer"]) as late:
            got = await late.wait_for(lambda m: isinstance(m, ModelProgress))
        assert isinstance(got, ModelProgress) and got.epoch == 3 and got.session_id == "s1"

        result = await status_cli(broker)
        assert result.exit_code == 0, result.output
        assert '"state": "running"' in result.output
        line = next(x for x in result.output.splitlines() if x.startswith("model:"))
        assert "retrain (session) epoch 3/5" in line and "60%" in line and "val r 0.300" in line
        assert "in progress" in line and "version" not in line and "session s1" not in line

        await bus.publish(progress(4, version="20250101-000000-ab12"))
        result = await status_cli(broker)
        assert result.exit_code == 0, result.output
        line = next(x for x in result.output.splitlines() if x.startswith("model:"))
        assert "epoch 4/5" in line and "100%" in line and "val r 0.400" in line
        assert "version 20250101-000000-ab12" in line

        # a new session: the last progress is an earlier session's, and says so
        await bus.publish(SessionStatus(rig=RIG, state="running", session_id="s2"))
        result = await status_cli(broker)
        assert result.exit_code == 0, result.output
        assert "from session s1" in result.output


async def test_status_without_model_progress_does_not_wait_for_it(
        broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus:
        await bus.publish(SessionStatus(rig=RIG, state="idle"))
        t0 = time.monotonic()
        result = await status_cli(broker, "--timeout", "20")
        elapsed = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    assert '"state": "idle"' in result.output and "model:" not in result.output
    assert elapsed < 10, f"status took {elapsed:.1f} s with no model progress published"


async def test_status_without_a_session_status_gives_up(broker: EmbeddedBroker | MosquittoBroker) -> None:
    t0 = time.monotonic()
    result = await status_cli(broker, "--timeout", "1")
    assert result.exit_code != 0 and "no status" in str(result.exception)
    assert time.monotonic() - t0 < 10
