"""The whole generation path on a trained ensemble, on the device given by ``CORTEXLOOP_TEST_DEVICE``
(default cpu; ``cuda`` on a GPU machine proves CUDA with the same test).

Besides the device checks of every parameter, buffer and output, a TorchFunctionMode audits every
network op (convolution, matmul, pooling, resizing, batch norm) run during training and generation:
each must read tensors on the configured device, so a front end or a tensor quietly computed on the
CPU (behind a CUDA model) fails here. bfloat16 autocast is checked against float32 on the same model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from modelserver.compact.model import preprocess
from modelserver.generate.active import active_pool
from modelserver.generate.adversarial import adversarial
from modelserver.generate.context import EnsembleView
from modelserver.generate.maximize import maximize_pool
from modelserver.generate.pool import ImagePool, build_pool
from modelserver.generate.smooth import smooth_images
from modelserver.generate.synthesize import SynthesisConfig, synthesize
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig
from modelserver.training.metrics import pearson_r
from tests.conftest import require
from tests.modelserver.test_resnet_e2e import colour_data, write_random_resnet50

DEVICE = torch.device(os.environ.get("CORTEXLOOP_TEST_DEVICE", "cpu"))
NETWORK_OPS = {"conv2d", "linear", "matmul", "__matmul__", "einsum", "bmm", "mm", "addmm", "interpolate",
               "avg_pool2d", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "adaptive_avg_pool2d",
               "batch_norm", "layer_norm"}


class DeviceAudit(TorchFunctionMode):
    """Records every network op, and those reading a tensor that is not on ``device``."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.seen = 0
        self.wrong: list[str] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in NETWORK_OPS:
            self.seen += 1
            for t in _tensors(args, kwargs or {}):
                if not _same(t.device, self.device):
                    self.wrong.append(f"{name} read a {tuple(t.shape)} tensor on {t.device}")
        return func(*args, **(kwargs or {}))


def _tensors(args: Any, kwargs: dict[str, Any]) -> Iterator[torch.Tensor]:
    for a in [*args, *kwargs.values()]:
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, list | tuple):
            yield from (b for b in a if isinstance(b, torch.Tensor))


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _on_device(ens: DeepEnsemble) -> None:
    tensors = [*ens.parameters(), *ens.buffers()]
    if ens.frontend is not None:
        tensors += [*ens.frontend.trunk.parameters(), *ens.frontend.trunk.buffers(), *ens.frontend.cache.values()]
    wrong = [tuple(t.shape) for t in tensors if not _same(t.device, DEVICE)]
    assert not wrong, f"{len(wrong)} parameters/buffers not on {DEVICE}: {wrong[:3]}"


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pool") / "p.h5"
    build_pool(path, [colour_data(40, 5)[0]])
    return path


@pytest.mark.parametrize("frontend", ["gabor", "resnet50"])
def test_generation_path_on_the_configured_device(frontend: str, pool_path: Path, tmp_path: Path) -> None:
    require(DEVICE.type != "cuda" or torch.cuda.is_available(), f"no CUDA device for {DEVICE}")
    torch.set_num_threads(1)
    cfg = EnsembleConfig(members=2, channels=8, strides=(1, 2), first_kernel=3, input_size=32, max_epochs=4,
                         batch_size=16, lr=1e-2, frontend=frontend)  # type: ignore[arg-type]
    if frontend == "resnet50":
        cfg = dataclasses.replace(cfg, weights=str(write_random_resnet50(tmp_path / "r.pth")), layer="layer1",
                                  input_size=48, strides=(1,))
    imgs, rates = colour_data(64, 0)
    audit = DeviceAudit(DEVICE)
    with audit:
        ens = DeepEnsemble(cfg).to(DEVICE)
        ens.fit({"s": (imgs, rates)})
    _on_device(ens)
    view, members = EnsembleView(ens, "s"), EnsembleView(ens, "s", members=True)
    with torch.no_grad():
        x = preprocess(imgs[:4], device=DEVICE)
        assert _same(view(x).device, DEVICE) and _same(members(x).device, DEVICE)
        assert members(x).shape == (2, 4, 3)
    base = imgs[:2]
    with audit, ImagePool(pool_path) as pool:
        act = active_pool(members, pool, 3, min_distance=0.0, device=DEVICE)
        mx = maximize_pool(view, pool, [0, 2], 2, device=DEVICE)
        syn = synthesize(view, [1], per_neuron=2, config=SynthesisConfig(steps=4), device=DEVICE)
        adv = adversarial(view, base, [0, 1], max_abs=6.0, steps=4, device=DEVICE)
        sm, ctrl = smooth_images(view, base, [0, 1], grid=4, max_patches=3, device=DEVICE)
    _on_device(ens)
    assert audit.seen > 50 and not audit.wrong, audit.wrong[:5]
    assert len(act.images) == 3 and len(mx.images) == 4 and len(syn.images) == 2
    assert len(adv.images) == 2 and len(sm.images) == 2 and len(ctrl.images) == 2
    assert all(np.isfinite(p.score) for g in (mx, syn, adv, sm) for p in g.picks)


def test_bfloat16_autocast_keeps_predictions() -> None:
    """The same trained weights, float32 against bf16 autocast: predictions correlate (r > 0.99)."""
    require(DEVICE.type != "cuda" or torch.cuda.is_available(), f"no CUDA device for {DEVICE}")
    torch.set_num_threads(1)
    cfg = EnsembleConfig(members=2, channels=8, strides=(1, 2), first_kernel=3, input_size=32, max_epochs=3,
                         batch_size=16, lr=1e-2)
    imgs, rates = colour_data(64, 0)
    ens = DeepEnsemble(cfg).to(DEVICE)
    ens.fit({"s": (imgs, rates)})
    test, _ = colour_data(48, 1)
    full = ens.predict(test, "s")
    ens.config = dataclasses.replace(cfg, autocast=True)
    half = ens.predict(test, "s")
    assert not np.array_equal(full, half)  # autocast did change the arithmetic
    r = pearson_r(half, full)
    assert float(r.min()) > 0.99, r
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05 * float(np.abs(full).mean()))
