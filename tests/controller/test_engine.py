"""The engine end to end in one process: real stimserver (display-free presenter), loopback rig, store."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest

from controller.acquisition.binning import Binner, BinningConfig
from controller.engine import Engine, EngineConfig
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.store import SessionReader, SessionWriter
from protocols.steps import ImageSet, PresentBlock, WaitForCounts
from stimserver.fake_presenter import FakePresenter
from stimserver.server import StimServer
from virtualrig.loopback import LoopbackRig
from virtualrig.rates import GaborEnergyRates
from wire.documents import EventDoc, ResponseDoc, StepDoc, StopDoc, TrialDoc


def library(n: int = 40) -> ImageLibrary:
    rng = np.random.default_rng(3)
    return ImageLibrary(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def two_blocks(n_images: int = 6, repeats: int = 2):
    for b in ("b0", "b1"):
        yield PresentBlock(block_id=b, images=[ImageSet(source="normal", n_images=n_images)], repeats=repeats,
                           on_frames=3, off_frames=3)
        yield WaitForCounts(block_id=b, timeout_s=10)


async def run_session(path: Path, plan, *, lib: ImageLibrary | None = None, model=None, engine_hook=None,
                      models=None, pixels: dict[str, np.ndarray] | None = None):
    """``models``: the engine's model link; ``pixels``: its image store (pass the dict ``models`` reads)."""
    lib = lib or library()
    model = model or GaborEnergyRates(8, seed=1)
    pixels = pixels if pixels is not None else {}
    async with StimServer(FakePresenter(refresh_hz=120.0)) as srv:
        store = SessionWriter.create(path) if not path.exists() else SessionWriter.resume(path)
        rig = LoopbackRig(srv.events_endpoint, model, lambda i: pixels[i], seed=2, delay=0.2)
        try:
            async with StimLink(srv.rpc_endpoint, srv.events_endpoint) as stim:
                engine = Engine(EngineConfig(session_id=path.stem, seed=5), store=store, stim=stim, source=rig,
                                binner=Binner(BinningConfig(window=(0.05, 0.15))), images=lib, models=models,
                                pixels=pixels, image_listeners=[rig.prepare])
                if engine_hook is not None:
                    engine_hook(engine)
                await rig.open()
                await srv.wait_for_subscribers(2)
                stop = await engine.run(plan, protocol={"name": "test"})
        finally:
            store.close()  # in a real crash the process's exit closes it
    return stop


async def test_two_blocks_record_every_trial_and_count(tmp_path: Path) -> None:
    statuses: list[tuple[str, dict]] = []
    path = tmp_path / "s.h5"
    stop = await run_session(path, two_blocks(),
                                     engine_hook=lambda e: e.on_status(lambda t, p: statuses.append((t, p))))
    assert stop.exit_status == "success", stop.reason
    with SessionReader(path) as r:
        docs = list(r.documents())
        _, units, counts = r.counts()
    assert isinstance(docs[-1], StopDoc) and docs[-1].n_trials == 24
    assert len([d for d in docs if isinstance(d, TrialDoc)]) == 24
    assert len([d for d in docs if isinstance(d, ResponseDoc)]) == 24
    assert counts.shape[0] == 24 and len(units) >= 1 and np.nansum(counts) > 0
    steps = [d for d in docs if isinstance(d, StepDoc)]
    assert [s.step["kind"] for s in steps] == ["present_block", "wait_for_counts"] * 2
    assert steps[1].result["n_trials"] == 12
    # the trial order recorded is the order the stimserver showed, and each image twice
    b0 = [d for d in docs if isinstance(d, TrialDoc) and d.block_id == "b0"]
    assert [d.index for d in b0] == list(range(12))
    assert sorted(np.unique([d.image_id for d in b0], return_counts=True)[1]) == [2] * 6
    assert all(b.onset < a.onset for b, a in itertools.pairwise(b0))
    topics = {t for t, _ in statuses}
    assert {"session", "block", "trial", "step"} <= topics


async def test_counts_follow_the_neurons_tuning(tmp_path: Path) -> None:
    """Counts must come from the shown image: the rig's rates predict the recorded means."""
    lib = library(30)
    model = GaborEnergyRates(6, seed=4)

    def plan():
        yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=10)], repeats=8,
                           on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0", timeout_s=20)

    path = tmp_path / "t.h5"
    stop = await run_session(path, plan(), lib=lib, model=model)
    assert stop.exit_status == "success", stop.reason
    with SessionReader(path) as r:
        trials, units, counts = r.counts()
        images = r.images()
    ids = sorted({t.image_id for t in trials})
    rates = model.rates(np.stack([images[i] for i in ids]))
    col = {u: j for j, u in enumerate(units)}
    rs = []
    for u in range(6):
        if str(u) not in col:
            continue
        mean = [np.nanmean([counts[k, col[str(u)]] for k, t in enumerate(trials) if t.image_id == i]) for i in ids]
        if np.std(rates[:, u]) > 1:
            rs.append(np.corrcoef(mean, rates[:, u])[0, 1])
    assert rs and np.median(rs) > 0.5, rs


