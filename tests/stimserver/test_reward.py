"""Reward lines: a real pseudo-terminal for the serial backend, a real LSL inlet, fakes for the DAQs."""

from __future__ import annotations

import importlib.util
import os
import select
import statistics
import sys
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from stimserver.reward import (
    LabJackReward,
    LslReward,
    NidaqReward,
    NullReward,
    SerialReward,
    make_reward_line,
)
from wire import clock
from wire.errors import InvalidRequest, StateError, StimError


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """(master fd, slave device name) of a fresh pseudo-terminal."""
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def read_exactly(fd: int, n: int, timeout: float = 2.0) -> bytes:
    out, end = b"", time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        if select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
            out += os.read(fd, n - len(out))
    return out


def test_serial_command_bytes_arrive_within_5_ms_and_pulse_does_not_block(pty: tuple[int, str]) -> None:
    master, name = pty
    line = SerialReward(name, baud=115200)
    line.open()
    calls, latencies = [], []
    try:
        for k in range(50):
            ms = 50 + k
            t0 = clock.now()
            t = line.pulse(ms / 1000)
            t1 = clock.now()
            expected = f"R{ms}\n".encode()
            got = read_exactly(master, len(expected))
            t2 = clock.now()
            assert got == expected
            assert t0 <= t <= t1
            calls.append(t1 - t0)
            latencies.append(t2 - t0)
    finally:
        line.close()
    call_ms, lat_ms = 1000 * statistics.median(calls), 1000 * statistics.median(latencies)
    print(f"\nserial pty: pulse() median {call_ms:.3f} ms (max {1000 * max(calls):.3f}); call-to-bytes "
          f"median {lat_ms:.3f} ms (max {1000 * max(latencies):.3f})")
    assert call_ms < 1.0
    assert lat_ms < 5.0
    assert [d for _, d in line.pulses] == [(50 + k) / 1000 for k in range(50)]


def test_serial_custom_command_from_spec(pty: tuple[int, str]) -> None:
    master, name = pty
    line = make_reward_line(f"serial:{name}?command=JUICE%20{{ms}}\\r\\n&baud=9600")
    assert isinstance(line, SerialReward) and line.baud == 9600
    line.open()
    try:
        line.pulse(0.25)
        assert read_exactly(master, 11) == b"JUICE 250\r\n"
    finally:
        line.close()


