"""Subject, lab and device metadata of an export: from the rig file the start document recorded, then overrides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.config import SubjectConfig
from wire.documents import StartDoc
from wire.errors import StoreError


@dataclass(frozen=True)
class Metadata:
    """What NWB's general section and subject say about a session."""

    subject: SubjectConfig
    lab: str | None
    institution: str | None
    experimenter: list[str]


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def session_metadata(start: StartDoc, *, lab: str | None = None, institution: str | None = None,
                     experimenter: str | Sequence[str] | None = None, species: str | None = None,
                     age: str | None = None, sex: str | None = None) -> Metadata:
    """The rig file's ``subject:`` mapping, ``lab``, ``institution`` and ``experimenter`` as recorded in
    the start document's configuration, each replaced by an argument given here. The subject id is the
    start document's. Raises StoreError naming the field when a value is not valid (e.g. age "7 years")."""
    cfg = start.config
    recorded = cfg.get("subject_info")
    info: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    given = {k: v for k, v in (("species", species), ("age", age), ("sex", sex)) if v is not None}
    try:
        subject = SubjectConfig.model_validate({**info, **given, "subject_id": start.subject or "unknown"})
    except ValidationError as exc:
        where = ", ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise StoreError(f"subject metadata of {start.session_id} is not valid for NWB: {where}") from exc
    people = [experimenter] if isinstance(experimenter, str) else list(experimenter or [])
    if not people:
        rec = cfg.get("experimenter")
        people = [rec] if isinstance(rec, str) else [str(p) for p in rec or [] if p]
    return Metadata(subject=subject, lab=lab or _text(cfg.get("lab")),
                    institution=institution or _text(cfg.get("institution")), experimenter=people)


def devices(start: StartDoc) -> list[tuple[str, str]]:
    """(name, description) of the rig's devices, from the recorded configuration: the display, the
    acquisition system and the sync line (photodiode or TTL), when the configuration names them."""
    cfg = start.config
    out: list[tuple[str, str]] = []
    stim = cfg.get("stim")
    if isinstance(stim, dict):
        how = ("a running stimulus server at " + str(stim["rpc"]) if stim.get("rpc") else
               f"{stim.get('presenter', 'fake')} presenter at {stim.get('refresh_hz', '?')} Hz")
        out.append(("stimulus_display", f"the display of rig {start.rig} (cortexloop stimserver: {how})"))
    acq = cfg.get("acquisition")
    if isinstance(acq, dict):
        kind = str(acq.get("kind", "?"))
        where = {"openephys": f"Open Ephys GUI at {acq.get('openephys_endpoint')}",
                 "lsl": f"LSL stream {acq.get('lsl_spike_name')}",
                 "virtual": "cortexloop virtual rig (simulated neurons over LSL)"}.get(kind, kind)
        out.append(("acquisition_system", f"spike source of rig {start.rig}: {where}"))
        sync = acq.get("sync")
        if isinstance(sync, dict):
            out.append(("sync_line", f"sync channel {sync.get('channel')!s} reporting stimulus onsets on the "
                                     f"acquisition clock (tolerance {sync.get('tolerance')!s} s)"))
    return out


def sync_channel(start: StartDoc) -> str | None:
    """The sync channel (photodiode, TTL line) the recorded configuration names, if any."""
    acq = start.config.get("acquisition")
    sync = acq.get("sync") if isinstance(acq, dict) else None
    return str(sync["channel"]) if isinstance(sync, dict) and sync.get("channel") else None
