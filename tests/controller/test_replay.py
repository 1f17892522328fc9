"""Offline replay and the V4 importer: recorded counts come back exactly; replays are deterministic."""

from __future__ import annotations

import asyncio
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from controller.demo import DemoSettings
from controller.importer import import_v4
from controller.replay import Recording, replay_plan, replay_session
from controller.store import SessionReader
from protocols.plan import adrive
from protocols.steps import (
    BlockResult,
    CountsResult,
    ImageSet,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Step,
    WaitForCounts,
)
from wire.documents import BlockDoc, EventDoc, ModelVersionDoc, PickDoc, ResponseDoc, StopDoc, TrialDoc
from wire.errors import AcquisitionError, InvalidRequest, NotFound, StoreError


def fake_v4(root: Path, session: str, n_images: int = 7, neurons: int = 3, raw: bool = False) -> np.ndarray:
    """A folder in the V4 layout: ``n_images`` PNGs and their responses (raw with NaN slots, or averaged)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "images" / f"images_{session}.zip", "w") as z:
        for i in range(n_images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
            z.writestr(f"img_{i:03d}.png", buf.getvalue())
    if raw:
        resp = rng.poisson(4.0, (neurons, n_images, 3)).astype(np.float64)
        resp[:, 1, 2] = np.nan  # image 1 was shown twice, image 4 once
        resp[:, 4, 1:] = np.nan
        folder = root / "responses_raw"
    else:
        resp = rng.poisson(40.0, (neurons, n_images)) / 7.0  # means over repeats: not whole numbers
        folder = root / "responses_avg"
    folder.mkdir(exist_ok=True)
    np.save(folder / f"responses_{session}.npy", resp)
    return resp


def counts_by_trial(path: Path) -> dict[str, np.ndarray]:
    with SessionReader(path) as r:
        return {d.trial_id: np.asarray(d.counts) for d in r.documents() if isinstance(d, ResponseDoc)}


def test_imported_averaged_session_replays_to_the_same_counts(tmp_path: Path) -> None:
    resp = fake_v4(tmp_path / "v4", "s1")
    path = import_v4(tmp_path / "v4", "s1", tmp_path / "out", block_size=3)
    with SessionReader(path) as r:
        docs = list(r.documents())
        images = r.images()
    blocks = [d for d in docs if isinstance(d, BlockDoc)]
    assert [b.n_trials for b in blocks] == [3, 3, 1]
    trials = [d for d in docs if isinstance(d, TrialDoc)]
    imported = counts_by_trial(path)
    for n, t in enumerate(trials):  # trial n shows image n: its counts are that image's column, unrounded
        np.testing.assert_array_equal(imported[t.trial_id], resp[:, n])
        assert imported[t.trial_id].dtype == np.float64
    assert len(images) == 7

    out = asyncio.run(replay_session(path, tmp_path / "replay"))
    assert out.stop.exit_status == "success" and out.stop.n_trials == 7
    replayed = counts_by_trial(out.path)
    assert replayed.keys() == imported.keys()
    for tid, c in imported.items():
        assert replayed[tid].dtype == c.dtype and np.array_equal(replayed[tid], c)
    assert out.comparison["trials_with_counts"] == {"recording": 7, "replay": 7, "identical": 7}


def test_imported_raw_session_has_one_trial_per_recorded_repeat(tmp_path: Path) -> None:
    resp = fake_v4(tmp_path / "v4", "s2", raw=True)
    path = import_v4(tmp_path / "v4", "s2", tmp_path / "out")
    with SessionReader(path) as r:
        trials = [d for d in r.documents() if isinstance(d, TrialDoc)]
        ids = {d.image_id: n for n, d in enumerate(d for d in r.documents() if d.kind == "image")}
    assert len(trials) == int((~np.isnan(resp[0])).sum()) == 7 * 3 - 1 - 2
    per_image = {i: sum(t.image_id == i for t in trials) for i in ids}
    assert sorted(per_image.values()) == [1, 2, 3, 3, 3, 3, 3]
    counts = counts_by_trial(path)
    assert all(c.dtype == np.int32 for c in counts.values())
    out = asyncio.run(replay_session(path, tmp_path / "replay"))
    assert out.comparison["trials_with_counts"]["identical"] == len(trials)


def test_importer_and_replay_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no image archive"):
        import_v4(tmp_path, "nope", tmp_path / "out")
    fake_v4(tmp_path / "v4", "s3", n_images=4)
    np.save(tmp_path / "v4" / "responses_avg" / "responses_s3.npy", np.zeros((2, 5)))
    with pytest.raises(InvalidRequest, match="4 images but responses for 5"):
        import_v4(tmp_path / "v4", "s3", tmp_path / "out")
    np.save(tmp_path / "v4" / "responses_avg" / "responses_s3.npy", np.zeros((2, 4)))
    path = import_v4(tmp_path / "v4", "s3", tmp_path / "out")
    with pytest.raises(StoreError, match="exists"):
        import_v4(tmp_path / "v4", "s3", tmp_path / "out")
    with pytest.raises(StoreError, match="no session file"):
        Recording(tmp_path / "missing.h5")
    with pytest.raises(InvalidRequest, match="unknown policy"):
        asyncio.run(replay_session(path, tmp_path / "r", policy="greedy"))
    with pytest.raises(StoreError, match="exists"):  # a replay never overwrites
        asyncio.run(replay_session(path, tmp_path / "r", session_id="x"))
        asyncio.run(replay_session(path, tmp_path / "r", session_id="x"))


@pytest.mark.v4
def test_real_session_190923_replays_exactly(tmp_path: Path, v4_dir: Path) -> None:
    path = import_v4(v4_dir, "190923", tmp_path)
    imported = counts_by_trial(path)
    assert len(imported) == 1200  # 1,200 images, one repeat-averaged trial each
    resp = np.load(v4_dir / "responses_avg" / "responses_190923.npy")
    np.testing.assert_array_equal(np.stack([imported[f"v4-{i // 300}/{i % 300}"] for i in range(1200)], 1), resp)
    out = asyncio.run(replay_session(path, tmp_path / "replay"))
    replayed = counts_by_trial(out.path)
    assert all(np.array_equal(replayed[t], c) and replayed[t].dtype == c.dtype for t, c in imported.items())
    assert out.comparison["trials_with_counts"] == {"recording": 1200, "replay": 1200, "identical": 1200}


# --- a closed-loop session replayed with a modelserver ----------------------------------------------------
def tiny_settings() -> DemoSettings:
    return DemoSettings(members=2, epochs_block=2, epochs_session=2, pool_crops=200, neurons=4, eval_images=10)


def record_sysid(out: Path) -> Path:
    """A small sysid session (synthetic neurons in a virtual rig process, a modelserver child) with
    retraining and active-learning picks, built by the one assembly from the demo's rig configuration."""
    from controller.assembly import assemble
    from controller.config import BusConfig
    from controller.demo import demo_config
    from protocols.library.sysid import SysidProtocol

    proto = SysidProtocol.model_validate({
        "protocol": "sysid", "seed": 3, "n_blocks": 2, "normal": 30, "gaudy": 6,
        "timing": {"on_frames": 2, "off_frames": 2}, "retrain": "block",
        "active": {"n_images": 8, "start_block": 1, "pool_size": 200, "timeout_s": 300}, "prefetch": False})
    cfg = demo_config(out, tiny_settings(), None).model_copy(update={
        "session_id": "rec-sysid", "rig": "test", "bus": BusConfig(broker="none")})

    async def go() -> Path:
        async with assemble(cfg, proto) as s:
            stop = await s.run()
        assert stop.exit_status == "success", stop
        return s.path

    return asyncio.run(go())


