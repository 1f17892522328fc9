"""The bus interface every implementation (MQTT, in-process fake) provides."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

from wire.errors import BusError, DecodeError
from wire.topics import AnyCommandType, BusMessage, SessionEvent, Topics

#: every operator command (pause, resume, abort, reward)
Command = AnyCommandType


@runtime_checkable
class Bus(Protocol):
    """The controller's side of the MQTT bus.

    An async context manager: entering connects (and subscribes to the rig's commands),
    leaving disconnects; a refused connection raises :class:`wire.errors.BusError`.
    ``publish`` sends a status or event on its topic (``Topics.for_message``); ``commands``
    iterates the operator's validated commands: any other payload at all on a command topic
    (not JSON, not UTF-8, too large, nested too deeply, wrong types, unknown command, a
    retained message) is answered with a ``command.rejected`` :class:`~wire.topics.SessionEvent`
    (:func:`rejection`) and skipped, and the iteration goes on. It ends only when the bus does
    (``BusError``: the connection was lost).
    """

    rig: str
    topics: Topics

    async def __aenter__(self) -> Bus: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...

    async def publish(self, msg: BusMessage) -> None: ...

    def commands(self) -> AsyncIterator[Command]: ...


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def filter_within(requested: str, allowed: str) -> bool:
    """Whether the topic or filter ``requested`` is covered by the ACL filter ``allowed``."""
    if "+" not in requested and "#" not in requested:
        return topic_matches(allowed, requested)
    r, a = requested.split("/"), allowed.split("/")
    for i, level in enumerate(a):
        if level == "#":
            return True
        if i >= len(r) or r[i] == "#" or (level != "+" and (r[i] == "+" or level != r[i])):
            return False
    return len(r) == len(a)


async def first_status(statuses: AsyncIterator[BusMessage], predicate: Callable[[BusMessage], bool],
                       timeout: float, where: str) -> BusMessage:
    """The first status from ``statuses`` that satisfies ``predicate``, or BusError after ``timeout`` s."""

    async def first() -> BusMessage:
        async for msg in statuses:
            if predicate(msg):
                return msg
        raise BusError("status stream ended")

    try:
        return await asyncio.wait_for(first(), timeout)
    except TimeoutError as exc:
        raise BusError(f"no matching status {where}within {timeout} s") from exc


#: longest ``command.rejected`` message published (the payload that caused it may be huge)
MAX_REJECTION_CHARS = 500


def rejection(topic: str, problem: BaseException | str) -> SessionEvent:
    """The ``command.rejected`` event for a payload on ``topic`` that is not obeyed: the
    :class:`DecodeError`'s message (shortened), or a generic one for any other exception."""
    try:
        detail = str(problem)
    except Exception:  # an exception whose message cannot even be made
        detail = ""
    if isinstance(problem, str | DecodeError):
        text = detail
    else:
        text = f"command on {topic[:200]!r} not decoded ({type(problem).__name__}: {detail[:200]})"
    if len(text) > MAX_REJECTION_CHARS:
        text = text[:MAX_REJECTION_CHARS - 1] + "\u2026"
    return SessionEvent(level="warning", event="command.rejected", message=text)
