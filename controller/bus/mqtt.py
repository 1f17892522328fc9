"""The MQTT bus on aiomqtt 2.x: the controller's :class:`MqttBus` and an operator's client.

Both speak MQTT 3.1.1 (mosquitto and amqtt), QoS 1. The controller's status topic is
retained and its last will (published by the broker if the controller vanishes) is a
retained ``offline`` status. Connection failures and refusals become :class:`BusError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import aiomqtt

from controller.bus.base import Command, first_status
from wire.errors import BusError, DecodeError
from wire.topics import (
    BusMessage,
    SessionEvent,
    SessionStatus,
    Topics,
    decode_command,
    decode_status,
    encode_payload,
)
from wire.topics import Command as CommandMsg

#: SUBACK return code of a refused subscription (MQTT 3.1.1)
SUBACK_FAILURE = 0x80


def _granted_ok(granted: object) -> bool:
    codes: list[Any] = list(granted) if isinstance(granted, list | tuple) else [granted]
    return all(int(getattr(c, "value", c)) < SUBACK_FAILURE for c in codes)


class _Client:
    def __init__(self, rig: str, hostname: str, port: int, username: str | None, password: str | None,
                 identifier: str | None, timeout: float, will: aiomqtt.Will | None = None) -> None:
        self.rig = rig
        self.topics = Topics(rig)
        self.hostname = hostname
        self.port = port
        self.username = username
        self.timeout = timeout
        self._client = aiomqtt.Client(hostname, port, username=username, password=password,
                                      identifier=identifier, timeout=timeout, will=will)
        self._connected = False

    async def _connect(self, subscriptions: list[str]) -> None:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise BusError(f"MQTT broker {self.hostname}:{self.port} refused or unreachable "
                           f"(user {self.username or 'anonymous'}): {exc}") from exc
        self._connected = True
        try:
            for topic in subscriptions:
                granted = await self._client.subscribe(topic, qos=1, timeout=self.timeout)
                if not _granted_ok(granted):
                    raise BusError(f"subscription to {topic!r} refused for user {self.username!r}")
        except aiomqtt.MqttError as exc:
            await self._disconnect()
            raise BusError(f"subscribing failed: {exc}") from exc
        except BusError:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        # after a lost connection aiomqtt's private 'disconnected' future holds the error nobody
        # awaited (it surfaced as BusError from the message iterator, if anyone was iterating)
        lost = getattr(self._client, "_disconnected", None)
        if isinstance(lost, asyncio.Future) and lost.done() and not lost.cancelled():
            lost.exception()
        if self._connected:
            self._connected = False
            try:
                await self._client.__aexit__(None, None, None)
            except aiomqtt.MqttError as exc:
                raise BusError(f"disconnecting from {self.hostname}:{self.port} failed: {exc}") from exc

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if not self._connected:
            raise BusError("bus not connected (use 'async with')")
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            raise BusError(f"publishing on {topic!r} failed: {exc}") from exc

    async def _messages(self) -> AsyncIterator[tuple[str, bytes]]:
        if not self._connected:
            raise BusError("bus not connected (use 'async with')")
        try:
            async for message in self._client.messages:
                payload = message.payload
                raw = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
                yield message.topic.value, bytes(raw)
        except aiomqtt.MqttError as exc:
            raise BusError(f"connection to {self.hostname}:{self.port} lost: {exc}") from exc


class MqttBus(_Client):
    """The controller's bus (implements :class:`controller.bus.Bus`)."""

    def __init__(self, rig: str, hostname: str = "127.0.0.1", port: int = 1883, *, username: str | None = None,
                 password: str | None = None, identifier: str | None = None, timeout: float = 10.0) -> None:
        topics = Topics(rig)
        will = aiomqtt.Will(topics.status, encode_payload(SessionStatus(rig=rig, state="offline",
                                                                        message="controller disconnected")),
                            qos=1, retain=True)
        super().__init__(rig, hostname, port, username, password, identifier or f"cortexloop-controller-{rig}",
                         timeout, will)

    async def __aenter__(self) -> MqttBus:
        await self._connect([self.topics.commands])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._disconnect()

    async def publish(self, msg: BusMessage) -> None:
        await self._publish(self.topics.for_message(msg), encode_payload(msg), self.topics.retained(msg))

    async def commands(self) -> AsyncIterator[Command]:
        async for topic, payload in self._messages():
            try:
                cmd = decode_command(topic, payload, self.rig)
            except DecodeError as exc:
                await self.publish(SessionEvent(level="warning", event="command.rejected", message=str(exc)))
                continue
            yield cmd


class MqttOperator(_Client):
    """An operator's (or dashboard's) client: watches a rig's status and sends commands."""

    def __init__(self, rig: str, hostname: str = "127.0.0.1", port: int = 1883, *, username: str | None = None,
                 password: str | None = None, identifier: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(rig, hostname, port, username, password, identifier, timeout)

    async def __aenter__(self) -> MqttOperator:
        await self._connect([f"{self.topics.base}/session/#", f"{self.topics.base}/model/#"])
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._disconnect()

    async def send(self, cmd: CommandMsg) -> None:
        """Publish a command (QoS 1: returns once the broker has it; its ACL may still drop it)."""
        await self._publish(self.topics.for_message(cmd), encode_payload(cmd))

    async def send_raw(self, topic: str, payload: bytes) -> None:
        await self._publish(topic, payload)

    async def statuses(self) -> AsyncIterator[BusMessage]:
        async for topic, payload in self._messages():
            yield decode_status(topic, payload, self.rig)

    async def wait_for(self, predicate: Callable[[BusMessage], bool], timeout: float = 10.0) -> BusMessage:
        return await first_status(self.statuses(), predicate, timeout, f"from rig {self.rig!r} ")
