"""The persistent training set: every (image, spike counts) pair ingested, in one HDF5 file.

Layout::

    /images/pixels   uint8 (N, H, W, 3)   each distinct image once (deduplicated by content id)
    /images/ids      S32   (N,)           wire.base.image_id of each image
    /sessions/<s>/image_index  int64 (T,)  per trial: row of /images
    /sessions/<s>/counts       float32 (T, neurons)  per trial spike counts (every repeat kept)

Every ingest appends, records the new committed lengths in attributes *after* the data, and
flushes, so a server restarted on the same file resumes, and a process killed with SIGKILL loses
nothing that an ingest had returned for. Rows past the committed lengths (a write cut short)
are dropped when the file is opened again. Neurons are never matched across sessions: each
session keeps its own population size.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from wire.base import image_id
from wire.errors import InvalidRequest, NotFound, StoreError

__all__ = ["IngestResult", "SessionData", "SessionInfo", "TrainingSet"]

_SESSION_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class IngestResult:
    session: str
    new_images: int
    trials: int
    total_trials: int
    total_images: int


@dataclass(frozen=True)
class SessionInfo:
    name: str
    neurons: int
    trials: int
    images: int


@dataclass(frozen=True)
class SessionData:
    """One session, grouped by image: ``image_rows`` index the store's images."""

    name: str
    image_rows: np.ndarray  # (K,) int64, rows of the store's /images
    image_ids: list[str]  # (K,)
    mean: np.ndarray  # (K, neurons) float64 repeat means
    repeats: np.ndarray  # (K,) int repeats per image
    raw: np.ndarray  # (neurons, K, max_repeats) float64, NaN padded


