"""The compact V4 model architecture of Cowley et al. (2023), and a loader of published weights.

Five layers of (depthwise-)separable convolutions and a dense readout ``Beta`` from the
28 x 28 x K4 activity (channels-last flattening) to one neuron. See
``../shared/data/v4/README.md`` for the exact layout; the state_dict keys here match the
published files (prefix ``layers.``) so they load with ``load_state_dict`` unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

CHANNEL_MEANS = (116.222, 109.270, 100.381)
IMAGE_SIZE = 112
MAP_SIZE = 28
_FILE_RE = re.compile(r"compact_model_(?P<session>\w+?)_neuron(?P<neuron>\d+)\.pt$")


def preprocess(images: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W), raw 0..255 minus the per-channel means."""
    x = torch.as_tensor(np.asarray(images), device=device).to(dtype)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(x.shape)}")
    means = torch.tensor(CHANNEL_MEANS, dtype=dtype, device=x.device)
    return (x - means).permute(0, 3, 1, 2).contiguous()


class _Layers(nn.Module):
    def __init__(self, filters: Sequence[int]) -> None:
        super().__init__()
        k = [int(f) for f in filters]
        if len(k) != 5 or min(k) < 1:
            raise ValueError(f"a compact model has 5 layers of >= 1 filters, got {k}")
        self.layer0_conv = nn.Conv2d(3, k[0], 5, padding=2)
        self.layer0_bn = nn.BatchNorm2d(k[0])
        for i in range(1, 5):
            setattr(self, f"layer{i}_conv_depth", nn.Conv2d(k[i - 1], k[i - 1], 5, stride=2 if i <= 2 else 1,
                                                           padding=0 if i <= 2 else 2, groups=k[i - 1], bias=False))
            setattr(self, f"layer{i}_conv_point", nn.Conv2d(k[i - 1], k[i], 1))
            setattr(self, f"layer{i}_bn", nn.BatchNorm2d(k[i]))
        self.Beta = nn.Linear(MAP_SIZE * MAP_SIZE * k[4], 1)


class CompactModel(nn.Module):
    """One neuron's compact model: (N, 3, 112, 112) preprocessed images -> (N,) responses."""

    def __init__(self, filters: Sequence[int]) -> None:
        super().__init__()
        self.filters = tuple(int(f) for f in filters)
        self.layers = _Layers(self.filters)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        L = self.layers
        x = F.relu(L.layer0_bn(L.layer0_conv(x)))
        for i in range(1, 5):
            if i <= 2:
                x = F.pad(x, (1, 3, 1, 3))
            x = getattr(L, f"layer{i}_conv_depth")(x)
            x = getattr(L, f"layer{i}_conv_point")(x)
            x = F.relu(getattr(L, f"layer{i}_bn")(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = h.permute(0, 2, 3, 1).flatten(1)  # channels-last, as the published Beta expects
        return self.layers.Beta(h)[:, 0]


def find_compact_models(folder: str | Path, session: str | None = None) -> list[Path]:
    """Published compact-model files in ``folder``, sorted by (session, neuron index)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no compact-model folder at {folder}")
    found = []
    for p in folder.iterdir():
        m = _FILE_RE.search(p.name)
        if m and (session is None or m["session"] == session):
            found.append((m["session"], int(m["neuron"]), p))
    return [p for _, _, p in sorted(found)]


def load_compact_model(path: str | Path, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> CompactModel:
    """Load one published compact model (``*.pt`` state_dict plus its ``*.filters.npy``).

    Only tensors are read (``weights_only=True``): a user's file can never run code.
    """
    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    filters_file = path.with_name(path.name[:-3] + ".filters.npy")
    if filters_file.exists():
        filters = np.load(filters_file, allow_pickle=False).astype(int).tolist()
    else:  # infer from the state_dict itself
        filters = [int(state["layers.layer0_conv.weight"].shape[0])] + [
            int(state[f"layers.layer{i}_conv_point.weight"].shape[0]) for i in range(1, 5)]
    model = CompactModel(filters)
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()
