"""The cross-check of the generators that is not self-fulfilling.

Virtual neurons: the real V4 compact models (ground truth, GT). Their "recorded" responses
are Poisson spike counts with rate softplus(GT output) on training images. A simple model
is fitted ONLY to those noisy counts: ridge regression on fixed random convolutional
features (:class:`RandomFeatureModel`, differentiable, so it can also drive synthesis).
Maximizing pool images and synthesized images are then chosen with the FITTED model and
evaluated on the GT rates, as percent change over randomly chosen pool images: the in
silico analogue of Cowley et al.'s causal test (real V4: +137% maximizing normal images,
+153% maximizing synthesized images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelserver.compact.model import preprocess
from modelserver.generate.maximize import StreamingTopK
from modelserver.generate.models import ResponseModel
from modelserver.generate.synthesize import SynthesisConfig, synthesize


def gt_rates(model: ResponseModel, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Virtual neurons' firing rates (spikes per window): softplus of the GT model output, (N, neurons)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            out.append(F.softplus(model(preprocess(images[s: s + batch_size]))).double().numpy())
    return np.concatenate(out)


class RandomFeatureModel(nn.Module):
    """Fixed random convolutional features (two conv + ReLU + pooling stages) and a fitted linear readout."""

    mu: torch.Tensor
    sd: torch.Tensor

    def __init__(self, n_neurons: int, channels: tuple[int, int] = (48, 96), seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c1, c2 = channels
        self.conv1 = nn.Conv2d(3, c1, 7, stride=2, padding=3)
        self.conv2 = nn.Conv2d(c1, c2, 5, stride=2, padding=2)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / fan_in ** 0.5)
                bias = conv.bias
                assert bias is not None
                bias.copy_(0.1 * torch.randn(bias.shape, generator=gen))
        for p in self.parameters():
            p.requires_grad_(False)
        n_feat = c2 * 7 * 7 + c1 * 2 * 2
        self.register_buffer("mu", torch.zeros(n_feat))
        self.register_buffer("sd", torch.ones(n_feat))
        self.readout = nn.Linear(n_feat, n_neurons)
        self.readout.requires_grad_(False)
        self.n_neurons = n_neurons

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 64.0
        h1 = F.relu(self.conv1(x))                       # 56 x 56
        h2 = F.relu(self.conv2(F.avg_pool2d(h1, 2)))     # 14 x 14
        f = torch.cat([F.adaptive_avg_pool2d(h2, 7).flatten(1), F.adaptive_avg_pool2d(h1, 2).flatten(1)], 1)
        return (f - self.mu) / self.sd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.readout(self.features(x))
        return out

    def fit(self, images: np.ndarray, counts: np.ndarray, alphas: Sequence[float] = (1, 10, 100, 1000, 10000),
            val_fraction: float = 0.2, seed: int = 0, batch_size: int = 128) -> np.ndarray:
        """Ridge fit of the readout to ``counts`` (N, neurons), alpha per neuron by validation r; returns r."""
        with torch.no_grad():
            self.mu.zero_()
            self.sd.fill_(1.0)
            feats = torch.cat([self.features(preprocess(images[s: s + batch_size]))
                               for s in range(0, len(images), batch_size)]).double()
            self.mu.copy_(feats.mean(0).float())
            self.sd.copy_(feats.std(0).clamp_min(1e-6).float())
        z = ((feats - self.mu.double()) / self.sd.double()).numpy()
        y = np.asarray(counts, dtype=np.float64)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(z))
        nv = int(len(z) * val_fraction)
        va, tr = perm[:nv], perm[nv:]

        def solve(rows: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
            zm, ym = z[rows].mean(0), y[rows].mean(0)
            zc, yc = z[rows] - zm, y[rows] - ym
            w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ yc)
            return w, ym - zm @ w

        best_alpha = np.zeros(y.shape[1])
        best_r = np.full(y.shape[1], -np.inf)
        for a in alphas:
            w, b = solve(tr, a)
            pred = z[va] @ w + b
            r = np.array([np.corrcoef(pred[:, j], y[va, j])[0, 1] for j in range(y.shape[1])])
            better = r > best_r
            best_r[better], best_alpha[better] = r[better], a
        weights, biases = np.zeros((z.shape[1], y.shape[1])), np.zeros(y.shape[1])
        for a in np.unique(best_alpha):
            cols = best_alpha == a
            w, b = solve(np.arange(len(z)), float(a))
            weights[:, cols], biases[cols] = w[:, cols], b[cols]
        with torch.no_grad():
            self.readout.weight.copy_(torch.as_tensor(weights.T, dtype=torch.float32))
            self.readout.bias.copy_(torch.as_tensor(biases, dtype=torch.float32))
        return best_r


class SmallCNN(nn.Module):
    """A small shared-core CNN with a factorized (space x feature) readout per neuron and softplus output,
    trained from scratch with the Poisson loss on spike counts."""

    def __init__(self, n_neurons: int, channels: int = 24, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        c = channels
        self.core = nn.Sequential(
            nn.AvgPool2d(2),                                    # 56 x 56
            nn.Conv2d(3, c, 5, padding=2), nn.BatchNorm2d(c), nn.ELU(),
            nn.Conv2d(c, c, 5, stride=2, padding=2), nn.BatchNorm2d(c), nn.ELU(),   # 28 x 28
            nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ELU())
        self.space = nn.Parameter(torch.randn(n_neurons, 28 * 28) * 0.01)
        self.feature = nn.Parameter(torch.randn(n_neurons, c) * 0.1)
        self.bias = nn.Parameter(torch.zeros(n_neurons))
        self.n_neurons = n_neurons

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.core(x / 64.0).flatten(2)                      # (N, C, 784)
        drive = torch.einsum("ncs,ks,kc->nk", h, self.space, self.feature)
        return F.softplus(drive + self.bias)

    def fit(self, images: np.ndarray, counts: np.ndarray, epochs: int = 15, batch_size: int = 64,
            lr: float = 3e-3, space_l1: float = 1e-4, seed: int = 0) -> None:
        x_all = preprocess(images)
        y_all = torch.as_tensor(counts, dtype=torch.float32)
        with torch.no_grad():  # start every neuron at its mean rate (inverse softplus)
            m = y_all.mean(0).clamp_min(1e-3)
            self.bias.copy_(m + torch.log(-torch.expm1(-m)))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(x_all), generator=gen).split(batch_size):
                rate = self(x_all[idx])
                loss = (rate - y_all[idx] * torch.log(rate + 1e-6)).mean() + space_l1 * self.space.abs().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)


@dataclass
class CrossCheckRow:
    neuron: str
    r_heldout: float          # fitted model vs GT rate on held-out pool images
    max_fitted: float         # % change of GT rate: top-k pool images chosen by the fitted model
    synth_fitted: float       # % change of GT rate: images synthesized on the fitted model
    max_oracle: float         # % change of GT rate: top-k pool images chosen by GT itself (upper bound)


def percent_change(picked: np.ndarray, reference: np.ndarray) -> float:
    return float(100.0 * (picked.mean() / reference.mean() - 1.0))


@dataclass
class VirtualRecording:
    """Counts of the virtual neurons on the training images and GT rates on the pool (the costly part)."""

    counts: np.ndarray     # (train images, neurons), mean of ``repeats`` Poisson draws
    pool_gt: np.ndarray    # (pool images, neurons) GT rates


def record(gt: ResponseModel, train_images: np.ndarray, pool_images: np.ndarray, repeats: int = 1,
           rng: np.random.Generator | int = 0) -> VirtualRecording:
    rng = np.random.default_rng(rng)
    counts = rng.poisson(np.repeat(gt_rates(gt, train_images)[None], repeats, 0)).mean(0)
    return VirtualRecording(counts, gt_rates(gt, pool_images))


def cross_check(gt: ResponseModel, names: Sequence[str], train_images: np.ndarray, pool_images: np.ndarray,
                k: int = 10, n_random: int = 200, synth_steps: int = 100, seed: int = 0,
                repeats: int = 1, synth_config: SynthesisConfig | None = None, fit: str = "cnn",
                epochs: int = 15, data: VirtualRecording | None = None) -> list[CrossCheckRow]:
    """Fit on Poisson counts of ``train_images``, choose/synthesize with the fit, evaluate on GT."""
    rng = np.random.default_rng(seed)
    data = data or record(gt, train_images, pool_images, repeats, rng)
    counts = data.counts
    fitted: RandomFeatureModel | SmallCNN
    if fit == "ridge":
        fitted = RandomFeatureModel(gt.n_neurons, seed=seed)
        fitted.fit(train_images, counts, seed=seed)
    else:
        fitted = SmallCNN(gt.n_neurons, seed=seed)
        fitted.fit(train_images, counts, epochs=epochs, seed=seed)
    pool_gt = data.pool_gt
    with torch.no_grad():
        pool_fit = torch.cat([fitted(preprocess(pool_images[s: s + 256]))
                              for s in range(0, len(pool_images), 256)]).double().numpy()
    top_fit, top_gt = StreamingTopK(k, gt.n_neurons), StreamingTopK(k, gt.n_neurons)
    top_fit.update(0, torch.as_tensor(pool_fit))
    top_gt.update(0, torch.as_tensor(pool_gt))
    random_idx = rng.choice(len(pool_images), size=min(n_random, len(pool_images)), replace=False)
    neurons = list(range(gt.n_neurons))
    syn = synthesize(fitted, neurons, per_neuron=2, seed=seed, config=synth_config or SynthesisConfig(steps=synth_steps))
    syn_gt = gt_rates(gt, syn.images)
    rows = []
    for j in neurons:
        ref = pool_gt[random_idx, j]
        rows.append(CrossCheckRow(
            neuron=names[j],
            r_heldout=float(np.corrcoef(pool_fit[:, j], pool_gt[:, j])[0, 1]),
            max_fitted=percent_change(pool_gt[top_fit.indices[:, j].numpy(), j], ref),
            synth_fitted=percent_change(syn_gt[2 * j: 2 * j + 2, j], ref),
            max_oracle=percent_change(pool_gt[top_gt.indices[:, j].numpy(), j], ref)))
    return rows


def format_table(rows: Sequence[CrossCheckRow]) -> str:
    lines = [f"{'neuron':<32} {'r(fit,GT)':>9} {'max-normal%':>12} {'synth%':>9} {'oracle-max%':>12}"]
    for r in rows:
        lines.append(f"{r.neuron:<32} {r.r_heldout:>9.2f} {r.max_fitted:>+12.0f} {r.synth_fitted:>+9.0f} "
                     f"{r.max_oracle:>+12.0f}")
    mean = lambda a: float(np.mean(a))  # noqa: E731
    lines.append(f"{'mean over neurons':<32} {mean([r.r_heldout for r in rows]):>9.2f} "
                 f"{mean([r.max_fitted for r in rows]):>+12.0f} {mean([r.synth_fitted for r in rows]):>+9.0f} "
                 f"{mean([r.max_oracle for r in rows]):>+12.0f}")
    lines.append(f"{'real V4, Cowley et al. 2023':<32} {'':>9} {137:>+12.0f} {153:>+9.0f} {'':>12}")
    return "\n".join(lines)
