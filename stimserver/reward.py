"""Reward outputs: a line that opens the solenoid (juice valve) for a given time.

``RewardLine.pulse(duration_s)`` is called from the display thread's frame loop, so it never blocks:
it stamps the start on ``wire.clock.now``, records ``(start, duration)`` in ``pulses`` and hands the
I/O to the backend's own worker thread (serial writes, modem lines, DAQ writes), or does one call
that cannot block (an LSL push). Backends, made from a spec string by :func:`make_reward_line`:

- ``serial:PORT[?mode=command|rts|dtr&baud=115200&command=R{ms}\\n&settle=0]``: :class:`SerialReward`
- ``lsl`` / ``lsl:NAME``: :class:`LslReward`, Markers ``reward <ms>`` for a program that drives the valve
- ``nidaqmx:Dev1/port0/line0``: :class:`NidaqReward`; ``labjack:FIO0[?device=ANY]``: :class:`LabJackReward`
- ``none``: :class:`NullReward` (records only)
"""

from __future__ import annotations

import codecs
import heapq
import importlib
import itertools
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from wire import clock
from wire.errors import InvalidRequest, StateError, StimError

log = logging.getLogger(__name__)

__all__ = ["LabJackReward", "LslReward", "NidaqReward", "NullReward", "RewardLine", "SerialReward",
           "make_reward_line"]


