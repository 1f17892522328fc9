"""``cortexloop export --dandi DIR``: sessions exported to NWB and laid out as ``dandi organize`` lays them out.

File names come from dandi's own organize code (``create_unique_filenames_from_metadata`` on each
file's metadata), with the session id always in the name:
``sub-<subject>/sub-<subject>_ses-<session>_<modalities>.nwb``. A placeholder ``dandiset.yaml``
is written when the folder has none, so ``dandi validate DIR`` runs; fill it in before an upload.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.nwb.check import offline_dandi
from wire.errors import StoreError

if TYPE_CHECKING:
    from controller.store import Damage

PLACEHOLDER = """\
# written by cortexloop export --dandi: a placeholder so that `dandi validate` runs here.
# Replace it with the dandiset's own (dandi download / the archive's web page) before an upload.
identifier: DANDI:000000
name: cortexloop sessions (placeholder)
description: Closed-loop sessions recorded with cortexloop, exported to NWB.
"""


def dandi_names(paths: Sequence[Path]) -> list[str]:
    """The path (relative to the dandiset) dandi's organize code gives each NWB file, session id included."""
    offline_dandi()
    from dandi.metadata.nwb import get_metadata
    from dandi.organize import create_unique_filenames_from_metadata

    metadata = [{**get_metadata(p), "path": str(p)} for p in paths]
    named = create_unique_filenames_from_metadata(metadata, required_fields=["session_id"])
    by_path = {m["path"]: m["dandi_path"] for m in named}
    return [str(by_path[str(p)]) for p in paths]


def export_dandi(sessions: Sequence[str | Path], folder: str | Path, *, overwrite: bool = False,
                 allow_damaged: bool = False, damage: list[Damage] | None = None, **metadata: Any) -> list[Path]:
    """Export each session file to NWB into ``folder`` in dandi's layout; returns the files written.

    ``metadata`` (lab, institution, experimenter, species, age, sex) is passed to ``export_nwb``.
    Raises StoreError when a target file exists and ``overwrite`` is false (nothing is moved then)."""
    from controller.nwb import export_nwb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cortexloop-export-", dir=folder.parent) as tmp:
        staged = []
        for i, s in enumerate(sessions):
            staged.append(export_nwb(s, Path(tmp) / f"{i:04d}_{Path(s).stem}.nwb", allow_damaged=allow_damaged,
                                     damage=damage, **metadata))
        targets = [folder / n for n in dandi_names(staged)]
        if len(set(targets)) != len(targets):
            raise StoreError(f"two sessions would be written to the same file: {targets}")
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise StoreError(f"{existing[0]} exists; pass --overwrite to replace it")
        for src, dst in zip(staged, targets, strict=True):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
    placeholder = folder / "dandiset.yaml"
    if not placeholder.exists():
        placeholder.write_text(PLACEHOLDER)
    return targets
