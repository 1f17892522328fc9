"""One huge MQTT packet from an operator must not be read into the controller's memory (the embedded
broker runs inside the controller): both brokers close the sender's connection, and the bus goes on."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from controller.bus import EmbeddedBroker, MosquittoBroker
from controller.bus.broker import MAX_PACKET_BYTES
from tests.bus.bus_scenario import RIG
from wire.topics import Topics

BROKERS = ["amqtt_broker", "mosquitto"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | MosquittoBroker:
    b: EmbeddedBroker | MosquittoBroker = request.getfixturevalue(request.param)
    return b


async def _delivered(broker: EmbeddedBroker | MosquittoBroker, size: int) -> bool:
    """Whether a command of ``size`` bytes from the operator reaches the controller."""
    topic = Topics(RIG).command("pause")
    async with aiomqtt.Client("127.0.0.1", broker.port, username="ctl", password="ctl-secret") as ctl:
        await ctl.subscribe(topic, qos=1)
        try:
            async with aiomqtt.Client("127.0.0.1", broker.port, username="alice", password="alice-secret") as op:
                await op.publish(topic, b"x" * size, qos=1, timeout=5)
        except aiomqtt.MqttError:
            return False  # the broker closed the operator's connection
        try:
            async with asyncio.timeout(3):
                async for msg in ctl.messages:
                    return len(msg.payload) == size  # type: ignore[arg-type]
        except TimeoutError:
            return False
    return False


async def test_an_oversized_command_is_refused_and_the_bus_goes_on(broker: EmbeddedBroker | MosquittoBroker) -> None:
    assert await _delivered(broker, 1000)
    assert not await _delivered(broker, 2 * MAX_PACKET_BYTES)
    assert await _delivered(broker, 1000), "the broker serves the next client as before"