def picks(path: Path) -> list[tuple[str, str]]:
    with SessionReader(path) as r:
        return [(d.block_id, d.image_id) for d in r.documents() if isinstance(d, PickDoc) and d.generator == "active"]


def versions(path: Path) -> list[dict[str, float]]:
    with SessionReader(path) as r:
        return [d.metrics for d in r.documents() if isinstance(d, ModelVersionDoc)]


@pytest.mark.slow
def test_replay_is_deterministic_and_answers_counterfactuals(tmp_path: Path) -> None:
    from controller.replay_cli import run_replay

    rec = record_sysid(tmp_path / "rec")
    console = Console(width=100)
    runs = [run_replay([rec], tmp_path / name, policy=policy, modelserver="start", data=None, device="cpu",
                       seed=None, console=console, settings=tiny_settings())[0]
            for name, policy in (("a", None), ("b", None), ("c", "random"))]
    a, b, c = runs
    assert all(o.stop.exit_status == "success" for o in runs)
    recorded = counts_by_trial(rec)
    for o in runs:  # every replay holds the recorded counts, trial by trial
        assert o.comparison["trials_with_counts"]["identical"] == len(recorded) > 0
    # the same file and seeds: the same model metrics and the same picks
    assert versions(a.path) == versions(b.path) and len(versions(a.path)) == 2
    assert picks(a.path) == picks(b.path) and len(picks(a.path)) == 8
    # the recorded picks were made by the same model on the same counts: the replay picks them again
    assert sorted(picks(a.path)) == sorted(picks(rec))
    # another policy picks (mostly) other images from the same pool; the shown blocks stay as recorded
    assert picks(c.path) != picks(a.path)
    assert c.comparison["picks"]["sysid-1 active"]["picked"] == 8
    with SessionReader(c.path) as r:
        assert isinstance(list(r.documents())[-1], StopDoc)


