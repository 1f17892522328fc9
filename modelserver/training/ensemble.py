"""A deep ensemble of small CNNs predicting V4 responses (Cowley et al. 2023).

M members (separable convolutions with skip connections, :mod:`modelserver.training.cores`) share one
batched computation; each recorded session gets its own readout, since neurons are not matched
across sessions. Members are trained on the same batches but from different initialisations;
each keeps its own best weights (early stopping on held-out images), and the ensemble predicts
the mean of its members.

The input is either the pixels (a trainable core, the default: no pretrained weights can be
downloaded) or the frozen features of a pretrained front end (:mod:`modelserver.training.frontend`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from modelserver.compact.model import CHANNEL_MEANS
from modelserver.training.cores import StackedCore
from modelserver.training.frontend import FrozenFrontend, resnet_frontend
from modelserver.training.gabor import GaborFrontend
from modelserver.training.losses import gaussian_loss, laplacian_penalty, poisson_loss
from modelserver.training.metrics import pearson_r
from modelserver.training.readouts import FactorizedReadout, RidgeReadout, fit_ridge

log = logging.getLogger(__name__)

__all__ = ["DeepEnsemble", "EnsembleConfig", "FitReport"]


@dataclass
class EnsembleConfig:
    members: int = 4
    channels: int = 32
    strides: tuple[int, ...] = (1, 2, 1)
    first_stride: int = 1
    first_kernel: int = 3
    frontend: Literal["pixels", "gabor", "resnet50"] = "gabor"  # "gabor": fixed V1-like channels added
    weights: str | None = None  # frontend "resnet50": a local torchvision-layout state_dict file
    layer: str = "layer3"  # frontend "resnet50": the last stage of the frozen trunk
    autocast: bool = False  # bfloat16 autocast of the forward passes (on CUDA; checked against float32)
    schedule: Literal["cosine", "plateau"] = "cosine"  # cosine: over the time budget (or max_epochs)
    input_size: int = 56  # images are resized to input_size x input_size (resnet50: its input size)
    loss: Literal["poisson", "gaussian"] = "poisson"
    lr: float = 3e-3
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 4
    val_fraction: float = 0.1
    mask_l1: float = 3e-3
    feature_l1: float = 1e-3
    laplace: float = 1e-3  # smoothness of the first layer's filters
    core_l2: float = 0.0
    time_budget_s: float | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnsembleConfig:
        d = dict(d)
        d["strides"] = tuple(d.get("strides", (1, 2, 1)))
        return cls(**d)


@dataclass
class FitReport:
    epochs: int
    seconds: float
    best_val_r: list[float]  # per member: mean validation r over neurons of all sessions
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "max_epochs"


ProgressFn = Callable[[dict[str, float]], None]


def to_input(images: np.ndarray | torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, size, size), mean-subtracted and scaled to ~unit range."""
    x = torch.as_tensor(np.asarray(images), device=device).float()
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(x.shape)}")
    x = (x - torch.tensor(CHANNEL_MEANS, device=x.device)) / 64.0
    x = x.permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.contiguous()


class SessionModules(nn.ModuleDict):
    """A ModuleDict keyed by session names. Names may hold '.' (a replay's ``x.replay``), which torch's
    module names may not: it is stored as ':' (never in a session name), so keys cannot collide."""

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(key.replace(".", ":"))

    def __setitem__(self, key: str, module: nn.Module) -> None:
        super().__setitem__(key.replace(".", ":"), module)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.replace(".", ":"))

    def __iter__(self) -> Iterator[str]:
        return (k.replace(":", ".") for k in super().__iter__())

    def keys(self) -> Iterable[str]:  # type: ignore[override]
        return list(iter(self))


