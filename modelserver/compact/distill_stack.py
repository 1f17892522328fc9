"""Many compact students in one batched computation, with an optional shared trunk.

:class:`StackedCompact` holds ``n`` students of the 5-layer separable architecture of
:mod:`modelserver.compact.model`. Every parameter has a leading student axis; the students' activity is
stacked along the channel axis, ``(B, n*C, H, W)`` in channels-last memory, so one grouped
convolution (groups = students) runs a layer for all of them.

The computation is a chain of nine units: layer 0 (convolution, batch norm, ReLU), then for each
of layers 1..4 a depthwise unit and a pointwise unit (pointwise convolution, batch norm, ReLU).
``shared=s`` makes the first ``s`` units one set of weights that all students learn together;
shared activity is ``(B, C, H, W)`` and is computed once per batch. Every exported student holds
its own copy of the shared weights, so it is still a complete compact model, and pruning removes
filters from each student independently.

Masks ``mask0..mask4`` (n, K_L) switch filters off; a masked filter's output is zero, exactly as
if it were removed. A mask on shared activity stays *pending* (depthwise convolutions and zero
padding act per channel, so they commute with it) until the next pointwise unit folds it into
that unit's weights, where the students' activity splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelserver.compact.model import MAP_SIZE, CompactModel
from modelserver.training.cores import StackedBatchNorm, StackedConv

__all__ = ["Act", "StackedCompact"]

UNITS = 9  # layer 0, then (depthwise, pointwise) for layers 1..4


@dataclass
class Act:
    """Activity between units: shared ``(B, C, H, W)`` or stacked ``(B, n*C, H, W)``.

    ``pending``: (n, C) filter masks not yet applied to a shared activity.
    """

    h: torch.Tensor
    stacked: bool
    pending: torch.Tensor | None = None


class StackedCompact(nn.Module):
    """``n`` compact models with filters ``(K0..K4)``: (B, 3, 112, 112) preprocessed images -> (B, n).

    ``shared``: how many leading units (0..8, see the module docstring) the students share;
    ``shared_layer0=True`` is ``shared=1``. Sharing is what makes the batch cheaper than the same
    students one by one on a CPU: 2 shares layer 0 and the layer-1 depthwise filters (every
    full-resolution computation), 4 also layer 1 and the layer-2 depthwise filters.
    ``readout_rank``: ``Beta`` is the product of a spatial (n, 28*28, rank) and a channel
    (n, rank, K4) factor while training (:meth:`materialize_readout` stores it dense).
    """

    def __init__(self, n: int, filters: Sequence[int] = (16, 16, 8, 8, 8), shared_layer0: bool = False,
                 shared: int | None = None, readout_rank: int | None = None) -> None:
        super().__init__()
        k = [int(f) for f in filters]
        if len(k) != 5 or min(k) < 1:
            raise ValueError(f"a compact model has 5 layers of >= 1 filters, got {k}")
        s = int(shared) if shared is not None else int(shared_layer0)
        if not 0 <= s < UNITS:
            raise ValueError(f"shared must be in 0..{UNITS - 1}, got {s}")
        self.n, self.filters, self.shared, self.readout_rank = n, tuple(k), s, readout_rank
        self.shared_layer0 = s >= 1

        def members(unit: int) -> int:
            return 1 if unit < s else n

        self.conv0 = StackedConv(members(0), 3, k[0], 5, padding=2, mode="shared")
        self.bn = nn.ModuleList([StackedBatchNorm(members(0), k[0])])
        self.depth = nn.ModuleList()
        self.point = nn.ModuleList()
        for i in range(1, 5):
            st, p = (2, 0) if i <= 2 else (1, 2)
            self.depth.append(StackedConv(members(2 * i - 1), k[i - 1], k[i - 1], 5, stride=st, padding=p,
                                          mode="depthwise", bias=False))
            self.point.append(StackedConv(members(2 * i), k[i - 1], k[i], 1, mode="grouped"))
            self.bn.append(StackedBatchNorm(members(2 * i), k[i]))
        self.beta = nn.Parameter(torch.randn(n, MAP_SIZE, MAP_SIZE, k[4]) * (1.0 / (MAP_SIZE * np.sqrt(k[4]))))
        self.beta_bias = nn.Parameter(torch.zeros(n))
        if readout_rank is not None:  # Beta = space @ channels while training; ``beta`` itself is then unused
            self.beta.requires_grad_(False)
            self.beta_space = nn.Parameter(torch.randn(n, MAP_SIZE * MAP_SIZE, readout_rank) / MAP_SIZE)
            self.beta_chan = nn.Parameter(torch.randn(n, readout_rank, k[4]) / np.sqrt(k[4] * readout_rank))
        for i, kk in enumerate(k):
            self.register_buffer(f"mask{i}", torch.ones(n, kk))

    # --- bookkeeping ---------------------------------------------------------------------------
    def mask(self, layer: int) -> torch.Tensor:
        m: torch.Tensor = getattr(self, f"mask{layer}")
        return m

    def shared_prefixes(self) -> tuple[str, ...]:
        """state_dict key prefixes of the shared units."""
        out = []
        for u in range(self.shared):
            if u == 0:
                out += ["conv0.", "bn.0."]
            elif u % 2:
                out.append(f"depth.{u // 2}.")
            else:
                out += [f"point.{u // 2 - 1}.", f"bn.{u // 2}."]
        return tuple(out)

    def readout(self) -> torch.Tensor:
        """The students' dense readouts ``Beta``: (n, 28, 28, K4), channels last."""
        if self.readout_rank is None:
            return self.beta
        return (self.beta_space @ self.beta_chan).reshape(self.beta.shape)

    @torch.no_grad()
    def scale_readout(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        """Outputs become ``scale * output + offset`` per student ((n,) each)."""
        target = self.beta if self.readout_rank is None else self.beta_chan
        target.mul_(scale.reshape(-1, *[1] * (target.ndim - 1)))
        self.beta_bias.mul_(scale).add_(offset)

    @torch.no_grad()
    def materialize_readout(self) -> StackedCompact:
        """Store the factorized readout (if any) as the dense ``beta``; then train ``beta`` itself."""
        if self.readout_rank is not None:
            self.beta.copy_(self.readout())
            self.beta.requires_grad_(True)
            del self.beta_space, self.beta_chan
            self.readout_rank = None
        return self

    def kept_filters(self) -> np.ndarray:
        """(n, 5) number of unmasked filters per model and layer."""
        return np.stack([self.mask(i).sum(1).cpu().numpy() for i in range(5)], 1).astype(int)

    # --- the units -----------------------------------------------------------------------------
    def _bn(self, bn: StackedBatchNorm, h: torch.Tensor) -> torch.Tensor:
        """Batch norm of stacked activity; a shared batch norm is expanded (inference only)."""
        if bn.weight.shape[0] == self.n:
            return bn(h)
        if self.training:
            raise RuntimeError("a shared batch norm cannot train on per-student activity (masked shared filters)")
        rm: torch.Tensor = bn.running_mean  # type: ignore[assignment]
        rv: torch.Tensor = bn.running_var  # type: ignore[assignment]
        n = self.n
        return F.batch_norm(h, rm.expand(n, -1).reshape(-1), rv.expand(n, -1).reshape(-1),
                            bn.weight.expand(n, -1).reshape(-1), bn.bias.expand(n, -1).reshape(-1), False, 0.0, bn.eps)

    def _layer0(self, x: torch.Tensor) -> Act:
        h = F.relu(self.bn[0](self.conv0(x.contiguous(memory_format=torch.channels_last))))
        return Act(h, stacked=self.shared == 0)

    def _depth(self, a: Act, i: int) -> Act:
        d: StackedConv = self.depth[i - 1]  # type: ignore[assignment]
        h = F.pad(a.h, (1, 3, 1, 3)) if i <= 2 else a.h
        n, k = self.n, d.kernel
        if not a.stacked and d.weight.shape[0] == 1:
            return Act(d(h), False, a.pending)  # shared: the pending mask commutes with it
        if not a.stacked:
            # each student's filters on the one shared map: groups = C, channels (c, student), then
            # reordered to (student, c); zero padding and the missing bias keep pending masks exact
            c = h.shape[1]
            w = d.weight.transpose(0, 1).reshape(c * n, 1, k, k)
            h = F.conv2d(h, w, stride=d.stride, padding=d.padding, groups=c)
            b, _, hh, ww = h.shape
            h = h.reshape(b, c, n, hh, ww).transpose(1, 2).reshape(b, n * c, hh, ww)
            h = h.contiguous(memory_format=torch.channels_last)
            if a.pending is not None:
                h = h * a.pending.reshape(1, -1, 1, 1)
            return Act(h, True)
        if d.weight.shape[0] == 1:  # shared filters on per-student activity
            w = d.weight.expand(n, -1, -1, -1, -1).reshape(-1, 1, k, k)
            return Act(F.conv2d(h, w, stride=d.stride, padding=d.padding, groups=w.shape[0]), True)
        return Act(d(h), True)

    def _point(self, a: Act, i: int) -> Act:
        p: StackedConv = self.point[i - 1]  # type: ignore[assignment]
        bn: StackedBatchNorm = self.bn[i]  # type: ignore[assignment]
        n = self.n
        assert p.bias is not None
        w: torch.Tensor = p.weight  # (m, K, C, 1, 1)
        b: torch.Tensor = p.bias  # (m, K)
        if not a.stacked:
            if a.pending is not None:  # fold the pending masks into this unit's weights
                same = w.shape[0] == 1 and bool((a.pending == a.pending[:1]).all())
                w = w * (a.pending[:1] if same else a.pending)[:, None, :, None, None]
            if w.shape[0] == 1:  # the trunk goes on (no masks, or the same masks for every student)
                return Act(F.relu(bn(F.conv2d(a.h, w[0], b[0]))), False)
            # the students split here: one convolution from the shared map to n*K channels
            w = w.expand(n, -1, -1, -1, -1)
            h = F.conv2d(a.h, w.reshape(-1, *w.shape[2:]), b.expand(n, -1).reshape(-1))
        elif w.shape[0] == 1:
            w = w.expand(n, -1, -1, -1, -1)
            h = F.conv2d(a.h, w.reshape(-1, *w.shape[2:]), b.expand(n, -1).reshape(-1), groups=n)
        else:
            h = p(a.h)
        return Act(F.relu(self._bn(bn, h)), True)

    def unmasked(self, a: Act | torch.Tensor, i: int) -> Act:
        """Layer ``i`` (0..4) before its filter mask; for layer 0, ``a`` is the image batch."""
        if i == 0:
            if isinstance(a, Act):
                raise TypeError("layer 0 takes the image batch")
            return self._layer0(a)
        if not isinstance(a, Act):
            raise TypeError(f"layer {i} takes an Act")
        return self._point(self._depth(a, i), i)

    def apply_mask(self, a: Act, i: int) -> Act:
        """Layer ``i``'s filter masks on its output (pending where the activity is shared)."""
        m = self.mask(i)
        if bool((m == 1).all()):
            return a
        if a.stacked:
            return Act(a.h * m.reshape(1, -1, 1, 1), True)
        if a.pending is not None:
            raise RuntimeError("two pending masks")
        return Act(a.h, False, m)

    def layer(self, a: Act | torch.Tensor, i: int) -> Act:
        return self.apply_mask(self.unmasked(a, i), i)

    def layer_input(self, x: torch.Tensor, upto: int) -> Act | torch.Tensor:
        """What layer ``upto`` takes (the images for 0), for caching while pruning that layer."""
        a: Act | torch.Tensor = x.contiguous(memory_format=torch.channels_last)
        for i in range(upto):
            a = self.layer(a, i)
        return a

    def from_pre(self, pre: Act, layer: int) -> torch.Tensor:
        """Outputs (B, n) from layer ``layer``'s unmasked activity, with the current masks."""
        a = self.apply_mask(pre, layer)
        for i in range(layer + 1, 5):
            a = self.layer(a, i)
        return self.head(a)

    def head(self, a: Act) -> torch.Tensor:
        """The students' dense readouts ``Beta`` of the layer-4 activity: (B, n)."""
        b, n, k4 = a.h.shape[0], self.n, self.filters[4]
        h = a.h.permute(0, 2, 3, 1)  # channels last: a view when the activity is channels-last
        beta = self.readout()
        if a.stacked:
            h = h.reshape(b, MAP_SIZE * MAP_SIZE, n, k4)
            return torch.einsum("bpnk,npk->bn", h, beta.reshape(n, MAP_SIZE * MAP_SIZE, k4)) + self.beta_bias
        if a.pending is not None:
            beta = beta * a.pending[:, None, None, :]
        return h.reshape(b, -1) @ beta.reshape(n, -1).T + self.beta_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a: Act | torch.Tensor = x
        for i in range(5):
            a = self.layer(a, i)
        assert isinstance(a, Act)
        return self.head(a)

    # --- copies and export -----------------------------------------------------------------------
    @torch.no_grad()
    def select(self, indices: Sequence[int]) -> StackedCompact:
        """A new stack holding copies of the given students (same weights, masks, statistics and mode)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out = StackedCompact(len(idx), self.filters, shared=self.shared,
                             readout_rank=self.readout_rank).to(self.beta.device)
        shared = self.shared_prefixes()
        out.load_state_dict({k: v.clone() if k.startswith(shared) else v[idx].clone()
                             for k, v in self.state_dict().items()})
        return out.train(self.training)

    @torch.no_grad()
    def export(self, j: int) -> CompactModel:
        """Student ``j`` as a plain :class:`CompactModel` holding only its kept filters."""
        keep = [torch.nonzero(self.mask(i)[j] > 0)[:, 0] for i in range(5)]
        keep = [k if len(k) else torch.zeros(1, dtype=torch.long) for k in keep]
        model = CompactModel([len(k) for k in keep])
        L = model.layers

        def pick(t: torch.Tensor) -> torch.Tensor:  # a shared unit's single copy, or student j's
            return t[0] if t.shape[0] == 1 else t[j]

        L.layer0_conv.weight.copy_(pick(self.conv0.weight)[keep[0]])
        assert self.conv0.bias is not None and L.layer0_conv.bias is not None
        L.layer0_conv.bias.copy_(pick(self.conv0.bias)[keep[0]])
        for i in range(5):
            bn_src: StackedBatchNorm = self.bn[i]  # type: ignore[assignment]
            bn_dst: nn.BatchNorm2d = getattr(L, f"layer{i}_bn")
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn_dst, name).copy_(pick(getattr(bn_src, name))[keep[i]])
        for i in range(1, 5):
            d: StackedConv = self.depth[i - 1]  # type: ignore[assignment]
            p: StackedConv = self.point[i - 1]  # type: ignore[assignment]
            conv_d: nn.Conv2d = getattr(L, f"layer{i}_conv_depth")
            conv_p: nn.Conv2d = getattr(L, f"layer{i}_conv_point")
            conv_d.weight.copy_(pick(d.weight)[keep[i - 1]])
            conv_p.weight.copy_(pick(p.weight)[keep[i]][:, keep[i - 1]])
            assert p.bias is not None and conv_p.bias is not None
            conv_p.bias.copy_(pick(p.bias)[keep[i]])
        beta = self.readout()[j][:, :, keep[4]]  # (28, 28, K4) channels last, as the published Beta
        L.Beta.weight.copy_(beta.reshape(1, -1))
        L.Beta.bias.copy_(self.beta_bias[j:j + 1])
        return model.eval()
