"""Rate models: images -> firing rates (spikes/s) of a virtual population, usable in-process.

* :class:`CompactModelRates`: the real V4 compact models of Cowley et al. (2023) (one per
  recorded neuron; ``modelserver.compact.model``) of one recording session, the virtual rig's
  ground truth when the ``compact_models`` folder is given (needs torch).
* :class:`GaborEnergyRates`: a synthetic population of Gabor-energy units (numpy only), so
  the rig runs anywhere.

Both map each unit's raw output to a rate with a per-unit affine :class:`RateScale` fitted
on a reference image set: the ``q_lo`` percentile of the reference outputs goes to ``lo``
spikes/s and the ``q_hi`` percentile to ``hi`` (default 2 and 60), rates floored at 0.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wire.errors import InvalidRequest, ModelError

__all__ = ["CompactModelRates", "GaborEnergyRates", "RateModel", "RateScale", "compact_model_sessions",
           "evenly_spaced", "load_image_zip", "make_rate_model", "reference_images"]

#: A published compact model's file name (as ``modelserver.compact.model`` reads them).
_MODEL_FILE = re.compile(r"compact_model_(?P<session>\w+?)_neuron(?P<neuron>\d+)\.pt$")


@runtime_checkable
class RateModel(Protocol):
    """images uint8 (N, H, W, 3) -> rates float64 (N, n_units), spikes/s."""

    @property
    def n_units(self) -> int: ...

    def rates(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RateScale:
    """Per-unit ``rate = max(0, gain * raw + bias)``."""

    gain: np.ndarray
    bias: np.ndarray

    @classmethod
    def calibrate(cls, raw_ref: np.ndarray, lo: float = 2.0, hi: float = 60.0,
                  q: tuple[float, float] = (1.0, 99.0)) -> RateScale:
        if raw_ref.ndim != 2 or raw_ref.shape[0] < 2:
            raise InvalidRequest(f"calibration needs (>= 2 images, units) outputs, got {raw_ref.shape}")
        p_lo, p_hi = np.percentile(raw_ref, q, axis=0)
        span = np.where(p_hi - p_lo > 1e-12, p_hi - p_lo, 1.0)
        gain = (hi - lo) / span
        return cls(gain=gain, bias=lo - gain * p_lo)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.maximum(0.0, raw * self.gain + self.bias)


def _check_images(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise InvalidRequest(f"images must be uint8 (N, H, W, 3), got {a.dtype} {a.shape}")
    return a


def load_image_zip(path: str | Path) -> np.ndarray:
    """Every JPEG/PNG of a zip, sorted by name, as uint8 (N, H, W, 3) (the V4 data's image layout)."""
    from PIL import Image

    with zipfile.ZipFile(path) as z:
        names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        if not names:
            raise InvalidRequest(f"no images in {path}")
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")) for n in names])


def evenly_spaced(images: np.ndarray, count: int) -> np.ndarray:
    """About ``count`` evenly spaced images of ``images`` (every k-th, from the first): a calibration subset.

    Calibrating 33 compact models on a session's 1,200 images takes minutes on a CPU; 120 of
    them give the same percentiles within a few percent. Deterministic for given arguments.
    """
    step = max(1, images.shape[0] // max(2, count))
    return images[::step]


def compact_model_sessions(folder: str | Path) -> list[str]:
    """The recording sessions that have compact models in ``folder``, sorted (no torch needed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"no compact-model folder at {folder}")
    return sorted({m["session"] for p in folder.iterdir() if (m := _MODEL_FILE.search(p.name))})


def reference_images(n: int = 128, size: int = 112, seed: int = 0) -> np.ndarray:
    """Seeded 1/f ("pink") colour noise images: a reference set that needs no data files."""
    rng = np.random.default_rng(seed)
    f = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    f[0, 0] = 1.0
    amp = 1.0 / f
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        spec = amp[None] * np.exp(2j * np.pi * rng.uniform(size=(3, size, size)))
        img = np.real(np.fft.ifft2(spec)).transpose(1, 2, 0)
        img = (img - img.mean()) / (img.std() + 1e-9)
        out[i] = np.clip(128 + 40 * img * rng.uniform(0.5, 1.5), 0, 255).astype(np.uint8)
    return out


class GaborEnergyRates:
    """``n_units`` complex cells: energy of a quadrature Gabor pair at a random place, orientation and scale."""

    def __init__(self, n_units: int = 32, *, seed: int = 0, lo: float = 2.0, hi: float = 60.0,
                 reference: np.ndarray | None = None) -> None:
        if n_units < 1:
            raise InvalidRequest("a population needs at least one unit")
        rng = np.random.default_rng(seed)
        self._n = n_units
        self._params = {
            "cx": rng.uniform(0.3, 0.7, n_units), "cy": rng.uniform(0.3, 0.7, n_units),
            "theta": rng.uniform(0, np.pi, n_units), "wavelength": rng.uniform(0.06, 0.25, n_units),
            "colour": rng.dirichlet(np.ones(3), n_units),
        }
        self._filters: dict[tuple[int, int], np.ndarray] = {}
        self.seed = seed
        self.session: str | None = None
        self.unit_names = [f"gabor{i}" for i in range(n_units)]
        self.description = f"{n_units} synthetic Gabor-energy units (seed {seed})"
        ref = reference if reference is not None else reference_images(seed=seed + 1)
        self.scale = RateScale.calibrate(self.raw(ref), lo, hi)

    @property
    def n_units(self) -> int:
        return self._n

    def _bank(self, h: int, w: int) -> np.ndarray:
        key = (h, w)
        if key not in self._filters:
            p = self._params
            y, x = np.mgrid[0:h, 0:w]
            x = x[None] / w - p["cx"][:, None, None]
            y = y[None] / h - p["cy"][:, None, None]
            th = p["theta"][:, None, None]
            lam = p["wavelength"][:, None, None]
            xr = x * np.cos(th) + y * np.sin(th)
            env = np.exp(-(x**2 + y**2) / (2 * (0.6 * lam) ** 2))
            even = env * np.cos(2 * np.pi * xr / lam)
            odd = env * np.sin(2 * np.pi * xr / lam)
            even -= even.mean(axis=(1, 2), keepdims=True) * env / env.mean(axis=(1, 2), keepdims=True)
            bank = np.concatenate([even, odd]).reshape(2 * self._n, h * w)
            self._filters[key] = (bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(np.float32)
        return self._filters[key]

    def raw(self, images: np.ndarray) -> np.ndarray:
        a = _check_images(images)
        n, h, w, _ = a.shape
        bank = self._bank(h, w)
        x = a.astype(np.float32) / 255.0 - 0.5
        colour = self._params["colour"]  # (U, 3): each unit sees its own mix of the colour channels
        even = np.zeros((n, self._n))
        odd = np.zeros((n, self._n))
        for c in range(3):  # linear in the image: project each channel, then mix per unit
            proj = x[..., c].reshape(n, h * w) @ bank.T  # (n, 2U)
            even += proj[:, : self._n] * colour[:, c]
            odd += proj[:, self._n:] * colour[:, c]
        return np.sqrt(even**2 + odd**2)

    def rates(self, images: np.ndarray) -> np.ndarray:
        return self.scale(self.raw(images))


def _fold(conv: Any, bn: Any) -> tuple[Any, Any]:
    """A convolution followed by an inference-mode BatchNorm, as one convolution's (weight, bias)."""
    import torch

    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


class _Fused:
    """One compact model with its BatchNorms folded into the convolutions (same outputs, ~30% faster)."""

    def __init__(self, model: Any) -> None:
        L = model.layers
        self.w0, self.b0 = _fold(L.layer0_conv, L.layer0_bn)
        self.depth = [getattr(L, f"layer{i}_conv_depth").weight for i in range(1, 5)]
        self.point = [_fold(getattr(L, f"layer{i}_conv_point"), getattr(L, f"layer{i}_bn")) for i in range(1, 5)]
        self.beta = L.Beta

    def __call__(self, x: Any) -> Any:
        from torch.nn import functional as F

        h = F.relu(F.conv2d(x, self.w0, self.b0, padding=2))
        for i in range(4):
            if i < 2:
                h = F.conv2d(F.pad(h, (1, 3, 1, 3)), self.depth[i], stride=2, groups=h.shape[1])
            else:
                h = F.conv2d(h, self.depth[i], padding=2, groups=h.shape[1])
            h = F.relu(F.conv2d(h, *self.point[i]))
        return self.beta(h.permute(0, 2, 3, 1).flatten(1))[:, 0]


class CompactModelRates:
    """The published V4 compact models of one ``session`` in ``folder`` (one unit each), scaled to spike rates.

    ``session`` defaults to the first session of the folder in sorted order (190923 in the
    shipped data); neurons of different sessions are different populations, never mixed.
    ``neurons`` picks models by position in the session's neuron order (default: all).
    ``reference_raw`` keeps the models' outputs on the reference images (reuse them when the
    reference set is also the set to predict: one pass instead of two).
    """

    def __init__(self, folder: str | Path, *, session: str | None = None, reference: np.ndarray | None = None,
                 lo: float = 2.0, hi: float = 60.0, device: Any = "cpu", batch_size: int = 50,
                 neurons: Sequence[int] | None = None) -> None:
        import torch

        from modelserver.compact.model import find_compact_models, load_compact_model

        sessions = compact_model_sessions(folder)
        if not sessions:
            raise ModelError(f"no compact models (compact_model_<session>_neuron<k>.pt) in {folder}")
        if session is None:
            session = sessions[0]
        elif session not in sessions:
            raise ModelError(f"no compact models of session {session!r} in {folder}; "
                             f"sessions there: {', '.join(sessions)}")
        paths = find_compact_models(folder, session)
        if neurons is not None:  # a subset, by the neuron index of the file names' order
            bad = [k for k in neurons if not 0 <= k < len(paths)]
            if bad:
                raise InvalidRequest(f"no compact models for neurons {bad} ({len(paths)} found)")
            paths = [paths[k] for k in neurons]
        self.paths = paths
        self.session = session
        self.neurons = [int(m["neuron"]) for p in paths if (m := _MODEL_FILE.search(p.name))]
        self.unit_names = [f"{session}/neuron{k}" for k in self.neurons]
        self.description = f"{len(paths)} real V4 compact models of session {session} (Cowley et al. 2023)"
        self._torch = torch
        self.device = torch.device(device)
        with torch.inference_mode():
            self.models = [_Fused(load_compact_model(p, dtype=torch.float32, device=self.device)) for p in paths]
        self.batch_size = batch_size
        ref = reference if reference is not None else reference_images()
        self.reference_raw = self.raw(ref)
        self.scale = RateScale.calibrate(self.reference_raw, lo, hi)

    @property
    def n_units(self) -> int:
        return len(self.models)

    def raw(self, images: np.ndarray) -> np.ndarray:
        """The models' own outputs (spike-count units up to offset and scale), (N, n_units)."""
        from modelserver.compact.model import IMAGE_SIZE, preprocess

        torch = self._torch
        a = _check_images(images)
        out = np.empty((a.shape[0], self.n_units))
        with torch.inference_mode():
            for k in range(0, a.shape[0], self.batch_size):
                x = preprocess(a[k:k + self.batch_size], device=self.device)
                if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
                    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                                        align_corners=False)
                x = x.contiguous(memory_format=torch.channels_last)
                for j, m in enumerate(self.models):
                    out[k:k + x.shape[0], j] = m(x).double().cpu().numpy()
        return out

    def rates(self, images: np.ndarray) -> np.ndarray:
        return self.scale(self.raw(images))


def make_rate_model(*, compact_models: str | Path | None = None, reference: np.ndarray | str | Path | None = None,
                    n_units: int = 32, seed: int = 0, lo: float = 2.0, hi: float = 60.0,
                    device: Any = "cpu", session: str | None = None,
                    neurons: Sequence[int] | None = None) -> RateModel:
    """The real compact models when a folder is given, else a synthetic Gabor-energy population.

    ``reference``: the calibration images (an array, or a zip of images); default seeded noise.
    ``session`` and ``neurons`` choose the compact models (see :class:`CompactModelRates`).
    """
    ref = load_image_zip(reference) if isinstance(reference, str | Path) else reference
    if compact_models is not None:
        return CompactModelRates(compact_models, session=session, neurons=neurons, reference=ref, lo=lo, hi=hi,
                                 device=device)
    if session is not None or neurons is not None:
        raise InvalidRequest("session and neurons choose compact models: give the compact_models folder")
    return GaborEnergyRates(n_units, seed=seed, lo=lo, hi=hi, reference=ref)
