"""Open Ephys GUI source: a client of the Event Broadcaster plugin (ZeroMQ PUB, JSON format).

The plugin publishes every spike and TTL event as a multipart message whose last frame is
a JSON object (the first frame tells the message type; we read ``event_type`` instead):

* spike: ``{"event_type": "spike", "stream": ..., "source_node": ..., "electrode": "Electrode 1",
  "num_channels": 4, "sample_rate": 30000, "sample_number": 193722, "sorted_id": 0, ...}``
* TTL: ``{"event_type": "ttl", "stream": ..., "source_node": ..., "sample_rate": 30000,
  "channel_name": ..., "sample_number": 103922, "line": 2, "state": 1}``

Times are ``sample_number / sample_rate`` seconds on the stream's sample clock (older
plugin versions send ``timestamp`` instead of ``sample_number``: accepted). A spike's unit
is ``"<electrode>:<sorted_id>"``; a TTL becomes ``SyncEvent("ttl<line>", t, state)``. Keep
spikes and the sync line on the same stream (``streams=``) so they share one clock.
A malformed message is logged and counted (``stats["malformed"]``), never fatal.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Collection
from typing import Any

import numpy as np
import zmq
import zmq.asyncio

from controller.acquisition.base import AcquisitionSource, Item, SpikeBatch, SyncEvent
from wire.errors import AcquisitionError

log = logging.getLogger(__name__)

__all__ = ["OpenEphysSource", "parse_event"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"


class MalformedEvent(ValueError):
    pass


def _time(msg: dict[str, Any]) -> float:
    sample = msg.get("sample_number", msg.get("timestamp"))
    rate = msg.get("sample_rate")
    if isinstance(sample, bool) or not isinstance(sample, int | float):
        raise MalformedEvent(f"no numeric sample_number: {sample!r}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0 or not math.isfinite(rate):
        raise MalformedEvent(f"bad sample_rate: {rate!r}")
    return float(sample) / float(rate)


def parse_event(payload: bytes, include_unsorted: bool = True,
                streams: Collection[str] | None = None) -> tuple[str, float] | SyncEvent | None:
    """One JSON payload -> (unit, t) for a spike, a SyncEvent for a TTL, None for an ignored event."""
    try:
        msg = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise MalformedEvent(f"not a JSON object: {type(msg).__name__}")
    if streams is not None and msg.get("stream") not in streams:
        return None
    kind = msg.get("event_type")
    if kind == "spike":
        electrode = msg.get("electrode")
        sorted_id = msg.get("sorted_id", 0)
        if not isinstance(electrode, str | int) or isinstance(sorted_id, bool) or not isinstance(sorted_id, int):
            raise MalformedEvent(f"spike without electrode/sorted_id: {electrode!r}/{sorted_id!r}")
        if sorted_id == 0 and not include_unsorted:
            return None
        return f"{electrode}:{sorted_id}", _time(msg)
    if kind == "ttl":
        line, state = msg.get("line"), msg.get("state")
        if isinstance(line, bool) or not isinstance(line, int) or not isinstance(state, int | bool):
            raise MalformedEvent(f"ttl without integer line/state: {line!r}/{state!r}")
        return SyncEvent(f"ttl{line}", _time(msg), int(state))
    raise MalformedEvent(f"unknown event_type {kind!r}")


class OpenEphysSource(AcquisitionSource):
    """Spikes and TTL edges from the Open Ephys Event Broadcaster (JSON format)."""

    name = "openephys"

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, silence_timeout: float | None = 5.0,
                 include_unsorted: bool = True, streams: Collection[str] | None = None, max_batch: int = 4096,
                 context: zmq.asyncio.Context | None = None) -> None:
        super().__init__(silence_timeout=silence_timeout)
        self.endpoint = endpoint
        self.include_unsorted = include_unsorted
        self.streams = set(streams) if streams is not None else None
        self.max_batch = max_batch
        self._ctx = context if context is not None else zmq.asyncio.Context.instance()
        self._sock: zmq.asyncio.Socket | None = None
        self.stats = {"spikes": 0, "ttl": 0, "malformed": 0, "ignored": 0}

    async def open(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 1_000_000
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise AcquisitionError(f"cannot connect to the Open Ephys event broadcaster at {self.endpoint}: {exc}") \
                from exc
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock = sock

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def _bad(self, frames: list[bytes], exc: Exception) -> None:
        self.stats["malformed"] += 1
        n = self.stats["malformed"]
        if n <= 10 or n % 1000 == 0:
            log.warning("malformed Open Ephys event #%d dropped: %s (%r)", n, exc, frames[-1][:200] if frames else b"")

    async def _items(self) -> AsyncIterator[Item]:
        if self._sock is None:
            raise AcquisitionError("OpenEphysSource used before open() (use 'async with OpenEphysSource(...)')")
        sock = self._sock
        while True:
            messages = [await sock.recv_multipart()]
            while len(messages) < self.max_batch:  # drain what is already there: one batch per wake-up
                try:
                    messages.append(await sock.recv_multipart(flags=zmq.NOBLOCK))
                except zmq.Again:
                    break
            units: list[str] = []
            times: list[float] = []
            for frames in messages:
                try:
                    if not frames:
                        raise MalformedEvent("empty message")
                    ev = parse_event(frames[-1], self.include_unsorted, self.streams)
                except MalformedEvent as exc:
                    self._bad(frames, exc)
                    continue
                if ev is None:
                    self.stats["ignored"] += 1
                elif isinstance(ev, SyncEvent):
                    self.stats["ttl"] += 1
                    if units:  # keep arrival order: spikes before this edge go first
                        yield SpikeBatch(np.asarray(units, dtype=object), np.asarray(times))
                        units, times = [], []
                    yield ev
                else:
                    self.stats["spikes"] += 1
                    units.append(ev[0])
                    times.append(ev[1])
            if units:
                yield SpikeBatch(np.asarray(units, dtype=object), np.asarray(times))
