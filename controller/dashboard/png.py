"""A minimal PNG encoder (zlib only) for the uint8 images of a session file, and image-id checks."""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np

#: image ids the dashboard serves: content hashes (``wire.base.image_id``: 32 hex characters) or
#: other ids of letters, digits, ``-`` and ``_`` (at most 64); never anything with a dot or a slash
IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: largest image encoded (pixels); a session's images are small stimuli
MAX_PIXELS = 4096 * 4096


def valid_image_id(text: str) -> bool:
    """Whether ``text`` is an image id the dashboard may look up (a strict pattern, no paths)."""
    return bool(IMAGE_ID.fullmatch(text))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image: (H, W) grey, (H, W, 1|3|4) grey, RGB or RGBA."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or a.size == 0 or a.size > MAX_PIXELS * 4:
        raise ValueError(f"not an image: shape {a.shape}, dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] not in (3, 4):
        raise ValueError(f"not an image: {a.shape[2]} channels")
    height, width = a.shape[:2]
    colour = 0 if a.ndim == 2 else (2 if a.shape[2] == 3 else 6)
    rows = np.ascontiguousarray(a).reshape(height, -1)
    raw = np.zeros((height, rows.shape[1] + 1), np.uint8)  # filter byte 0 (none) before each row
    raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
            + _chunk(b"IEND", b""))
