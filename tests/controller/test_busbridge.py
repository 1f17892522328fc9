"""The engine on the bus: statuses go out, an operator's pause/resume/abort come in (in-process broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from controller.bus.fake import FakeBroker, FakeBus, FakeOperator
from controller.busbridge import BusBridge
from controller.engine import Engine
from protocols.steps import ImageSet, PresentBlock, WaitForCounts
from tests.controller.test_engine import run_session
from wire.topics import AbortCommand, PauseCommand, ResumeCommand, SessionEvent, SessionStatus


def when(engine: Engine, predicate) -> asyncio.Event:
    """An event set the first time an engine status satisfies ``predicate(topic, payload)``."""
    ev = asyncio.Event()
    engine.on_status(lambda topic, payload: ev.set() if predicate(topic, payload) else None)
    return ev


def is_state(*states: str):
    return lambda topic, payload: topic == "session" and payload["state"] in states


def long_block(repeats: int = 10):
    yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=6)], repeats=repeats,
                       on_frames=3, off_frames=3)
    yield WaitForCounts(block_id="b0", timeout_s=15)


async def test_operator_pauses_and_resumes_a_session_over_the_bus(tmp_path: Path) -> None:
    broker = FakeBroker()
    bus = FakeBus(broker, "rig1")
    states: list[str] = []
    tasks: list[asyncio.Task] = []

    def hook(engine: Engine) -> None:
        bridge = BusBridge(engine, bus, protocol="test")
        first_trial = when(engine, lambda topic, _: topic == "trial")
        paused, final = when(engine, is_state("paused")), when(engine, is_state("done", "failed"))

        async def operate() -> None:
            async with bus, bridge, FakeOperator(broker, "rig1") as op:
                await first_trial.wait()
                await op.send(PauseCommand(reason="check the eye tracker"))
                await paused.wait()
                states.append("paused")
                await op.send(ResumeCommand())
                await final.wait()
        tasks.append(asyncio.create_task(operate()))

    stop = await run_session(tmp_path / "bus.h5", long_block(), engine_hook=hook)
    await asyncio.wait_for(tasks[0], 10)
    assert stop.exit_status == "success", stop.reason
    assert states == ["paused"]
    published = bus.published
    assert [m.state for m in published if isinstance(m, SessionStatus)][:1] == ["running"]
    assert any(isinstance(m, SessionEvent) and m.event == "paused" and "eye tracker" in m.message for m in published)
    assert any(isinstance(m, SessionEvent) and m.event == "resumed" for m in published)


async def test_operator_aborts_over_the_bus(tmp_path: Path) -> None:
    broker = FakeBroker()
    bus = FakeBus(broker, "rig2")
    tasks: list[asyncio.Task] = []

    def hook(engine: Engine) -> None:
        bridge = BusBridge(engine, bus)
        first_trial = when(engine, lambda topic, _: topic == "trial")
        final = when(engine, is_state("done", "failed"))

        async def operate() -> None:
            async with bus, bridge, FakeOperator(broker, "rig2") as op:
                await first_trial.wait()
                await op.send(AbortCommand(reason="animal stopped working"))
                await final.wait()
        tasks.append(asyncio.create_task(operate()))

    stop = await run_session(tmp_path / "abort.h5", long_block(50), engine_hook=hook)
    await asyncio.wait_for(tasks[0], 10)
    assert stop.exit_status == "abort"
    assert "animal stopped working" in stop.reason
