"""Convolutional cores of an ensemble, all members in one batched computation.

Every parameter carries a leading member axis ``M``; a forward pass reshapes the stack into
one grouped convolution (groups = members), so M members cost one call per layer instead of M,
and each member's weights stay a clean slice (``param[m]``) for early stopping and export.

The member architecture follows Cowley et al.: a full 5x5 convolution, then blocks of
depthwise-separable convolutions (5x5 depthwise, 1x1 pointwise), batch norm and a
nonlinearity, with skip connections where shapes agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["StackedBatchNorm", "StackedConv", "StackedCore"]


class StackedConv(nn.Module):
    """M convolutions side by side. ``mode``: 'shared' input (B, cin), 'grouped' input
    (B, M*cin) with a full conv per member, or 'depthwise' (cin == cout, one filter per channel)."""

    def __init__(self, members: int, cin: int, cout: int, kernel: int, *, stride: int = 1,
                 padding: int = 0, mode: str = "grouped", bias: bool = True) -> None:
        super().__init__()
        if mode not in ("shared", "grouped", "depthwise"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "depthwise" and cin != cout:
            raise ValueError("a depthwise convolution keeps the channel count")
        self.members, self.cin, self.cout, self.kernel = members, cin, cout, kernel
        self.stride, self.padding, self.mode = stride, padding, mode
        fan_in = (1 if mode == "depthwise" else cin) * kernel * kernel
        shape = (members, cout, 1 if mode == "depthwise" else cin, kernel, kernel)
        self.weight = nn.Parameter(torch.randn(shape) * math.sqrt(2.0 / fan_in))
        self.bias = nn.Parameter(torch.zeros(members, cout)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(-1, *self.weight.shape[2:])
        b = self.bias.reshape(-1) if self.bias is not None else None
        groups = {"shared": 1, "grouped": self.members, "depthwise": self.members * self.cout}[self.mode]
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding, groups=groups)


class StackedBatchNorm(nn.Module):
    """Batch norm over (B, M*C, H, W) with per-member parameters and statistics (M, C)."""

    def __init__(self, members: int, channels: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(members, channels))
        self.bias = nn.Parameter(torch.zeros(members, channels))
        self.register_buffer("running_mean", torch.zeros(members, channels))
        self.register_buffer("running_var", torch.ones(members, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rm: torch.Tensor = self.running_mean  # type: ignore[assignment]
        rv: torch.Tensor = self.running_var  # type: ignore[assignment]
        return F.batch_norm(x, rm.view(-1), rv.view(-1), self.weight.reshape(-1), self.bias.reshape(-1),
                            self.training, self.momentum, self.eps)


class StackedCore(nn.Module):
    """M small separable-convolution cores. (B, cin, H, W) -> (B, M, C, h, w).

    ``strides`` gives the stride of each separable block (e.g. (1, 2, 1) halves the map once);
    a block whose input and output shapes agree adds its input (skip connection).
    """

    def __init__(self, members: int, in_channels: int = 3, channels: int = 32,
                 strides: Sequence[int] = (1, 2, 1), kernel: int = 5, first_kernel: int = 5,
                 first_stride: int = 1) -> None:
        super().__init__()
        self.members, self.in_channels, self.channels = members, in_channels, channels
        self.strides = tuple(int(s) for s in strides)
        self.first_stride = int(first_stride)
        self.conv0 = StackedConv(members, in_channels, channels, first_kernel, stride=self.first_stride,
                                 padding=first_kernel // 2, mode="shared")
        self.bn0 = StackedBatchNorm(members, channels)
        self.depth = nn.ModuleList()
        self.point = nn.ModuleList()
        self.bns = nn.ModuleList()
        for s in self.strides:
            self.depth.append(StackedConv(members, channels, channels, kernel, stride=s, padding=kernel // 2,
                                          mode="depthwise", bias=False))
            self.point.append(StackedConv(members, channels, channels, 1, mode="grouped"))
            self.bns.append(StackedBatchNorm(members, channels))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        for s in (self.first_stride, *self.strides):
            h, w = (h - 1) // s + 1, (w - 1) // s + 1
        return h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # depthwise convs are ~5x faster so on CPU
        h = F.elu(self.bn0(self.conv0(x)))
        for d, p, bn, s in zip(self.depth, self.point, self.bns, self.strides, strict=True):
            out = F.elu(bn(p(d(h))))
            h = out + h if s == 1 else out
        b, _, hh, ww = h.shape
        return h.contiguous().view(b, self.members, self.channels, hh, ww)

    def first_layer_kernels(self) -> torch.Tensor:
        """(M, C*cin, k, k): the first convolution's kernels (for smoothness penalties)."""
        w = self.conv0.weight
        return w.reshape(w.shape[0], -1, *w.shape[-2:])
