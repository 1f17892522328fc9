"""The operator's ``reward`` command over the bus: from an operator it reaches the stimserver (a real one,
display-free, with a reward line that records its pulses) through the bridge, the engine and its stim
link, and is recorded (a manual reward document and an ``operator`` event naming who sent it); from a
viewer the broker drops it. The behaviour status goes out as ``session/behavior`` (retained) and the
"not working" warning as a warning event. Against the in-process fake broker, amqtt and mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from controller.acquisition.binning import Binner, BinningConfig
from controller.bus import (
    EmbeddedBroker,
    FakeBroker,
    FakeBus,
    FakeOperator,
    MosquittoBroker,
    MqttBus,
    MqttOperator,
)
from controller.busbridge import BusBridge
from controller.engine import Engine, EngineConfig
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.store import SessionReader, SessionWriter
from protocols.steps import ImageSet, PresentBlock, Step, WaitForCounts
from stimserver.fake_presenter import FakePresenter
from stimserver.reward import NullReward
from stimserver.server import StimServer
from tests.bus.bus_scenario import CRED, RIG, USERS
from virtualrig.loopback import LoopbackRig
from virtualrig.rates import GaborEnergyRates
from wire.documents import EventDoc, RewardDoc
from wire.errors import DecodeError
from wire.topics import (
    BehaviorStatus,
    BusMessage,
    RewardCommand,
    SessionEvent,
    Topics,
    TrialStatus,
    decode_command,
    encode_payload,
)

BROKERS = ["fake", "amqtt_broker", "mosquitto"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> FakeBroker | EmbeddedBroker | MosquittoBroker:
    if request.param == "fake":
        return FakeBroker(USERS)
    b: EmbeddedBroker | MosquittoBroker = request.getfixturevalue(request.param)
    return b


@contextlib.asynccontextmanager
async def clients(broker: Any) -> AsyncIterator[tuple[Any, Any, Any]]:
    """(the controller's bus, an operator, a viewer) on ``broker``."""
    if isinstance(broker, FakeBroker):
        async with FakeBus(broker, RIG, **CRED["controller"]) as bus, \
                FakeOperator(broker, RIG, **CRED["operator"]) as op, FakeOperator(broker, RIG, **CRED["viewer"]) as v:
            yield bus, op, v
        return
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op, \
            MqttOperator(RIG, port=broker.port, **CRED["viewer"]) as v:
        yield bus, op, v


def plan() -> Iterator[Step]:
    yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=10)], repeats=6,
                       on_frames=3, off_frames=3)
    yield WaitForCounts(block_id="b0", timeout_s=30)


