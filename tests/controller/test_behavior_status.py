"""An awake animal's live behaviour in the controller: the counters (``controller.engine.behavior``), the
``behavior`` status the engine sends from the stimserver's events, the "not working" warning (and its
pause), and the operator's manual reward, against a real stimserver (display-free presenter) whose gaze
source is a test animal that looks inside or outside the fixation window on command."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.acquisition.binning import Binner, BinningConfig
from controller.engine import Engine, EngineConfig
from controller.engine.behavior import BehaviorCounts, BehaviorTracker
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.store import SessionReader, SessionWriter
from protocols.steps import ImageSet, PresentBlock, Step, WaitForCounts
from stimserver.fake_presenter import FakePresenter
from stimserver.gaze import GazeSource
from stimserver.reward import NullReward
from stimserver.server import StimServer
from virtualrig.loopback import LoopbackRig
from virtualrig.rates import GaborEnergyRates
from wire import clock
from wire.behavior import BehaviorEvent, FixationRule, GazeSample, RewardEvent
from wire.documents import EventDoc, RewardDoc, StopDoc
from wire.errors import CortexloopError
from wire.stim import FixationSpot, TrialEvent
from wire.topics import BehaviorStatus


# --- the counters -----------------------------------------------------------------------------------
def behave(what: str, block: str = "b0~0", gaze: tuple[float, float] | None = (0.1, -0.2)) -> BehaviorEvent:
    return BehaviorEvent(block_id=block, time=10.0, what=what, gaze=gaze, sample_time=9.99)  # type: ignore[arg-type]


def trial(valid: bool, block: str = "b0~0") -> TrialEvent:
    return TrialEvent(block_id=block, trial_id="t", index=0, image_id="i", onset=1.0, offset=1.1, on_frames=3,
                      dropped_frames=0, valid=valid, invalid_reason=None if valid else "break_fixation")


def reward(manual: bool = False, block: str | None = "b0~0") -> RewardEvent:
    return RewardEvent(block_id=block, time=11.0, duration_s=0.1, manual=manual)


def test_counts_take_each_kind_of_event() -> None:
    c = BehaviorCounts()
    assert c.share_completed is None and c.as_dict()["share_completed"] is None
    for ev in (behave("acquired"), behave("break"), behave("acquired"), behave("completed"), behave("acquired"),
               behave("completed"), behave("no_fixation"), behave("no_fixation"), reward(), reward(manual=True),
               trial(False), trial(False), trial(False)):
        assert c.update(ev)
    assert not c.update(trial(True))  # a valid trial changes nothing
    assert (c.started, c.completed, c.breaks, c.no_fixation) == (3, 2, 1, 2)
    assert (c.rewards, c.manual_rewards, c.invalid) == (2, 1, 3)
    assert c.share_completed == pytest.approx(2 / 3)
    assert c.as_dict() == {"started": 3, "completed": 2, "breaks": 1, "no_fixation": 2, "rewards": 2,
                           "manual_rewards": 1, "invalid": 3, "share_completed": pytest.approx(2 / 3)}


def test_the_tracker_keeps_session_and_block_counts_and_the_last_gaze() -> None:
    t = BehaviorTracker(window_deg=1.5, centre=(0.5, 0.0))
    t.update(behave("acquired"), "b0")
    t.update(behave("completed", gaze=(0.4, 0.3)), "b0")
    t.update(trial(False), "b0")
    assert t.gaze == (0.4, 0.3) and t.last == "completed" and t.gaze_time == 9.99
    t.update(behave("acquired", block="b1~0"), "b1")  # the next block: new block counts
    t.update(reward(manual=True, block=None), None)  # between blocks: the session's only
    t.update(behave("break", block="b1~0", gaze=(math.nan, math.nan)), "b1")
    assert t.block_id == "b1" and t.gaze is None and t.last == "break"  # no eye: no position
    assert (t.block.started, t.block.completed, t.block.breaks, t.block.invalid, t.block.rewards) == (1, 0, 1, 0, 0)
    assert (t.session.started, t.session.completed, t.session.invalid, t.session.rewards) == (2, 1, 1, 1)
    t.set_idle(31.0, "not working")
    p = t.payload()
    assert p["idle"] and p["idle_s"] == 31.0 and p["warning"] == "not working"
    assert t.update(behave("completed", block="b1~0"), "b1") and not t.payload()["idle"]  # a completion clears it
    # the payload is exactly what the bus carries
    status = BehaviorStatus.model_validate({"session_id": "s", **t.payload()})
    assert status.block.completed == 1 and status.session.share_completed == pytest.approx(1.0)
    assert status.centre == (0.5, 0.0) and status.window_deg == 1.5 and status.gaze == (0.1, -0.2)


# --- the engine against a real stimserver -------------------------------------------------------------
class TestAnimal(GazeSource):
    """One sample per poll at the stimulus clock's now: inside the window (fixating) or far outside."""

    __test__ = False
    name = "test-animal"

    def __init__(self) -> None:
        self.fixating = True

    def open(self) -> None:
        pass

    def poll(self) -> list[GazeSample]:
        x, y = (0.2, -0.1) if self.fixating else (8.0, 5.0)
        return [GazeSample(t=clock.now(), x=x, y=y)]

    def close(self) -> None:
        pass


