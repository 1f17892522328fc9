from __future__ import annotations

import pytest

from controller.state import (
    BLOCK_TRANSITIONS,
    SESSION_TRANSITIONS,
    BlockState,
    SessionState,
    StateMachine,
)
from wire.errors import StateError


def test_session_happy_path_and_listeners() -> None:
    seen: list[tuple[str, str]] = []
    sm = StateMachine("session", SessionState.IDLE, SESSION_TRANSITIONS)
    sm.on_change(lambda a, b: seen.append((a.value, b.value)))
    for s in (SessionState.RUNNING, SessionState.PAUSED, SessionState.RUNNING, SessionState.DONE):
        sm.to(s)
    assert sm.final and seen[-1] == ("running", "done") and len(seen) == 4


@pytest.mark.parametrize("table,initial", [(SESSION_TRANSITIONS, SessionState.IDLE),
                                           (BLOCK_TRANSITIONS, BlockState.PREPARING)])
def test_every_illegal_transition_raises(table, initial) -> None:
    for src, allowed in table.items():
        for dst in type(initial):
            sm = StateMachine("x", src, table)
            if dst in allowed:
                sm.to(dst)
                assert sm.state is dst
            else:
                with pytest.raises(StateError, match="illegal transition"):
                    sm.to(dst)
                assert sm.state is src


def test_final_states_have_no_exit() -> None:
    assert {s for s, nxt in SESSION_TRANSITIONS.items() if not nxt} == {SessionState.DONE, SessionState.FAILED}


def test_incomplete_table_is_rejected() -> None:
    with pytest.raises(ValueError, match="lacks"):
        StateMachine("x", SessionState.IDLE, {SessionState.IDLE: frozenset()})
