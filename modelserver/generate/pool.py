"""The candidate pool: uint8 images in a chunked HDF5 file, read and scored in streaming batches.

Layout of a pool file: dataset ``images`` uint8 (N, 112, 112, 3) chunked along N, dataset
``ids`` (N,) of 32-character content hashes (:func:`wire.base.image_id`), and attributes
``format = "cortexloop.pool"`` and ``sources``. A pool of 500,000 images (19 GB) is never
loaded whole: :meth:`ImagePool.batches` reads chunk-aligned slices, one batch ahead of the
consumer in a background thread.

Pools are built from the user's image folders (:func:`folder_images`) and offline from
random crops / rescales / flips of natural images (:func:`natural_crops`) found locally:
the V4 session images and sample images shipped inside installed packages. Nothing is
downloaded. :func:`gaudy` gives the Cowley et al. "gaudy" versions.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image

from modelserver.compact.model import IMAGE_SIZE, preprocess
from modelserver.generate.models import ResponseModel
from wire.base import image_id
from wire.errors import InvalidRequest, NotFound
from wire.imageio import ImageProblem, decode_image_or_skip, read_image_or_skip, to_rgb8, zip_image_names

POOL_FORMAT = "cortexloop.pool"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class PoolFormatError(InvalidRequest):
    """A pool file that is not uint8 (N, S, S, 3) images with ids (travels as ``invalid``)."""


class ImagePool:
    """A read-only pool file. Use as a context manager (it holds the HDF5 file open)."""

    def __init__(self, path: str | Path, image_size: int = IMAGE_SIZE) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFound(f"no pool file at {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise PoolFormatError(f"{self.path} is not an HDF5 pool file: {exc}") from exc
        try:
            self._validate(image_size)
        except BaseException:
            self._file.close()
            raise

    def _validate(self, size: int) -> None:
        f = self._file
        if "images" not in f or not isinstance(f["images"], h5py.Dataset):
            raise PoolFormatError(f"{self.path} has no 'images' dataset")
        ds = f["images"]
        if ds.dtype != np.uint8:
            raise PoolFormatError(f"{self.path}: images must be uint8, found {ds.dtype}")
        if ds.ndim != 4 or tuple(ds.shape[1:]) != (size, size, 3):
            raise PoolFormatError(f"{self.path}: images must be (N, {size}, {size}, 3), found {ds.shape}")
        if "ids" not in f or f["ids"].shape != (ds.shape[0],):
            raise PoolFormatError(f"{self.path}: 'ids' must hold one id per image")
        self.images: h5py.Dataset = ds
        self._ids: h5py.Dataset = f["ids"]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def chunk_rows(self) -> int:
        return int(self.images.chunks[0]) if self.images.chunks else 256

    def ids(self, indices: Sequence[int] | np.ndarray) -> list[str]:
        rows = self._rows(indices)
        return [bytes(b).decode() for b in rows(self._ids)]

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices`` (any order, repeats allowed) -> uint8 (len, S, S, 3)."""
        return np.asarray(self._rows(indices)(self.images))

    def _rows(self, indices: Sequence[int] | np.ndarray) -> Callable[[h5py.Dataset], np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise InvalidRequest(f"pool index out of range 0..{len(self) - 1}")
        uniq, inverse = np.unique(idx, return_inverse=True)

        def take(ds: h5py.Dataset) -> np.ndarray:
            if uniq.size == 0:
                return np.asarray(ds[0:0])
            return np.asarray(ds[uniq])[inverse]

        return take

    def batches(self, batch_size: int = 256, start: int = 0, stop: int | None = None
                ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first index, uint8 batch) over [start, stop), reading one batch ahead."""
        stop = len(self) if stop is None else min(stop, len(self))
        starts = list(range(start, stop, batch_size))
        if not starts:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="pool-read") as ex:
            def load(s: int) -> np.ndarray:
                return np.asarray(self.images[s: min(s + batch_size, stop)])

            nxt: Future[np.ndarray] = ex.submit(load, starts[0])
            for i, s in enumerate(starts):
                batch = nxt.result()
                if i + 1 < len(starts):
                    nxt = ex.submit(load, starts[i + 1])
                yield s, batch


def score_batches(pool: ImagePool, model: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 256,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """Stream the pool through ``model`` (no grad): yield (first index, model output) per batch."""
    yield from score_rows(model, pool.batches(batch_size), device, dtype)


def score_rows(model: Callable[[torch.Tensor], torch.Tensor], shards: Iterable[tuple[int, np.ndarray]],
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, model output) per (start, uint8 shard), no grad: here, or on a cluster's scorer actors
    where the model has ``score_stream`` (:class:`modelserver.cluster.scoring.ClusterScored`)."""
    stream = getattr(model, "score_stream", None)
    if callable(stream):
        yield from stream(shards, dtype)
        return
    with torch.no_grad():
        for start, batch in shards:
            yield start, model(preprocess(batch, dtype=dtype, device=device))


def check_k(k: int, pool_size: int) -> int:
    if k < 1:
        raise InvalidRequest(f"k must be >= 1, got {k}")
    if k > pool_size:
        raise InvalidRequest(f"k = {k} is larger than the pool ({pool_size} images)")
    return int(k)


class PoolWriter:
    """Append uint8 (n, S, S, 3) batches to a new pool file (chunked, resizable)."""

    def __init__(self, path: str | Path, image_size: int = IMAGE_SIZE, chunk_rows: int = 64,
                 sources: str = "") -> None:
        self.path = Path(path)
        self.size = image_size
        self._file = h5py.File(self.path, "w")
        self._file.attrs["format"] = POOL_FORMAT
        self._file.attrs["sources"] = sources
        s = image_size
        self._images = self._file.create_dataset("images", shape=(0, s, s, 3), maxshape=(None, s, s, 3),
                                                 dtype=np.uint8, chunks=(chunk_rows, s, s, 3))
        self._ids = self._file.create_dataset("ids", shape=(0,), maxshape=(None,), dtype="S32",
                                              chunks=(max(chunk_rows, 1024),))

    def append(self, batch: np.ndarray) -> None:
        b = np.asarray(batch)
        if b.dtype != np.uint8 or b.ndim != 4 or b.shape[1:] != (self.size, self.size, 3):
            raise PoolFormatError(f"pool batches must be uint8 (n, {self.size}, {self.size}, 3), "
                                  f"got {b.dtype} {b.shape}")
        n0 = self._images.shape[0]
        self._images.resize(n0 + len(b), axis=0)
        self._images[n0:] = b
        self._ids.resize(n0 + len(b), axis=0)
        self._ids[n0:] = np.array([image_id(im).encode() for im in b], dtype="S32")

    def __len__(self) -> int:
        return int(self._images.shape[0])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PoolWriter:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def build_pool(path: str | Path, batches: Iterable[np.ndarray], image_size: int = IMAGE_SIZE,
               gaudy_versions: bool = False, sources: str = "") -> int:
    """Write every batch (and, on request, its gaudy version) to a new pool file; returns its size."""
    with PoolWriter(path, image_size, sources=sources) as w:
        for b in batches:
            w.append(b)
            if gaudy_versions:
                w.append(gaudy(b))
        return len(w)


# --- sources ----------------------------------------------------------------------------
def _rgb(img: Image.Image) -> np.ndarray:
    return to_rgb8(img, getattr(img, "filename", None) or "image")


def folder_images(folder: str | Path, problems: list[ImageProblem] | None = None) -> Iterator[np.ndarray]:
    """Every image file under ``folder`` (sorted by path), as uint8 (H, W, 3) RGB (decoded by
    :mod:`wire.imageio`); a file that cannot be read is logged, appended to ``problems`` and skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"no image folder at {folder}")
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            rgb = read_image_or_skip(p, problems)
            if rgb is not None:
                yield rgb


def fit_image(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Centre square crop of an RGB image, resized to ``size`` x ``size`` (uint8)."""
    h, w = img.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    sq = Image.fromarray(np.ascontiguousarray(img[y: y + side, x: x + side]))
    return np.asarray(sq.resize((size, size), Image.Resampling.BILINEAR) if side != size else sq, dtype=np.uint8)


def fitted_batches(images: Iterable[np.ndarray], size: int = IMAGE_SIZE, batch_size: int = 256
                   ) -> Iterator[np.ndarray]:
    """Images of any size -> uint8 (n, size, size, 3) batches (centre crop and resize)."""
    buf: list[np.ndarray] = []
    for img in images:
        buf.append(fit_image(img, size))
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def v4_images(v4_dir: str | Path, sessions: Sequence[str] | None = None, limit: int | None = None,
              problems: list[ImageProblem] | None = None) -> Iterator[np.ndarray]:
    """The V4 session images (``images/images_<session>.zip``, entries sorted by name); an entry
    that cannot be read is logged, appended to ``problems`` and skipped."""
    zips = sorted((Path(v4_dir) / "images").glob("images_*.zip"))
    if sessions is not None:
        zips = [z for z in zips if z.stem.removeprefix("images_") in set(sessions)]
    if not zips:
        raise NotFound(f"no images_*.zip under {Path(v4_dir) / 'images'}")
    n = 0
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            for name in zip_image_names(zf):
                if limit is not None and n >= limit:
                    return
                rgb = decode_image_or_skip(zf, name, problems)
                if rgb is not None:
                    yield rgb
                    n += 1


def package_sample_images() -> list[np.ndarray]:
    """Natural sample images shipped inside installed packages (matplotlib, psychopy), if any."""
    found: list[Path] = []
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data"
        found += [sample / "grace_hopper.jpg"]
    except ImportError:
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("psychopy")
        if spec is not None and spec.origin is not None:
            stims = Path(spec.origin).parent / "demos" / "builder" / "Design Templates" / "randomisedBlocks" / "stims"
            found += sorted(stims.glob("*.jpg"))
    except (ImportError, ValueError):
        pass
    out = []
    for p in found:
        if p.is_file():
            with Image.open(p) as img:
                out.append(_rgb(img))
    return out


def random_crop(img: np.ndarray, rng: np.random.Generator, size: int = IMAGE_SIZE,
                scale: tuple[float, float] = (0.35, 1.0)) -> np.ndarray:
    """One random square crop (side = scale x the shorter side), rescaled to ``size``, maybe flipped."""
    h, w = img.shape[:2]
    side = max(8, round(min(h, w) * rng.uniform(*scale)))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(img[y: y + side, x: x + side]).resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop, dtype=np.uint8)
    return out[:, ::-1] if rng.random() < 0.5 else out


