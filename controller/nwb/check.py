"""Offline checks of exported files: nwbinspector, and dandi's own validation (pynwb, nwbinspector, layout)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wire.errors import CortexloopError, StoreError

log = logging.getLogger(__name__)


def offline_dandi() -> None:
    """Keep dandi off the network: no version check (etelemetry); nothing else it runs here fetches."""
    os.environ.setdefault("DANDI_NO_ET", "1")


def check_nwb(path: str | Path, *, dandi: bool = True) -> list[str]:
    """Problems of one NWB file: nwbinspector's messages of importance BEST_PRACTICE_VIOLATION or worse.

    With ``dandi`` (the default) checks are weighted as ``dandi validate`` weighs them and dandi's
    pynwb validation runs too (its errors read ``ERROR dandi <id>: message``). Each inspector message
    reads ``IMPORTANCE check_name at location (type): message``; an empty list means the file passes.
    """
    try:
        from nwbinspector import Importance, inspect_nwbfile, load_config
    except ImportError as exc:  # pragma: no cover - the report extra is not installed
        raise CortexloopError("checking NWB files needs nwbinspector: pip install 'cortexloop[report]'") from exc
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no NWB file at {path}")
    out: list[str] = []
    if dandi:
        offline_dandi()
        from dandi.pynwb_utils import validate
        from dandi.validate import Severity

        out += [f"ERROR dandi {r.id}: {r.message}" for r in validate(path)
                if r.severity is not None and r.severity >= Severity.ERROR]
    msgs = inspect_nwbfile(nwbfile_path=path, config=load_config("dandi") if dandi else None, skip_validate=dandi,
                           importance_threshold=Importance.BEST_PRACTICE_VIOLATION)
    out += [f"{m.importance.name} {m.check_function_name} at {m.location} ({m.object_type}): {m.message}"
            for m in msgs if m is not None]
    return out


def check_dandiset(folder: str | Path) -> tuple[list[str], list[str]]:
    """``dandi validate FOLDER`` run in this process (offline): (errors, warnings), each
    ``SEVERITY id at path: message``. The folder needs a dandiset.yaml."""
    offline_dandi()
    from dandi.validate import Severity
    from dandi.validate._core import validate

    folder = Path(folder)
    if not (folder / "dandiset.yaml").is_file():
        raise StoreError(f"{folder} has no dandiset.yaml: not a dandiset folder")
    errors: list[str] = []
    warnings: list[str] = []
    for r in validate(folder):
        if r.severity is None or r.severity < Severity.WARNING:
            continue
        where = r.path.relative_to(folder.absolute()) if r.path and r.path.is_relative_to(folder.absolute()) else r.path
        line = f"{r.severity.name} {r.id} at {where}: {r.message}"
        (errors if r.severity >= Severity.ERROR else warnings).append(line)
    return errors, warnings