class _Worker:
    """One background thread that runs actions at their due time (``wire.clock.now`` base), in order."""

    def __init__(self, name: str, errors: list[str]) -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._seq, self._cond, self._stop, self.errors = itertools.count(), threading.Condition(), False, errors
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, action: Callable[[], object], at: float | None = None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (clock.now() if at is None else at, next(self._seq), action))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._heap and (self._stop or self._heap[0][0] <= clock.now()):
                        action = heapq.heappop(self._heap)[2]
                        break
                    if self._stop:
                        return
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - clock.now()))
            try:
                action()
            except Exception as exc:  # keep serving: the next pulse may work (a replugged cable)
                log.exception("reward line action failed")
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def close(self, timeout: float = 5.0) -> None:
        """Run what is still queued now (a pending 'line low' included), then stop."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


class RewardLine(ABC):
    """One reward output. ``open()``, then ``pulse()`` from any thread (non-blocking), ``close()``."""

    name: str = "reward"

    def __init__(self) -> None:
        self.pulses: list[tuple[float, float]] = []  # (start on wire.clock.now, duration s)
        self.errors: list[str] = []  # I/O failures of the worker thread ("Type: message")
        self.is_open = False

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def _start(self, t: float, duration_s: float) -> None:
        """Start the pulse stamped ``t`` without blocking."""

    def pulse(self, duration_s: float) -> float:
        """Open the line for ``duration_s`` (starts now, returns at once); the start on ``wire.clock.now``."""
        if not self.is_open:
            raise StateError(f"reward line {self.name!r} pulsed before open()")
        if not (math.isfinite(duration_s) and 0.0 < duration_s <= 10.0):
            raise InvalidRequest(f"reward pulse of {duration_s!r} s: must be in (0, 10] s")
        t = clock.now()
        self._start(t, duration_s)
        self.pulses.append((t, duration_s))
        return t


class NullReward(RewardLine):
    """No hardware: records the pulses (a desk test, a rig whose reward is given by hand)."""

    name = "none"

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _start(self, t: float, duration_s: float) -> None:
        pass


class _LineReward(RewardLine):
    """A digital line set high, then low after the duration, by a worker thread; overlapping pulses
    keep it high until the last one ends."""

    def __init__(self) -> None:
        super().__init__()
        self._worker: _Worker | None = None
        self._high_until = -math.inf  # worker thread only

    @abstractmethod
    def _set(self, high: bool) -> None: ...

    def _raise(self, end: float) -> None:
        self._high_until = max(self._high_until, end)
        self._set(True)

    def _lower(self) -> None:
        if clock.now() >= self._high_until - 1e-4:  # else a later pulse still holds the line high
            self._set(False)

    def _start(self, t: float, duration_s: float) -> None:
        assert self._worker is not None
        self._worker.submit(lambda: self._raise(t + duration_s))
        self._worker.submit(self._lower, at=t + duration_s)

    def _start_worker(self) -> None:
        self._worker = _Worker(f"reward-{self.name}", self.errors)
        self._worker.submit(lambda: self._set(False))
        self.is_open = True

    def _stop_worker(self) -> None:
        self.is_open = False
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.submit(lambda: self._set(False))  # whatever was pending: the valve ends closed
            worker.close()


class SerialReward(_LineReward):
    """A serial port: ``command`` mode writes ``command.format(ms=...)`` (an Arduino opens the valve for
    that long); ``rts`` / ``dtr`` mode raise that modem line for the duration (a transistor on it).

    ``settle_s`` waits after opening (an Arduino resets when the port opens and needs ~2 s)."""

    def __init__(self, port: str, baud: int = 115200, mode: str = "command", command: str = "R{ms}\n",
                 settle_s: float = 0.0) -> None:
        super().__init__()
        if mode not in ("command", "rts", "dtr"):
            raise InvalidRequest(f"serial reward mode {mode!r}: use command, rts or dtr")
        try:
            command.format(ms="100")
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidRequest(f"serial reward command {command!r}: only the field {{ms}} is allowed") from exc
        self.port, self.baud, self.mode, self.command, self.settle_s = port, int(baud), mode, command, settle_s
        self.name = f"serial:{port}"
        self._serial: Any = None

    def open(self, serial_port: Any = None) -> None:
        """Open the port (``serial_port``: an already made pyserial-like object, for tests)."""
        if self.is_open:
            return
        if serial_port is None:
            serial = importlib.import_module("serial")
            serial_port = serial.Serial()
            serial_port.port, serial_port.baudrate, serial_port.write_timeout = self.port, self.baud, 2.0
            if self.mode != "command":
                serial_port.rts = serial_port.dtr = False  # applied at open: the valve stays closed
            try:
                serial_port.open()
            except (OSError, serial.SerialException) as exc:
                raise StimError(f"cannot open the reward serial port {self.port!r}: {exc}") from exc
        self._serial = serial_port
        if self.settle_s > 0:
            time.sleep(self.settle_s)
        self._start_worker()

    def _set(self, high: bool) -> None:
        if self.mode != "command":
            setattr(self._serial, self.mode, high)  # pyserial's rts / dtr property: one ioctl

    def _start(self, t: float, duration_s: float) -> None:
        if self.mode != "command":
            super()._start(t, duration_s)
            return
        data = self.command.format(ms=round(duration_s * 1000.0)).encode()
        assert self._worker is not None
        self._worker.submit(lambda: self._serial.write(data))

    def close(self) -> None:
        self._stop_worker()
        if self._serial is not None:
            self._serial.close()
            self._serial = None


class LslReward(RewardLine):
    """An LSL Markers outlet: one sample ``reward <ms>`` per pulse, stamped with its start on LSL's clock."""

    def __init__(self, name: str = "cortexloop-reward", source_id: str = "cortexloop-reward") -> None:
        super().__init__()
        self.stream_name, self.source_id = name, source_id
        self.name = f"lsl:{name}"
        self._outlet: Any = None
        self._offset = 0.0

    def open(self) -> None:
        import pylsl

        from stimserver.markers import clock_offset

        info = pylsl.StreamInfo(self.stream_name, "Markers", 1, pylsl.IRREGULAR_RATE, "string", self.source_id)
        info.desc().append_child_value("content", "reward pulses: 'reward <ms>'; timestamp = pulse start")
        self._offset = clock_offset()
        self._outlet = pylsl.StreamOutlet(info)
        self.is_open = True

    def _start(self, t: float, duration_s: float) -> None:
        self._outlet.push_sample([f"reward {round(duration_s * 1000.0, 3):g}"], t + self._offset)  # 12.5, 100

    def close(self) -> None:
        self.is_open = False
        self._outlet = None


