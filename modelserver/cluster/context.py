"""The server's generation context with pool scoring on the cluster (everything else as before)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelserver.cluster.runtime import RayCluster
from modelserver.cluster.scoring import ClusterScored, ModelSpec, ShardScorer

__all__ = ["ClusterGenerationContext", "spec_of"]


def _cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_cpu(v) for v in x]
    return x


def spec_of(ensemble: Any, session: str, members: bool) -> ModelSpec:
    """A scorer's copy of one session of a :class:`~modelserver.training.ensemble.DeepEnsemble` (CPU tensors)."""
    return ModelSpec(_cpu(ensemble.export_state()), session, members)


class ClusterGenerationContext:
    """Wraps a :class:`~modelserver.generate.context.ServerGenerationContext`: its ensemble views score pools
    on the cluster's scorer actors (created at the first request); other models stay in process."""

    def __init__(self, inner: Any, cluster: RayCluster) -> None:
        self.inner = inner
        self.cluster = cluster
        self.device: torch.device | str = inner.device

    def __getattr__(self, name: str) -> Any:  # v4_dir, image_roots, ... of the wrapped context
        return getattr(self.__dict__["inner"], name)

    def scorer(self) -> ShardScorer:
        return self.cluster.scorer()

    def _wrap(self, view: nn.Module, members: bool) -> nn.Module:
        ens = getattr(view, "ensemble", None)
        if ens is None or getattr(ens, "frontend", None) is not None:
            return view  # a frozen pretrained front end is not shipped to scorers: scored here
        tag = ens.__dict__.get("_cluster_key")
        if tag is None:
            tag = uuid.uuid4().hex
            ens.__dict__["_cluster_key"] = tag
        session = str(view.session)
        key = f"{tag}:{session}:{int(members)}"
        return ClusterScored(view, self.scorer(), key, lambda: spec_of(ens, session, members))

    def response_model(self, model_id: str) -> nn.Module:
        return self._wrap(self.inner.response_model(model_id), False)

    def ensemble(self, ensemble_id: str) -> nn.Module:
        return self._wrap(self.inner.ensemble(ensemble_id), True)

    def pool_path(self, name: str, create: bool = False) -> Path:
        path: Path = self.inner.pool_path(name, create)
        return path

    def natural_sources(self) -> list[np.ndarray]:
        out: list[np.ndarray] = self.inner.natural_sources()
        return out