class DeepEnsemble(nn.Module):
    """Core (M members) + one readout per session. ``forward(x, session) -> (B, M, N)``."""

    def __init__(self, config: EnsembleConfig | None = None, in_channels: int = 3,
                 frontend: FrozenFrontend | None = None) -> None:
        super().__init__()
        self.config = config or EnsembleConfig()
        c = self.config
        torch.manual_seed(c.seed)
        if frontend is None and c.frontend == "resnet50":
            frontend = resnet_frontend(c.weights, c.layer, c.input_size)
        self.frontend = frontend
        size = (c.input_size, c.input_size)
        self.fixed: GaborFrontend | None = None
        if c.frontend == "gabor" and frontend is None:
            self.fixed = GaborFrontend()
            in_channels, size = self.fixed.out_channels, (c.input_size // 2, c.input_size // 2)
        if frontend is not None:  # the core reads the frozen front end's feature maps
            probe = frontend.trunk(torch.zeros(1, 3, frontend.input_size, frontend.input_size,
                                               device=frontend.device))
            in_channels, size = int(probe.shape[1]), (int(probe.shape[2]), int(probe.shape[3]))
        self.core = StackedCore(c.members, in_channels, c.channels, c.strides, first_stride=c.first_stride,
                                first_kernel=c.first_kernel)
        self.map_size = self.core.output_size(*size)
        self.readouts = SessionModules()
        self.ridge: dict[str, list[RidgeReadout]] = {}
        self.session_neurons: dict[str, int] = {}

    # --- sessions ----------------------------------------------------------------------
    def add_session(self, name: str, neurons: int, mean_response: np.ndarray | None = None) -> None:
        if name in self.readouts:
            if self.session_neurons[name] != neurons:
                raise ValueError(f"session {name} has {self.session_neurons[name]} neurons, not {neurons}")
            return
        h, w = self.map_size
        ro = FactorizedReadout(self.config.members, self.config.channels, h, w, neurons, mean_response)
        self.readouts[name] = ro.to(next(self.core.parameters()).device)
        self.session_neurons[name] = neurons

    @property
    def sessions(self) -> list[str]:
        return sorted(set(self.readouts) | set(self.ridge))

    # --- computing ---------------------------------------------------------------------
    def inputs(self, images: np.ndarray, *, cache: bool = False) -> torch.Tensor:
        """The core's input for uint8 images, on the model's device: resized pixels, Gabor channels or
        frozen front-end features (kept by image id only with ``cache``, which training uses)."""
        dev = self.device()
        if self.frontend is not None:
            with self.autocast():
                return self.frontend(np.asarray(images), cache=cache).to(dev)
        x = to_input(images, self.config.input_size, dev)
        if self.fixed is not None:
            return torch.cat([self.fixed(x[i:i + 256]) for i in range(0, len(x), 256)])
        return x

    def autocast(self) -> torch.autocast:
        """bfloat16 autocast on the model's device where ``config.autocast`` is set (else a no-op)."""
        return torch.autocast(self.device().type, dtype=torch.bfloat16, enabled=self.config.autocast)

    def device(self) -> torch.device:
        return next(self.core.parameters()).device

    def forward(self, x: torch.Tensor, session: str) -> torch.Tensor:
        if session not in self.ridge and session not in self.readouts:
            raise KeyError(f"no readout for session {session!r}")
        with self.autocast():
            feats = self.core(x)
            if session in self.ridge:
                pooled = self._ridge_features(feats)
                return torch.stack([r(pooled[:, m]) for m, r in enumerate(self.ridge[session])], 1).float()
            out: torch.Tensor = self.readouts[session](feats)
        return out.float()

    @torch.no_grad()
    def predict(self, images: np.ndarray, session: str, batch_size: int = 256,
                members: bool = False) -> np.ndarray:
        """Predicted responses, (neurons, images) averaged over members ((M, N, images) if ``members``)."""
        self.eval()
        outs = []
        for i in range(0, len(images), batch_size):
            x = self.inputs(images[i:i + batch_size])
            outs.append(self(x, session).cpu())
        y = torch.cat(outs).numpy().astype(np.float64)  # (B, M, N)
        return y.transpose(1, 2, 0) if members else y.mean(1).T

    @torch.no_grad()
    def core_features(self, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
        self.eval()
        outs = [self.core(self.inputs(images[i:i + batch_size])).cpu()
                for i in range(0, len(images), batch_size)]
        return torch.cat(outs)

    # --- training ----------------------------------------------------------------------
    def _member_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = pred.transpose(0, 1)  # (M, B, N)
        t = y[None].expand_as(p)
        return poisson_loss(p, t) if self.config.loss == "poisson" else gaussian_loss(p, t)

    def _regularizer(self, session: str) -> torch.Tensor:
        c = self.config
        ro: FactorizedReadout = self.readouts[session]  # type: ignore[assignment]
        reg = ro.regularizer(c.mask_l1, c.feature_l1)
        if c.laplace:
            reg = reg + c.laplace * laplacian_penalty(self.core.first_layer_kernels())
        if c.core_l2:
            reg = reg + c.core_l2 * sum((p**2).flatten(1).sum(1) for p in self.core.parameters())
        return reg

    def fit(self, data: Mapping[str, tuple[np.ndarray, np.ndarray]], *, progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None, train_core: bool = True) -> FitReport:
        """Train on ``{session: (images uint8 (K, H, W, 3), responses (K, neurons))}``.

        A random ``val_fraction`` of each session's images is held out for early stopping; each
        member keeps the weights of its best epoch (mean validation r). With ``train_core=False``
        only the readouts of the given sessions learn.
        """
        c = self.config
        dev = self.device()
        rng = np.random.default_rng(c.seed)
        torch.manual_seed(c.seed)
        train: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        val: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        for name, (images, resp) in data.items():
            resp = np.asarray(resp, np.float64)
            if resp.ndim != 2 or resp.shape[0] != len(images):
                raise ValueError(f"session {name}: responses must be (images, neurons), got {resp.shape}")
            order = rng.permutation(len(images))
            n_val = max(1, round(c.val_fraction * len(images))) if len(images) >= 10 else 0
            vi, ti = order[:n_val], order[n_val:]
            self.add_session(name, resp.shape[1], resp[ti].mean(0))
            x = self.inputs(images, cache=True)  # on the model's device, like the batches
            ti_d = torch.as_tensor(ti, device=dev)
            train[name] = (x[ti_d], torch.as_tensor(resp[ti], dtype=torch.float32, device=dev))
            if n_val:
                val[name] = (x[torch.as_tensor(vi, device=dev)], resp[vi])
        params = list(self.core.parameters()) if train_core else []
        for name in train:
            params += list(self.readouts[name].parameters())
        for p in self.core.parameters():
            p.requires_grad_(train_core)
        opt = torch.optim.Adam(params, lr=c.lr)
        best_r = np.full(c.members, -np.inf)
        best_state = copy.deepcopy(self.state_dict())
        since_best = 0
        t0 = time.monotonic()
        report = FitReport(0, 0.0, [])
        lr_drops = 0
        for epoch in range(c.max_epochs):
            self.train()
            if not train_core:
                self.core.eval()
            batches = [(n, idx) for n, (x, _) in train.items()
                       for idx in torch.randperm(len(x)).split(c.batch_size) if len(idx) > 1]
            rng.shuffle(batches)  # type: ignore[arg-type]
            total = 0.0
            for step, (name, idx) in enumerate(batches):
                if c.schedule == "cosine":
                    if c.time_budget_s:
                        frac = (time.monotonic() - t0) / c.time_budget_s
                    else:
                        frac = (epoch + step / max(1, len(batches))) / c.max_epochs
                    for g in opt.param_groups:
                        g["lr"] = c.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
                x, y = train[name]
                idx = idx.to(dev)
                pred = self(x[idx], name)
                loss = self._member_loss(pred, y[idx]) + self._regularizer(name)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                total += float(loss.detach().sum())
                if should_stop is not None and should_stop():
                    report.stopped = "cancelled"
                    break
            val_r = self._validate(val)
            improved = val_r > best_r
            if improved.any():
                best_r = np.where(improved, val_r, best_r)
                self._copy_members(best_state, improved)
                since_best = 0
            else:
                since_best += 1
            info = {"epoch": float(epoch + 1), "train_loss": total / max(1, len(batches)),
                    "val_r": float(np.mean(val_r)), "best_val_r": float(np.mean(best_r)),
                    "seconds": time.monotonic() - t0}
            report.history.append(info)
            report.epochs = epoch + 1
            log.info("ensemble epoch %d: %s", epoch + 1, info)
            if progress is not None:
                progress(info)
            if report.stopped == "cancelled":
                break
            if since_best >= c.patience:
                if lr_drops == 0 and c.schedule == "plateau":  # one learning-rate drop before giving up
                    lr_drops = 1
                    since_best = 0
                    for g in opt.param_groups:
                        g["lr"] *= 0.3
                    self.load_state_dict(best_state)
                    continue
                report.stopped = "early_stopping"
                break
            if c.time_budget_s is not None and time.monotonic() - t0 > c.time_budget_s:
                report.stopped = "time_budget"
                break
        if val:
            self.load_state_dict(best_state)
        for p in self.core.parameters():
            p.requires_grad_(True)
        report.seconds = time.monotonic() - t0
        report.best_val_r = [float(v) for v in best_r]
        self.eval()
        return report

    @torch.no_grad()
    def _validate(self, val: Mapping[str, tuple[torch.Tensor, np.ndarray]]) -> np.ndarray:
        if not val:
            return np.zeros(self.config.members)
        self.eval()
        scores = []
        for name, (x, resp) in val.items():
            pred = torch.cat([self(x[i:i + 256].to(self.device()), name).cpu()
                              for i in range(0, len(x), 256)]).numpy()  # (B, M, N)
            for m in range(self.config.members):
                scores.append((m, np.nan_to_num(pearson_r(pred[:, m].T, resp.T))))
        out = np.zeros(self.config.members)
        for m in range(self.config.members):
            out[m] = float(np.mean(np.concatenate([s for mm, s in scores if mm == m])))
        return out

    def _copy_members(self, dest: dict[str, torch.Tensor], which: np.ndarray) -> None:
        idx = torch.as_tensor(np.flatnonzero(which))
        for k, v in self.state_dict().items():
            if k not in dest or dest[k].shape != v.shape:
                dest[k] = v.detach().clone()
            else:
                dest[k][idx] = v.detach()[idx]

    # --- readouts for new sessions on the frozen core ----------------------------------------
    @staticmethod
    def _ridge_features(feats: torch.Tensor, pool: int = 4) -> torch.Tensor:
        b, m, c, h, w = feats.shape
        p = F.adaptive_avg_pool2d(feats.reshape(b, m * c, h, w), (max(1, h // pool), max(1, w // pool)))
        return p.reshape(b, m, -1)

    def fit_ridge_readout(self, session: str, images: np.ndarray, responses: np.ndarray,
                          val_fraction: float = 0.2, seed: int = 0) -> float:
        """A ridge readout per member on pooled frozen-core features; returns the chosen alpha (median)."""
        resp = np.asarray(responses, np.float64)
        feats = self._ridge_features(self.core_features(images)).numpy()
        order = np.random.default_rng(seed).permutation(len(images))
        n_val = max(1, round(val_fraction * len(images)))
        vi, ti = order[:n_val], order[n_val:]
        ridge, alphas = [], []
        for m in range(self.config.members):
            w, b, a = fit_ridge(feats[ti, m], resp[ti], feats[vi, m], resp[vi])
            ridge.append(RidgeReadout(w, b).to(self.device()))
            alphas.append(a)
        self.ridge[session] = ridge
        self.session_neurons[session] = resp.shape[1]
        return float(np.median(alphas))

    def fit_readout(self, session: str, images: np.ndarray, responses: np.ndarray,
                    kind: Literal["factorized", "ridge"] = "factorized", **overrides: Any) -> FitReport | float:
        """Fit only a new session's readout on the frozen core (factorized by gradient, or ridge)."""
        if kind == "ridge":
            return self.fit_ridge_readout(session, images, responses)
        saved = self.config
        self.config = dataclasses.replace(saved, **overrides) if overrides else saved
        try:
            return self.fit({session: (images, responses)}, train_core=False)
        finally:
            self.config = saved

    # --- persistence -------------------------------------------------------------------------
    def export_state(self) -> dict[str, Any]:
        """Tensors and plain data only: loads with ``torch.load(weights_only=True)``."""
        return {"config": self.config.to_dict(), "in_channels": self.core.in_channels,
                "sessions": dict(self.session_neurons), "state": self.state_dict(),
                "ridge": {s: [{"weight": r.weight, "bias": r.bias} for r in rs] for s, rs in self.ridge.items()}}

    @classmethod
    def from_state(cls, blob: Mapping[str, Any], device: torch.device | str = "cpu",
                   frontend: FrozenFrontend | None = None) -> DeepEnsemble:
        """Rebuild from :meth:`export_state` (pass the same front end if one was used)."""
        model = cls(EnsembleConfig.from_dict(blob["config"]), int(blob["in_channels"]), frontend)
        for s, n in blob["sessions"].items():
            if s not in blob["ridge"]:
                model.add_session(s, int(n))
        model.load_state_dict(blob["state"])
        for s, rs in blob["ridge"].items():
            model.ridge[s] = [RidgeReadout(r["weight"].numpy(), r["bias"].numpy()) for r in rs]
            model.session_neurons[s] = int(blob["sessions"][s])
        return model.to(device).eval()

    def to(self, *args: Any, **kwargs: Any) -> DeepEnsemble:  # type: ignore[override]
        super().to(*args, **kwargs)
        for rs in self.ridge.values():
            for r in rs:
                r.to(*args, **kwargs)
        if self.frontend is not None:
            self.frontend.to(self.device())
        return self