async def test_silent_acquisition_fails_clearly_and_records_no_zeros(tmp_path: Path) -> None:
    path = tmp_path / "silent.h5"

    def hook(engine: Engine) -> None:
        engine.source.silence_timeout = 0.3
        engine.source.baseline = 0.0  # type: ignore[attr-defined]
        engine.source._due = lambda now: None  # type: ignore[attr-defined,method-assign]

        async def nothing():
            await asyncio.sleep(3600)
            yield None

        engine.source._items = nothing  # type: ignore[method-assign]

    stop = await run_session(path, two_blocks(2, 1), engine_hook=hook)
    assert stop.exit_status == "fail"
    assert "no data received" in stop.reason and "acquisition" in stop.reason.lower()
    with SessionReader(path) as r:
        docs = list(r.documents())
    assert not [d for d in docs if isinstance(d, ResponseDoc)]
    assert any(isinstance(d, EventDoc) and d.what == "acquisition_failed" for d in docs)


async def test_abort_stops_the_session(tmp_path: Path) -> None:
    def plan():
        yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=10)], repeats=50,
                           on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0")

    def hook(engine: Engine) -> None:
        pending: list[asyncio.Future] = []

        def on(topic: str, payload: dict) -> None:
            if topic == "trial" and payload["done"] == 5:
                pending.append(asyncio.ensure_future(engine.abort("test")))
        engine.on_status(on)

    path = tmp_path / "a.h5"
    stop = await run_session(path, plan(), engine_hook=hook)
    assert stop.exit_status == "abort"
    with SessionReader(path) as r:
        n = len([d for d in r.documents() if isinstance(d, TrialDoc)])
    assert 5 <= n < 500


@pytest.mark.parametrize("kill_after", [7])
async def test_resume_continues_at_first_trial_without_counts(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "r.h5"
    main = asyncio.current_task()
    assert main is not None

    def hook(engine: Engine) -> None:
        def on(topic: str, payload: dict) -> None:
            if topic == "trial" and payload["block_id"] == "b1" and payload["done"] == kill_after:
                main.cancel()  # the controller dies mid-block: no stop document, nothing flushed after
        engine.on_status(on)

    with pytest.raises(asyncio.CancelledError):
        await run_session(path, two_blocks(), engine_hook=hook)
    main.uncancel()
    with SessionReader(path) as r:
        before = {d.trial_id for d in r.documents() if isinstance(d, ResponseDoc)}
    assert 12 <= len(before) < 24

    def resume_hook(engine: Engine) -> None:
        with SessionReader(path) as r:
            engine.resume_from(list(r.documents()))

    stop = await run_session(path, two_blocks(), engine_hook=resume_hook)
    assert stop.exit_status == "success", stop.reason
    with SessionReader(path) as r:
        docs = list(r.documents())
    responses = [d.trial_id for d in docs if isinstance(d, ResponseDoc)]
    assert len(responses) == len(set(responses)) == 24  # nothing lost, nothing twice
    assert before <= set(responses)
    assert sum(isinstance(d, StepDoc) for d in docs) == 4


async def test_modelserver_down_runs_the_fallback_labelled_as_such(tmp_path: Path) -> None:
    from wire.documents import BlockDoc, PickDoc

    def plan():
        yield PresentBlock(block_id="b0", images=[
            ImageSet(source="normal", n_images=4, condition="normal"),
            ImageSet(source="maximize_synth", n_images=2, params={"neurons": [0, 1, 2]}, fallback="pool_random",
                     timeout_s=2)], repeats=1, on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0", timeout_s=10)

    path = tmp_path / "fb.h5"
    stop = await run_session(path, plan())
    assert stop.exit_status == "success", stop.reason
    with SessionReader(path) as r:
        docs = list(r.documents())
    block = next(d for d in docs if isinstance(d, BlockDoc))
    conds = [c for _, _, c in block.params["trials"]]
    assert conds.count("maximize_synth/fallback") == 6 and conds.count("normal") == 4  # 2 per neuron x 3
    assert block.fallback and any(isinstance(d, EventDoc) and d.what == "fallback" for d in docs)
    assert sum(isinstance(d, PickDoc) and d.generator == "fallback:pool_random" for d in docs) == 6


async def test_retrain_progress_reaches_status_listeners_and_pixels_are_shared(tmp_path: Path) -> None:
    """The model link's training progress goes to status listeners under "model"; the image store
    the engine is given is the one it fills (a model link made before it reads images from it)."""
    from controller.engine import NoModelServer
    from protocols.steps import Retrain, RetrainResult
    from wire.documents import ModelVersionDoc

    class Models(NoModelServer):
        async def retrain(self, step: Retrain, progress=None) -> RetrainResult:
            assert progress is not None
            for epoch in (1, 2):
                progress({"task": "retrain", "epoch": epoch, "fraction": epoch / 2})
            return RetrainResult(scope=step.scope, model_version="v0001", heldout_score=0.5)

    def plan():
        yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=3)], on_frames=3, off_frames=3)
        yield WaitForCounts(block_id="b0", timeout_s=10)
        yield Retrain(scope="block")

    statuses: list[tuple[str, dict]] = []
    pixels: dict[str, np.ndarray] = {}
    engines: list[Engine] = []

    def hook(engine: Engine) -> None:
        engines.append(engine)
        engine.on_status(lambda t, p: statuses.append((t, p)))

    path = tmp_path / "m.h5"
    stop = await run_session(path, plan(), models=Models(), pixels=pixels, engine_hook=hook)
    assert stop.exit_status == "success", stop.reason
    assert engines[0].pixels is pixels and len(pixels) == 3
    model = [p for t, p in statuses if t == "model"]
    assert [p["epoch"] for p in model] == [1, 2]
    assert all(p["session_id"] == "m" and p["task"] == "retrain" for p in model)
    with SessionReader(path) as r:
        versions = [d for d in r.documents() if isinstance(d, ModelVersionDoc)]
    assert [v.version for v in versions] == ["v0001"] and versions[0].metrics == {"val_r": 0.5}
