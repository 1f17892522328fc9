"""Any payload at all on a command topic is obeyed or answered with ``command.rejected``; the
controller's command loop never ends on bad input; the controller's client id is per session."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.bus import EmbeddedBroker, MosquittoBroker, MqttBus, MqttOperator
from controller.bus.base import MAX_REJECTION_CHARS, rejection
from controller.bus.fake import FakeBroker, FakeBus, FakeOperator
from controller.bus.mqtt import controller_identifier
from controller.busbridge import BusBridge
from tests.bus.bus_scenario import CRED, RIG, CommandCollector
from wire.errors import DecodeError, StimError
from wire.topics import (
    MAX_COMMAND_BYTES,
    AbortCommand,
    BusMessage,
    PauseCommand,
    ResumeCommand,
    SessionEvent,
    Topics,
    decode_command,
    encode_payload,
)

TOPICS = Topics(RIG)
#: the topics a fuzz case's first byte picks from
FUZZ_TOPICS = [TOPICS.command("pause"), TOPICS.command("resume"), TOPICS.command("abort"),
               f"{TOPICS.cmd_prefix}/reboot", "cortexloop/other-rig/cmd/abort", f"{TOPICS.cmd_prefix}/"]
#: the suite's hang guard per example (bench/fuzz.py uses 2 s with a timer)
SUITE_HANG_S = 5.0


def command_seeds() -> list[bytes]:
    """Valid commands as fuzz cases (topic index byte + payload)."""
    cmds = [PauseCommand(reason="animal moved", when="after_trial"), ResumeCommand(issued_by="alice"),
            AbortCommand(when="after_block", reason="end")]
    return [bytes([i]) + encode_payload(c) for i, c in enumerate(cmds)] + [b"\x02", b"\x00{}"]


def fuzz_command_bytes(data: bytes) -> None:
    """Fuzz target: the first byte picks a topic, the rest is the payload; decode_command must
    return a command of that topic or raise DecodeError, nothing else."""
    topic = FUZZ_TOPICS[data[0] % len(FUZZ_TOPICS)] if data else FUZZ_TOPICS[0]
    try:
        cmd = decode_command(topic, data[1:], RIG)
    except DecodeError:
        return
    assert topic.endswith("/" + cmd.kind.removeprefix("cmd.")), (topic, cmd)


def _guarded(data: bytes) -> None:
    t0 = time.perf_counter()
    fuzz_command_bytes(data)
    assert time.perf_counter() - t0 < SUITE_HANG_S, f"hang: {len(data)} bytes took > {SUITE_HANG_S} s"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=25)
fields = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["cmd.pause", "cmd.resume", "cmd.abort", "cmd.reboot", "", "bus.status"]) | json_values,
    "when": st.sampled_from(["now", "after_block", "after_trial", "never"]) | json_values,
    "reason": st.text(max_size=1200) | json_values,
    "command_id": st.text(max_size=300) | json_values,
    "issued_by": st.text(max_size=300) | json_values,
    "time": st.floats() | json_values,
    "extra": json_values,
})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_decode_command_on_random_bytes_raises_only_decode_error(data: bytes) -> None:
    _guarded(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 255), obj=fields)
def test_decode_command_on_json_objects_raises_only_decode_error(which: int, obj: dict[str, Any]) -> None:
    _guarded(bytes([which]) + json.dumps(obj).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.text(max_size=80), payload=st.one_of(st.text(max_size=200), st.binary(max_size=200), st.none()))
def test_decode_command_on_any_topic_and_text_raises_only_decode_error(topic: str, payload: Any) -> None:
    for t in (topic, f"{TOPICS.cmd_prefix}/{topic}"):
        try:
            decode_command(t, payload, RIG)
        except DecodeError:
            pass


NASTY: dict[str, bytes] = {
    "deep-list": b"[" * 100_000,
    "deep-list-10k": b"[" * 10_000,                                   # within the size limit: RecursionError
    "deep-dict-2k": b'{"a":' * 2000 + b"1" + b"}" * 2000,
    "deep-in-field": b'{"reason": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "deep-900": b'{"reason": ' + b"[" * 900 + b"]" * 900 + b"}",
    "deep-dict": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "not-utf8": b'{"reason": "\xff\xfe"}',
    "utf16": '{"reason": "x"}'.encode("utf-16"),
    "huge": b'{"reason": "' + b"x" * (MAX_COMMAND_BYTES + 1) + b'"}',
    "huge-int": b'{"time": ' + b"9" * 5000 + b"}",
    "big-int": b'{"time": ' + b"9" * 400 + b"}",
    "nan": b'{"time": NaN}',
    "array": b"[1, 2]",
    "string": b'"abort"',
    "null": b"null",
    "number": b"1e999",
    "wrong-types": b'{"reason": 5, "when": [], "command_id": {}}',
    "unknown-kind": b'{"kind": "cmd.reboot"}',
    "other-kind": b'{"kind": "cmd.abort"}',
    "kind-list": b'{"kind": ["cmd.pause"]}',
    "long-id": b'{"command_id": "' + b"i" * 5000 + b'"}',
    "extra": b'{"x": 1}',
    "nul": b"\x00\x00\x00",
    "bom": b'\xef\xbb\xbf{"reason": "x"}',
}


@pytest.mark.parametrize("payload", NASTY.values(), ids=NASTY.keys())
def test_nasty_payloads_are_decode_errors(payload: bytes) -> None:
    t0 = time.perf_counter()
    with pytest.raises(DecodeError) as err:
        decode_command(TOPICS.command("pause"), payload, RIG)
    assert time.perf_counter() - t0 < 1.0
    event = rejection(TOPICS.command("pause"), err.value)
    assert event.event == "command.rejected" and len(event.message) <= MAX_REJECTION_CHARS


def test_payload_types_and_unicode_edge_cases() -> None:
    topic = TOPICS.command("resume")
    assert isinstance(decode_command(topic, None, RIG), ResumeCommand)
    assert isinstance(decode_command(topic, bytearray(b"{}"), RIG), ResumeCommand)
    assert isinstance(decode_command(topic, memoryview(b"{}"), RIG), ResumeCommand)
    assert decode_command(topic, '{"reason": "caf\u00e9"}', RIG).reason == "caf\u00e9"
    for bad in ('{"reason": "\ud800"}', 5, ["x"]):
        with pytest.raises(DecodeError):
            decode_command(topic, bad, RIG)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        decode_command(5, b"", RIG)  # type: ignore[arg-type]
    assert "unexpected" not in rejection(topic, RuntimeError("boom")).message
    assert rejection(topic, RuntimeError("x" * 10_000)).message.startswith("command on")


# --- over a real broker ------------------------------------------------------------------------------
BROKERS = ["amqtt_broker", "mosquitto"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> EmbeddedBroker | MosquittoBroker:
    b: EmbeddedBroker | MosquittoBroker = request.getfixturevalue(request.param)
    return b


def is_rejection(m: BusMessage) -> bool:
    return isinstance(m, SessionEvent) and m.event == "command.rejected"


async def test_every_bad_payload_is_rejected_and_abort_still_obeyed(broker: EmbeddedBroker | MosquittoBroker) -> None:
    # 512 KiB: past the 16 KiB command limit (rejected by the controller), under the brokers' 1 MiB packet
    # limit (a larger packet closes the sender's connection: tests/bus/test_packet_limit.py)
    sent = {**NASTY, "halfmegabyte": b"{" * (1 << 19), "reboot": b""}
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op, CommandCollector(bus) as commands:
        rejected: list[SessionEvent] = []

        async def collect() -> None:
            async for m in op.statuses():
                if is_rejection(m):
                    assert isinstance(m, SessionEvent)
                    rejected.append(m)

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.2)
        for name, payload in sent.items():
            topic = TOPICS.command("pause") if name != "reboot" else f"{TOPICS.cmd_prefix}/reboot"
            await op.send_raw(topic, payload)
        abort = AbortCommand(reason="still listening")
        await op.send(abort)
        got = await commands.next(timeout=15)
        assert got.command_id == abort.command_id
        for _ in range(100):
            if len(rejected) >= len(sent):
                break
            await asyncio.sleep(0.05)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        assert len(rejected) == len(sent), [m.message[:60] for m in rejected]
        assert all(len(m.message) <= MAX_REJECTION_CHARS and m.level == "warning" for m in rejected)
        assert any("nested too deeply" in m.message for m in rejected)
        assert any("not UTF-8" in m.message for m in rejected)
        assert any("unknown command 'reboot'" in m.message for m in rejected)


async def test_a_retained_command_is_rejected_not_obeyed(broker: EmbeddedBroker | MosquittoBroker) -> None:
    async with MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op:
        await op.send_raw(TOPICS.command("abort"), encode_payload(AbortCommand(reason="stale")), retain=True)
        async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, CommandCollector(bus) as commands:
            event = await op.wait_for(is_rejection)
            assert isinstance(event, SessionEvent) and "retained" in event.message
            pause = PauseCommand()
            await op.send(pause)
            assert (await commands.next()).command_id == pause.command_id   # the stale abort never came


async def test_the_controller_id_is_new_per_session_and_cannot_be_taken_over(
        broker: EmbeddedBroker | MosquittoBroker) -> None:
    a, b = controller_identifier(RIG), controller_identifier(RIG)
    assert a != b and a.startswith(f"cortexloop-{RIG}-controller-") and len(a) - len(f"cortexloop-{RIG}-controller-") == 32
    async with MqttBus(RIG, port=broker.port, **CRED["controller"]) as bus, \
            MqttOperator(RIG, port=broker.port, **CRED["operator"]) as op, CommandCollector(bus) as commands:
        assert bus.identifier is not None and bus.identifier.startswith(f"cortexloop-{RIG}-controller-")
        # a client with the old fixed id (or a guess of the new scheme) connects: the controller stays
        for ident in (f"cortexloop-controller-{RIG}", f"cortexloop-{RIG}-controller-0"):
            intruder = aiomqtt.Client("127.0.0.1", broker.port, identifier=ident, timeout=5, **CRED["viewer"])
            async with intruder:
                await asyncio.sleep(0.2)
        pause = PauseCommand()
        await op.send(pause)
        assert (await commands.next()).command_id == pause.command_id


# --- the bridge's command loop --------------------------------------------------------------------------
class StubEngine:
    """What BusBridge needs of an engine; abort fails the first ``failing`` times."""

    def __init__(self, failing: int = 1) -> None:
        self.config = SimpleNamespace(rig=RIG)
        self.calls: list[str] = []
        self.failing = failing

    def on_status(self, cb: Any) -> None:
        self.cb = cb

    async def pause(self, reason: str) -> None:
        self.calls.append("pause")

    async def resume(self, reason: str) -> None:
        self.calls.append("resume")

    async def abort(self, reason: str) -> None:
        self.calls.append("abort")
        if self.failing:
            self.failing -= 1
            raise StimError("stimserver unreachable")


class FlakyBus(FakeBus):
    """A bus whose command iterator breaks (a bug, not bad input) the first time."""

    broken = True

    async def commands(self):  # type: ignore[no-untyped-def,override]
        if self.broken:
            self.broken = False
            raise RuntimeError("bus implementation bug")
        async for cmd in super().commands():
            yield cmd


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_bridge_keeps_obeying_after_bad_input_failures_and_bugs() -> None:
    broker = FakeBroker()
    bus = FlakyBus(broker, RIG)
    engine = StubEngine()
    async with bus, FakeOperator(broker, RIG) as op, BusBridge(engine, bus, protocol="t"):  # type: ignore[arg-type]
        await asyncio.sleep(0.3)                                          # the loop restarted after the bug
        await op.send_raw(TOPICS.command("pause"), b"[" * 100_000)          # RecursionError in the old decoder
        await op.send_raw(TOPICS.command("pause"), b"\xff")
        await op.send(AbortCommand())                                       # the engine fails it
        await wait_until(lambda: engine.calls == ["abort"])
        failed = await op.wait_for(lambda m: isinstance(m, SessionEvent) and m.event == "command.failed")
        assert isinstance(failed, SessionEvent) and failed.level == "error" and "StimError" in failed.message
        await op.send(PauseCommand())
        await op.send(AbortCommand())
        await wait_until(lambda: engine.calls == ["abort", "pause", "abort"])
    rejected = [m for m in bus.published if isinstance(m, SessionEvent) and m.event == "command.rejected"]
    assert len(rejected) == 2
