"""The MQTT bus on aiomqtt 2.x: the controller's :class:`MqttBus` and an operator's client.

Both speak MQTT 3.1.1 (mosquitto and amqtt), QoS 1. The controller's status topic is
retained and its last will (published by the broker if the controller vanishes) is a
retained ``offline`` status. Connection failures and refusals become :class:`BusError`.

Only aiomqtt's public API is used (``async with`` the client through an
:class:`~contextlib.AsyncExitStack`, ``subscribe``, ``publish``, ``messages``), for the 2.x
releases ``pyproject.toml`` allows (aiomqtt 3 removes ``MqttError`` and changes ``messages``).
One reader task per connection iterates ``messages`` from connect to disconnect, so the error
of a lost connection is always received (and raised as :class:`BusError` to whoever iterates).

The controller's client id is new for every session (``cortexloop-<rig>-controller-<random>``):
MQTT lets a new connection with a client id in use take that id's place, so a fixed id would let
any client that can log in disconnect the controller by reusing it. A broker ACL can in addition
pin ids to users where the broker allows it (``docs/security.md``, "Inputs").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import aiomqtt

from controller.bus.base import Command, first_status, rejection
from wire.errors import BusError, DecodeError
from wire.topics import (
    BusMessage,
    SessionStatus,
    Topics,
    decode_command,
    decode_status,
    encode_payload,
)
from wire.topics import Command as CommandMsg

log = logging.getLogger(__name__)

#: SUBACK return code of a refused subscription (MQTT 3.1.1)
SUBACK_FAILURE = 0x80
#: messages received but not yet iterated, at most; beyond it the oldest are dropped (with a warning)
MAX_QUEUED = 10_000


def _granted_ok(granted: object) -> bool:
    codes: list[Any] = list(granted) if isinstance(granted, list | tuple) else [granted]
    return all(int(getattr(c, "value", c)) < SUBACK_FAILURE for c in codes)


def controller_identifier(rig: str) -> str:
    """A new MQTT client id for the controller of ``rig``: ``cortexloop-<rig>-controller-<32 hex>``."""
    return f"cortexloop-{rig}-controller-{uuid.uuid4().hex}"


class _Received:
    """One received message: topic, payload bytes and whether the broker sent it as retained."""

    __slots__ = ("payload", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.retain = retain


class _Client:
    def __init__(self, rig: str, hostname: str, port: int, username: str | None, password: str | None,
                 identifier: str | None, timeout: float, will: aiomqtt.Will | None = None) -> None:
        self.rig = rig
        self.topics = Topics(rig)
        self.hostname = hostname
        self.port = port
        self.username = username
        self.timeout = timeout
        self.identifier = identifier
        self._client = aiomqtt.Client(hostname, port, username=username, password=password,
                                      identifier=identifier, timeout=timeout, will=will)
        self._stack: contextlib.AsyncExitStack | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Received | BaseException] = asyncio.Queue()
        self._lost: BaseException | None = None

    @property
    def _connected(self) -> bool:
        return self._stack is not None

    async def _connect(self, subscriptions: list[str]) -> None:
        if self._stack is not None:
            raise BusError("bus already connected")
        stack = contextlib.AsyncExitStack()
        try:
            await stack.enter_async_context(self._client)
        except aiomqtt.MqttError as exc:
            raise BusError(f"MQTT broker {self.hostname}:{self.port} refused or unreachable "
                           f"(user {self.username or 'anonymous'}): {exc}") from exc
        self._stack = stack
        self._lost = None
        self._queue = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name=f"mqtt-reader-{self.rig}")
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

    async def _read(self) -> None:
        """Move every received message into our queue until the connection ends; a lost
        connection's error is queued last (so it is always received, and raised to the iterator)."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                if isinstance(payload, bytes | bytearray):
                    raw = bytes(payload)
                elif payload is None:
                    raw = b""
                else:
                    raw = str(payload).encode("utf-8", "surrogatepass")
                if self._queue.qsize() >= MAX_QUEUED:
                    self._queue.get_nowait()
                    log.warning("MQTT receive queue full (%d messages not read): oldest dropped", MAX_QUEUED)
                self._queue.put_nowait(_Received(message.topic.value, raw, bool(message.retain)))
        except aiomqtt.MqttError as exc:
            self._lost = exc
            self._queue.put_nowait(exc)

    async def _disconnect(self) -> None:
        stack, self._stack = self._stack, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if stack is None:
            return
        try:
            await stack.aclose()
        except aiomqtt.MqttError as exc:
            if self._lost is not None:  # the connection was already gone; nothing left to close
                log.debug("MQTT disconnect after a lost connection: %s", exc)
                return
            raise BusError(f"disconnecting from {self.hostname}:{self.port} failed: {exc}") from exc

    async def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if not self._connected:
            raise BusError("bus not connected (use 'async with')")
        try:
            await self._client.publish(topic, payload, qos=1, retain=retain, timeout=self.timeout)
        except aiomqtt.MqttError as exc:
            raise BusError(f"publishing on {topic!r} failed: {exc}") from exc

    async def _received(self) -> AsyncIterator[_Received]:
        if not self._connected:
            raise BusError("bus not connected (use 'async with')")
        while True:
            if self._lost is not None and self._queue.empty():
                raise BusError(f"connection to {self.hostname}:{self.port} lost: {self._lost}") from self._lost
            item = await self._queue.get()
            if isinstance(item, BaseException):
                self._queue.put_nowait(item)  # every later reader sees the loss too
                raise BusError(f"connection to {self.hostname}:{self.port} lost: {item}") from item
            yield item

    async def _messages(self) -> AsyncIterator[tuple[str, bytes]]:
        async for item in self._received():
            yield item.topic, item.payload