class TrainingSet:
    """Append-only HDF5 store of images and per-trial counts. Thread-safe; use as a context manager."""

    def __init__(self, path: str | Path, image_shape: tuple[int, int] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._f = h5py.File(self.path, "a")
        except OSError as exc:
            raise StoreError(f"cannot open training set {self.path}: {exc}") from exc
        self._ids: dict[str, int] = {}
        self._image_shape: tuple[int, int] | None = image_shape
        self._recover()

    # --- opening ---------------------------------------------------------------------
    def _recover(self) -> None:
        f = self._f
        if "images" in f:
            g = f["images"]
            n = int(g.attrs.get("committed", 0))
            for name in ("pixels", "ids"):
                if g[name].shape[0] != n:
                    g[name].resize(n, axis=0)
            stored = tuple(int(s) for s in g["pixels"].shape[1:3])
            if self._image_shape is not None and tuple(self._image_shape) != stored:
                raise InvalidRequest(f"training set {self.path} holds {stored} images, not {self._image_shape}")
            self._image_shape = (stored[0], stored[1])
            self._ids = {bytes(b).decode(): i for i, b in enumerate(g["ids"][:n])}
        for s in f.get("sessions", {}).values():
            t = int(s.attrs.get("committed", 0))
            for name in ("image_index", "counts"):
                if s[name].shape[0] != t:
                    s[name].resize(t, axis=0)
        f.flush()

    def _create_images(self, h: int, w: int) -> h5py.Group:
        g = self._f.create_group("images")
        g.create_dataset("pixels", shape=(0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8,
                         chunks=(16, h, w, 3))
        g.create_dataset("ids", shape=(0,), maxshape=(None,), dtype="S32", chunks=(1024,))
        g.attrs["committed"] = 0
        self._image_shape = (h, w)
        return g

    # --- validation --------------------------------------------------------------------
    @staticmethod
    def _check_session(session: str) -> None:
        if not isinstance(session, str) or not _SESSION_RE.match(session):
            raise InvalidRequest(f"session name {session!r} must be 1-64 characters of [A-Za-z0-9_.-]")

    def _check_images(self, images: np.ndarray) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise InvalidRequest(f"images must be a uint8 array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidRequest(f"images must be (N, H, W, 3), got {images.shape}")
        if self._image_shape is not None and tuple(images.shape[1:3]) != self._image_shape:
            raise InvalidRequest(f"images must be {self._image_shape[0]}x{self._image_shape[1]}, "
                                 f"got {images.shape[1]}x{images.shape[2]}")

    @staticmethod
    def _check_counts(counts: np.ndarray, trials: int) -> np.ndarray:
        c = np.asarray(counts)
        if c.ndim != 2 or c.shape[0] != trials or c.shape[1] < 1:
            raise InvalidRequest(f"counts must be (trials={trials}, neurons >= 1), got {c.shape}")
        if not np.issubdtype(c.dtype, np.number) or np.issubdtype(c.dtype, np.complexfloating):
            raise InvalidRequest(f"counts must be real numbers, got {c.dtype}")
        c = c.astype(np.float64)
        if not np.all(np.isfinite(c)):
            raise InvalidRequest("counts contain NaN or infinite values")
        if np.any(c < 0):
            raise InvalidRequest("counts contain negative values")
        return c

    # --- writing ---------------------------------------------------------------------
    def ingest(self, session: str, trial_image_ids: Sequence[str], counts: np.ndarray,
               images: np.ndarray | None = None) -> IngestResult:
        """Append trials of ``session``: one image id and one row of counts per trial.

        ``images`` (U, H, W, 3) uint8 carries the pixels of ids the store does not hold yet (their
        ids are computed from the pixels); ids the store already has need no pixels. Nothing is
        written unless the whole request is valid.
        """
        self._check_session(session)
        ids = [str(i) for i in trial_image_ids]
        if not ids:
            raise InvalidRequest("an ingest needs at least one trial")
        c = self._check_counts(counts, len(ids))
        with self._lock:
            new_pixels: dict[str, np.ndarray] = {}
            if images is not None and len(images):
                self._check_images(images)
                for px in images:
                    key = image_id(px)
                    if key not in self._ids and key not in new_pixels:
                        new_pixels[key] = px
            missing = sorted({i for i in ids if i not in self._ids and i not in new_pixels})
            if missing:
                raise NotFound(f"{len(missing)} trial image ids have no pixels (e.g. {missing[0]}); "
                               "send the images with the ingest")
            sg = self._f.get(f"sessions/{session}")
            if sg is not None and sg["counts"].shape[1] != c.shape[1]:
                raise InvalidRequest(f"session {session} has {sg['counts'].shape[1]} neurons, "
                                     f"got counts for {c.shape[1]}")
            id_set = set(ids)
            used_new = [k for k in new_pixels if k in id_set]
            try:
                self._append_images(used_new, new_pixels)
                rows = np.array([self._ids[i] for i in ids], dtype=np.int64)
                if sg is None:
                    sg = self._f.require_group("sessions").create_group(session)
                    sg.create_dataset("image_index", shape=(0,), maxshape=(None,), dtype=np.int64,
                                      chunks=(4096,))
                    sg.create_dataset("counts", shape=(0, c.shape[1]), maxshape=(None, c.shape[1]),
                                      dtype=np.float32, chunks=(max(1, 65536 // c.shape[1]), c.shape[1]))
                    sg.attrs["committed"] = 0
                t0 = int(sg.attrs["committed"])
                t1 = t0 + len(ids)
                sg["image_index"].resize(t1, axis=0)
                sg["counts"].resize(t1, axis=0)
                sg["image_index"][t0:t1] = rows
                sg["counts"][t0:t1] = c.astype(np.float32)
                self._f.flush()
                sg.attrs["committed"] = t1
                self._f.flush()
            except (OSError, ValueError) as exc:
                raise StoreError(f"writing to {self.path} failed: {exc}") from exc
            return IngestResult(session, len(used_new), len(ids), t1, len(self._ids))

    def _append_images(self, keys: list[str], pixels: dict[str, np.ndarray]) -> None:
        if not keys:
            return
        g = self._f.get("images")
        if g is None:
            first = pixels[keys[0]]
            g = self._create_images(int(first.shape[0]), int(first.shape[1]))
        n0 = int(g.attrs["committed"])
        n1 = n0 + len(keys)
        g["pixels"].resize(n1, axis=0)
        g["ids"].resize(n1, axis=0)
        g["pixels"][n0:n1] = np.stack([pixels[k] for k in keys])
        g["ids"][n0:n1] = np.array([k.encode() for k in keys], dtype="S32")
        self._f.flush()
        g.attrs["committed"] = n1
        for i, k in enumerate(keys):
            self._ids[k] = n0 + i

    # --- reading ---------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._ids

    @property
    def image_shape(self) -> tuple[int, int] | None:
        return self._image_shape

    @property
    def n_images(self) -> int:
        return len(self._ids)

    def sessions(self) -> list[SessionInfo]:
        with self._lock:
            out = []
            for name, sg in self._f.get("sessions", {}).items():
                t = int(sg.attrs["committed"])
                idx = sg["image_index"][:t]
                out.append(SessionInfo(name, int(sg["counts"].shape[1]), t, int(np.unique(idx).size)))
            return out

    def images(self, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """uint8 pixels of the given rows of the store, in the given order."""
        r = np.asarray(rows, dtype=np.int64)
        with self._lock:
            if "images" not in self._f:
                return np.zeros((0, 0, 0, 3), np.uint8)
            if r.size == 0:
                h, w = self._image_shape or (0, 0)
                return np.zeros((0, h, w, 3), np.uint8)
            order = np.argsort(r)
            uniq, inv = np.unique(r[order], return_inverse=True)
            px = self._f["images/pixels"][uniq]
            out = np.empty((r.size, *px.shape[1:]), np.uint8)
            out[order] = px[inv]
            return out

    def image_ids(self, rows: np.ndarray | Sequence[int]) -> list[str]:
        inv = {v: k for k, v in self._ids.items()}
        return [inv[int(r)] for r in rows]

    def session(self, session: str) -> SessionData:
        """A session's trials grouped by image: repeat means and NaN-padded single repeats."""
        with self._lock:
            sg = self._f.get(f"sessions/{session}")
            if sg is None:
                raise NotFound(f"unknown session {session!r}")
            t = int(sg.attrs["committed"])
            idx = sg["image_index"][:t]
            counts = sg["counts"][:t].astype(np.float64)
        rows, inv, reps = np.unique(idx, return_inverse=True, return_counts=True)
        k, n = rows.size, counts.shape[1]
        mean = np.zeros((k, n))
        np.add.at(mean, inv, counts)
        mean /= reps[:, None]
        raw = np.full((n, k, int(reps.max()) if k else 0), np.nan)
        slot = np.zeros(k, dtype=np.int64)
        for trial, row in enumerate(inv):
            raw[:, row, slot[row]] = counts[trial]
            slot[row] += 1
        return SessionData(session, rows, self.image_ids(rows), mean, reps, raw)

    def close(self) -> None:
        with self._lock:
            if self._f.id.valid:
                self._f.flush()
                self._f.close()

    def __enter__(self) -> TrainingSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
