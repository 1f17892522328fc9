"""An in-process bus for unit tests: a tiny broker with credentials, retained messages and ACLs.

Payloads go through the same JSON encoding and validation as on MQTT, so a test of the
engine against :class:`FakeBus` exercises the real message handling; only the network is
missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType

from controller.bus.access import BusUser, acl_for
from controller.bus.base import Command, filter_within, first_status, topic_matches
from wire.errors import BusError, DecodeError
from wire.topics import BusMessage, SessionEvent, Topics, decode_command, decode_status, encode_payload
from wire.topics import Command as CommandMsg


@dataclass
class _Sub:
    patterns: list[str]
    queue: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)


class FakeBroker:
    """Routes messages between fake clients. ``users``: None accepts anyone (anonymous),
    else only those users with their password, each limited by its role's ACL."""

    def __init__(self, users: list[BusUser] | None = None) -> None:
        self.users = {u.name: u for u in users} if users is not None else None
        self.retained: dict[str, bytes] = {}
        self._subs: list[tuple[str | None, _Sub]] = []
        self.log: list[tuple[str, bytes]] = []

    def connect(self, username: str | None, password: str | None) -> str | None:
        if self.users is None:
            return username
        user = self.users.get(username or "")
        if user is None or user.password != password:
            raise BusError(f"connection refused: not authorized ({username or 'anonymous'})")
        return user.name

    def _allowed(self, username: str | None, topic: str, action: str) -> bool:
        if self.users is None:
            return True
        user = self.users.get(username or "")
        if user is None:
            return False
        publish, subscribe = acl_for(user.role)
        return any(filter_within(topic, p) for p in (publish if action == "publish" else subscribe))

    def subscribe(self, username: str | None, *patterns: str) -> _Sub:
        """One queue receiving every message that matches any of ``patterns``."""
        for pattern in patterns:
            if not self._allowed(username, pattern, "subscribe"):
                raise BusError(f"subscription to {pattern!r} refused for {username!r}")
        sub = _Sub(list(patterns))
        self._subs.append((username, sub))
        for topic, payload in self.retained.items():
            if any(topic_matches(p, topic) for p in patterns):
                sub.queue.put_nowait((topic, payload))
        return sub

    def publish(self, username: str | None, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Deliver; False (silently dropped, as MQTT brokers do) when the ACL denies it."""
        if not self._allowed(username, topic, "publish"):
            return False
        self.log.append((topic, payload))
        if retain:
            self.retained[topic] = payload
        for _, sub in self._subs:
            if any(topic_matches(p, topic) for p in sub.patterns):
                sub.queue.put_nowait((topic, payload))
        return True

    def unsubscribe(self, sub: _Sub) -> None:
        self._subs = [(u, s) for u, s in self._subs if s is not sub]


class FakeBus:
    """The controller's bus on a :class:`FakeBroker` (implements :class:`controller.bus.Bus`)."""

    def __init__(self, broker: FakeBroker, rig: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.broker = broker
        self.rig = rig
        self.topics = Topics(rig)
        self.username = username
        self.password = password
        self._sub: _Sub | None = None
        self.published: list[BusMessage] = []

    async def __aenter__(self) -> FakeBus:
        self.broker.connect(self.username, self.password)
        self._sub = self.broker.subscribe(self.username, self.topics.commands)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._sub is not None:
            self.broker.unsubscribe(self._sub)
            self._sub = None

    async def publish(self, msg: BusMessage) -> None:
        if self._sub is None:
            raise BusError("bus not connected (use 'async with')")
        self.published.append(msg)
        self.broker.publish(self.username, self.topics.for_message(msg), encode_payload(msg),
                            retain=self.topics.retained(msg))

    async def commands(self) -> AsyncIterator[Command]:
        if self._sub is None:
            raise BusError("bus not connected (use 'async with')")
        while True:
            topic, payload = await self._sub.queue.get()
            try:
                cmd = decode_command(topic, payload, self.rig)
            except DecodeError as exc:
                await self.publish(SessionEvent(level="warning", event="command.rejected", message=str(exc)))
                continue
            yield cmd


class FakeOperator:
    """An operator's client on a :class:`FakeBroker`: sends commands, watches status."""

    def __init__(self, broker: FakeBroker, rig: str, *, username: str | None = None,
                 password: str | None = None) -> None:
        self.broker = broker
        self.rig = rig
        self.topics = Topics(rig)
        self.username = username
        self.password = password
        self._sub: _Sub | None = None

    async def __aenter__(self) -> FakeOperator:
        self.broker.connect(self.username, self.password)
        self._sub = self.broker.subscribe(self.username, f"{self.topics.base}/session/#",
                                          f"{self.topics.base}/model/#")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._sub is not None:
            self.broker.unsubscribe(self._sub)
            self._sub = None

    async def send(self, cmd: CommandMsg) -> bool:
        """Publish a command; False when the broker's ACL dropped it."""
        return self.broker.publish(self.username, self.topics.for_message(cmd), encode_payload(cmd))

    async def send_raw(self, topic: str, payload: bytes) -> bool:
        return self.broker.publish(self.username, topic, payload)

    async def statuses(self) -> AsyncIterator[BusMessage]:
        if self._sub is None:
            raise BusError("operator not connected (use 'async with')")
        while True:
            topic, payload = await self._sub.queue.get()
            yield decode_status(topic, payload, self.rig)

    async def wait_for(self, predicate: Callable[[BusMessage], bool], timeout: float = 5.0) -> BusMessage:
        return await first_status(self.statuses(), predicate, timeout, "")
