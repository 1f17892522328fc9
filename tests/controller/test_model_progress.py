"""Model training progress: ZmqModelLink.retrain reports it, the BusBridge publishes it (retained)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from controller.bus.fake import FakeBroker, FakeBus, FakeOperator
from controller.busbridge import BusBridge
from controller.engine import Engine
from controller.modellink import ZmqModelLink
from modelserver.serving.server import ModelServer, ModelServerConfig
from modelserver.training.ensemble import EnsembleConfig
from protocols.steps import Retrain, RetrainResult
from tests.controller.test_engine import run_session
from wire.base import image_id
from wire.model import Ingest, Ingested, JobStarted, Train
from wire.topics import ModelProgress
from wire.transport import RpcClient

PAYLOAD_KEYS = {"task", "scope", "epoch", "max_epochs", "fraction", "val_r", "loss", "model_version"}


class EngineStandIn:
    """What BusBridge uses of the engine: its rig and status listeners (session_id added, as the
    engine's ``_status`` does)."""

    def __init__(self, rig: str, session_id: str) -> None:
        self.config = SimpleNamespace(rig=rig, session_id=session_id)
        self._listeners: list[Any] = []

    def on_status(self, listener: Any) -> None:
        self._listeners.append(listener)

    def _status(self, topic: str, payload: dict[str, Any]) -> None:
        payload = {"session_id": self.config.session_id, **payload}
        for listener in self._listeners:
            listener(topic, payload)


def epoch_payload(epoch: int, max_epochs: int = 3, version: str | None = None) -> dict[str, Any]:
    return {"task": "retrain", "scope": "block", "epoch": epoch, "max_epochs": max_epochs,
            "fraction": 1.0 if version else epoch / max_epochs, "val_r": 0.1 * epoch,
            "loss": 1.0 / epoch, "model_version": version}


async def test_bridge_publishes_model_progress_retained_for_late_operators(
        caplog: pytest.LogCaptureFixture) -> None:
    broker = FakeBroker()
    bus = FakeBus(broker, "rig1")
    engine = EngineStandIn("rig1", "s1")
    async with bus, BusBridge(engine, bus, protocol="sysid"):  # type: ignore[arg-type]
        async with FakeOperator(broker, "rig1") as watcher:
            for epoch in (1, 2, 3):
                engine._status("model", epoch_payload(epoch))
            engine._status("model", epoch_payload(3, version="v0001"))
            with caplog.at_level(logging.WARNING, logger="controller.busbridge"):
                engine._status("model", {**epoch_payload(1), "fraction": 2.0})  # invalid: logged, not raised
            seen = [await watcher.wait_for(lambda m: isinstance(m, ModelProgress), 1) for _ in range(4)]
    assert "model progress not published" in caplog.text
    assert [m.epoch for m in seen] == [1, 2, 3, 3]
    assert all(isinstance(m, ModelProgress) and m.session_id == "s1" and m.task == "retrain"
               and m.max_epochs == 3 and m.scope == "block" for m in seen)
    assert [m.model_version for m in seen] == [None, None, None, "v0001"]  # type: ignore[attr-defined]
    last = seen[-1]
    assert isinstance(last, ModelProgress) and last.fraction == 1.0 and last.val_r == pytest.approx(0.3)
    assert [type(m) for m in bus.published] == [ModelProgress] * 4

    # retained: an operator connecting after training sees the latest progress at once
    async with FakeOperator(broker, "rig1") as late:
        got = await late.wait_for(lambda m: isinstance(m, ModelProgress), timeout=1)
    assert got == last


class ScriptedModels:
    """A model link whose retraining reports three epochs and a new version, as ZmqModelLink does."""

    async def retrain(self, step: Retrain, progress: Any = None) -> RetrainResult:
        for epoch in (1, 2, 3):
            await asyncio.sleep(0)
            if progress is not None:
                progress(epoch_payload(epoch))
        if progress is not None:
            progress(epoch_payload(3, version="v0007"))
        return RetrainResult(scope=step.scope, model_version="v0007", heldout_score=0.3)


async def test_engine_retraining_progress_reaches_the_bus(tmp_path: Path) -> None:
    """The real engine reports its model link's progress as status ``model``; the bridge publishes it."""
    broker = FakeBroker()
    bus = FakeBus(broker, "rig1")
    tasks: list[asyncio.Task[None]] = []

    def hook(engine: Engine) -> None:
        bridge = BusBridge(engine, bus, protocol="sysid")
        final = asyncio.Event()
        engine.on_status(lambda t, p: final.set() if t == "session" and p["state"] in ("done", "failed") else None)

        async def publish() -> None:
            async with bus, bridge:
                await final.wait()
        tasks.append(asyncio.create_task(publish()))

    def plan():
        yield Retrain(scope="block")

    stop = await run_session(tmp_path / "retrain.h5", plan(), models=ScriptedModels(), engine_hook=hook)
    await asyncio.wait_for(tasks[0], 10)
    assert stop.exit_status == "success", stop.reason
    progress = [m for m in bus.published if isinstance(m, ModelProgress)]
    assert [(m.epoch, m.model_version) for m in progress] == [(1, None), (2, None), (3, None), (3, "v0007")]
    assert all(m.session_id == "retrain" and m.task == "retrain" and m.max_epochs == 3 for m in progress)
    async with FakeOperator(broker, "rig1") as late:  # retained
        got = await late.wait_for(lambda m: isinstance(m, ModelProgress), timeout=1)
    assert isinstance(got, ModelProgress) and got.model_version == "v0007" and got.fraction == 1.0


# --- ZmqModelLink.retrain against a real modelserver ------------------------------------------
TINY = EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2, max_epochs=10,
                      batch_size=16, patience=10)


