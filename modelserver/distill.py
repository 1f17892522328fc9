"""Distilling compact models from a teacher, many neurons at once (Cowley et al. 2023).

A teacher (the ensemble, the published compact models, any ``images -> (neurons, images)``
function) labels a large pool of unlabeled images: natural crops of recorded images, their
"gaudy" versions (each colour channel pushed to 0 or 255 about its mean) and noise. Students
have the 5-layer separable architecture of :mod:`modelserver.compact`; all of them train in one
batched computation (:class:`StackedCompact`: grouped convolutions with a leading model axis),
not a Python loop over neurons. Per-model channel masks let :mod:`modelserver.prune` remove
filters from each student independently, and :meth:`StackedCompact.export` writes a normal
:class:`~modelserver.compact.CompactModel` with only the kept filters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelserver.compact import IMAGE_SIZE, MAP_SIZE, CompactModel, preprocess
from modelserver.cores import StackedBatchNorm, StackedConv
from modelserver.metrics import pearson_r

__all__ = ["DistillConfig", "DistillReport", "StackedCompact", "distill", "gaudy", "make_pool", "teacher_targets"]

Teacher = Callable[[np.ndarray], np.ndarray]  # uint8 (K, 112, 112, 3) -> (neurons, K)


# --- the unlabeled pool ---------------------------------------------------------------------
def gaudy(images: np.ndarray) -> np.ndarray:
    """Each colour channel of each image pushed to 0 or 255 about its own mean."""
    x = np.asarray(images)
    mean = x.reshape(len(x), -1, 3).mean(1)[:, None, None, :]
    return np.where(x >= mean, 255, 0).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    t = torch.as_tensor(img).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def make_pool(images: np.ndarray, n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.25, 0.15),
              size: int = IMAGE_SIZE) -> np.ndarray:
    """``n`` unlabeled uint8 images: random crops (with flips) of ``images``, gaudy crops and noise.

    ``fractions``: shares of natural crops, gaudy crops and noise images (white and 1/f).
    """
    rng = np.random.default_rng(seed)
    n_nat = round(fractions[0] * n)
    n_gaudy = round(fractions[1] * n)
    n_noise = n - n_nat - n_gaudy
    src = np.asarray(images)
    h, w = src.shape[1:3]
    crops = []
    for _ in range(n_nat + n_gaudy):
        im = src[rng.integers(len(src))]
        c = int(rng.integers(int(0.5 * min(h, w)), min(h, w) + 1))
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = im[y0:y0 + c, x0:x0 + c]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(_resize(np.ascontiguousarray(crop), size))
    nat = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    parts = [nat[:n_nat], gaudy(nat[n_nat:])]
    noise = []
    for i in range(n_noise):
        if i % 2 == 0:  # white noise
            noise.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        else:  # pink (1/f) noise, per channel
            f = np.fft.fftfreq(size)
            amp = 1.0 / np.maximum(np.hypot(f[:, None], f[None, :]), 1.0 / size)
            spec = amp[..., None] * np.exp(2j * np.pi * rng.random((size, size, 3)))
            img = np.real(np.fft.ifft2(spec, axes=(0, 1)))
            img = (img - img.mean()) / (img.std() + 1e-9) * 50 + 110
            noise.append(np.clip(img, 0, 255).astype(np.uint8))
    if noise:
        parts.append(np.stack(noise))
    pool = np.concatenate(parts)
    return pool[rng.permutation(len(pool))]


@torch.no_grad()
def teacher_targets(models: Sequence[nn.Module], images: np.ndarray, batch_size: int = 128,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """(neurons, K) outputs of a list of compact models (e.g. the published ones) on ``images``."""
    outs = np.zeros((len(models), len(images)))
    for i in range(0, len(images), batch_size):
        # channels-last activity makes the depthwise convolutions several times faster on CPU
        x = preprocess(images[i:i + batch_size], device=device).contiguous(memory_format=torch.channels_last)
        for k, m in enumerate(models):
            outs[k, i:i + batch_size] = m(x.to(next(m.parameters()).dtype)).double().cpu().numpy()
    return outs


# --- students ----------------------------------------------------------------------------------
class StackedCompact(nn.Module):
    """``n`` compact models with filters ``(K0..K4)`` in one batched computation.

    (B, 3, 112, 112) preprocessed images -> (B, n). ``masks[L]`` (n, K_L) switch filters off
    (pruning); a masked filter's output is zero, exactly as if it were removed.

    ``shared_layer0``: the students share (and learn together) one layer 0, computed once per
    batch for all of them; that full-resolution layer dominates the cost of a student, so this
    is where batching pays on a CPU. Each exported student gets its own copy (pruned separately).
    """

    def __init__(self, n: int, filters: Sequence[int] = (16, 16, 8, 8, 8), shared_layer0: bool = False) -> None:
        super().__init__()
        k = [int(f) for f in filters]
        if len(k) != 5:
            raise ValueError("a compact model has 5 layers")
        self.n, self.filters, self.shared_layer0 = n, tuple(k), shared_layer0
        n0 = 1 if shared_layer0 else n
        self.conv0 = StackedConv(n0, 3, k[0], 5, padding=2, mode="shared")
        self.bn = nn.ModuleList([StackedBatchNorm(n0, k[0])])
        self.depth = nn.ModuleList()
        self.point = nn.ModuleList()
        for i in range(1, 5):
            s, p = (2, 0) if i <= 2 else (1, 2)
            self.depth.append(StackedConv(n, k[i - 1], k[i - 1], 5, stride=s, padding=p, mode="depthwise", bias=False))
            self.point.append(StackedConv(n, k[i - 1], k[i], 1, mode="grouped"))
            self.bn.append(StackedBatchNorm(n, k[i]))
        self.beta = nn.Parameter(torch.randn(n, MAP_SIZE, MAP_SIZE, k[4]) * (1.0 / (MAP_SIZE * np.sqrt(k[4]))))
        self.beta_bias = nn.Parameter(torch.zeros(n))
        for i, kk in enumerate(k):
            self.register_buffer(f"mask{i}", torch.ones(n, kk))

    def mask(self, layer: int) -> torch.Tensor:
        m: torch.Tensor = getattr(self, f"mask{layer}")
        return m

    def layer_input(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """Activity after layers < ``upto`` (for caching while pruning layer ``upto``)."""
        h = x.contiguous(memory_format=torch.channels_last)
        for i in range(upto):
            h = self.layer(h, i)
        return h

    def unmasked(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """Layer ``i`` before its filter mask (with a shared layer 0: (B, K0, H, W) for all students)."""
        if i == 0:
            return F.relu(self.bn[0](self.conv0(h)))
        if i <= 2:
            h = F.pad(h, (1, 3, 1, 3))
        d: StackedConv = self.depth[i - 1]  # type: ignore[assignment]
        if i == 1 and self.shared_layer0:
            # each student's depthwise filters on the one shared map: groups = K0, then reorder to
            # (student, channel) and apply the students' layer-0 masks (depthwise(0) = 0, no bias)
            k0 = self.filters[0]
            w = d.weight.transpose(0, 1).reshape(k0 * self.n, 1, *d.weight.shape[-2:])
            h = F.conv2d(h, w, stride=d.stride, padding=d.padding, groups=k0)
            b, _, hh, ww = h.shape
            h = h.reshape(b, k0, self.n, hh, ww).transpose(1, 2).reshape(b, self.n * k0, hh, ww)
            h = h.contiguous(memory_format=torch.channels_last)
            m0 = self.mask(0)
            if not bool((m0 == 1).all()):
                h = h * m0.reshape(1, -1, 1, 1)
        else:
            h = d(h)
        return F.relu(self.bn[i](self.point[i - 1](h)))

    def layer(self, h: torch.Tensor, i: int) -> torch.Tensor:
        out = self.unmasked(h, i)
        if i == 0 and self.shared_layer0:
            return out  # its masks act inside layer 1
        m = self.mask(i)
        return out if bool((m == 1).all()) else out * m.reshape(1, -1, 1, 1)

    def from_pre(self, pre: torch.Tensor, layer: int) -> torch.Tensor:
        """Outputs from layer ``layer``'s unmasked activity (the current masks applied)."""
        if layer == 0 and self.shared_layer0:
            h = pre
        else:
            h = pre * self.mask(layer).reshape(1, -1, 1, 1)
        for i in range(layer + 1, 5):
            h = self.layer(h, i)
        return self.head(h)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        b = h.shape[0]
        h = h.contiguous().reshape(b, self.n, self.filters[4], MAP_SIZE, MAP_SIZE)
        return torch.einsum("bnkhw,nhwk->bn", h, self.beta) + self.beta_bias

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        h = x.contiguous(memory_format=torch.channels_last)  # depthwise convs are much faster so on CPU
        for i in range(start, 5):
            h = self.layer(h, i)
        return self.head(h)

    def kept_filters(self) -> np.ndarray:
        """(n, 5) number of unmasked filters per model and layer."""
        return np.stack([self.mask(i).sum(1).cpu().numpy() for i in range(5)], 1).astype(int)

    @torch.no_grad()
    def select(self, indices: Sequence[int]) -> StackedCompact:
        """A new stack holding copies of the given students (same weights, masks and statistics)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out = StackedCompact(len(idx), self.filters, self.shared_layer0).to(self.beta.device)
        shared = ("conv0.", "bn.0.") if self.shared_layer0 else ()
        out.load_state_dict({k: v.clone() if k.startswith(shared) else v[idx].clone()
                             for k, v in self.state_dict().items()})
        return out

    @torch.no_grad()
    def export(self, j: int) -> CompactModel:
        """Student ``j`` as a plain :class:`CompactModel` holding only its kept filters."""
        keep = [torch.nonzero(self.mask(i)[j] > 0)[:, 0] for i in range(5)]
        keep = [k if len(k) else torch.zeros(1, dtype=torch.long) for k in keep]
        model = CompactModel([len(k) for k in keep])
        L = model.layers
        j0 = 0 if self.shared_layer0 else j
        L.layer0_conv.weight.copy_(self.conv0.weight[j0][keep[0]])
        assert self.conv0.bias is not None and L.layer0_conv.bias is not None
        L.layer0_conv.bias.copy_(self.conv0.bias[j0][keep[0]])
        for i in range(5):
            bn_src: StackedBatchNorm = self.bn[i]  # type: ignore[assignment]
            bn_dst: nn.BatchNorm2d = getattr(L, f"layer{i}_bn")
            for name in ("weight", "bias", "running_mean", "running_var"):
                src: torch.Tensor = getattr(bn_src, name)
                getattr(bn_dst, name).copy_(src[j0 if i == 0 else j][keep[i]])
            bn_dst.eval()
        for i in range(1, 5):
            d: StackedConv = self.depth[i - 1]  # type: ignore[assignment]
            p: StackedConv = self.point[i - 1]  # type: ignore[assignment]
            conv_d: nn.Conv2d = getattr(L, f"layer{i}_conv_depth")
            conv_p: nn.Conv2d = getattr(L, f"layer{i}_conv_point")
            conv_d.weight.copy_(d.weight[j][keep[i - 1]])
            conv_p.weight.copy_(p.weight[j][keep[i]][:, keep[i - 1]])
            assert p.bias is not None and conv_p.bias is not None
            conv_p.bias.copy_(p.bias[j][keep[i]])
        beta = self.beta[j][:, :, keep[4]]  # (28, 28, K4) channels last, as the published Beta
        L.Beta.weight.copy_(beta.reshape(1, -1))
        L.Beta.bias.copy_(self.beta_bias[j:j + 1])
        return model.eval()


# --- training ----------------------------------------------------------------------------------
@dataclass
class DistillConfig:
    filters: tuple[int, ...] = (16, 16, 8, 8, 8)
    shared_layer0: bool = False  # one layer 0 learned by all students together: computed once per batch
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-3
    val_fraction: float = 0.1
    time_budget_s: float | None = None
    seed: int = 0


@dataclass
class DistillReport:
    val_r: np.ndarray  # (n,) correlation of each student with its teacher on held-out pool images
    seconds: float
    steps: int
    history: list[float] = field(default_factory=list)


def _standardize(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = y.mean(1, keepdims=True), y.std(1, keepdims=True) + 1e-8
    return (y - mu) / sd, mu[:, 0], sd[:, 0]


def distill(pool: np.ndarray, targets: np.ndarray, config: DistillConfig | None = None,
            device: torch.device | str = "cpu", progress: Callable[[dict[str, float]], None] | None = None,
            model: StackedCompact | None = None) -> tuple[StackedCompact, DistillReport]:
    """Train one student per row of ``targets`` (neurons, K) on ``pool`` (K, 112, 112, 3), batched.

    Targets are standardized per neuron (mean squared error summed over students, so each
    student's gradient is its own); the students' ``Beta`` is rescaled afterwards so their outputs
    are in the teacher's units. ``model``: start from these students instead of a fresh stack.
    """
    c = config or DistillConfig()
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    n, k = targets.shape
    if len(pool) != k:
        raise ValueError(f"{len(pool)} pool images but targets for {k}")
    y, mu, sd = _standardize(np.asarray(targets, np.float64))
    order = rng.permutation(k)
    n_val = max(1, round(c.val_fraction * k))
    vi, ti = order[:n_val], order[n_val:]
    if model is None:
        model = StackedCompact(n, c.filters, c.shared_layer0).to(device)
    elif model.n != n:
        raise ValueError(f"{model.n} students but targets for {n} neurons")
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    yt = torch.as_tensor(y.T, dtype=torch.float32)
    steps_per_epoch = max(1, len(ti) // c.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=c.lr, total_steps=c.epochs * steps_per_epoch)
    t0 = time.monotonic()
    steps = 0
    history = []
    for epoch in range(c.epochs):
        model.train()
        perm = rng.permutation(ti)
        for s in range(steps_per_epoch):
            idx = perm[s * c.batch_size:(s + 1) * c.batch_size]
            x = preprocess(pool[idx], device=device)
            loss = ((model(x) - yt[idx].to(device)) ** 2).mean(0).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            if c.time_budget_s is not None and time.monotonic() - t0 > c.time_budget_s:
                break
        val = evaluate(model, pool[vi], y[:, vi], device)
        history.append(float(np.median(val)))
        if progress is not None:
            progress({"epoch": float(epoch + 1), "median_val_r": history[-1], "seconds": time.monotonic() - t0})
        if c.time_budget_s is not None and time.monotonic() - t0 > c.time_budget_s:
            break
    with torch.no_grad():  # back to teacher units
        model.beta.mul_(torch.as_tensor(sd, dtype=torch.float32, device=device)[:, None, None, None])
        model.beta_bias.mul_(torch.as_tensor(sd, dtype=torch.float32, device=device)).add_(
            torch.as_tensor(mu, dtype=torch.float32, device=device))
    val = evaluate(model, pool[vi], targets[:, vi], device)
    return model.eval(), DistillReport(val, time.monotonic() - t0, steps, history)


@torch.no_grad()
def predict_students(model: StackedCompact, images: np.ndarray, device: torch.device | str = "cpu",
                     batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = [model(preprocess(images[i:i + batch_size], device=device)).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).T.astype(np.float64)


def evaluate(model: StackedCompact, images: np.ndarray, targets: np.ndarray,
             device: torch.device | str = "cpu") -> np.ndarray:
    """(n,) Pearson r of each student with its targets."""
    return pearson_r(predict_students(model, images, device), np.asarray(targets, np.float64))
