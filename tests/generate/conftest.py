"""Fixtures of the generation tests: small random compact models and small pools (no data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.compact.model import CompactModel, preprocess
from modelserver.generate.models import CompactStack
from modelserver.generate.pool import build_pool


def random_stack(n: int, seed: int = 0) -> CompactStack:
    """``n`` random small compact models whose BatchNorm statistics are calibrated on random images."""
    torch.manual_seed(seed)
    calib = preprocess(random_images(16, seed=seed + 100))
    models = []
    for _ in range(n):
        m = CompactModel((4, 4, 3, 3, 2))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.momentum = None  # cumulative average over the calibration pass
        m.train()
        with torch.no_grad():
            m(calib)
        models.append(m.eval())
    return CompactStack(models).eval()


@pytest.fixture(scope="module")
def small_stack() -> CompactStack:
    return random_stack(4, seed=1)


def random_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth-ish random images: low-resolution noise upsampled, so they are image-like and distinct
    low = rng.integers(0, 256, size=(n, 14, 14, 3), dtype=np.uint8)
    return np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)


@pytest.fixture
def small_pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.h5"
    imgs = random_images(40, seed=3)
    build_pool(path, [imgs[:24], imgs[24:]])
    return path
