"""The in-process bus (used by engine unit tests) keeps the same contract as MQTT."""

from __future__ import annotations

import pytest

from controller.bus import Bus, FakeBroker, FakeBus, FakeOperator
from tests.bus.bus_scenario import CRED, RIG, USERS, CommandCollector, is_status, scenario
from wire.errors import BusError
from wire.topics import AbortCommand, ResumeCommand, SessionStatus


async def test_fake_bus_scenario() -> None:
    broker = FakeBroker(USERS)
    async with FakeBus(broker, RIG, **CRED["controller"]) as bus, \
            FakeOperator(broker, RIG, **CRED["operator"]) as op:
        assert isinstance(bus, Bus)
        await scenario(bus, op)


async def test_fake_bus_auth_and_acl() -> None:
    broker = FakeBroker(USERS)
    with pytest.raises(BusError, match="not authorized"):
        async with FakeOperator(broker, RIG):
            pass
    with pytest.raises(BusError, match="not authorized"):
        async with FakeOperator(broker, RIG, username="alice", password="wrong"):
            pass
    async with FakeBus(broker, RIG, **CRED["controller"]) as bus, \
            FakeOperator(broker, RIG, **CRED["viewer"]) as viewer, \
            FakeOperator(broker, RIG, **CRED["operator"]) as op, CommandCollector(bus) as commands:
        assert not await viewer.send(AbortCommand())          # dropped by the ACL
        resume = ResumeCommand()
        assert await op.send(resume)
        assert (await commands.next()).command_id == resume.command_id
        await bus.publish(SessionStatus(rig=RIG, state="paused"))
        got = await viewer.wait_for(is_status("paused"))
        assert isinstance(got, SessionStatus) and got.state == "paused"


async def test_retained_status_reaches_late_operator() -> None:
    broker = FakeBroker()
    async with FakeBus(broker, RIG) as bus:
        await bus.publish(SessionStatus(rig=RIG, state="running"))
        async with FakeOperator(broker, RIG) as late:
            got = await late.wait_for(is_status("running"), timeout=1)
            assert isinstance(got, SessionStatus) and got.state == "running"
    with pytest.raises(BusError, match="not connected"):
        await bus.publish(SessionStatus(rig=RIG, state="x"))