RULE = FixationRule(window_deg=2.0, acquire_s=0.25, hold_s=0.05, images_per_fixation=4, blink_grace_s=0.05,
                    timeout_s=0.05, count_window_s=0.05, max_attempts=3, max_no_fixation=1000)


def block(block_id: str, n: int) -> Iterator[Step]:
    yield PresentBlock(block_id=block_id, images=[ImageSet(source="normal", n_images=n)], repeats=1,
                       on_frames=3, off_frames=3)
    yield WaitForCounts(block_id=block_id, timeout_s=30)


async def awake_session(path: Path, plan: Iterator[Step], animal: TestAnimal, *, idle_warn_s: float = 30.0,
                        idle_pause: bool = False,
                        during: Callable[[Engine, list[tuple[str, dict[str, Any]]]], Any] | None = None,
                        reward_line: bool = True) -> tuple[StopDoc, list[tuple[str, dict[str, Any]]]]:
    """Run ``plan`` with the awake rule; ``during(engine, statuses)`` runs beside it (the operator)."""
    lib = ImageLibrary(np.random.default_rng(3).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
    pixels: dict[str, np.ndarray] = {}
    statuses: list[tuple[str, dict[str, Any]]] = []
    async with StimServer(FakePresenter(refresh_hz=120.0), gaze=animal,
                          reward=NullReward() if reward_line else None) as srv:
        store = SessionWriter.create(path)
        rig = LoopbackRig(srv.events_endpoint, GaborEnergyRates(4, seed=1), lambda i: pixels[i], seed=2, delay=0.2)
        try:
            async with StimLink(srv.rpc_endpoint, srv.events_endpoint) as stim:
                engine = Engine(EngineConfig(session_id=path.stem, seed=5, behavior=RULE,
                                             fixation_spot=FixationSpot(position_deg=(0.0, 0.0)),
                                             idle_warn_s=idle_warn_s, idle_pause=idle_pause),
                                store=store, stim=stim, source=rig, binner=Binner(BinningConfig(window=(0.05, 0.15))),
                                images=lib, pixels=pixels, image_listeners=[rig.prepare])
                engine.on_status(lambda t, p: statuses.append((t, p)))
                await rig.open()
                await srv.wait_for_subscribers(2)
                operator = asyncio.create_task(during(engine, statuses)) if during is not None else None
                try:
                    stop = await asyncio.wait_for(engine.run(plan, protocol={"name": "awake-test"}), 60)
                finally:
                    if operator is not None:
                        if not operator.done():
                            operator.cancel()
                        await asyncio.gather(operator, return_exceptions=True)
                if operator is not None and not operator.cancelled() and operator.exception() is not None:
                    raise operator.exception()  # type: ignore[misc]
        finally:
            store.close()
    return stop, statuses


async def until(check: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


def behaviour(statuses: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [p for t, p in statuses if t == "behavior"]


def documents(path: Path) -> list[Any]:
    with SessionReader(path) as r:
        return list(r.documents())


async def test_a_fixating_animal_counts_live_and_an_operator_reward_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "awake.h5"
    animal = TestAnimal()
    given: list[str] = []

    async def operator(engine: Engine, statuses: list[tuple[str, dict[str, Any]]]) -> None:
        # the first completed sequence has been reported live, mid-block: the operator adds a reward
        await until(lambda: any(p["block"]["completed"] >= 1 for p in behaviour(statuses)))
        await engine.give_reward(40.0, operator="alice", command_id="c-1", reason="good monkey")
        given.append("reward")

    stop, statuses = await awake_session(path, block("b0", 16), animal, during=operator)
    assert stop.exit_status == "success", stop.reason
    assert given == ["reward"]
    docs = documents(path)
    rewards = [d for d in docs if isinstance(d, RewardDoc)]
    manual = [d for d in rewards if d.manual]
    assert len(manual) == 1 and manual[0].duration_s == pytest.approx(0.04) and manual[0].block_id == "b0"
    (op,) = [d for d in docs if isinstance(d, EventDoc) and d.what == "operator"]
    assert "alice" in op.message and op.details["issued_by"] == "alice" and op.details["command_id"] == "c-1"
    assert op.details["duration_ms"] == 40.0 and op.details["ok"] is True
    (summary,) = [d for d in docs if isinstance(d, EventDoc) and d.what == "behavior"]

    live = behaviour(statuses)
    last = live[-1]
    # the live counters agree with what the stimserver's block reply said at its end
    assert last["block_id"] == "b0" and last["session_id"] == path.stem
    assert last["block"]["completed"] == summary.details["completed"] == 4
    assert last["block"]["rewards"] == len(rewards) == 5 and last["block"]["manual_rewards"] == 1
    assert last["block"]["invalid"] == summary.details["invalid"] == 0
    assert last["block"]["started"] >= 4 and last["block"]["share_completed"] == pytest.approx(
        4 / last["block"]["started"])
    assert last["session"] == last["block"]
    # the gaze the stimserver judged, in the window the dashboard draws
    assert last["gaze"] == pytest.approx([0.2, -0.1]) and last["last"] == "completed"
    assert last["window_deg"] == 2.0 and last["centre"] == [0.0, 0.0] and not last["idle"]
    # counters only grow, one event at a time
    completed = [p["session"]["completed"] for p in live]
    assert completed == sorted(completed) and completed[0] <= 1
    assert not [d for d in docs if isinstance(d, EventDoc) and d.what == "animal_idle"]


async def test_a_stimserver_without_a_reward_line_refuses_and_the_refusal_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "noline.h5"
    refused: list[BaseException] = []

    async def operator(engine: Engine, statuses: list[tuple[str, dict[str, Any]]]) -> None:
        await until(lambda: behaviour(statuses))
        try:
            await engine.give_reward(None, operator="bob")
        except CortexloopError as exc:
            refused.append(exc)

    stop, _ = await awake_session(path, block("b0", 4), TestAnimal(), during=operator, reward_line=False)
    assert stop.exit_status == "success", stop.reason
    assert len(refused) == 1 and "reward line" in str(refused[0])
    docs = documents(path)
    assert not [d for d in docs if isinstance(d, RewardDoc) and d.manual]
    (op,) = [d for d in docs if isinstance(d, EventDoc) and d.what == "operator"]
    assert op.details["ok"] is False and "bob" in op.message and "failed" in op.message
    assert op.details["duration_ms"] == RULE.reward.duration_ms  # None: the schedule's base length


async def test_an_idle_animal_is_warned_about_once_and_the_session_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "idle.h5"
    animal = TestAnimal()
    animal.fixating = False

    async def operator(engine: Engine, statuses: list[tuple[str, dict[str, Any]]]) -> None:
        await until(lambda: any(p["idle"] for p in behaviour(statuses)))
        await asyncio.sleep(1.5)  # two more idle periods: still one warning
        assert engine.session.state.value == "running"
        animal.fixating = True  # the animal works again

    stop, statuses = await awake_session(path, block("b0", 8), animal, idle_warn_s=0.6, during=operator)
    assert stop.exit_status == "success", stop.reason
    docs = documents(path)
    idle = [d for d in docs if isinstance(d, EventDoc) and d.what == "animal_idle"]
    assert len(idle) == 1 and idle[0].details["block_id"] == "b0" and idle[0].details["pause"] is False
    assert idle[0].details["idle_s"] >= 0.6 and "not working" in idle[0].message
    assert not [d for d in docs if isinstance(d, EventDoc) and d.what == "paused"]
    live = behaviour(statuses)
    first = next(i for i, p in enumerate(live) if p["idle"])
    assert "not working" in live[first]["warning"] and live[first]["idle_s"] >= 0.6
    assert live[first]["block"]["completed"] == 0 and live[first]["block"]["no_fixation"] >= 1
    assert live[first]["gaze"] == pytest.approx([8.0, 5.0]) and live[first]["last"] == "no_fixation"
    assert [t for t, p in statuses if t == "event" and p["what"] == "animal_idle"]  # published, too
    assert not live[-1]["idle"] and live[-1]["warning"] == "" and live[-1]["block"]["completed"] >= 2


async def test_an_idle_animal_pauses_the_session_with_idle_pause(tmp_path: Path) -> None:
    path = tmp_path / "pause.h5"
    animal = TestAnimal()
    animal.fixating = False
    paused_seen: list[str] = []

    async def operator(engine: Engine, statuses: list[tuple[str, dict[str, Any]]]) -> None:
        await until(lambda: engine.session.state.value == "paused")
        paused_seen.append(engine.session.state.value)
        await asyncio.sleep(0.5)
        assert engine.session.state.value == "paused"  # it stays paused until the operator resumes
        assert any(p["idle"] for p in behaviour(statuses))
        animal.fixating = True
        await engine.resume("operator: the animal is back")

    stop, statuses = await awake_session(path, block("b0", 8), animal, idle_warn_s=0.4, idle_pause=True,
                                         during=operator)
    assert stop.exit_status == "success", stop.reason
    assert paused_seen == ["paused"]
    docs = documents(path)
    whats = [d.what for d in docs if isinstance(d, EventDoc)]
    assert whats.index("animal_idle") < whats.index("paused") < whats.index("resumed")
    (paused,) = [d for d in docs if isinstance(d, EventDoc) and d.what == "paused"]
    assert "animal idle" in paused.message
    (idle,) = [d for d in docs if isinstance(d, EventDoc) and d.what == "animal_idle"]
    assert idle.details["pause"] is True
    assert not behaviour(statuses)[-1]["idle"]  # working again: the warning went