# --- replay keeps the protocol's own error handling ----------------------------------------------------
class StubRecording:
    """What ``replay_plan`` asks of a recording: the blocks it holds."""

    def __init__(self, *block_ids: str) -> None:
        self.blocks = {b: BlockDoc(block_id=b, index=k, source="normal", n_trials=2) for k, b in enumerate(block_ids)}
        self.asked: list[str] = []

    def block(self, block_id: str) -> BlockDoc | None:
        self.asked.append(block_id)
        return self.blocks.get(block_id)


def careful_plan(caught: list[Exception], closed: list[bool]) -> Plan:
    """A protocol that handles a lost acquisition stream itself: it asks the operator, then goes on."""
    try:
        for b in ("b0", "b1"):
            try:
                yield PresentBlock(block_id=b, images=[ImageSet(source="normal", n_images=2)])
                yield WaitForCounts(block_id=b, timeout_s=5)
            except AcquisitionError as exc:
                caught.append(exc)
                yield PauseForOperator(message=f"acquisition lost in {b}: {exc}")
        yield PresentBlock(block_id="b2", images=[ImageSet(source="normal", n_images=2)])
    finally:
        closed.append(True)


def test_replay_plan_throws_an_error_into_the_protocols_plan() -> None:
    caught: list[Exception] = []
    closed: list[bool] = []
    rec = StubRecording("b0", "b1")
    plan = replay_plan(careful_plan(caught, closed), rec)  # type: ignore[arg-type]
    step = next(plan)
    assert isinstance(step, PresentBlock) and step.block_id == "b0"
    step = plan.send(BlockResult(block_id="b0", n_trials=2, image_ids=["x", "y"], conditions={}))
    assert isinstance(step, WaitForCounts)
    lost = AcquisitionError("no spikes for 10 s")
    step = plan.throw(lost)  # as the engine does with a failed step
    assert caught == [lost], "the protocol's except branch ran"
    assert isinstance(step, PauseForOperator) and "acquisition lost in b0" in step.message
    step = plan.send(OperatorResult(action="resume"))
    assert isinstance(step, PresentBlock) and step.block_id == "b1"
    assert not closed
    # b2 is not in the recording: the replay ends there, closing the protocol's plan
    step = plan.send(BlockResult(block_id="b1", n_trials=2, image_ids=["x", "y"], conditions={}))
    assert isinstance(step, WaitForCounts)
    with pytest.raises(StopIteration):
        plan.send(CountsResult(block_id="b1", n_trials=2, n_neurons=3, mean_count=1.0))
    assert closed == [True] and rec.asked == ["b0", "b1", "b2"]


