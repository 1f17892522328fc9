"""Fast labelling of images by published compact models (the distillation teachers).

A :class:`~modelserver.compact.model.CompactModel` in inference mode is folded once: each batch norm
goes into the convolution before it, and ReLUs run in place. On a CPU the unfolded model spends
most of its time in memory-bound batch-norm, ReLU and padding passes over the full-resolution
layer-0 activity; folded, and in small batches that stay in cache, it labels about 3x faster, and
about 5x faster again in bfloat16 where the CPU has AMX.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelserver.compact.model import MAP_SIZE, CompactModel, preprocess

__all__ = ["FoldedCompact", "fold_compact", "teacher_targets"]


@dataclass
class FoldedCompact:
    """A compact model with its batch norms folded in: plain tensors, inference only."""

    conv0: tuple[torch.Tensor, torch.Tensor]  # weight, bias
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # depthwise, pointwise weight, bias
    beta: torch.Tensor  # (K4, 28, 28)
    beta_bias: torch.Tensor  # (1,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.conv0
        h = F.conv2d(x, w, b, padding=2).relu_()
        for i, (dw, pw, pb) in enumerate(self.layers, start=1):
            if i <= 2:
                h = F.conv2d(F.pad(h, (1, 3, 1, 3)), dw, stride=2, groups=dw.shape[0])
            else:
                h = F.conv2d(h, dw, padding=2, groups=dw.shape[0])
            h = F.conv2d(h, pw, pb).relu_()
        return (h.float() * self.beta).sum((1, 2, 3)) + self.beta_bias  # the readout in float32 always


@torch.no_grad()
def fold_compact(model: CompactModel) -> FoldedCompact:
    """``model`` (its batch norms' running statistics) as a :class:`FoldedCompact`."""
    L = model.layers

    def scale(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        assert bn.running_var is not None and bn.running_mean is not None
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return s, bn.bias - bn.running_mean * s

    s, b = scale(L.layer0_bn)
    assert L.layer0_conv.bias is not None
    conv0 = (L.layer0_conv.weight * s[:, None, None, None], L.layer0_conv.bias * s + b)
    layers = []
    for i in range(1, 5):
        s, b = scale(getattr(L, f"layer{i}_bn"))
        pw: nn.Conv2d = getattr(L, f"layer{i}_conv_point")
        assert pw.bias is not None
        layers.append((getattr(L, f"layer{i}_conv_depth").weight.clone(), pw.weight * s[:, None, None, None],
                       pw.bias * s + b))
    beta = L.Beta.weight.reshape(MAP_SIZE, MAP_SIZE, -1).permute(2, 0, 1).contiguous()
    return FoldedCompact(conv0, layers, beta, L.Beta.bias.clone())


@torch.no_grad()
def teacher_targets(models: Sequence[nn.Module], images: np.ndarray, batch_size: int = 8,
                    device: torch.device | str = "cpu", bfloat16: bool = False) -> np.ndarray:
    """(neurons, K) outputs of a list of models (e.g. the published compact models) on ``images``.

    Compact models in inference mode run folded (:func:`fold_compact`); other modules as they are.
    ``bfloat16``: convolutions in bfloat16 (autocast, channels-last), readouts in float32; about 5x
    faster on CPUs with AMX, and the labels correlate with float32 ones at r > 0.9999.
    """
    fns = [fold_compact(m) if isinstance(m, CompactModel) and not m.training else m for m in models]
    dtypes = [next(m.parameters()).dtype for m in models]
    outs = np.zeros((len(models), len(images)))
    for i in range(0, len(images), batch_size):
        x = preprocess(images[i:i + batch_size], device=device)
        if bfloat16:
            x = x.contiguous(memory_format=torch.channels_last)
        for k, (f, dt) in enumerate(zip(fns, dtypes, strict=True)):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bfloat16):
                outs[k, i:i + batch_size] = f(x.to(dt)).double().cpu().numpy()
    return outs
