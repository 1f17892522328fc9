"""Confined file access: nothing from the wire names an arbitrary path on the modelserver.

* Names (pools, exports) are plain file names matched against a strict pattern, never paths:
  a name with a separator, ``..``, a leading dot or a NUL is :class:`~wire.errors.Forbidden`.
  The file they name is resolved (symlinks followed) and must lie directly in the server's own
  folder (``<data_dir>/pools``, ``<data_dir>/exports``).
* Image folders for pools are resolved against the image roots the server was configured with
  (``ModelServerConfig.image_roots``, ``modelserver serve --image-root DIR``, and the V4 folder):
  a relative folder is looked up inside each root, an absolute one must lie inside one, ``..`` is
  refused outright, and the resolved folder (symlinks followed) must still lie inside its root.
  Every image file under it is resolved too: one that links out of the root refuses the request.

Refusals happen before anything is read or written, so a refused request leaves the file system
as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

from wire.errors import Forbidden, InvalidRequest, LimitExceeded, NotFound

#: a pool name: letters, digits, '_', '-', '.' (not first), at most 64 characters
POOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: an export file name: letters, digits, '_', '-', '.' (not first), at most 128 characters
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: suffixes of the files a pool folder contributes (as ``modelserver.generate.pool.folder_images``)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")


def _looks_like_path(name: str) -> bool:
    return ("/" in name or "\\" in name or "\x00" in name or ".." in name or name.startswith(".")
            or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive != "")


def plain_name(name: str, what: str, pattern: re.Pattern[str] = FILE_NAME) -> str:
    """``name`` if it is a plain file name matching ``pattern``; Forbidden for anything path-like."""
    if _looks_like_path(name):
        raise Forbidden(f"{what} {name[:100]!r} is a path; give a plain name ({pattern.pattern})")
    if not pattern.fullmatch(name):
        raise InvalidRequest(f"bad {what} {name[:100]!r}: it must match {pattern.pattern}")
    return name


def file_in(folder: Path, name: str, what: str) -> Path:
    """``folder/name`` (``name`` already a plain name), checked to resolve directly inside ``folder``:
    a symlink there that points elsewhere is Forbidden. Returns the unresolved path (writes replace
    a symlink rather than follow it)."""
    base = Path(folder).resolve()
    path = base / name
    if path.resolve().parent != base:
        raise Forbidden(f"{what} {name!r} resolves outside the server's folder (a symbolic link?)")
    return path


def resolved_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(r).resolve() for r in roots]


def confined_folder(spec: str, roots: Sequence[Path]) -> tuple[Path, Path]:
    """(resolved folder, its resolved root) for a folder named by a client.

    Relative: looked up in each root in turn; absolute: must lie in one. ``..`` anywhere, or a
    folder that resolves outside every root, is Forbidden; one inside a root that does not exist
    is NotFound.
    """
    if not roots:
        raise Forbidden("this modelserver has no image roots, so it builds pools from crops only "
                        "(start it with --image-root DIR to allow folders)")
    if "\x00" in spec or not spec:
        raise Forbidden(f"bad folder {spec[:100]!r}")
    pure = PurePath(spec)
    if ".." in pure.parts or ".." in PureWindowsPath(spec).parts:
        raise Forbidden(f"folder {spec[:200]!r} contains '..'; name a folder inside an image root")
    bases = resolved_roots(roots)
    candidates = [Path(spec)] if pure.is_absolute() else [b / spec for b in bases]
    inside_a_root = False
    for cand in candidates:
        real = cand.resolve()
        root = next((b for b in bases if real.is_relative_to(b)), None)
        if root is None:
            continue
        inside_a_root = True
        if real.is_dir():
            return real, root
    if inside_a_root:
        raise NotFound(f"no image folder {spec[:200]!r} in the server's image roots")
    raise Forbidden(f"folder {spec[:200]!r} lies outside the server's image roots (or links out of them)")


def count_image_files(folder: Path, root: Path, limit: int) -> int:
    """Image files under ``folder`` (as ``folder_images`` reads them), each checked to resolve inside
    ``root``; Forbidden for one that links out, LimitExceeded beyond ``limit``."""
    n = 0
    for p in folder.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if not p.resolve().is_relative_to(root):
                raise Forbidden(f"{p.relative_to(folder)} under folder {folder.name!r} links out of its image root")
            n += 1
            if n > limit:
                raise LimitExceeded(f"folder {folder.name!r} holds more than {limit:,} images, this server's "
                                    f"limit for a pool (RequestLimits.max_pool_images)")
    return n
