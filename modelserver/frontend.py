"""Front ends of the ensemble: a ResNet50 trunk (plain torch) and a feature cache by image id.

:class:`ResNet50Trunk` reproduces torchvision's ResNet50 (v1.5: stride on the 3x3 conv) with
the same ``state_dict`` keys, so a user's local ImageNet weights file (e.g. torchvision's
``resnet50-*.pth``) loads with ``torch.load(weights_only=True)``; the trunk stops after a
configurable stage (``layer1`` .. ``layer4``). Nothing is downloaded: without a weights file
the ensemble uses its own trainable convolutional core (:mod:`modelserver.cores`) instead.

:class:`FrozenFrontend` runs the trunk in inference mode and caches each image's features by
content id (:func:`wire.base.image_id`), so re-training the ensemble never recomputes them.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wire.base import image_id

__all__ = ["STAGES", "FrozenFrontend", "ResNet50Trunk", "load_resnet50"]

STAGES = ("layer1", "layer2", "layer3", "layer4")
_BLOCKS = (3, 4, 6, 3)
_PLANES = (64, 128, 256, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + idt)


class ResNet50Trunk(nn.Module):
    """torchvision-compatible ResNet50 up to ``stage``: (N, 3, H, W) normalized -> feature map."""

    def __init__(self, stage: str = "layer2") -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (blocks, planes) in enumerate(zip(_BLOCKS, _PLANES, strict=True)):
            layer = nn.Sequential(*[Bottleneck(inplanes if b == 0 else planes * 4, planes,
                                               stride=(1 if i == 0 else 2) if b == 0 else 1)
                                    for b in range(blocks)])
            inplanes = planes * 4
            setattr(self, f"layer{i + 1}", layer)
            if STAGES[i] == stage:
                break
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for name in STAGES:
            x = getattr(self, name)(x)
            if name == self.stage:
                break
        return x


def load_resnet50(path: str | Path, stage: str = "layer2") -> ResNet50Trunk:
    """A trunk with ImageNet weights from a local torchvision-style state_dict file (tensors only)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    trunk = ResNet50Trunk(stage)
    own = trunk.state_dict()
    wanted = OrderedDict((k, v) for k, v in state.items() if k in own)
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise ValueError(f"{path} is not a ResNet50 state_dict: {len(missing)} keys missing, e.g. {missing[:3]}")
    trunk.load_state_dict(wanted, strict=True)
    return trunk.eval()


class FrozenFrontend:
    """A frozen trunk with a feature cache keyed by image content id."""

    def __init__(self, trunk: nn.Module, input_size: int = 224, device: torch.device | str = "cpu",
                 max_cached: int = 200_000) -> None:
        self.trunk = trunk.to(device).eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.input_size = input_size
        self.device = torch.device(device)
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_cached = max_cached
        self.out_channels = int(getattr(trunk, "out_channels", 0))

    def _prep(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images, device=self.device).float().permute(0, 3, 1, 2) / 255.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: np.ndarray, ids: list[str] | None = None, batch_size: int = 64) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> features (N, C, h, w) on the CPU, computed once per image id."""
        ids = ids if ids is not None else [image_id(im) for im in images]
        todo = [i for i, k in enumerate(ids) if k not in self.cache]
        for s in range(0, len(todo), batch_size):
            sel = todo[s:s + batch_size]
            out = self.trunk(self._prep(images[sel])).cpu()
            for j, i in enumerate(sel):
                self.cache[ids[i]] = out[j]
        while len(self.cache) > self.max_cached:
            self.cache.popitem(last=False)
        return torch.stack([self.cache[k] for k in ids])
