"""Lab Streaming Layer source: a spike-event stream and (optionally) a marker/sync stream.

Conventions (``wire.acq``): the spike stream has one channel, irregular rate, one sample
per spike whose LSL timestamp is the spike time and whose value is the unit (an int32
index, or a string label); the marker stream has one string channel whose samples are
``"<channel> <state>"`` (a bare label is a rising edge of that channel).

Streams are resolved by name and/or type with a timeout; an unknown stream is an
:class:`~wire.errors.AcquisitionError` naming the streams that *are* visible. Every
timestamp is moved into the local clock with the inlet's ``time_correction()`` (refreshed
every ``correction_interval`` s), so times are on this machine's ``pylsl.local_clock()``
(= ``wire.clock.now()``). A reader thread pulls numpy chunks and hands them to the event loop.

Watermark rule (what lets the :class:`~controller.acquisition.binning.Binner` close a trial):
**only received spike data proves time.**

* The spike stream's samples come in time order over one connection, so the newest received
  spike time ``t`` proves that the spikes before ``t`` have arrived (a rig that pushes slightly
  out of order is what the binner's ``lateness`` is for). Every :class:`SpikeBatch` carries that
  proof itself, so this source sends no :class:`Heartbeat` at all: a heartbeat at the newest
  spike time would add nothing, and one made up from the local clock (the old
  ``local_clock() - max_delay``) asserts that a rig delivered data it may never have sent.
* Marker (sync) samples never advance the watermark, even when the rig pushes them from the
  same process in time order: they travel on their own connection, so a marker at ``t`` does
  not prove that the spikes pushed before it have arrived, and a sync line that keeps running
  next to a dead spike sorter would close trials with zero counts.
* So when the rig stops sending (a dead or silent outlet, a crashed sorter) the watermark
  freezes: open trials stay open and uncounted, and after ``silence_timeout`` s the source
  raises :class:`~controller.acquisition.base.SourceSilent` (the pipeline then flushes them as
  ``complete=False``, which the engine records as nothing). Markers alone do not keep the
  source alive: with a marker stream, ``silence_timeout`` s without a spike is also
  ``SourceSilent``, naming the spike stream.

Cost: a trial closes at the first spike received with ``t >= onset + window end + lateness``,
i.e. the rig's streaming delay plus on average ``1 / (total spike rate)`` after that. A real rig
with tens of units always has spikes: the virtual rig (``delay`` 0.3 s, lateness 0.05 s) closes
trials a median 0.37-0.43 s after window end with 6-32 units at 2-5 spikes/s each, as it did
with local-clock heartbeats. A quiet population can stall closing by about its whole inter-spike
gap (one unit at 1 spike/s: median 0.5 s, worst 2.2 s), and one that does not fire for
``silence_timeout`` s cannot be told from a dead rig.
``max_delay`` is accepted for compatibility and no longer used.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pylsl

from controller.acquisition.base import AcquisitionSource, Item, SourceSilent, SpikeBatch, SyncEvent
from wire.acq import LSL_MARKER_NAME, LSL_MARKER_TYPE, LSL_SPIKE_NAME, LSL_SPIKE_TYPE
from wire.errors import AcquisitionError

log = logging.getLogger(__name__)

__all__ = ["LslSource", "parse_marker", "resolve_stream", "stream_record"]


def parse_marker(text: str, t: float) -> SyncEvent:
    """``"photodiode 1"`` -> SyncEvent("photodiode", t, 1); ``"start"`` -> SyncEvent("start", t, 1)."""
    head, _, tail = text.strip().rpartition(" ")
    if head and tail.lstrip("-").isdigit():
        return SyncEvent(head, t, int(tail))
    return SyncEvent(text.strip(), t, 1)


def _describe(info: Any) -> str:
    return (f"{info.name()!r} (type {info.type()!r}, {info.channel_count()} ch, source_id {info.source_id()!r}, "
            f"host {info.hostname()!r})")


#: what a stream name, type, source id or host may hold in a query (LSL's predicates are XPath: a quote
#: or bracket would change the query itself)
_QUERY_VALUE = re.compile(r"[A-Za-z0-9 _.:/@+=,#-]{1,200}")


def _clause(key: str, value: str) -> str:
    if not _QUERY_VALUE.fullmatch(value):
        raise AcquisitionError(f"LSL stream {key} {value!r}: use letters, digits, spaces and _.:/@+=,#- only "
                               "(at most 200 characters)")
    return f"{key}='{value}'"


def resolve_stream(name: str | None, stype: str | None, timeout: float, *, source_id: str | None = None,
                   host: str | None = None, settle: float = 1.0) -> Any:
    """The ONE stream with this name and/or type (and ``source_id`` / ``host`` where given).

    Every stream that matches is resolved (``settle`` s more after the first answers): more than one is an
    AcquisitionError naming each candidate's source id and host, never a silent pick of whichever answered
    first (a second rig left on the defaults, a test outlet, would feed the session another rig's spikes).
    None is an AcquisitionError listing what is visible."""
    if not name and not stype:
        raise AcquisitionError("an LSL stream needs a name or a type to be resolved")
    pred = " and ".join(_clause(k, v) for k, v in (("name", name), ("type", stype), ("source_id", source_id),
                                                   ("hostname", host)) if v)
    found = pylsl.resolve_bypred(pred, 1, timeout)
    if not found:
        visible = pylsl.resolve_streams(wait_time=min(1.0, timeout))
        names = ", ".join(_describe(i) for i in visible) or "none"
        raise AcquisitionError(f"no LSL stream with {pred} within {timeout:g} s; visible streams: {names}")
    found = pylsl.resolve_bypred(pred, 1_000_000, settle) or found  # all of them, not the first to answer
    unique = {i.uid(): i for i in found}
    if len(unique) > 1:
        which = "; ".join(_describe(i) for i in unique.values())
        raise AcquisitionError(f"{len(unique)} LSL streams match {pred}: {which}. Pin the rig's stream in the rig "
                               "file (acquisition.lsl_pin: source_id and/or host), or stop the other outlet")
    return next(iter(unique.values()))


def stream_record(info: Any) -> dict[str, str]:
    """What a session records of a stream it reads."""
    return {"name": info.name(), "type": info.type(), "source_id": info.source_id(), "hostname": info.hostname(),
            "uid": info.uid()}


_DTYPES: dict[int, Any] = {pylsl.cf_float32: np.float32, pylsl.cf_double64: np.float64, pylsl.cf_int8: np.int8,
                           pylsl.cf_int16: np.int16, pylsl.cf_int32: np.int32, pylsl.cf_int64: np.int64}


class _Inlet:
    def __init__(self, info: Any, open_timeout: float) -> None:
        self.info = info
        self.inlet = pylsl.StreamInlet(info, max_buflen=60, recover=True)
        try:
            self.inlet.open_stream(timeout=open_timeout)
        except pylsl.TimeoutError as exc:
            raise AcquisitionError(f"LSL stream {_describe(info)} did not open within {open_timeout:g} s") from exc
        self.numeric = info.channel_format() != pylsl.cf_string
        self.correction = self.inlet.time_correction(timeout=open_timeout)
        # pull_chunk writes the stream's own sample type into dest_obj: the buffer must match it
        dtype = _DTYPES.get(info.channel_format())
        if self.numeric and dtype is None:
            raise AcquisitionError(f"LSL stream {_describe(info)} has an unsupported channel format")
        self.buf = np.empty((4096, info.channel_count()), dtype=dtype) if self.numeric else None

    def refresh_correction(self) -> None:
        try:
            self.correction = self.inlet.time_correction(timeout=0.5)
        except pylsl.TimeoutError:
            log.warning("LSL time correction of %s timed out; keeping %.6f s", self.info.name(), self.correction)

    def pull(self, timeout: float) -> tuple[Any, np.ndarray]:
        if self.buf is not None:
            _, ts = self.inlet.pull_chunk(timeout=timeout, max_samples=self.buf.shape[0], dest_obj=self.buf)
            n = len(ts)
            return self.buf[:n, 0].copy(), np.asarray(ts, dtype=np.float64) + self.correction
        data, ts = self.inlet.pull_chunk(timeout=timeout, max_samples=4096)
        return [row[0] for row in data], np.asarray(ts, dtype=np.float64) + self.correction

    def close(self) -> None:
        self.inlet.close_stream()


class LslSource(AcquisitionSource):
    """Spikes (and sync markers) from LSL. ``marker_name=marker_type=None`` skips the marker stream."""

    name = "lsl"

    def __init__(self, *, spike_name: str | None = LSL_SPIKE_NAME, spike_type: str | None = LSL_SPIKE_TYPE,
                 marker_name: str | None = LSL_MARKER_NAME, marker_type: str | None = LSL_MARKER_TYPE,
                 resolve_timeout: float = 5.0, silence_timeout: float | None = 5.0, max_delay: float = 1.0,
                 correction_interval: float = 5.0, poll: float = 0.02,
                 pin: dict[str, dict[str, str | None]] | None = None) -> None:
        super().__init__(silence_timeout=silence_timeout)
        self._spec = (spike_name, spike_type, marker_name, marker_type)
        #: by role (spikes, markers): the source_id and/or host a stream must have
        self.pin = pin or {}
        self.resolve_timeout = resolve_timeout
        self.max_delay = max_delay  # unused: no heartbeat is made up from the local clock (module docstring)
        self.correction_interval = correction_interval
        self.poll = poll
        self._spikes: _Inlet | None = None
        self._markers: _Inlet | None = None
        self._queue: asyncio.Queue[Item | BaseException] = asyncio.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def time_correction(self) -> float:
        """The spike stream's current LSL time correction (s, added to its timestamps)."""
        return self._spikes.correction if self._spikes else 0.0

    async def open(self) -> None:
        sname, stype, mname, mtype = self._spec
        info = await asyncio.to_thread(self._resolve, "spikes", sname, stype)
        self._spikes = await asyncio.to_thread(_Inlet, info, self.resolve_timeout)
        self.stream_records["spikes"] = stream_record(info)
        if mname or mtype:
            minfo = await asyncio.to_thread(self._resolve, "markers", mname, mtype)
            self._markers = await asyncio.to_thread(_Inlet, minfo, self.resolve_timeout)
            self.stream_records["markers"] = stream_record(minfo)
        loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="lsl-reader", daemon=True)
        self._thread.start()
        log.info("LSL source: spikes from %s%s, time correction %.6f s", _describe(info),
                 f", markers from {_describe(self._markers.info)}" if self._markers else "", self.time_correction)

    def _resolve(self, role: str, name: str | None, stype: str | None) -> Any:
        pin = self.pin.get(role) or {}
        return resolve_stream(name, stype, self.resolve_timeout, source_id=pin.get("source_id"), host=pin.get("host"))

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None
        for inlet in (self._spikes, self._markers):
            if inlet is not None:
                inlet.close()
        self._spikes = self._markers = None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._spikes is not None
        put = self._queue.put_nowait
        next_correction = pylsl.local_clock() + self.correction_interval
        # with a marker stream, markers alone must not keep the source alive (the base class's
        # watchdog counts them as data): the spike stream has its own silence check
        spike_silence = self.silence_timeout if self._markers is not None else None
        last_spike = pylsl.local_clock()
        try:
            while not self._stop.is_set():
                if self._markers is not None:
                    labels, mts = self._markers.pull(0.0)
                    for label, t in zip(labels, mts.tolist(), strict=True):
                        loop.call_soon_threadsafe(put, parse_marker(str(label), t))
                units, ts = self._spikes.pull(self.poll)
                now = pylsl.local_clock()
                if ts.size:  # the batch's own times are the only watermark (no heartbeats: module docstring)
                    u = units.astype(np.int64) if isinstance(units, np.ndarray) else np.asarray(units, dtype=object)
                    loop.call_soon_threadsafe(put, SpikeBatch(u, ts))
                    last_spike = now
                elif spike_silence is not None and now - last_spike > spike_silence:
                    loop.call_soon_threadsafe(put, SourceSilent(
                        f"{self.name}: no spikes on LSL stream {self._spikes.info.name()!r} for {spike_silence:g} s "
                        "(markers alone do not count; is the spike sorter/acquisition running?)"))
                    return
                if now >= next_correction:
                    for inlet in (self._spikes, self._markers):
                        if inlet is not None:
                            inlet.refresh_correction()
                    next_correction = pylsl.local_clock() + self.correction_interval
        except Exception as exc:  # a dead inlet: hand the error to the consumer, never die silently
            log.exception("LSL reader failed")
            err = AcquisitionError(f"LSL reader failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            loop.call_soon_threadsafe(put, err)

    async def _items(self) -> AsyncIterator[Item]:
        if self._thread is None:
            raise AcquisitionError("LslSource used before open() (use 'async with LslSource(...)')")
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
