"""Explicit state machines of a session and of a block: Enums with a transition table.

An illegal transition raises :class:`~wire.errors.StateError`; every legal one is logged and
reported to listeners (the MQTT bus publishes them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Generic, TypeVar

from wire.errors import StateError

log = logging.getLogger(__name__)


class SessionState(StrEnum):
    IDLE = "idle"
    RUNNING = "running"
    PAUSED = "paused"
    ABORTING = "aborting"
    DONE = "done"
    FAILED = "failed"


SESSION_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.IDLE: frozenset({SessionState.RUNNING, SessionState.FAILED}),
    SessionState.RUNNING: frozenset({SessionState.PAUSED, SessionState.ABORTING, SessionState.DONE,
                                     SessionState.FAILED}),
    SessionState.PAUSED: frozenset({SessionState.RUNNING, SessionState.ABORTING, SessionState.FAILED}),
    SessionState.ABORTING: frozenset({SessionState.DONE, SessionState.FAILED}),
    SessionState.DONE: frozenset(),
    SessionState.FAILED: frozenset(),
}


class BlockState(StrEnum):
    PREPARING = "preparing"
    PRESENTING = "presenting"
    PAUSED = "paused"
    COUNTING = "counting"
    DONE = "done"
    ABORTED = "aborted"
    FAILED = "failed"


BLOCK_TRANSITIONS: dict[BlockState, frozenset[BlockState]] = {
    BlockState.PREPARING: frozenset({BlockState.PRESENTING, BlockState.ABORTED, BlockState.FAILED}),
    BlockState.PRESENTING: frozenset({BlockState.PAUSED, BlockState.COUNTING, BlockState.ABORTED,
                                      BlockState.FAILED}),
    BlockState.PAUSED: frozenset({BlockState.PRESENTING, BlockState.ABORTED, BlockState.FAILED}),
    BlockState.COUNTING: frozenset({BlockState.DONE, BlockState.ABORTED, BlockState.FAILED}),
    BlockState.DONE: frozenset(),
    BlockState.ABORTED: frozenset(),
    BlockState.FAILED: frozenset(),
}

S = TypeVar("S", bound=StrEnum)


class StateMachine(Generic[S]):
    """Holds a state; :meth:`to` moves it along the table or raises StateError."""

    def __init__(self, name: str, initial: S, table: dict[S, frozenset[S]]) -> None:
        missing = set(type(initial)) - set(table)
        if missing:
            raise ValueError(f"transition table of {name} lacks {sorted(missing)}")
        self.name = name
        self.state = initial
        self._table = table
        self._listeners: list[Callable[[S, S], None]] = []

    def on_change(self, listener: Callable[[S, S], None]) -> None:
        self._listeners.append(listener)

    def can(self, new: S) -> bool:
        return new in self._table[self.state]

    def to(self, new: S) -> None:
        old = self.state
        if new not in self._table[old]:
            raise StateError(f"{self.name}: illegal transition {old.value} -> {new.value}")
        self.state = new
        log.info("%s: %s -> %s", self.name, old.value, new.value)
        for listener in self._listeners:
            listener(old, new)

    @property
    def final(self) -> bool:
        return not self._table[self.state]