class SubscribedModelServer(ModelServer):
    """Starts a training job only once an event subscriber is connected, so a test sees every
    epoch's event (ZeroMQ drops what is published before a subscription arrives)."""

    async def train(self, cmd: Train) -> JobStarted:
        await self.wait_for_subscribers(1)
        return await super().train(cmd)


async def test_zmq_model_link_reports_each_epoch_and_the_new_version(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    counts = rng.poisson(1.0 + imgs.reshape(40, -1, 3).mean(1)[:, :1] / 64.0 * np.arange(1, 4)).astype(np.float64)
    cfg = ModelServerConfig(data_dir=tmp_path / "ms", endpoint="tcp://127.0.0.1:0",
                            events_endpoint="tcp://127.0.0.1:0", ensemble=TINY)
    calls: list[dict[str, Any]] = []

    def progress(payload: dict[str, Any]) -> None:
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("a broken listener must not stop training")

    async with SubscribedModelServer(cfg) as server:
        link = ZmqModelLink(server.endpoint, server.events_endpoint, session_id="s1", pixels=lambda i: imgs[0],
                            base_images=lambda n, s: [], block_epochs=3)
        async with link, RpcClient(server.endpoint, timeout=30) as client:
            await client.request(Ingest(session=link.session, image_ids=[image_id(im) for im in imgs],
                                        counts=counts, images=imgs), Ingested)
            result = await asyncio.wait_for(link.retrain(Retrain(scope="block", timeout_s=120), progress=progress),
                                            150)
    assert result.status == "done" and result.model_version not in ("none", "pending")
    assert all(set(c) == PAYLOAD_KEYS for c in calls)
    *epochs, done = calls
    assert [c["epoch"] for c in epochs] == [1, 2, 3]
    assert [c["fraction"] for c in epochs] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(c["model_version"] is None and c["task"] == "retrain" and c["scope"] == "block"
               and c["max_epochs"] == 3 and isinstance(c["loss"], float) for c in epochs)
    assert done["model_version"] == result.model_version and done["fraction"] == 1.0 and done["epoch"] == 3
    assert done["val_r"] == pytest.approx(result.heldout_score)
    for c in calls:  # every payload is a valid bus message once the engine adds its session_id
        ModelProgress(session_id="s1", **c)
