"""What the generators need from a model, as small Protocols, and a stack of compact models.

A *response model* maps a preprocessed float batch (N, 3, 112, 112) to (N, neurons)
responses; an *ensemble* maps it to (members, N, neurons). Anything with that call
signature and an ``n_neurons`` attribute works (the modelserver's ensemble included):
nothing here imports it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from modelserver.compact.model import CHANNEL_MEANS, CompactModel, find_compact_models, load_compact_model
from wire.errors import InvalidRequest, NotFound


@runtime_checkable
class ResponseModel(Protocol):
    """(N, 3, H, W) preprocessed images -> (N, neurons) responses."""

    n_neurons: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Ensemble(Protocol):
    """(N, 3, H, W) preprocessed images -> (members, N, neurons) responses."""

    n_neurons: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def paired_responses(model: ResponseModel, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
    """Response of neuron ``neurons[i]`` to image ``x[i]`` -> (N,).

    Uses ``model.paired`` where the model has it (a :class:`CompactStack` runs only the
    needed member per image), else one full forward and a gather.
    """
    paired = getattr(model, "paired", None)
    if callable(paired):
        out: torch.Tensor = paired(x, neurons)
        return out
    return model(x).gather(1, neurons.view(-1, 1).to(x.device))[:, 0]


def check_neurons(neurons: Sequence[int], n_neurons: int) -> list[int]:
    """Validate neuron indices against a model; unknown ones are a :class:`NotFound`."""
    out = [int(n) for n in neurons]
    if not out:
        raise InvalidRequest("no neurons requested")
    bad = [n for n in out if not 0 <= n < n_neurons]
    if bad:
        raise NotFound(f"unknown neuron(s) {bad}: the model has {n_neurons} neurons (0..{n_neurons - 1})")
    return out


class CompactStack(nn.Module):
    """Many one-neuron compact models run as one response model: (N, 3, H, W) -> (N, neurons)."""

    def __init__(self, models: Sequence[CompactModel], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if not models:
            raise InvalidRequest("a CompactStack needs at least one model")
        # channels-last runs these small separable convolutions about 1.7x faster on CPU
        self.members = nn.ModuleList(m.to(memory_format=torch.channels_last) for m in models)  # type: ignore[call-overload]
        self.n_neurons = len(models)
        self.names = list(names) if names is not None else [f"neuron{i}" for i in range(len(models))]
        if len(self.names) != self.n_neurons:
            raise InvalidRequest("one name per model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.stack([m(x) for m in self.members], dim=1)

    def paired(self, x: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """Response of member ``neurons[i]`` to ``x[i]``, running each member only on its images."""
        idx = neurons.to("cpu").long()
        x = x.contiguous(memory_format=torch.channels_last)
        rows_list, vals_list = [], []
        for j in torch.unique(idx).tolist():
            rows = (idx == j).nonzero()[:, 0]
            rows_list.append(rows)
            vals_list.append(self.members[j](x.index_select(0, rows.to(x.device))))
        if not rows_list:
            return x.new_empty(0)
        order = torch.argsort(torch.cat(rows_list)).to(x.device)
        return torch.cat(vals_list)[order]

    @classmethod
    def from_folder(cls, folder: str | Path, neurons: Sequence[int] | None = None, session: str | None = None,
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> CompactStack:
        """Load published compact models (sorted by session, neuron) from ``folder``."""
        paths = find_compact_models(folder, session)
        if neurons is not None:
            check_neurons(neurons, len(paths))
            paths = [paths[i] for i in neurons]
        names = [p.name[: -len(".pt")] for p in paths]
        return cls([load_compact_model(p, dtype=dtype, device=device) for p in paths], names).eval()


class MemberEnsemble(nn.Module):
    """An ensemble made of several response models with the same neurons: -> (members, N, neurons)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise InvalidRequest("an ensemble needs at least two members")
        counts = {int(getattr(m, "n_neurons", -1)) for m in members}
        if len(counts) != 1 or -1 in counts:
            raise InvalidRequest(f"members must share n_neurons, got {sorted(counts)}")
        self.members = nn.ModuleList(members)
        self.n_neurons = counts.pop()
        self.n_members = len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=0)


def perturbed_ensemble(model: nn.Module, members: int, rel_noise: float = 0.1, seed: int = 0) -> MemberEnsemble:
    """Copies of ``model`` with multiplicative Gaussian noise on every parameter (a stand-in ensemble)."""
    gen = torch.Generator().manual_seed(seed)
    copies = []
    for _ in range(members):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
                p.mul_(1 + rel_noise * noise)
        copies.append(m.eval())
    return MemberEnsemble(copies)


@dataclass
class Pick:
    """Why one generated image exists: the method, model, neuron and score that chose it."""

    method: str
    model: str
    neuron: int | None
    score: float
    source: str
    details: dict[str, float] = field(default_factory=dict)


@dataclass
class Generated:
    """Images (uint8 (N, H, W, 3) RGB) and one :class:`Pick` per image."""

    images: np.ndarray
    picks: list[Pick]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise InvalidRequest(f"generated images must be uint8 (N, H, W, 3), got {self.images.dtype} "
                                 f"{self.images.shape}")
        if len(self.picks) != len(self.images):
            raise InvalidRequest("one provenance record per image")


def model_name(model: object, default: str = "model") -> str:
    return str(getattr(model, "model_id", None) or getattr(model, "name", None) or default)


def pixels_to_input(x: torch.Tensor) -> torch.Tensor:
    """Float pixel images (N, 3, H, W) in 0..255 -> model input (minus the channel means)."""
    means = torch.tensor(CHANNEL_MEANS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x - means


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Float pixel images (N, 3, H, W) in 0..255 -> uint8 (N, H, W, 3) (rounded, clipped)."""
    return x.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