async def test_an_operators_reward_reaches_the_stimserver_and_is_recorded_a_viewers_does_not(
        tmp_path: Path, broker: Any) -> None:
    path = tmp_path / "r.h5"
    line = NullReward()
    lib = ImageLibrary(np.random.default_rng(3).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    pixels: dict[str, np.ndarray] = {}
    async with StimServer(FakePresenter(refresh_hz=120.0), reward=line) as srv, clients(broker) as (bus, op, viewer):
        store = SessionWriter.create(path)
        rig = LoopbackRig(srv.events_endpoint, GaborEnergyRates(4, seed=1), lambda i: pixels[i], seed=2, delay=0.2)
        try:
            async with StimLink(srv.rpc_endpoint, srv.events_endpoint) as stim:
                engine = Engine(EngineConfig(session_id="r", rig=RIG, seed=5), store=store, stim=stim, source=rig,
                                binner=Binner(BinningConfig(window=(0.05, 0.15))), images=lib, pixels=pixels,
                                image_listeners=[rig.prepare])
                await rig.open()
                await srv.wait_for_subscribers(2)
                heard: list[BusMessage] = []

                async def operator() -> None:
                    async for msg in op.statuses():
                        heard.append(msg)
                        if isinstance(msg, TrialStatus) and msg.index == 2:  # mid-block
                            # the viewer's first: dropped by the broker's ACL (QoS 1: acknowledged all the same)
                            await viewer.send(RewardCommand(duration_ms=70, issued_by="bob"))
                            await op.send(RewardCommand(duration_ms=30, issued_by="alice", reason="good"))

                async with BusBridge(engine, bus, protocol="t"):
                    task = asyncio.create_task(operator())
                    try:
                        stop = await asyncio.wait_for(engine.run(plan(), protocol={"name": "t"}), 60)
                    finally:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
        finally:
            store.close()
    assert stop.exit_status == "success", stop.reason
    # the stimserver pulsed once, for the operator's 30 ms
    assert [d for _, d in line.pulses] == [pytest.approx(0.03)]
    with SessionReader(path) as r:
        docs = list(r.documents())
    rewards = [d for d in docs if isinstance(d, RewardDoc)]
    assert len(rewards) == 1 and rewards[0].manual and rewards[0].duration_s == pytest.approx(0.03)
    assert rewards[0].onset == pytest.approx(line.pulses[0][0]) and rewards[0].block_id == "b0"
    assert rewards[0].line == "none"
    ops = [d for d in docs if isinstance(d, EventDoc) and d.what == "operator"]
    assert len(ops) == 1 and ops[0].details["issued_by"] == "alice" and "alice" in ops[0].message
    assert ops[0].details["ok"] is True and ops[0].details["duration_ms"] == 30.0
    assert "bob" not in " ".join(d.message for d in docs if isinstance(d, EventDoc))
    # the operator saw it accepted and recorded on the bus
    events = [m for m in heard if isinstance(m, SessionEvent)]
    assert any(m.event == "operator" and "cmd.reward accepted" in m.message for m in events)
    assert any(m.event == "operator" and "manual reward of 30 ms by alice" in m.message for m in events)


def test_the_reward_command_decodes_with_its_duration_and_refuses_bad_ones() -> None:
    t = Topics(RIG)
    assert t.command("reward") == f"cortexloop/{RIG}/cmd/reward"
    cmd = RewardCommand(duration_ms=120, issued_by="alice")
    assert t.for_message(cmd) == t.command("reward")
    assert decode_command(t.command("reward"), encode_payload(cmd), RIG) == cmd
    default = decode_command(t.command("reward"), b"", RIG)
    assert isinstance(default, RewardCommand) and default.duration_ms is None
    for bad in (b'{"duration_ms": 0}', b'{"duration_ms": 6000}', b'{"duration_ms": "lots"}',
                b'{"duration_ms": NaN}', b'{"volume": 1}'):
        with pytest.raises(DecodeError):
            decode_command(t.command("reward"), bad, RIG)
    with pytest.raises(DecodeError):  # a reward on the pause topic
        decode_command(t.command("pause"), encode_payload(cmd), RIG)


class StubEngine:
    """What BusBridge needs of an engine, for its status side."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(rig=RIG)
        self.blocks: dict[str, Any] = {}

    def on_status(self, cb: Any) -> None:
        self.cb = cb


BEHAVIOR = {"session_id": "s9", "block_id": "b3",
            "session": {"started": 5, "completed": 3, "share_completed": 0.6, "breaks": 2, "no_fixation": 1,
                        "rewards": 4, "manual_rewards": 1, "invalid": 6},
            "block": {"started": 2, "completed": 1, "share_completed": 0.5, "breaks": 1, "no_fixation": 0,
                      "rewards": 1, "manual_rewards": 0, "invalid": 2},
            "gaze": [0.4, -1.1], "gaze_time": 12.5, "gaze_wall": 1.7e9, "last": "break", "window_deg": 2.0,
            "centre": [0.0, 0.0], "idle": True, "idle_s": 31.0, "warning": "the animal is not working"}


async def test_behaviour_status_is_published_retained_and_idle_is_a_warning(broker: Any) -> None:
    engine = StubEngine()
    async with clients(broker) as (bus, op, _viewer), BusBridge(engine, bus, protocol="t"):  # type: ignore[arg-type]
        engine.cb("behavior", BEHAVIOR)
        engine.cb("event", {"session_id": "s9", "what": "animal_idle", "message": "the animal is not working"})
        got = await op.wait_for(lambda m: isinstance(m, BehaviorStatus))
        assert isinstance(got, BehaviorStatus) and got.session_id == "s9" and got.block_id == "b3"
        assert got.block.invalid == 2 and got.session.share_completed == pytest.approx(0.6)
        assert got.gaze == (0.4, -1.1) and got.idle and got.warning == "the animal is not working"
        idle = await op.wait_for(lambda m: isinstance(m, SessionEvent) and m.event == "animal_idle")
        assert isinstance(idle, SessionEvent) and idle.level == "warning"
        # a payload that is not a behaviour status is not published (and does not break the bridge)
        engine.cb("behavior", {"session_id": "s9", "gaze": "left"})
        engine.cb("behavior", {**BEHAVIOR, "block_id": "b4"})
        nxt = await op.wait_for(lambda m: isinstance(m, BehaviorStatus))
        assert isinstance(nxt, BehaviorStatus) and nxt.block_id == "b4"
    # retained: a viewer who comes later sees the latest counters at once
    async with clients(broker) as (_bus, _op, late):
        again = await late.wait_for(lambda m: isinstance(m, BehaviorStatus))
        assert isinstance(again, BehaviorStatus) and again.block_id == "b4"
