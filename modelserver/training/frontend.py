"""Front ends of the ensemble: a ResNet50 trunk (plain torch) and a feature cache by image id.

:class:`ResNet50Trunk` reproduces torchvision's ResNet50 (v1.5: stride on the 3x3 conv) with
the same ``state_dict`` keys, so a user's local ImageNet weights file (e.g. torchvision's
``resnet50-*.pth``) loads with ``torch.load(weights_only=True)``; the trunk stops after a
configurable stage (``layer1`` .. ``layer4``). Nothing is downloaded: without a weights file
the ensemble uses its own trainable convolutional core (:mod:`modelserver.training.cores`) instead.

:class:`FrozenFrontend` runs the trunk in inference mode on the configured device and, for
training, caches each image's features by content id (:func:`wire.base.image_id`) on that device,
so re-training the ensemble never recomputes them; prediction and pool scoring compute features
batch by batch and keep none.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from wire.base import image_id

__all__ = ["STAGES", "FrozenFrontend", "ResNet50Trunk", "load_resnet50", "resnet_frontend"]

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
    """A trunk with ImageNet weights from a local torchvision-style state_dict file (tensors only).

    Anything else (a pickle with code, another architecture, wrong shapes) is a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no ResNet50 weights file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, a zip that is not torch's, ...
        why = " ".join(str(exc).partition("WeightsUnpickler error:")[2].split()) or type(exc).__name__
        raise ValueError(f"{path} is not a tensors-only torch state_dict (torch.load(weights_only=True) "
                         f"refused it: {why.split('. ')[0][:160]})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a ResNet50 state_dict (a dict of tensors in torchvision's key layout)")
    trunk = ResNet50Trunk(stage)
    own = trunk.state_dict()
    wanted = OrderedDict((k, v) for k, v in state.items() if k in own)
    missing = sorted(set(own) - set(wanted))
    if missing:
        raise ValueError(f"{path} is not a ResNet50 state_dict: {len(missing)} keys missing, e.g. {missing[:3]}")
    bad = [k for k, v in wanted.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path} is not a ResNet50 state_dict: wrong shapes, e.g. {bad[0]} "
                         f"{tuple(wanted[bad[0]].shape)} (expected {tuple(own[bad[0]].shape)})")
    trunk.load_state_dict(wanted, strict=True)
    return trunk.eval()


class FrozenFrontend:
    """A frozen trunk on one device, with a feature cache (on that device) keyed by image content id.

    Only training uses the cache (``cache=True``); prediction and pool scoring compute features
    batch by batch and keep none. ``max_cache_bytes`` bounds the cache (oldest entries go first).
    """

    def __init__(self, trunk: nn.Module, input_size: int = 224, device: torch.device | str = "cpu",
                 max_cache_bytes: int = 4 << 30) -> None:
        self.trunk = trunk.to(device).eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.input_size = input_size
        self.device = torch.device(device)
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_cache_bytes = max_cache_bytes
        self._cached_bytes = 0
        self.out_channels = int(getattr(trunk, "out_channels", 0))

    def to(self, device: torch.device | str) -> FrozenFrontend:
        """Move the trunk (and the cache) to ``device``."""
        self.device = torch.device(device)
        self.trunk.to(self.device)
        for k, v in self.cache.items():
            self.cache[k] = v.to(self.device)
        return self

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float RGB (N, 3, H, W) in 0..255 -> the trunk's input (resized, ImageNet-normalized).

        Differentiable: synthesis and adversarial images take gradients through it."""
        x = pixels / 255.0
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype)[:, None, None]
        return (x - mean) / std

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float RGB (N, 3, H, W) in 0..255 on the trunk's device -> feature maps (with gradients to pixels)."""
        out: torch.Tensor = self.trunk(self.normalize(pixels))
        return out

    def _prep(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images), device=self.device).permute(0, 3, 1, 2).float()
        return self.normalize(x)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, ids: list[str] | None = None, batch_size: int = 64,
                 cache: bool = True) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 features (N, C, h, w) on the trunk's device.

        With ``cache``, each image id is computed once (and kept); without, nothing is kept."""
        if not cache:
            return torch.cat([self.trunk(self._prep(images[s:s + batch_size])).float()
                              for s in range(0, len(images), batch_size)])
        ids = ids if ids is not None else [image_id(im) for im in images]
        todo = [i for i, k in enumerate(ids) if k not in self.cache]
        fresh: dict[str, torch.Tensor] = {}
        for s in range(0, len(todo), batch_size):
            sel = todo[s:s + batch_size]
            out = self.trunk(self._prep(images[sel])).float()
            for j, i in enumerate(sel):
                fresh[ids[i]] = out[j].clone()
        result = torch.stack([fresh[k] if k in fresh else self.cache[k] for k in ids])
        for k, v in fresh.items():
            if k not in self.cache:
                self.cache[k] = v
                self._cached_bytes += v.numel() * v.element_size()
        while self.cache and self._cached_bytes > self.max_cache_bytes:
            _, v = self.cache.popitem(last=False)
            self._cached_bytes -= v.numel() * v.element_size()
        return result


_SHARED: OrderedDict[tuple[str, int, str, int], FrozenFrontend] = OrderedDict()


def resnet_frontend(weights: str | Path | None, layer: str, input_size: int) -> FrozenFrontend:
    """The frozen ResNet50 front end of an ensemble config (``frontend: resnet50``).

    Shared by every ensemble of a process built from the same file, layer and size (the last two
    such front ends are kept), so successive training jobs and loaded versions reuse one trunk
    and its training-feature cache instead of reloading the file."""
    if weights is None:
        raise ValueError("frontend resnet50 needs a local weights file (model.weights / --weights); "
                         "see docs/modelserver.md, 'The ResNet50 front end'")
    path = Path(weights).resolve()
    key = (str(path), path.stat().st_mtime_ns if path.is_file() else 0, layer, int(input_size))
    if key not in _SHARED:
        _SHARED[key] = FrozenFrontend(load_resnet50(path, layer), input_size=input_size)
        while len(_SHARED) > 2:
            _SHARED.popitem(last=False)
    _SHARED.move_to_end(key)
    return _SHARED[key]
