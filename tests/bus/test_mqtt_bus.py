"""The aiomqtt bus against an embedded amqtt broker and a real mosquitto (auth + ACL enforced)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.bus import (
    Bus,
    BusConfig,
    BusUser,
    EmbeddedBroker,
    MosquittoBroker,
    MqttBus,
    MqttOperator,
    add_user,
    open_bus,
    read_users,
)
from tests.bus.bus_scenario import CRED, RIG, CommandCollector, is_status, scenario
from wire.errors import BusError
from wire.topics import AbortCommand, PauseCommand, ResumeCommand, SessionStatus, Topics, encode_payload

BROKERS = ["amqtt_broker", "mosquitto"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | MosquittoBroker:
    b: EmbeddedBroker | MosquittoBroker = request.getfixturevalue(request.param)
    return b


async def test_authenticated_clients_exchange_status_and_commands(broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op:
        assert isinstance(bus, Bus)
        await scenario(bus, op)


@pytest.mark.parametrize("cred", [{}, {"username": "alice", "password": "wrong"},
                                  {"username": "mallory", "password": "x"}], ids=["anonymous", "bad-pw", "stranger"])
async def test_clients_without_valid_credentials_are_refused(broker: EmbeddedBroker | MosquittoBroker,
                                                             cred: Any) -> None:
    with pytest.raises(BusError, match="refused"):
        async with MqttOperator(RIG, port=broker.port, timeout=5, **cred):
            pass  # pragma: no cover - must not connect
    with pytest.raises(BusError, match="refused"):
        async with MqttBus(RIG, port=broker.port, timeout=5, **cred):
            pass  # pragma: no cover


async def test_acl_viewer_reads_but_cannot_command_operator_cannot_fake_status(
        broker: EmbeddedBroker | MosquittoBroker) -> None:
    port = broker.port
    async with MqttBus(RIG, port=port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=port, **CRED["viewer"]) as viewer, \
            MqttOperator(RIG, port=port, **CRED["operator"]) as op, CommandCollector(bus) as commands:
        # the viewer's abort (QoS 1: acknowledged, then dropped by the ACL) never reaches the controller;
        # the operator's later resume is the first command the controller gets
        await viewer.send(AbortCommand(reason="not allowed"))
        resume = ResumeCommand()
        await op.send(resume)
        first = await commands.next()
        assert first.command_id == resume.command_id
        # an operator may not publish status: its fake 'finished' is dropped, the viewer sees the real one
        await op.send_raw(Topics(RIG).status, encode_payload(SessionStatus(rig=RIG, state="finished")))
        await bus.publish(SessionStatus(rig=RIG, state="paused"))
        got = await viewer.wait_for(lambda m: isinstance(m, SessionStatus))
        assert isinstance(got, SessionStatus) and got.state == "paused"
        # the controller itself cannot pose as an operator either
        await bus._publish(Topics(RIG).command("pause"), encode_payload(PauseCommand()))
        resume2 = ResumeCommand()
        await op.send(resume2)
        assert (await commands.next()).command_id == resume2.command_id


async def test_status_is_retained_for_late_operators(broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus:
        await bus.publish(SessionStatus(rig=RIG, state="running", block_id="b3"))
        async with MqttOperator(RIG, port=broker.port, **CRED["viewer"]) as late:
            got = await late.wait_for(is_status("running"))
            assert isinstance(got, SessionStatus) and got.block_id == "b3"


async def test_viewer_never_receives_commands(broker: EmbeddedBroker | MosquittoBroker) -> None:
    """A viewer subscribing to the command topics is refused (amqtt: SUBACK failure) or gets
    nothing (mosquitto grants the SUBACK but never delivers what the ACL forbids)."""
    topics = Topics(RIG)
    spy = aiomqtt.Client("127.0.0.1", broker.port, identifier="spy", timeout=5, **CRED["viewer"])
    async with spy, MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op, CommandCollector(bus) as commands:
        granted = await spy.subscribe(topics.commands, qos=1)
        codes = [c if isinstance(c, int) else int(c.value) for c in granted]
        await spy.subscribe(topics.status, qos=1)
        pause = PauseCommand()
        await op.send(pause)
        assert (await commands.next()).command_id == pause.command_id
        # the broker routed the pause before this marker was even published: if the spy could
        # read commands, the pause would be its first message
        await bus.publish(SessionStatus(rig=RIG, state="marker"))
        first = await asyncio.wait_for(anext(aiter(spy.messages)), 5)
        assert first.topic.value == topics.status, codes
    if isinstance(broker, EmbeddedBroker):
        assert codes == [0x80]
        with pytest.raises(BusError, match="subscription"):
            async with MqttBus(RIG, port=broker.port, identifier="viewer-as-controller", **CRED["viewer"]):
                pass  # pragma: no cover


async def test_open_bus_embedded_and_external(tmp_path: Path, amqtt_broker: EmbeddedBroker,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "users"
    add_user(users, BusUser("olga", "olga-pw", "operator"))
    add_user(users, BusUser("olga", "olga-pw2", "operator"))             # replaced, not duplicated
    assert [(n, r) for n, r, _ in read_users(users)] == [("olga", "operator")]
    config = BusConfig(port=0, users_file=users)
    async with open_bus(config, RIG) as bus:
        assert isinstance(bus, MqttBus)
        async with MqttOperator(RIG, port=bus.port, username="olga", password="olga-pw2") as op, \
                CommandCollector(bus) as commands:
            abort = AbortCommand(reason="end of day")
            await op.send(abort)
            assert (await commands.next()).command_id == abort.command_id
        with pytest.raises(BusError, match="refused"):
            async with MqttOperator(RIG, port=bus.port, timeout=5):
                pass  # pragma: no cover
    # an external broker: credentials from the environment
    monkeypatch.setenv("CORTEXLOOP_MQTT_PASSWORD", CRED["controller"]["password"])
    external = BusConfig(host="127.0.0.1", port=amqtt_broker.port, username=CRED["controller"]["username"])
    async with open_bus(external, RIG) as bus:
        await bus.publish(SessionStatus(rig=RIG, state="idle"))
    monkeypatch.setenv("CORTEXLOOP_MQTT_PASSWORD", "wrong")
    with pytest.raises(BusError, match="refused"):
        async with open_bus(external, RIG):
            pass  # pragma: no cover


async def test_last_will_marks_the_rig_offline(broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttOperator(RIG, port=broker.port, **CRED["viewer"]) as viewer:
        bus = MqttBus(RIG, port=broker.port, **CRED["controller"])
        await bus.__aenter__()
        try:
            await bus.publish(SessionStatus(rig=RIG, state="running"))
            await viewer.wait_for(is_status("running"))
            # the controller vanishes without DISCONNECT (crash, cable): the broker sends its will
            sock = bus._client._client.socket()
            assert isinstance(sock, socket.socket)
            sock.shutdown(socket.SHUT_RDWR)
            got = await viewer.wait_for(is_status("offline"))
            assert isinstance(got, SessionStatus) and got.message == "controller disconnected"
        finally:
            await bus.__aexit__(None, None, None)


async def test_embedded_broker_on_a_busy_port_is_a_bus_error(amqtt_broker: EmbeddedBroker,
                                                              amqtt_passwd: Path) -> None:
    with pytest.raises(BusError, match="failed to start"):
        async with EmbeddedBroker(amqtt_passwd, {}, port=amqtt_broker.port):
            pass  # pragma: no cover
    with pytest.raises(BusError, match="not found"):
        async with EmbeddedBroker(amqtt_passwd.parent / "missing", {}):
            pass  # pragma: no cover
