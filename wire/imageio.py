"""The one decoder of image files a user hands in: any common mode to uint8 RGB, or a clear refusal.

Every image that enters cortexloop from a file (the controller's zips of JPEGs, the
modelserver's image folders and sample images) goes through :func:`to_rgb8`, so a pixel
means the same thing whichever path it came by. Modes and what becomes of them:

- ``RGB``: as is. ``L`` (grey): copied to the three channels. ``1`` (bilevel): 0 and 255.
- ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit grey, e.g. 16-bit PNG and TIFF): scaled to
  8 bits by ``round(v * 255 / 65535)``, never clipped (Pillow's own ``convert`` clips at 255).
- ``I`` (32-bit integer grey): treated as 16-bit (0..65535, how Pillow opens some 16-bit files)
  when every value lies in that range, otherwise scaled linearly from its own min..max.
- ``F`` (32-bit float grey): values within 0..1 are intensities (``v * 255``); any other range is
  scaled linearly from the image's own min..max; NaN or infinite values are refused.
- ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, and ``P``/``L``/``RGB`` with a transparency key:
  composited over :data:`BACKGROUND` (mid-grey 128), the stimulus server's default background
  (``background = 0.5``), so a transparent region looks like the screen around the image. An
  image whose alpha is everywhere 255 is unchanged.
- ``P`` (palette), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: converted to RGB by Pillow.
- Anything else (e.g. 16-bit float TIFFs Pillow cannot open) is refused.

Limits (each refusal is an :class:`ImageDecodeError` naming the file and the reason): an image
of zero width or height; more than :data:`MAX_PIXELS` pixels (checked from the header before
any pixel is decoded; Pillow's own decompression-bomb warning is turned into a refusal too); a
file (or zip entry, by its declared size) larger than :data:`MAX_FILE_BYTES`. Multi-frame files
(GIF, TIFF) give their first frame. EXIF orientation is not applied (the pixels are the stored
ones, as before, so existing image ids stay the same).

Folders and zips: :func:`read_image_or_skip` / :func:`decode_image_or_skip` log a bad file,
append an :class:`ImageProblem` to the caller's list and return None, so one bad file never
aborts a whole pool.
"""

from __future__ import annotations

import io
import logging
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wire.errors import InvalidRequest

log = logging.getLogger(__name__)

#: grey level transparent pixels are composited over (the stimulus server's default background, 0.5)
BACKGROUND = 128
#: most pixels (width x height) an image may have: 64 megapixels (an 8000 x 8000 photograph)
MAX_PIXELS = 64_000_000
#: largest image file (or zip entry, uncompressed) read: 256 MiB
MAX_FILE_BYTES = 256 << 20
#: the suffixes read as images from folders
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
#: the suffixes read as images from zips (the authors' ``images_<session>.zip`` hold JPEGs)
ZIP_SUFFIXES = (".jpg", ".jpeg", ".png")
#: the only formats Pillow may decode, whatever a file's name says: raster image formats, never a
#: format that runs a program (EPS/PS call Ghostscript) or decodes something else (PDF, ICNS, ...)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "GIF", "WEBP")
#: most pixels of an image with more than 8 bits per sample (16-bit, 32-bit integer or float grey): each
#: is 4 bytes decoded and scaled in float32, so 16 megapixels stay under ~200 MiB at the peak
MAX_WIDE_PIXELS = 16_000_000
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_CONVERTIBLE = ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX")


class ImageDecodeError(InvalidRequest):
    """An image file that cannot be read or converted to uint8 RGB (travels as ``invalid``)."""


@dataclass(frozen=True)
class ImageProblem:
    """A file skipped while reading a folder or zip: which one and why."""

    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def _scale16(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, rounded (65535 = 255 * 257, so this is round(v / 257))."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(a: np.ndarray) -> np.ndarray:
    """Linear min..max -> 0..255 (a constant image becomes mid-grey)."""
    x = a.astype(np.float64)  # one copy; the arithmetic below is in place (bounded memory)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.full(x.shape, BACKGROUND, np.uint8)
    x -= lo
    x *= 255.0
    x /= hi - lo
    return np.rint(x, out=x).astype(np.uint8)


def _grey_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=-1)


def _composite(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) straight alpha over :data:`BACKGROUND` -> uint8 (H, W, 3)."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    out = (rgb * alpha + BACKGROUND * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA or (img.mode in ("P", "L", "RGB", "1") and "transparency" in img.info)