class MqttBus(_Client):
    """The controller's bus (implements :class:`controller.bus.Bus`).

    ``identifier`` defaults to a new id per connection object (:func:`controller_identifier`).
    """

    def __init__(self, rig: str, hostname: str = "127.0.0.1", port: int = 1883, *, username: str | None = None,
                 password: str | None = None, identifier: str | None = None, timeout: float = 10.0) -> None:
        topics = Topics(rig)
        will = aiomqtt.Will(topics.status, encode_payload(SessionStatus(rig=rig, state="offline",
                                                                        message="controller disconnected")),
                            qos=1, retain=True)
        super().__init__(rig, hostname, port, username, password, identifier or controller_identifier(rig),
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
        """The operator's valid commands. Any other payload on a command topic is answered with
        ``command.rejected`` and skipped; so is a retained one (delivered because it was stored,
        maybe long ago: a stale abort must not end every later session). Ends only with the
        connection (:class:`BusError`)."""
        async for item in self._received():
            try:
                if item.retain:
                    raise DecodeError(f"retained command on {item.topic[:200]!r} not obeyed (it may be stale); "
                                      "publish commands without the retain flag")
                cmd = decode_command(item.topic, item.payload, self.rig)
            except Exception as exc:  # decode_command raises only DecodeError; anything else is a bug
                if not isinstance(exc, DecodeError):
                    log.exception("command on %r could not be decoded", item.topic[:200])
                await self._reject(item.topic, exc)
                continue
            yield cmd

    async def _reject(self, topic: str, exc: BaseException) -> None:
        try:
            await self.publish(rejection(topic, exc))
        except BusError as err:  # the rejection is lost, the command loop goes on
            log.warning("command.rejected not published (%s): %s", err, exc)


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

    async def send_raw(self, topic: str, payload: bytes, retain: bool = False) -> None:
        await self._publish(topic, payload, retain)

    async def statuses(self) -> AsyncIterator[BusMessage]:
        async for topic, payload in self._messages():
            yield decode_status(topic, payload, self.rig)

    async def wait_for(self, predicate: Callable[[BusMessage], bool], timeout: float = 10.0) -> BusMessage:
        return await first_status(self.statuses(), predicate, timeout, f"from rig {self.rig!r} ")