def natural_crops(sources: Sequence[np.ndarray], n: int, seed: int = 0, size: int = IMAGE_SIZE,
                  batch_size: int = 256, scale: tuple[float, float] = (0.35, 1.0)) -> Iterator[np.ndarray]:
    """``n`` random crops of ``sources`` (each source used in turn, random order), in uint8 batches."""
    if not sources:
        raise InvalidRequest("no source images to crop")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    buf: list[np.ndarray] = []
    for i in range(n):
        if i and i % len(sources) == 0:
            order = rng.permutation(len(sources))
        buf.append(random_crop(sources[order[i % len(sources)]], rng, size, scale))
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def gaudy(images: np.ndarray) -> np.ndarray:
    """Gaudy versions (Cowley et al.): each colour channel set to 255 above its image mean, else 0."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidRequest(f"gaudy needs uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
    means = x.reshape(len(x), -1, 3).mean(axis=1)[:, None, None, :]
    return np.where(x > means, 255, 0).astype(np.uint8)


def responses_of(model: ResponseModel, images: np.ndarray, batch_size: int = 128,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """Model responses (N, neurons) to uint8 images, batched, no grad."""
    outs: list[Any] = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            outs.append(model(preprocess(images[s: s + batch_size], device=device)).cpu())
    return torch.cat(outs).numpy().astype(np.float64)