def check_size(img: Image.Image, name: str = "image", max_pixels: int = MAX_PIXELS) -> None:
    """Refuse an image of zero size or more than ``max_pixels`` pixels (from its header)."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{name}: the image is empty ({w} x {h} pixels)")
    if w * h > max_pixels:
        raise ImageDecodeError(f"{name}: {w} x {h} = {w * h:,} pixels is more than the limit of "
                               f"{max_pixels:,} (a decompression bomb or an absurdly large image)")
    if img.mode in _WIDE_MODES and w * h > min(max_pixels, MAX_WIDE_PIXELS):
        raise ImageDecodeError(f"{name}: a {img.mode} image of {w} x {h} = {w * h:,} pixels; images with more "
                               f"than 8 bits per sample are read up to {MAX_WIDE_PIXELS:,} pixels")


def to_rgb8(img: Image.Image, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``img`` (any common mode) as uint8 (H, W, 3) RGB, or :class:`ImageDecodeError` (see the module)."""
    check_size(img, name, max_pixels)
    mode = img.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        if mode == "RGB" and "transparency" not in img.info:
            out = np.asarray(img, dtype=np.uint8)
        elif _has_alpha(img):
            if mode in ("RGBA", "LA", "PA", "P", "L", "RGB", "1"):
                rgba = img.convert("RGBA")
            else:  # premultiplied (RGBa, La): Pillow un-premultiplies via RGBA
                rgba = img.convert("RGBA") if mode == "RGBa" else img.convert("LA").convert("RGBA")
            out = _composite(np.asarray(rgba, dtype=np.uint8))
        elif mode == "L":
            out = _grey_to_rgb(np.asarray(img, dtype=np.uint8))
        elif mode == "1":
            out = _grey_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
        elif mode in _SIXTEEN_BIT:
            out = _grey_to_rgb(_scale16(np.asarray(img)))
        elif mode == "I":
            a = np.asarray(img).astype(np.int64)
            in16 = a.size and int(a.min()) >= 0 and int(a.max()) <= 65535
            out = _grey_to_rgb(_scale16(a) if in16 else _stretch(a))
        elif mode == "F":
            f = np.asarray(img, dtype=np.float32)
            if not np.isfinite(f).all():
                raise ImageDecodeError(f"{name}: float image with NaN or infinite values")
            lo, hi = float(f.min()), float(f.max())
            g = np.rint(f * np.float32(255.0)).astype(np.uint8) if lo >= 0.0 and hi <= 1.0 else _stretch(f)
            out = _grey_to_rgb(g)
        elif mode in _CONVERTIBLE:
            out = np.asarray(img.convert("RGB"), dtype=np.uint8)
        else:
            raise ImageDecodeError(f"{name}: image mode {mode!r} is not supported")
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, IndexError, TypeError) as exc:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/ValueError/EOFError
        raise ImageDecodeError(f"{name}: cannot decode the {mode} image: {exc}") from exc
    out = np.ascontiguousarray(out, dtype=np.uint8)
    if out.ndim != 3 or out.shape[-1] != 3:  # pragma: no cover - defensive
        raise ImageDecodeError(f"{name}: decoding gave shape {out.shape}, not (H, W, 3)")
    return out


def _open(fp: io.BytesIO | Path, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: not an image file of the formats read ({', '.join(IMAGE_FORMATS)})") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"{name}: refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        raise ImageDecodeError(f"{name}: cannot open: {exc}") from exc


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The encoded image ``data`` (PNG, JPEG, TIFF, ...) as uint8 (H, W, 3) RGB."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{name}: {len(data):,} bytes is more than the limit of {MAX_FILE_BYTES:,}")
    with _open(io.BytesIO(data), name) as img:
        return to_rgb8(img, name, max_pixels)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image file at ``path`` as uint8 (H, W, 3) RGB."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(f"{p}: cannot read: {exc}") from exc
    if size > MAX_FILE_BYTES:
        raise ImageDecodeError(f"{p}: {size:,} bytes is more than the limit of {MAX_FILE_BYTES:,}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{p}: cannot read: {exc}") from exc
    return decode_image(data, str(p), max_pixels)


def _skip(problems: list[ImageProblem] | None, name: str, exc: Exception) -> None:
    message = str(exc).removeprefix(f"{name}: ")
    log.warning("skipped image %s: %s", name, message)
    if problems is not None:
        problems.append(ImageProblem(name, message))


def read_image_or_skip(path: str | Path, problems: list[ImageProblem] | None = None) -> np.ndarray | None:
    """:func:`read_image`, or None after logging the problem and appending it to ``problems``."""
    try:
        return read_image(path)
    except ImageDecodeError as exc:
        _skip(problems, str(path), exc)
        return None


def zip_image_names(zf: zipfile.ZipFile, suffixes: tuple[str, ...] = ZIP_SUFFIXES) -> list[str]:
    """The image entries of a zip (by suffix), sorted by name."""
    return sorted(n for n in zf.namelist() if n.lower().endswith(suffixes) and not n.endswith("/"))


def decode_image_or_skip(zf: zipfile.ZipFile, entry: str,
                         problems: list[ImageProblem] | None = None) -> np.ndarray | None:
    """The zip entry ``entry`` decoded, or None after logging the problem and appending it to ``problems``."""
    name = f"{zf.filename or 'zip'}:{entry}"
    try:
        info = zf.getinfo(entry)
        if info.file_size > MAX_FILE_BYTES:
            raise ImageDecodeError(f"{name}: {info.file_size:,} bytes (uncompressed) is more than the limit "
                                   f"of {MAX_FILE_BYTES:,}")
        data = zf.read(entry)
    except ImageDecodeError as exc:
        _skip(problems, name, exc)
        return None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, KeyError, OSError, ValueError, NotImplementedError,
            EOFError, RuntimeError) as exc:  # bad CRC, truncated, unsupported compression, encrypted
        _skip(problems, name, ImageDecodeError(f"cannot read the zip entry: {exc}"))
        return None
    try:
        return decode_image(data, name)
    except ImageDecodeError as exc:
        _skip(problems, name, exc)
        return None


def iter_zip_images(zf: zipfile.ZipFile, problems: list[ImageProblem] | None = None,
                    limit: int | None = None, suffixes: tuple[str, ...] = ZIP_SUFFIXES
                    ) -> Iterator[tuple[str, np.ndarray]]:
    """(entry name, uint8 RGB) of each readable image entry of ``zf`` in name order, at most
    ``limit`` of them; bad entries are logged, appended to ``problems`` and skipped."""
    n = 0
    for entry in zip_image_names(zf, suffixes):
        if limit is not None and n >= limit:
            return
        img = decode_image_or_skip(zf, entry, problems)
        if img is not None:
            n += 1
            yield entry, img
