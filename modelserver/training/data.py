"""Loaders for the real V4 layout (Cowley et al. 2023; see ``../shared/data/v4/README.md``).

``DIR/images/images_<session>.zip`` (one JPEG per image, sorted by name), ``DIR/responses_avg/
responses_<session>.npy`` (neurons, images) and ``DIR/responses_raw/responses_<session>.npy``
(neurons, images, repeats; NaN for unused repeats). The folder is always a parameter.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["list_sessions", "load_images", "load_responses_avg", "load_responses_raw", "load_session"]

_RESP_RE = re.compile(r"responses_(?P<session>\w+)\.npy$")


def load_images(data_dir: str | Path, session: str) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB images of ``session``, in name order (entry i = image i)."""
    from PIL import Image

    path = Path(data_dir) / "images" / f"images_{session}.zip"
    if not path.is_file():
        raise FileNotFoundError(f"no image archive for session {session} at {path}")
    with zipfile.ZipFile(path) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith((".jpg", ".jpeg", ".png")))
        if not names:
            raise ValueError(f"{path} holds no images")
        out = []
        for name in names:
            with Image.open(io.BytesIO(zf.read(name))) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return np.stack(out)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"no responses at {path}")
    return np.load(path, allow_pickle=False)


def load_responses_avg(data_dir: str | Path, session: str) -> np.ndarray:
    """float64 (neurons, images): spike counts averaged over repeats."""
    return _load_npy(Path(data_dir) / "responses_avg" / f"responses_{session}.npy")


def load_responses_raw(data_dir: str | Path, session: str) -> np.ndarray:
    """float64 (neurons, images, repeats): single-repeat counts, NaN where no repeat."""
    return _load_npy(Path(data_dir) / "responses_raw" / f"responses_{session}.npy")


def list_sessions(data_dir: str | Path, raw: bool = False) -> list[str]:
    """Sessions with responses (repeat-averaged, or raw when ``raw``) in ``data_dir``."""
    folder = Path(data_dir) / ("responses_raw" if raw else "responses_avg")
    if not folder.is_dir():
        return []
    return sorted(m["session"] for p in folder.iterdir() if (m := _RESP_RE.search(p.name)))


def load_session(data_dir: str | Path, session: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, 3), responses_avg (neurons, N)); checks that N agrees."""
    images = load_images(data_dir, session)
    resp = load_responses_avg(data_dir, session)
    if resp.shape[1] != images.shape[0]:
        raise ValueError(f"session {session}: {images.shape[0]} images but responses for {resp.shape[1]}")
    return images, resp
