"""The deep ensemble on tiny synthetic data (fast, CPU), its parts, and the ResNet50 front end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.training.cores import StackedCore
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig
from modelserver.training.frontend import FrozenFrontend, ResNet50Trunk, load_resnet50
from modelserver.training.losses import laplacian_penalty, poisson_loss
from modelserver.training.metrics import pearson_r


def _synthetic(n: int, neurons: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images whose quadrant brightness drives each neuron (Poisson counts) + the true rates."""
    rng = np.random.default_rng(seed)
    blobs = rng.uniform(-1, 1, (n, 2, 2, 3))  # smooth structure: 2x2 blocks of colour
    imgs = np.clip(128 + 100 * np.kron(blobs, np.ones((1, 8, 8, 1))) + rng.normal(0, 10, (n, 16, 16, 3)), 0, 255)
    w = np.random.default_rng(99).normal(0, 1, (neurons, 2 * 2 * 3))
    rate = np.log1p(np.exp(w @ blobs.reshape(n, -1).T * 1.5))  # (neurons, n)
    return imgs.astype(np.uint8), rng.poisson(rate).astype(np.float64).T, rate


TINY = EnsembleConfig(members=3, channels=8, input_size=16, strides=(1, 2), first_stride=1, first_kernel=5,
                      frontend="pixels", max_epochs=25,
                      batch_size=32, patience=6, lr=1e-2, mask_l1=1e-3, feature_l1=1e-4)


def test_ensemble_learns_and_beats_a_constant() -> None:
    torch.set_num_threads(1)
    imgs, counts, _ = _synthetic(500, 4, 0)
    test_imgs, _, test_rate = _synthetic(200, 4, 1)
    ens = DeepEnsemble(TINY)
    rep = ens.fit({"a": (imgs, counts)})
    assert rep.epochs >= 2 and len(rep.best_val_r) == 3
    pred = ens.predict(test_imgs, "a")  # (neurons, images)
    assert pred.shape == (4, 200)
    r = pearson_r(pred, test_rate)
    assert np.median(r) > 0.6, r
    y = torch.as_tensor(np.random.default_rng(2).poisson(test_rate).T)
    model_loss = poisson_loss(torch.as_tensor(pred.T), y)
    const_loss = poisson_loss(torch.as_tensor(counts.mean(0)).expand_as(y), y)
    assert float(model_loss) < float(const_loss)
    members = ens.predict(test_imgs, "a", members=True)
    assert members.shape == (3, 4, 200)
    np.testing.assert_allclose(members.mean(0), pred, rtol=1e-6)

    # a new session on the frozen core: ridge and factorized readouts
    core_before = {k: v.clone() for k, v in ens.core.state_dict().items()}
    ens.fit_readout("b", imgs[:300], counts[:300, :2], kind="ridge")
    ens.fit_readout("c", imgs[:300], counts[:300, 2:], kind="factorized", max_epochs=5)
    for k, v in ens.core.state_dict().items():
        assert torch.equal(v, core_before[k]), k
    assert np.median(pearson_r(ens.predict(test_imgs, "b"), test_rate[:2])) > 0.3
    assert np.median(pearson_r(ens.predict(test_imgs, "c"), test_rate[2:])) > 0.3

    # weights-only export round trip
    blob = ens.export_state()
    again = DeepEnsemble.from_state(blob)
    for s in ("a", "b", "c"):
        np.testing.assert_allclose(again.predict(test_imgs[:10], s), ens.predict(test_imgs[:10], s), rtol=1e-5)


def test_gaussian_loss_trains_too() -> None:
    torch.set_num_threads(1)
    imgs, counts, rate = _synthetic(300, 2, 3)
    cfg = EnsembleConfig(**{**TINY.to_dict(), "loss": "gaussian", "members": 2, "max_epochs": 8,
                            "strides": (1, 2), "frontend": "gabor", "input_size": 32, "first_kernel": 3})
    ens = DeepEnsemble(cfg)
    ens.fit({"g": (imgs, counts)})
    assert np.median(pearson_r(ens.predict(imgs, "g"), rate)) > 0.3


def test_members_are_independent() -> None:
    """A member's output and gradients depend only on its own slice of the stacked weights."""
    core = StackedCore(3, 3, 4, (1, 2))
    x = torch.randn(5, 3, 12, 12)
    out = core(x)
    loss = out[:, 1].sum()
    loss.backward()
    for p in core.parameters():
        assert p.grad is not None
        assert torch.all(p.grad[[0, 2]] == 0) and torch.any(p.grad[1] != 0)


def test_laplacian_penalty_prefers_smooth_kernels() -> None:
    smooth = torch.ones(1, 2, 5, 5)
    rough = torch.randn(1, 2, 5, 5)
    assert float(laplacian_penalty(smooth)) == pytest.approx(0.0, abs=1e-9)
    assert float(laplacian_penalty(rough)) > 1.0


def test_resnet50_state_dict_keys_and_weights_file(tmp_path: Path) -> None:
    full = ResNet50Trunk("layer4")
    keys = set(full.state_dict())
    # torchvision's names (fc excluded: the trunk has no classifier)
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
              "layer3.5.conv3.weight", "layer4.2.bn3.num_batches_tracked"):
        assert k in keys
    assert sum(p.numel() for p in full.parameters()) == 23_508_032  # torchvision resnet50 minus fc
    state = full.state_dict()
    state["fc.weight"] = torch.zeros(1000, 2048)  # a full torchvision file also holds the classifier
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    trunk = load_resnet50(path, stage="layer2")
    assert trunk.out_channels == 512
    front = FrozenFrontend(trunk, input_size=64)
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    f1 = front(imgs)
    assert f1.shape == (3, 512, 8, 8) and len(front.cache) == 3
    f2 = front(imgs[[2, 0]])  # served from the cache
    assert torch.equal(f2[0], f1[2]) and len(front.cache) == 3
    ens = DeepEnsemble(EnsembleConfig(members=2, channels=4, strides=(1,), first_stride=1, frontend="pixels"),
                       frontend=front)
    ens.add_session("s", 3)
    assert ens(ens.inputs(imgs), "s").shape == (3, 2, 3)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a ResNet50"):
        load_resnet50(tmp_path / "bad.pth")
