"""The model server over real sockets: ingest, train (async, with events), predict, versions, errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.serving.server import ModelServer, ModelServerConfig
from modelserver.serving.versions import CURRENT_FILE, current_version, latest_version, read_version
from modelserver.training.ensemble import EnsembleConfig
from wire.base import image_id
from wire.errors import Busy, InvalidRequest, ModelError, NotFound
from wire.messages import Ok
from wire.model import (
    Exported,
    ExportVersion,
    Ingest,
    Ingested,
    JobStarted,
    ListVersions,
    LoadVersion,
    Predict,
    Prediction,
    ServerStatus,
    Status,
    Train,
    TrainDone,
    TrainProgress,
    Versions,
)
from wire.transport import EventSubscriber, RpcClient

TINY = EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2, max_epochs=3,
                      batch_size=16, patience=5)


def _data(n: int = 40, neurons: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    rate = 1.0 + imgs.reshape(n, -1, 3).mean(1)[:, :1] / 64.0 * np.arange(1, neurons + 1)
    return imgs, rng.poisson(rate).astype(np.float64)


@pytest.fixture
def cfg(tmp_path: Path) -> ModelServerConfig:
    return ModelServerConfig(data_dir=tmp_path / "ms", endpoint="tcp://127.0.0.1:0",
                             events_endpoint="tcp://127.0.0.1:0", ensemble=TINY)


async def test_round_trip(cfg: ModelServerConfig, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    imgs, counts = _data()
    ids = [image_id(im) for im in imgs]
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client, \
            EventSubscriber(server.events_endpoint, [TrainProgress, TrainDone]) as sub:
        with pytest.raises(ModelError, match="no training data"):
            await client.request(Train(), JobStarted)
        with pytest.raises(ModelError, match="no trained model"):
            await client.request(Predict(session="s1", images=imgs[:2]), Prediction)
        bad = counts.copy()
        bad[0, 0] = np.nan
        with pytest.raises(InvalidRequest, match="NaN"):
            await client.request(Ingest(session="s1", image_ids=ids, counts=bad, images=imgs), Ingested)
        with pytest.raises(InvalidRequest, match="negative"):
            await client.request(Ingest(session="s1", image_ids=ids, counts=-counts - 1, images=imgs), Ingested)
        with pytest.raises(InvalidRequest, match="counts must be"):
            await client.request(Ingest(session="s1", image_ids=ids, counts=counts[:5], images=imgs), Ingested)
        r = await client.request(Ingest(session="s1", image_ids=ids, counts=counts, images=imgs), Ingested)
        assert (r.new_images, r.total_trials) == (40, 40)
        r = await client.request(Ingest(session="s1", image_ids=ids[:5], counts=counts[:5]), Ingested)
        assert (r.new_images, r.total_trials, r.total_images) == (0, 45, 40)
        with pytest.raises(NotFound):
            await client.request(Train(sessions=["nope"]), JobStarted)

        await server.wait_for_subscribers(1)
        job = await client.request(Train(), JobStarted)
        with pytest.raises(Busy):
            await client.request(Train(), JobStarted)
        st = await client.request(Status(), ServerStatus)  # answered while training
        assert st.sessions[0].name == "s1" and st.sessions[0].trials == 45
        events = []
        while True:
            ev = await sub.recv(timeout=60)
            events.append(ev)
            if isinstance(ev, TrainDone):
                break
        assert events[-1].status == "done", events[-1].message
        assert any(isinstance(e, TrainProgress) and e.job_id == job.job_id for e in events)
        version = events[-1].version
        pred = await client.request(Predict(session="s1", images=imgs[:7]), Prediction)
        assert pred.responses.shape == (3, 7) and pred.version == version
        assert np.all(np.isfinite(pred.responses))
        with pytest.raises(NotFound):
            await client.request(Predict(session="other", images=imgs[:2]), Prediction)
        with pytest.raises(InvalidRequest):
            await client.request(Predict(session="s1", images=imgs[:2].astype(np.float32)), Prediction)
        vs = await client.request(ListVersions(), Versions)
        assert vs.current == version and [v.version for v in vs.versions] == [version]
        ex = await client.request(ExportVersion(name="export.pt"), Exported)
        assert ex.path is not None and Path(ex.path).parent.name == "exports"  # the server's own folder
        blob = torch.load(ex.path, weights_only=True)
        assert set(blob["sessions"]) == {"s1"}
        status = await client.request(Status(), ServerStatus)
        assert status.state == "idle" and status.current_version == version

    # a restarted server resumes with its data and latest version
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client:
        st = await client.request(Status(), ServerStatus)
        assert st.current_version == version and st.sessions[0].trials == 45
        pred2 = await client.request(Predict(session="s1", images=imgs[:7]), Prediction)
        np.testing.assert_allclose(pred2.responses, pred.responses, rtol=1e-5, atol=1e-6)


async def _train(client: RpcClient) -> str:
    await client.request(Train(), JobStarted)
    for _ in range(600):
        st = await client.request(Status(), ServerStatus)
        if st.state == "idle":
            assert st.current_version is not None
            return st.current_version
        await asyncio.sleep(0.1)
    raise AssertionError("training did not finish in 60 s")


async def _two_versions(client: RpcClient) -> tuple[str, str]:
    """Ingest the test data and train twice: (first version, second version)."""
    imgs, counts = _data()
    await client.request(Ingest(session="s1", image_ids=[image_id(i) for i in imgs], counts=counts, images=imgs),
                         Ingested)
    return await _train(client), await _train(client)


async def test_a_loaded_back_version_survives_a_restart(cfg: ModelServerConfig) -> None:
    """An operator (or the demo's comparison fit) loads an older version back: a restarted server
    serves that one, not the newest file (versions/CURRENT)."""
    torch.set_num_threads(1)
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client:
        first, second = await _two_versions(client)
        assert second != first and (await client.request(ListVersions(), Versions)).current == second
        await client.request(LoadVersion(version=first), Ok)
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client:
        assert (await client.request(ListVersions(), Versions)).current == first
    versions = cfg.data_dir / "versions"
    assert read_version(cfg.data_dir, None)[1] == first  # the CLI's default version too
    (versions / CURRENT_FILE).write_text("20990101-000000-abcdef")  # names a version that is gone
    assert current_version(versions) == latest_version(versions) == second
    (versions / CURRENT_FILE).write_text("../../etc/passwd")  # never a path
    assert current_version(versions) == second


async def test_a_damaged_current_version_falls_back_to_the_newest_intact_one(cfg: ModelServerConfig) -> None:
    """A truncated current version (a full disk, a killed copy) used to stop every later session on the
    folder: the server now serves the newest version that loads, warns, and remembers it."""
    torch.set_num_threads(1)
    imgs, _ = _data()
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client:
        first, second = await _two_versions(client)
    versions = cfg.data_dir / "versions"
    blob = (versions / f"{second}.pt").read_bytes()
    (versions / f"{second}.pt").write_bytes(blob[: len(blob) // 3])  # damaged mid-file
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=30) as client:
        assert server.version == first and len(server.skipped_versions) == 1
        assert server.skipped_versions[0].startswith(second)
        assert (await client.request(Status(), ServerStatus)).current_version == first
        await client.request(Predict(session="s1", images=imgs[:2]), Prediction)  # it serves
    assert current_version(versions) == first  # remembered: the next start does not try the damaged one


async def test_unknown_version_is_not_found(cfg: ModelServerConfig) -> None:
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=10) as client:
        with pytest.raises(NotFound):
            await client.request(ExportVersion(version="nope", path="/tmp/x.pt"), Exported)
        with pytest.raises(InvalidRequest):
            await client.request(ExportVersion(version="../etc", path="/tmp/x.pt"), Exported)


def test_extra_handlers_are_served(cfg: ModelServerConfig) -> None:
    """The obvious place for image generation: extra handlers join the dispatch table."""
    import importlib.util

    from wire.messages import Ok, Ping

    async def custom(_cmd: Ping) -> Ok:
        return Ok()

    server = ModelServer(cfg, extra_handlers={Ping: custom})
    try:
        table = server.handlers()
        assert table[Ping] is custom
        assert importlib.util.find_spec("modelserver.generate.handlers") is not None
        assert any(cls.__name__.startswith("Gen") for cls in table)
    finally:
        server.dataset.close()


def test_generate_false_serves_no_generation(cfg: ModelServerConfig) -> None:
    """``generate=False``: a training-only server; ``gen.*`` commands are not in its table."""
    from dataclasses import replace

    server = ModelServer(replace(cfg, generate=False))
    try:
        table = server.handlers()
        assert Predict in table
        assert not any(cls.__name__.startswith("Gen") for cls in table)
    finally:
        server.dataset.close()