def test_replay_plan_lets_an_unhandled_error_out_and_drives_like_the_engine() -> None:
    # driven by protocols.plan.adrive (the engine's loop): the failed wait goes to the plan, which recovers
    caught: list[Exception] = []
    closed: list[bool] = []
    shown: list[str] = []

    async def execute(step: Step) -> Result:
        if isinstance(step, PresentBlock):
            shown.append(step.block_id)
            return BlockResult(block_id=step.block_id, n_trials=2, image_ids=["x", "y"], conditions={})
        if isinstance(step, WaitForCounts):
            if step.block_id == "b0":
                raise AcquisitionError("the spike stream went silent")
            return CountsResult(block_id=step.block_id, n_trials=2, n_neurons=3, mean_count=1.0)
        assert isinstance(step, PauseForOperator)
        return OperatorResult(action="resume")

    rec = StubRecording("b0", "b1", "b2")
    done = asyncio.run(adrive(replay_plan(careful_plan(caught, closed), rec), execute))  # type: ignore[arg-type]
    assert [type(e) for e in caught] == [AcquisitionError]
    assert [s.kind for s, _ in done] == ["present_block", "pause_for_operator", "present_block", "wait_for_counts",
                                         "present_block"]
    assert shown == ["b0", "b1", "b2"] and closed == [True]

    # a plan that does not handle the error: it comes out of the replay as it went in
    def plain() -> Plan:
        yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=2)])
        yield WaitForCounts(block_id="b0")

    plan = replay_plan(plain(), StubRecording("b0"))  # type: ignore[arg-type]
    next(plan)
    plan.send(BlockResult(block_id="b0", n_trials=2, image_ids=["x", "y"], conditions={}))
    lost = AcquisitionError("gone")
    with pytest.raises(AcquisitionError) as err:
        plan.throw(lost)
    assert err.value is lost


@pytest.mark.timeout(300)
def test_replay_answers_an_operator_pause_as_recorded_without_waiting(tmp_path: Path) -> None:
    """A replay has no operator (and no bus): a recorded pause used to wait for ever (or its full
    timeout). It is answered as the recording answered it, at once, and the replay says so."""
    from controller.assembly import assemble
    from controller.config import BusConfig
    from controller.demo import demo_config
    from controller.replay_cli import run_replay
    from protocols.library import PROTOCOL_ADAPTER

    proto = PROTOCOL_ADAPTER.validate_python({"protocol": "script", "seed": 1, "steps": [
        {"kind": "present_block", "block_id": "b0", "on_frames": 2, "off_frames": 2,
         "images": [{"source": "normal", "n_images": 6}]},
        {"kind": "wait_for_counts", "block_id": "b0"},
        {"kind": "pause_for_operator", "message": "look at b0", "timeout_s": 3600, "on_timeout": "abort"},
        {"kind": "present_block", "block_id": "b1", "on_frames": 2, "off_frames": 2,
         "images": [{"source": "normal", "n_images": 6}]},
        {"kind": "wait_for_counts", "block_id": "b1"}]})
    cfg = demo_config(tmp_path / "rec", tiny_settings(), None).model_copy(update={
        "session_id": "rec-pause", "rig": "test", "bus": BusConfig(broker="none")})
    cfg.model.kind = "none"

    async def record() -> Path:
        holder: dict[str, object] = {}

        def on_status(topic: str, payload: dict[str, object]) -> None:
            if topic == "operator":  # the operator answers after a moment
                engine = holder["engine"]
                asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(
                    engine.resume("the operator looked")))  # type: ignore[attr-defined]

        async with assemble(cfg, proto, on_status=on_status) as s:
            holder["engine"] = s.engine
            stop = await s.run()
        assert stop.exit_status == "success", stop
        return s.path

    rec = asyncio.run(record())
    t0 = time.monotonic()
    (out,) = run_replay([rec], tmp_path / "replay", policy=None, modelserver="none", data=None, device="cpu",
                        seed=None, console=Console(width=100), settings=tiny_settings())
    assert out.stop.exit_status == "success", out.stop
    assert time.monotonic() - t0 < 120  # the pause's own timeout is an hour
    with SessionReader(out.path) as r:
        events = [d for d in r.documents() if isinstance(d, EventDoc) and d.what == "operator_replayed"]
    assert len(events) == 1 and events[0].details["action"] == "resume"
