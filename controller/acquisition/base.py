"""The one interface every acquisition source implements, and the events it yields.

A source is an async iterator of *items*, each one of

* :class:`SpikeBatch` - a chunk of spikes as two parallel numpy arrays (unit ids, times),
  the fast path (a real rig delivers thousands of spikes per second);
* :class:`SyncEvent` - one edge of a digital sync line (photodiode, TTL), and
* :class:`Heartbeat` - "the acquisition clock has reached ``t``": sent by sources that know
  their clock even when no spike arrives, so trials can close on a silent channel.

Every time is seconds on the *acquisition clock* (the LSL-corrected local clock, or an
Open Ephys stream's sample clock divided by its sample rate). :class:`SpikeEvent` is the
one-spike view of a batch (``batch.events()``) for code that does not need speed.

A source that stops sending for ``silence_timeout`` seconds raises
:class:`~wire.errors.AcquisitionError` (:class:`SourceSilent`) from its iterator, so the
pipeline above it can report it; closed trials are never affected.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from wire.errors import AcquisitionError

log = logging.getLogger(__name__)

Unit = int | str

__all__ = ["AcquisitionSource", "Heartbeat", "Item", "SourceSilent", "SpikeBatch", "SpikeEvent", "SyncEvent",
           "Unit"]


class SourceSilent(AcquisitionError):
    """A source sent nothing (no spike, no sync edge, no heartbeat) for longer than its silence timeout."""

    code = "acquisition_silent"


@dataclass(frozen=True, slots=True)
class SpikeEvent:
    """One spike of one unit at acquisition-clock time ``t`` (s)."""

    unit: Unit
    t: float


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """One edge of sync line ``channel`` (e.g. ``"photodiode"``, ``"ttl2"``): ``state`` 1 rising, 0 falling."""

    channel: str
    t: float
    state: int = 1


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The source's clock has reached ``t``: later items will (up to transport jitter) not be older."""

    t: float


@dataclass(frozen=True, slots=True)
class SpikeBatch:
    """Spikes as parallel arrays: ``units`` (int64, or object for string ids) and ``times`` (float64, s).

    Times need not be sorted (out-of-order arrival is allowed); lengths must match.
    """

    units: np.ndarray
    times: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if self.units.shape != self.times.shape or self.units.ndim != 1:
            raise ValueError(f"units {self.units.shape} and times {self.times.shape} must be equal 1-d shapes")

    @classmethod
    def of(cls, units: Sequence[Unit] | np.ndarray, times: Sequence[float] | np.ndarray) -> SpikeBatch:
        """A batch from any sequences; integer ids become int64, anything else an object array."""
        u = np.asarray(units)
        if u.dtype.kind in "iu":
            u = u.astype(np.int64, copy=False)
        elif u.dtype.kind != "O":
            u = u.astype(object)
        return cls(u, np.asarray(times, dtype=np.float64))

    @classmethod
    def from_events(cls, events: Sequence[SpikeEvent]) -> SpikeBatch:
        return cls.of([e.unit for e in events], [e.t for e in events])

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def events(self) -> Iterator[SpikeEvent]:
        for u, t in zip(self.units.tolist(), self.times.tolist(), strict=True):
            yield SpikeEvent(u, t)


Item = SpikeBatch | SyncEvent | Heartbeat


class AcquisitionSource(abc.ABC):
    """Base of every source: an async context manager and an async iterator of :data:`Item`.

    Subclasses implement :meth:`open`, :meth:`close` and :meth:`_items` (an async iterator
    that may block); this class adds the silence watchdog. ``silence_timeout=None`` waits forever.
    """

    name: str = "source"

    def __init__(self, *, silence_timeout: float | None = 5.0) -> None:
        self.silence_timeout = silence_timeout
        #: what :meth:`open` connected to, by role (e.g. spikes -> name, source_id, hostname, uid), for
        #: the session's record: which rig's data this session holds
        self.stream_records: dict[str, dict[str, str]] = {}

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (resolve streams, open sockets). Raises AcquisitionError with a clear message."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource; safe to call twice."""

    @abc.abstractmethod
    def _items(self) -> AsyncIterator[Item]:
        """The raw items, as they arrive."""

    async def __aenter__(self) -> AcquisitionSource:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[Item]:
        """Items as they come; raises :class:`SourceSilent` after ``silence_timeout`` s without data.

        Heartbeats a source makes up itself (from its own clock) do not count as data.
        """
        loop = asyncio.get_running_loop()
        it = aiter(self._items())
        last_data = loop.time()
        try:
            while True:
                remaining = None
                if self.silence_timeout is not None:
                    remaining = max(0.0, last_data + self.silence_timeout - loop.time())
                try:
                    async with asyncio.timeout(remaining):
                        item = await anext(it)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise SourceSilent(
                        f"{self.name}: no data received for {self.silence_timeout:g} s "
                        "(is the acquisition system running and streaming?)") from exc
                if not isinstance(item, Heartbeat):
                    last_data = loop.time()
                yield item
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def events(self) -> AsyncIterator[SpikeEvent | SyncEvent]:
        """One event at a time (slow path): spikes of each batch in arrival order, sync edges; no heartbeats."""
        async for item in self:
            if isinstance(item, SpikeBatch):
                for ev in item.events():
                    yield ev
            elif isinstance(item, SyncEvent):
                yield item
