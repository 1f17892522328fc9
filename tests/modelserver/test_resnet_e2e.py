"""The ResNet50 front end end to end through the server: a random-valued weights file in
torchvision's key layout; train, predict, maximize and active picks from a pool, synthesis and
adversarial images (gradients through the frozen trunk to the pixels), and ``modelserver distill``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from controller.config import ModelConfig
from modelserver.cli import app, ensemble_config
from modelserver.generate.pool import build_pool
from modelserver.serving.server import ModelServer, ModelServerConfig
from modelserver.training.frontend import ResNet50Trunk, load_resnet50
from modelserver.training.metrics import pearson_r
from wire.base import image_id
from wire.generate import GenActive, GenAdversarial, GenImages, GenMaximize, GenSynthesize
from wire.model import Ingest, Ingested, JobStarted, Predict, Prediction, Train, TrainDone, TrainProgress
from wire.transport import EventSubscriber, RpcClient

NEURONS = 3


def write_random_resnet50(path: Path, seed: int = 0) -> Path:
    """A torchvision-layout ResNet50 state_dict (with ``fc``) of random values, as a lab's file would be."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for k, v in ResNet50Trunk("layer4").state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            state[k] = 0.5 + torch.rand(v.shape, generator=gen)
        elif k.endswith("running_mean") or k.endswith("bias"):
            state[k] = 0.1 * torch.randn(v.shape, generator=gen)
        elif v.ndim == 1:  # batch-norm scale
            state[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
        else:  # convolutions
            state[k] = torch.randn(v.shape, generator=gen) * math.sqrt(2.0 / v[0].numel())
    state["fc.weight"] = 0.01 * torch.randn(1000, 2048, generator=gen)
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, path)
    return path


def colour_data(n: int, seed: int, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Images of one random colour each plus noise; neurons driven by red, green and blue."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(20, 235, (n, 1, 1, 3))
    imgs = np.clip(colour + rng.normal(0, 12, (n, size, size, 3)), 0, 255).astype(np.uint8)
    rates = 0.5 + 4.0 * imgs.reshape(n, -1, 3).mean(1) / 255.0
    return imgs, rates


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_resnet50(tmp_path_factory.mktemp("w") / "resnet50.pth")


def test_weights_are_checked(weights: Path, tmp_path: Path) -> None:
    assert load_resnet50(weights, "layer3").out_channels == 1024
    with pytest.raises(ValueError, match="needs --weights"):
        ensemble_config(2, 3, "resnet50", None, "layer3", 0, False)
    with pytest.raises(ValueError, match="--layer must be"):
        ensemble_config(2, 3, "resnet50", weights, "layer9", 0, False)
    torch.save({"conv1.weight": Path("a pickled object, not a tensor")}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_resnet50(tmp_path / "code.pth")
    state = torch.load(weights, weights_only=True)
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="wrong shapes"):
        load_resnet50(tmp_path / "shape.pth")
    cfg = ensemble_config(2, 3, "resnet50", weights, "layer2", 0, True)
    assert (cfg.frontend, cfg.layer, cfg.input_size, cfg.autocast) == ("resnet50", "layer2", 224, True)
    out = CliRunner().invoke(app, ["serve", "--frontend", "resnet50", "--data-dir", str(tmp_path / "d")])
    assert out.exit_code == 1 and "needs --weights" in out.output
    with pytest.raises(ValidationError, match="needs weights"):
        ModelConfig(frontend="resnet50")
    assert ModelConfig(frontend="resnet50", weights=weights, layer="layer2").layer == "layer2"


async def test_resnet_frontend_through_the_server(weights: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ens = dataclasses.replace(ensemble_config(2, 6, "resnet50", weights, "layer2", 64, False),
                              channels=8, strides=(1,), first_kernel=3, batch_size=16, patience=6, lr=1e-2)
    data_dir = tmp_path / "ms"
    cfg = ModelServerConfig(data_dir=data_dir, endpoint="tcp://127.0.0.1:0", events_endpoint="tcp://127.0.0.1:0",
                            ensemble=ens)
    imgs, rates = colour_data(80, 0)
    counts = np.random.default_rng(1).poisson(rates).astype(np.float64)
    test_imgs, test_rates = colour_data(40, 2)
    pool_imgs, _ = colour_data(48, 3)
    async with ModelServer(cfg) as server, RpcClient(server.endpoint, timeout=120) as client, \
            EventSubscriber(server.events_endpoint, [TrainProgress, TrainDone]) as sub:
        build_pool(data_dir / "pools" / "p.h5", [pool_imgs])
        await client.request(Ingest(session="s1", image_ids=[image_id(im) for im in imgs], counts=counts,
                                    images=imgs), Ingested)
        await server.wait_for_subscribers(1)
        await client.request(Train(), JobStarted)
        done = await sub.recv(timeout=120)
        while not isinstance(done, TrainDone):
            done = await sub.recv(timeout=120)
        assert isinstance(done, TrainDone) and done.status == "done", done
        assert server.model is not None and server.model.frontend is not None
        assert len(server.model.frontend.cache) == 80  # training features, kept by image id

        pred = await client.request(Predict(session="s1", images=test_imgs), Prediction)
        r = pearson_r(pred.responses, test_rates.T)
        assert pred.responses.shape == (NEURONS, 40) and float(np.mean(r)) > 0.5, r
        assert len(server.model.frontend.cache) == 80  # prediction keeps no features

        mx = await client.request(GenMaximize(model="s1", pool="p", neurons=[0], k=3), GenImages)
        best = pool_imgs.reshape(48, -1, 3).mean(1)[:, 0].argsort()[::-1][:12]  # the reddest pool images
        assert sum(p.source.split(":")[1] in {str(i) for i in best} for p in mx.provenance) >= 2
        act = await client.request(GenActive(ensemble="s1", pool="p", k=4, min_distance=0.0), GenImages)
        assert act.images.shape == (4, 112, 112, 3)
        assert len(server.model.frontend.cache) == 80  # pool features computed on the fly, none kept

        # synthesis: gradient ascent through the frozen trunk raises the neuron's response
        s0 = await client.request(GenSynthesize(model="s1", neurons=[0, 2], steps=0), GenImages)
        s1 = await client.request(GenSynthesize(model=f"{done.version}/s1", neurons=[0, 2], steps=8), GenImages)
        assert all(b.score > a.score for a, b in zip(s0.provenance, s1.provenance, strict=True)), \
            ([a.score for a in s0.provenance], [b.score for b in s1.provenance])
        base = pool_imgs[:2]
        adv = await client.request(GenAdversarial(model="s1", neurons=[0, 1], base_images=base, max_abs=8.0,
                                                  steps=6), GenImages)
        delta = adv.images.astype(int) - base.astype(int)
        assert np.abs(delta).max() <= 8 and np.abs(delta).max() > 0
        before = await client.request(Predict(session="s1", images=base), Prediction)
        after = await client.request(Predict(session="s1", images=adv.images), Prediction)
        assert after.responses[0, 0] > before.responses[0, 0] and after.responses[1, 1] > before.responses[1, 1]

    out = tmp_path / "compact"
    res = CliRunner().invoke(app, ["distill", "--data-dir", str(data_dir), "--session", "s1", "--out", str(out),
                                   "--pool", "96", "--heldout", "32", "--filters", "4,4,3,3,3",
                                   "--train-minutes", "0.04", "--prune-minutes", "0.02", "--finetune-minutes",
                                   "0.02", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("compact_model_s1_neuron*.pt"))) == NEURONS and (out / "summary.json").is_file()
