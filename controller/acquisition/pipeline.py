"""Glue: one acquisition source feeding one :class:`Binner`, trial events in, closed trials out.

``async with AcquisitionPipeline(source, binner) as acq:`` opens the source and runs a task
that feeds every item to the binner; ``acq.add_trial(event)`` registers each TrialEvent;
``await acq.next_closed(timeout)`` returns closed trials in the order they closed. If the
source fails (``SourceSilent``, a dead stream) the error is logged, trials already closed
stay queued, still-open trials are flushed as ``complete=False``, and ``next_closed``
raises the error once the queue is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner, ClosedTrial
from wire.errors import AcquisitionError, RequestTimeout
from wire.stim import TrialEvent

log = logging.getLogger(__name__)

__all__ = ["AcquisitionPipeline"]


class AcquisitionPipeline:
    def __init__(self, source: AcquisitionSource, binner: Binner) -> None:
        self.source = source
        self.binner = binner
        self.error: AcquisitionError | None = None
        self._closed: asyncio.Queue[ClosedTrial] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AcquisitionPipeline:
        await self.source.open()
        self._task = asyncio.create_task(self._run(), name=f"acq-{self.source.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.source.close()

    def _emit(self, closed: list[ClosedTrial]) -> None:
        for c in closed:
            self._closed.put_nowait(c)

    async def _run(self) -> None:
        try:
            async for item in self.source:
                self._emit(self.binner.feed(item))
        except AcquisitionError as exc:
            log.error("acquisition source %s failed: %s; %d open trial(s) flushed as incomplete",
                      self.source.name, exc, self.binner.open_trials)
            self.error = exc
            self._emit(self.binner.flush())
        except Exception as exc:
            log.exception("acquisition pipeline failed")
            self.error = AcquisitionError(f"{type(exc).__name__}: {exc}")
            self.error.__cause__ = exc
            self._emit(self.binner.flush())

    def add_trial(self, ev: TrialEvent) -> None:
        """Register a trial (its counts come out of :meth:`next_closed` once its window has passed)."""
        if self.error is not None:
            raise AcquisitionError(f"acquisition has failed, cannot count trial {ev.trial_id}") from self.error
        self._emit(self.binner.add_trial_event(ev))

    async def next_closed(self, timeout: float | None = None) -> ClosedTrial:
        if not self._closed.empty():
            return self._closed.get_nowait()
        if self.error is not None:
            raise self.error
        get = asyncio.ensure_future(self._closed.get())
        waits: set[asyncio.Future[object]] = {get}  # type: ignore[arg-type]
        if self._task is not None:
            waits.add(self._task)  # type: ignore[arg-type]
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if not self._closed.empty():
            return self._closed.get_nowait()
        if self.error is not None:
            raise self.error
        if self._task is not None and self._task.done():
            raise AcquisitionError(f"acquisition source {self.source.name} ended")
        raise RequestTimeout(f"no trial closed within {timeout} s")