class FakeSerial:
    """A pyserial stand-in that records its modem-line changes (a pty refuses TIOCMBIS: ENOTTY)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, bool, float]] = []
        self.closed = False

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("rts", "dtr"):
            self.changes.append((key, value, clock.now()))
        object.__setattr__(self, key, value)

    def close(self) -> None:
        self.closed = True


def levels(fake: FakeSerial, which: str) -> list[tuple[bool, float]]:
    return [(v, t) for k, v, t in fake.changes if k == which]


@pytest.mark.parametrize("mode", ["rts", "dtr"])
def test_modem_line_pulse_timing(mode: str) -> None:
    fake = FakeSerial()
    line = SerialReward("/dev/fake", mode=mode)
    line.open(serial_port=fake)
    time.sleep(0.02)
    t = line.pulse(0.05)
    time.sleep(0.1)
    changes = levels(fake, mode)
    assert [v for v, _ in changes] == [False, True, False]  # low at open, high, low
    assert 0 <= changes[1][1] - t < 0.02  # timer logic; the latency itself is measured on the pty
    assert 0.05 <= changes[2][1] - t < 0.07
    assert levels(fake, "dtr" if mode == "rts" else "rts") == []
    # overlapping pulses: the line stays high until the later one ends
    t1 = line.pulse(0.05)
    time.sleep(0.02)
    t2 = line.pulse(0.05)
    time.sleep(0.1)
    after = levels(fake, mode)[3:]
    assert [v for v, _ in after] == [True, True, False]
    assert 0.05 <= after[-1][1] - t2 < 0.07 and after[-1][1] - t1 > 0.065
    line.close()
    assert fake.closed


def test_close_during_a_pulse_leaves_the_valve_closed() -> None:
    fake = FakeSerial()
    line = SerialReward("/dev/fake", mode="rts")
    line.open(serial_port=fake)
    t = line.pulse(2.0)
    time.sleep(0.01)
    line.close()
    changes = levels(fake, "rts")
    assert changes[-1][0] is False and changes[-1][1] - t < 0.5


def test_a_failing_write_is_recorded_and_the_next_pulse_still_goes_out() -> None:
    class Flaky(FakeSerial):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[bytes] = []

        def write(self, data: bytes) -> int:
            if not self.written and not self.changes:
                self.changes.append(("failed", True, 0.0))
                raise OSError(5, "Input/output error")
            self.written.append(data)
            return len(data)

    fake = Flaky()
    line = SerialReward("/dev/fake")
    line.open(serial_port=fake)
    line.pulse(0.1)
    line.pulse(0.2)
    line.close()
    assert line.errors == ["OSError: [Errno 5] Input/output error"]
    assert fake.written == [b"R200\n"] and len(line.pulses) == 2


def test_lsl_reward_marker_with_the_pulse_time() -> None:
    import pylsl

    from stimserver.markers import clock_offset

    name = f"reward-{uuid.uuid4().hex[:8]}"
    line = make_reward_line(f"lsl:{name}")
    assert isinstance(line, LslReward)
    line.open()
    try:
        found = pylsl.resolve_byprop("name", name, 1, 10.0)
        assert found and found[0].type() == "Markers"
        inlet = pylsl.StreamInlet(found[0])
        inlet.open_stream(10.0)
        t = line.pulse(0.1)
        sample, ts = inlet.pull_sample(timeout=5.0)
        assert sample == ["reward 100"]
        assert ts is not None and abs(ts - (t + clock_offset())) < 1e-3
        line.pulse(0.0125)
        assert inlet.pull_sample(timeout=5.0)[0] == ["reward 12.5"]
    finally:
        line.close()


def test_null_reward_records_and_refuses_misuse() -> None:
    line = make_reward_line("none")
    assert isinstance(line, NullReward)
    with pytest.raises(StateError):
        line.pulse(0.1)
    line.open()
    t = line.pulse(0.1)
    with pytest.raises(InvalidRequest):
        line.pulse(0.0)
    with pytest.raises(InvalidRequest):
        line.pulse(float("nan"))
    assert line.pulses == [(t, 0.1)]


def test_specs() -> None:
    s = make_reward_line("serial:/dev/ttyUSB0?mode=rts&baud=9600")
    assert isinstance(s, SerialReward) and (s.port, s.mode, s.baud, s.command) == ("/dev/ttyUSB0", "rts", 9600, "R{ms}\n")
    s = make_reward_line("serial:/dev/ttyACM0")
    assert isinstance(s, SerialReward) and (s.mode, s.baud) == ("command", 115200)
    lsl = make_reward_line("lsl")
    assert isinstance(lsl, LslReward) and lsl.stream_name == "cortexloop-reward"
    for bad in ("serial", "serial:/dev/x?mode=cts", "serial:/dev/x?speed=1", "serial:/dev/x?baud=fast",
                "serial:/dev/x?command=R{s}", "gpio:4", "lsl:x?mode=rts"):
        with pytest.raises(InvalidRequest):
            make_reward_line(bad)


@pytest.mark.skipif(importlib.util.find_spec("nidaqmx") is not None or importlib.util.find_spec("labjack") is not None,
                    reason="nidaqmx / labjack-ljm are installed here")
def test_missing_daq_packages_say_how_to_install() -> None:
    with pytest.raises(StimError, match="pip install nidaqmx"):
        make_reward_line("nidaqmx:Dev1/port0/line0")
    with pytest.raises(StimError, match="pip install labjack-ljm"):
        make_reward_line("labjack:FIO0")


def test_nidaq_and_labjack_logic_with_fake_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[tuple[str, object, float]] = []

    class Task:
        def __init__(self) -> None:
            self.do_channels = types.SimpleNamespace(add_do_chan=lambda line: writes.append(("chan", line, 0.0)))

        def write(self, value: bool) -> None:
            writes.append(("nidaq", value, clock.now()))

        def close(self) -> None:
            writes.append(("nidaq-close", None, 0.0))

    ljm = types.SimpleNamespace(openS=lambda *a: ("handle", *a), close=lambda h: writes.append(("lj-close", h, 0.0)),
                                eWriteName=lambda h, name, v: writes.append((f"lj:{name}", v, clock.now())))
    monkeypatch.setitem(sys.modules, "nidaqmx", types.SimpleNamespace(Task=Task))
    monkeypatch.setitem(sys.modules, "labjack", types.SimpleNamespace(ljm=ljm))
    monkeypatch.setitem(sys.modules, "labjack.ljm", ljm)
    for spec, key in (("nidaqmx:Dev2/port0/line3", "nidaq"), ("labjack:FIO2?device=470012345", "lj:FIO2")):
        writes.clear()
        line = make_reward_line(spec)
        assert isinstance(line, NidaqReward | LabJackReward)
        line.open()
        t = line.pulse(0.03)
        time.sleep(0.06)
        line.close()
        got = [(v, ts) for k, v, ts in writes if k == key]
        assert [v for v, _ in got][:3] in ([False, True, False], [0, 1, 0])
        assert 0.03 <= got[2][1] - t < 0.05
    assert ("lj-close", ("handle", "ANY", "ANY", "470012345"), 0.0) in writes
