"""Natural images the controller draws itself (normal, pool_random, gaudy), without the modelserver.

These are what a block shows when the protocol asks for natural images, and what a fallback
block shows when the modelserver is slow or down. The library reads a pool file (the HDF5
layout of ``modelserver.generate.pool``: ``images`` uint8 (N, H, W, 3) and ``ids``), a folder
of the authors' zip files (``images_<session>.zip`` of JPEGs), or an array in memory. Image
files are decoded by :mod:`wire.imageio` (every mode converted correctly or refused); a bad
entry in a zip is reported and skipped.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from wire.base import image_id
from wire.errors import InvalidRequest, NotFound
from wire.imageio import ImageProblem, iter_zip_images

log = logging.getLogger(__name__)


def gaudy(images: np.ndarray) -> np.ndarray:
    """Cowley et al.'s gaudy images: each colour channel pushed to 0 or 255 about its mean."""
    x = np.asarray(images)
    means = x.reshape(*x.shape[:-3], -1, 3).mean(axis=-2)[..., None, None, :]
    return np.where(x >= means, 255, 0).astype(np.uint8)


def read_zip_images(path: str | Path, limit: int | None = None,
                    problems: list[ImageProblem] | None = None) -> np.ndarray:
    """The images of one ``images_<session>.zip`` (JPEG, PNG, ... entries), sorted by name: uint8
    (N, H, W, 3), at most ``limit`` of them.

    Every entry goes through :func:`wire.imageio.to_rgb8` (16-bit, float, transparent, palette
    images converted correctly). An entry that cannot be read, or whose size differs from the
    first image's (a library is one array), is logged, appended to ``problems`` and skipped.
    """
    out: list[np.ndarray] = []
    with zipfile.ZipFile(path) as z:
        for entry, img in iter_zip_images(z, problems, limit):
            if out and img.shape != out[0].shape:
                message = f"{img.shape[1]} x {img.shape[0]} pixels; the archive's first image is " \
                          f"{out[0].shape[1]} x {out[0].shape[0]}"
                log.warning("skipped image %s:%s: %s", path, entry, message)
                if problems is not None:
                    problems.append(ImageProblem(f"{path}:{entry}", message))
                continue
            out.append(img)
    if not out:
        raise NotFound(f"no readable images in {path}")
    return np.stack(out)


class ImageLibrary:
    """A set of natural images with their content-hash ids, drawn reproducibly."""

    def __init__(self, images: np.ndarray, ids: Sequence[str] | None = None, name: str = "images") -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise InvalidRequest(f"an image library needs uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.images = images
        self.ids = list(ids) if ids is not None else [image_id(im) for im in images]
        if len(self.ids) != len(images):
            raise InvalidRequest("one id per image is needed")
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_pool(cls, path: str | Path, limit: int | None = None) -> ImageLibrary:
        path = Path(path)
        if not path.is_file():
            raise NotFound(f"no pool file at {path}")
        with h5py.File(path, "r") as f:
            if "images" not in f or f["images"].dtype != np.uint8 or "ids" not in f:
                raise InvalidRequest(f"{path} is not an image pool (uint8 'images' and 'ids' datasets)")
            n = len(f["images"]) if limit is None else min(limit, len(f["images"]))
            images = f["images"][:n]
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["ids"][:n]]
        return cls(images, ids, name=path.stem)

    @classmethod
    def from_v4(cls, data_dir: str | Path, sessions: Sequence[str], limit: int | None = None,
                problems: list[ImageProblem] | None = None) -> ImageLibrary:
        """The images of the V4 ``sessions``; unreadable entries are logged, appended to
        ``problems`` and skipped."""
        folder = Path(data_dir) / "images"
        arrays = [read_zip_images(folder / f"images_{s}.zip", limit, problems) for s in sessions]
        return cls(np.concatenate(arrays), name="v4:" + ",".join(sessions))

    def take(self, n: int, seed: int) -> list[int]:
        """``n`` distinct indices drawn with ``seed`` (the same seed gives the same images)."""
        if n > len(self):
            raise InvalidRequest(f"{n} images requested from a library of {len(self)}")
        return np.random.default_rng(seed).choice(len(self), size=n, replace=False).tolist()

    def draw(self, source: str, n: int, seed: int) -> tuple[list[str], list[np.ndarray]]:
        """(ids, pixels) of ``n`` images for a natural source: normal, pool_random or gaudy."""
        idx = self.take(n, seed)
        if source in ("normal", "pool_random"):
            return [self.ids[i] for i in idx], [self.images[i] for i in idx]
        if source == "gaudy":
            pix = list(gaudy(self.images[idx]))
            return [image_id(p) for p in pix], pix
        raise InvalidRequest(f"the controller's image library cannot make {source!r} images")


def synthetic_images(n: int, size: int = 112, seed: int = 0) -> np.ndarray:
    """``n`` naturalistic images without any data: coloured 1/f noise (the spectrum of natural
    scenes) with a random blob and edge each, uint8 (n, size, size, 3). For demos and tests on a
    machine with no image folder."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, (3, size, size))
        mix = rng.dirichlet(np.ones(3), 3)
        planes = np.real(np.fft.ifft2(amp * np.exp(1j * phase)))
        img = np.einsum("cij,ck->ijk", planes, mix)
        img = (img - img.mean()) / (img.std() + 1e-9)
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.25)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] * rng.normal(0, 1.5, 3)
        theta = rng.uniform(0, np.pi)
        edge = np.tanh(((xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta)) * 20)[..., None] * rng.normal(0, 0.7, 3)
        img = img + blob + edge
        out[i] = np.clip(128 + 40 * img, 0, 255).astype(np.uint8)
    return out
