"""Maximizing normal images: per neuron, the top K pool images under its model (streaming top-k)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from modelserver.generate.limits import StopCheck, stop_point
from modelserver.generate.models import Generated, Pick, ResponseModel, check_neurons, model_name
from modelserver.generate.pool import ImagePool, check_k, score_batches


class StreamingTopK:
    """Running top-k of scores (N, columns) over batches of rows, per column; ties -> lower index."""

    def __init__(self, k: int, columns: int) -> None:
        self.k = k
        self.values = torch.full((0, columns), -torch.inf, dtype=torch.float64)
        self.indices = torch.zeros((0, columns), dtype=torch.long)

    def update(self, start: int, scores: torch.Tensor) -> None:
        s = scores.detach().to("cpu", torch.float64)
        if s.ndim == 1:
            s = s[:, None]
        rows = torch.arange(start, start + s.shape[0], dtype=torch.long)[:, None].expand_as(s)
        vals = torch.cat([self.values, s])
        idx = torch.cat([self.indices, rows])
        k = min(self.k, vals.shape[0])
        # stable: sort by index first, then by value (descending, stable) so ties keep the lower index
        order = torch.argsort(idx, dim=0)
        vals, idx = vals.gather(0, order), idx.gather(0, order)
        top = torch.sort(vals, dim=0, descending=True, stable=True).indices[:k]
        self.values, self.indices = vals.gather(0, top), idx.gather(0, top)


def maximize_pool(model: ResponseModel, pool: ImagePool, neurons: Sequence[int], k: int,
                  batch_size: int = 256, device: torch.device | str = "cpu",
                  should_stop: StopCheck | None = None) -> Generated:
    """Top ``k`` pool images per requested neuron (neuron-major order), with their model scores.

    ``should_stop`` is tested before every batch (a true answer raises ``Cancelled``)."""
    neurons = check_neurons(neurons, model.n_neurons)
    k = check_k(k, len(pool))
    cols = torch.tensor(neurons)
    top = StreamingTopK(k, len(neurons))
    for start, out in score_batches(pool, model, batch_size, device):
        stop_point(should_stop, "gen.maximize")
        top.update(start, out[:, cols.to(out.device)])
    idx = top.indices.T.reshape(-1).numpy()  # (neurons * k), neuron-major
    vals = top.values.T.reshape(-1).numpy()
    images = pool.read(idx)
    ids = pool.ids(idx)
    name = model_name(model)
    picks = [Pick("maximize", name, int(neurons[i // k]), float(vals[i]), f"pool:{int(idx[i])}",
                  {"rank": float(i % k)}) for i in range(len(idx))]
    for p, iid in zip(picks, ids, strict=True):
        p.source += f":{iid}"
    return Generated(np.ascontiguousarray(images), picks)
