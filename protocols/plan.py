"""Driving a plan: the loop every executor (engine, simulator, replay) runs.

A plan is a generator of :class:`~protocols.steps.Step` that receives each step's
:class:`~protocols.steps.Result`. The executor owns the loop::

    result = None
    while True:
        step = plan.send(result)          # StopIteration: the plan is done
        try:
            result = check_result(step, await execute(step))
        except CortexloopError as exc:    # the step failed: let the plan decide
            step = plan.throw(exc)        # (it may catch it and continue, or let it out)

:func:`drive` and :func:`adrive` implement exactly that, synchronously and asynchronously.
Plans compose with ``yield from`` and helpers that narrow the result type (:func:`call`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

from protocols.errors import Problem, ProtocolValidationError
from protocols.steps import RESULT_TYPES, Plan, Result, Step
from wire.errors import CortexloopError

R = TypeVar("R", bound=Result)


def check_result(step: Step, result: Result) -> Result:
    """``result`` if it is the type :data:`RESULT_TYPES` names for ``step``, else a ProtocolError."""
    expected = RESULT_TYPES.get(type(step))
    if expected is None:
        raise ProtocolValidationError([Problem("kind", f"unknown step type {type(step).__name__}")])
    if not isinstance(result, expected):
        raise ProtocolValidationError([Problem(
            "result", f"step {step.kind!r} expects a {expected.__name__}, got {type(result).__name__}")])
    return result


def call(step: Step, expected: type[R]) -> Generator[Step, Result, R]:
    """Yield ``step`` and return its result narrowed to ``expected`` (``x = yield from call(...)``)."""
    result = yield step
    if not isinstance(result, expected):
        raise ProtocolValidationError([Problem(
            "result", f"step {step.kind!r} expects a {expected.__name__}, got {type(result).__name__}")])
    return result


def drive(plan: Plan, execute: Callable[[Step], Result]) -> list[tuple[Step, Result]]:
    """Run ``plan`` to the end with a synchronous executor; returns (step, result) pairs.

    An executor raising a :class:`CortexloopError` has it thrown into the plan, which may
    handle it; anything else propagates.
    """
    done: list[tuple[Step, Result]] = []
    try:
        step = next(plan)
        while True:
            try:
                result = check_result(step, execute(step))
            except ProtocolValidationError:
                raise
            except CortexloopError as exc:
                step = plan.throw(exc)
                continue
            done.append((step, result))
            step = plan.send(result)
    except StopIteration:
        return done
    finally:
        plan.close()


async def adrive(plan: Plan, execute: Callable[[Step], Awaitable[Result]]) -> list[tuple[Step, Result]]:
    """:func:`drive` with an async executor."""
    done: list[tuple[Step, Result]] = []
    try:
        step = next(plan)
        while True:
            try:
                result = check_result(step, await execute(step))
            except ProtocolValidationError:
                raise
            except CortexloopError as exc:
                step = plan.throw(exc)
                continue
            done.append((step, result))
            step = plan.send(result)
    except StopIteration:
        return done
    finally:
        plan.close()
