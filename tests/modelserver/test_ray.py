"""The modelserver's heavy work on a local Ray cluster gives what it gives in process: ensemble
members, pool scores and picks (maximize, active), distillation fleets, and the server end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelserver.cluster.context import spec_of
from modelserver.cluster.fleet import distill_fleet
from modelserver.cluster.members import fit_members, train_member
from modelserver.cluster.scoring import ClusterScored, ShardScorer
from modelserver.compact.distill import DistillConfig
from modelserver.generate.active import active_pool
from modelserver.generate.context import EnsembleView
from modelserver.generate.maximize import maximize_pool
from modelserver.generate.pool import ImagePool, build_pool, score_batches
from modelserver.serving.server import ModelServer, ModelServerConfig
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig
from wire.base import image_id
from wire.generate import GenActive, GenImages, GenMaximize
from wire.model import Ingest, Ingested, JobStarted, Train, TrainDone, TrainProgress
from wire.transport import EventSubscriber, RpcClient

# one local cluster per test session: under pytest-xdist every Ray test runs on one worker
pytestmark = pytest.mark.xdist_group("ray")

CFG = EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2, max_epochs=2,
                     batch_size=16, patience=5)


def _data(n: int = 48, neurons: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    rate = 1.0 + imgs.reshape(n, -1, 3).mean(1)[:, :1] / 64.0 * np.arange(1, neurons + 1)
    return imgs, rng.poisson(rate).astype(np.float64)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread here, as in a Ray worker of one CPU: the same float sums either side."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (192, 14, 14, 3), dtype=np.uint8)  # blocky images: responses differ
    imgs = base.repeat(8, axis=1).repeat(8, axis=2)
    path = tmp_path_factory.mktemp("pool") / "p.h5"
    build_pool(path, [imgs[:96], imgs[96:]])
    return path


@pytest.fixture(scope="module")
def fits(ray_cluster: Any) -> tuple[DeepEnsemble, DeepEnsemble, Any, Any]:
    """The same members trained here and as Ray tasks (once for the module)."""
    torch.set_num_threads(1)
    data = {"s1": _data()}
    local, rep_l = fit_members(CFG, data)
    remote, rep_r = fit_members(CFG, data, ray_cluster)
    return local, remote, rep_l, rep_r


@pytest.fixture(scope="module")
def scorer(ray_cluster: Any) -> ShardScorer:
    return ray_cluster.scorer()


def test_members_are_the_same_on_ray(fits: tuple[DeepEnsemble, DeepEnsemble, Any, Any]) -> None:
    local, remote, rep_l, rep_r = fits
    assert rep_l.epochs == rep_r.epochs == 2 and len(rep_r.best_val_r) == 2
    np.testing.assert_allclose(rep_l.best_val_r, rep_r.best_val_r, atol=1e-4)
    sl, sr = local.state_dict(), remote.state_dict()
    assert sl.keys() == sr.keys()
    for k in sl:
        torch.testing.assert_close(sl[k], sr[k], atol=1e-4, rtol=1e-4)
    data = {"s1": _data()}
    imgs = data["s1"][0]
    per_member = local.predict(imgs, "s1", members=True)
    np.testing.assert_allclose(per_member, remote.predict(imgs, "s1", members=True), atol=1e-4, rtol=1e-4)
    # the stacked ensemble's member 1 is the member trained alone from seed + 1; members differ
    alone = DeepEnsemble.from_state(train_member(CFG, data, CFG.seed + 1)["state"])
    np.testing.assert_allclose(per_member[1], alone.predict(imgs, "s1"), atol=1e-5)
    assert np.abs(per_member[0] - per_member[1]).max() > 1e-3


def test_distillation_fleet_is_the_same_on_ray(ray_cluster: Any) -> None:
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (24, 14, 14, 3), dtype=np.uint8)
    pool = base.repeat(8, axis=1).repeat(8, axis=2)
    means = pool.reshape(24, -1, 3).mean(1)
    targets = np.stack([means[:, 0], means[:, 1], means[:, 2], means[:, 0] - means[:, 2]])
    cfg = DistillConfig(filters=(4, 4, 4, 4, 4), shared=2, epochs=1, batch_size=8)
    local = distill_fleet(pool, targets, cfg, group_size=2)
    remote = distill_fleet(pool, targets, cfg, group_size=2, cluster=ray_cluster)
    assert [g.tolist() for g in remote.groups] == [[0, 1], [2, 3]]
    np.testing.assert_allclose(local.val_r(), remote.val_r(), atol=1e-4)
    np.testing.assert_allclose(local.predict(pool), remote.predict(pool), atol=1e-4, rtol=1e-4)
    assert remote.export(3).layers is not None


def test_pool_scores_and_picks_are_the_same_on_ray(fits: tuple[DeepEnsemble, DeepEnsemble, Any, Any],
                                                    scorer: ShardScorer, pool_file: Path) -> None:
    model = fits[0]
    view, ens_view = EnsembleView(model, "s1"), EnsembleView(model, "s1", members=True)
    calls = []
    view.register_forward_hook(lambda *a: calls.append(1))
    ens_view.register_forward_hook(lambda *a: calls.append(1))
    remote = ClusterScored(view, scorer, "mean", lambda: spec_of(model, "s1", False))
    remote_ens = ClusterScored(ens_view, scorer, "members", lambda: spec_of(model, "s1", True))
    with ImagePool(pool_file) as pool:
        scores_r = torch.cat([o for _, o in score_batches(pool, remote, 64)])
        picks_r = maximize_pool(remote, pool, [0, 2], k=4, batch_size=64)
        active_r = active_pool(remote_ens, pool, k=6, reference=64, candidates=128, batch_size=64, seed=3)
        assert not calls, "the pool was scored here, not on the cluster"
        scores_l = torch.cat([o for _, o in score_batches(pool, view, 64)])
        picks_l = maximize_pool(view, pool, [0, 2], k=4, batch_size=64)
        active_l = active_pool(ens_view, pool, k=6, reference=64, candidates=128, batch_size=64, seed=3)
    assert scores_r.shape == (192, 3)
    torch.testing.assert_close(scores_r, scores_l, atol=1e-5, rtol=1e-5)
    assert float(scores_l.std(0).min()) > 0  # the scores rank something
    for r, lo in ((picks_r, picks_l), (active_r, active_l)):
        assert [p.source for p in r.picks] == [p.source for p in lo.picks]
        np.testing.assert_allclose([p.score for p in r.picks], [p.score for p in lo.picks], rtol=1e-4)
        assert np.array_equal(r.images, lo.images)


def test_shards_in_flight_are_bounded(fits: tuple[DeepEnsemble, DeepEnsemble, Any, Any], scorer: ShardScorer,
                                      ray_cluster: Any) -> None:
    ref = scorer.put("m", lambda: spec_of(fits[0], "s1", False))
    rng = np.random.default_rng(2)
    pulled: list[int] = []

    def shards() -> Iterator[tuple[int, np.ndarray]]:
        for s in range(0, 12 * 8, 8):
            pulled.append(s)
            yield s, rng.integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)

    got: list[int] = []
    for start, out in scorer.stream("m", ref, shards()):
        assert len(pulled) - len(got) <= scorer.inflight  # never more shards out than the bound
        got.append(start)
        assert out.shape == (8, 3)
    assert got == list(range(0, 96, 8)) and scorer.inflight == 2 * ray_cluster.scorer_count() == 4
    with ray_cluster.tasks_running():  # member or fleet tasks: the actors stop, scoring waits or runs here
        assert not scorer.actors
        with pytest.raises(RuntimeError, match="paused"):
            list(scorer.stream("m", ref, shards()))


@pytest.mark.slow
async def test_server_on_ray(fits: tuple[DeepEnsemble, DeepEnsemble, Any, Any], ray_cluster: Any, tmp_path: Path,
                             pool_file: Path) -> None:
    imgs, counts = _data()
    cfg = ModelServerConfig(data_dir=tmp_path / "ms", endpoint="tcp://127.0.0.1:0",
                            events_endpoint="tcp://127.0.0.1:0", ensemble=CFG, ray="auto")
    (tmp_path / "ms" / "pools").mkdir(parents=True)
    (tmp_path / "ms" / "pools" / "p.h5").write_bytes(pool_file.read_bytes())
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=60) as client, \
            EventSubscriber(server.events_endpoint, [TrainProgress, TrainDone]) as sub:
        assert server.cluster is ray_cluster  # one per process: the scorer actors are shared
        await client.request(Ingest(session="s1", image_ids=[image_id(im) for im in imgs], counts=counts,
                                    images=imgs), Ingested)
        await server.wait_for_subscribers(1)
        await client.request(Train(), JobStarted)
        events = [await sub.recv(timeout=60)]
        while not isinstance(events[-1], TrainDone):
            events.append(await sub.recv(timeout=60))
        assert events[-1].status == "done" and len(events) == 3, events  # progress per member, then done
        model = server.model
        assert model is not None and model.config.members == 2
        np.testing.assert_allclose(model.predict(imgs, "s1"), fits[0].predict(imgs, "s1"), atol=1e-4)
        got = await client.request(GenMaximize(model="s1", pool="p", neurons=[1], k=3), GenImages)
        act = await client.request(GenActive(ensemble="s1", pool="p", k=4, candidates=120), GenImages)
    with ImagePool(pool_file) as pool:
        want = maximize_pool(EnsembleView(model, "s1"), pool, [1], k=3)
        want_act = active_pool(EnsembleView(model, "s1", members=True), pool, k=4, candidates=120)
    assert [p.source for p in got.provenance] == [p.source for p in want.picks]
    assert [p.source for p in act.provenance] == [p.source for p in want_act.picks]
