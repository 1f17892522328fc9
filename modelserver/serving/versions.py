"""The model versions of a server's data folder (``versions/<id>.pt`` + ``<id>.json``) and atomic writes.

Read and written by the server, ``cortexloop modelserver distill`` and :mod:`modelserver.compact.compress`;
each file goes to a temporary name first and is renamed into place, so a crash never leaves a
half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserver.training.ensemble import DeepEnsemble, FitReport
from wire.errors import InvalidRequest, NotFound
from wire.model import VersionInfo

__all__ = ["current_version", "latest_version", "load_intact", "load_version", "read_version", "save_version", "set_current",
           "version_infos", "version_path", "write_atomic"]

#: ``versions/CURRENT``: the id of the version the server serves (the newest trained one, or one an
#: operator loaded back); a restarted server starts from it, so loading an older version survives a restart
CURRENT_FILE = "CURRENT"


def write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed onto it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --- model versions ------------------------------------------------------------------------
def version_path(versions_dir: Path, version: str) -> Path:
    """``versions_dir/<version>.pt``; ``InvalidRequest`` for a malformed id, ``NotFound`` if absent."""
    if not version.replace("-", "").isalnum():
        raise InvalidRequest(f"bad version id {version!r}")
    p = Path(versions_dir) / f"{version}.pt"
    if not p.is_file():
        raise NotFound(f"unknown model version {version!r}")
    return p


def version_infos(versions_dir: Path) -> list[VersionInfo]:
    """Descriptions of the complete versions (a readable ``.json`` and its ``.pt``), sorted by file name."""
    d = Path(versions_dir)
    out = []
    for p in sorted(d.glob("*.json")):
        with contextlib.suppress(ValueError, OSError):  # a half-written description is not a version
            out.append(VersionInfo.model_validate(json.loads(p.read_text())))
    return [v for v in out if (d / f"{v.version}.pt").is_file()]


def latest_version(versions_dir: Path) -> str | None:
    """The most recently created version (by ``VersionInfo.created``), or None."""
    infos = version_infos(versions_dir)
    return max(infos, key=lambda v: v.created).version if infos else None


def set_current(versions_dir: Path, version: str) -> None:
    """Record ``version`` as the one served (``versions/CURRENT``, written atomically)."""
    version_path(versions_dir, version)  # a complete, well-formed version only
    write_atomic(Path(versions_dir) / CURRENT_FILE, lambda f: f.write(version.encode()))


def current_version(versions_dir: Path) -> str | None:
    """The version ``versions/CURRENT`` names where it is a complete version, else the latest (or None)."""
    with contextlib.suppress(OSError, UnicodeDecodeError, InvalidRequest, NotFound):
        named = (Path(versions_dir) / CURRENT_FILE).read_text().strip()
        version_path(versions_dir, named)
        if (Path(versions_dir) / f"{named}.json").is_file():
            return named
    return latest_version(versions_dir)


def load_intact(versions_dir: Path, first: str, device: torch.device | str = "cpu",
                ) -> tuple[DeepEnsemble, str, list[str]]:
    """``first`` (the served version), or where it cannot be loaded (a damaged file) the newest version that
    can: (its ensemble, its id, one line per version skipped and why). Raises the error of ``first`` where
    no version loads at all."""
    order = [first] + [v.version for v in sorted(version_infos(versions_dir), key=lambda v: v.created,
                                                 reverse=True) if v.version != first]
    skipped: list[str] = []
    error: Exception | None = None
    for version in order:
        try:
            return load_version(versions_dir, version, device), version, skipped
        except Exception as exc:  # a truncated or corrupt .pt: torch raises many types
            skipped.append(f"{version}: {type(exc).__name__}: {str(exc)[:200]}")
            error = error or exc
    assert error is not None
    raise error


def load_version(versions_dir: Path, version: str, device: torch.device | str = "cpu") -> DeepEnsemble:
    """One saved version (tensors only: ``torch.load(weights_only=True)``)."""
    blob = torch.load(version_path(versions_dir, version), map_location="cpu", weights_only=True)
    return DeepEnsemble.from_state(blob, device)


def read_version(data_dir: Path, version: str | None,
                 device: torch.device | str = "cpu") -> tuple[DeepEnsemble, str]:
    """The ensemble of ``version`` (None: the current one, see :func:`current_version`) in a server's
    data folder, and its id.

    Raises ``NotFound`` where there is no such version (or none at all), ``InvalidRequest`` for a
    malformed id.
    """
    versions_dir = Path(data_dir) / "versions"
    if version is None:
        version = current_version(versions_dir)
        if version is None:
            raise NotFound(f"no model versions in {versions_dir}")
    return load_version(versions_dir, version, device), version


def save_version(versions_dir: Path, model: DeepEnsemble, report: FitReport) -> str:
    """Save ``model`` as a new version (``<id>.pt`` then ``<id>.json``, each renamed into place)."""
    d = Path(versions_dir)
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    tmp = d / f".{version}.pt.tmp"
    torch.save(model.export_state(), tmp)
    tmp.replace(d / f"{version}.pt")
    info = VersionInfo(version=version, created=time.time(), sessions=dict(model.session_neurons),
                       val_r=float(np.mean(report.best_val_r)) if report.best_val_r else float("nan"),
                       epochs=report.epochs)
    write_atomic(d / f"{version}.json", lambda f: f.write(info.model_dump_json().encode()))
    return version