def _import(module: str, how: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise StimError(f"this reward line needs the Python package {module!r}, which is not installed: {how}") from exc


class NidaqReward(_LineReward):
    """A National Instruments digital output line (nidaqmx): high for the duration."""

    def __init__(self, line: str = "Dev1/port0/line0") -> None:
        super().__init__()
        self.line, self.name = line, f"nidaqmx:{line}"
        self._nidaqmx = _import("nidaqmx", "pip install nidaqmx, and install NI-DAQmx from ni.com")
        self._task: Any = None

    def open(self) -> None:
        try:
            self._task = self._nidaqmx.Task()
            self._task.do_channels.add_do_chan(self.line)
        except Exception as exc:
            raise StimError(f"cannot open the NI-DAQmx line {self.line!r}: {exc}") from exc
        self._start_worker()

    def _set(self, high: bool) -> None:
        self._task.write(high)

    def close(self) -> None:
        self._stop_worker()
        if self._task is not None:
            self._task.close()
            self._task = None


class LabJackReward(_LineReward):
    """A LabJack digital line (LJM ``eWriteName`` 1, then 0)."""

    def __init__(self, channel: str = "FIO0", device: str = "ANY") -> None:
        super().__init__()
        self.channel, self.device, self.name = channel, device, f"labjack:{channel}"
        self._ljm = _import("labjack.ljm", "pip install labjack-ljm, and install the LJM library from labjack.com")
        self._handle: Any = None

    def open(self) -> None:
        try:
            self._handle = self._ljm.openS("ANY", "ANY", self.device)
        except Exception as exc:
            raise StimError(f"cannot open the LabJack {self.device!r}: {exc}") from exc
        self._start_worker()

    def _set(self, high: bool) -> None:
        self._ljm.eWriteName(self._handle, self.channel, 1 if high else 0)

    def close(self) -> None:
        self._stop_worker()
        if self._handle is not None:
            self._ljm.close(self._handle)
            self._handle = None


def make_reward_line(spec: str) -> RewardLine:
    """The reward line a spec names (see the module's docstring); not opened yet."""
    kind, _, rest = spec.strip().partition(":")
    target, _, query = rest.partition("?")
    opts = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    allowed = {"serial": {"mode", "baud", "command", "settle"}, "labjack": {"device"}}.get(kind, set())
    if set(opts) - allowed:
        raise InvalidRequest(f"reward spec {spec!r}: unknown option(s) {sorted(set(opts) - allowed)}; "
                             f"{kind} takes {sorted(allowed) or 'none'}")
    try:
        if kind in ("none", ""):
            return NullReward()
        if kind == "lsl":
            return LslReward(target) if target else LslReward()
        if not target:
            raise InvalidRequest(f"reward spec {spec!r} names no {'port' if kind == 'serial' else 'line'}")
        if kind == "serial":
            cmd = codecs.decode(opts["command"], "unicode_escape") if "command" in opts else "R{ms}\n"
            return SerialReward(target, baud=int(opts.get("baud", 115200)), mode=opts.get("mode", "command"),
                                command=cmd, settle_s=float(opts.get("settle", 0.0)))
        if kind == "nidaqmx":
            return NidaqReward(target)
        if kind == "labjack":
            return LabJackReward(target, device=opts.get("device", "ANY"))
    except ValueError as exc:
        raise InvalidRequest(f"reward spec {spec!r}: {exc}") from exc
    raise InvalidRequest(f"reward spec {spec!r}: unknown kind {kind!r} (serial:PORT, lsl[:NAME], nidaqmx:LINE, "
                         "labjack:CHANNEL, none)")
