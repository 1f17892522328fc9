"""Export a session file to NWB (Neurodata Without Borders) for DANDI, and check it with nwbinspector.

``export_nwb(session, out)`` reads every document of a session file (``controller.store``) and
writes one NWB 2.x file. ``docs/nwb.md`` describes where each document goes; in short:

* ``/intervals/trials``: one row per shown trial, sorted by onset, times on the stimulus clock;
  block, image, condition, dropped frames and whether counts were recorded.
* ``/processing/ecephys/spike_counts``: one row per row of the trials table, a 2-D ``counts``
  column (trials x units; NaN where no count was recorded) and the counting window;
  ``/processing/ecephys/spike_count_units`` names the units (one row per column of ``counts``).
* ``/stimulus/templates/stimulus_images``: every stored image (``RGBImage``, named by image id)
  with ``order_of_images``; ``/stimulus/presentation/stimulus_presentations``: an ``IndexSeries``
  of image indices at the trial onsets.
* ``/processing/misc``: blocks, model versions, picks, events and protocol steps as tables.
* ``/scratch/cortexloop_documents``: the JSON of every document (image pixels and exported
  counts left out: they are above), so nothing recorded is lost in the mapping.

pynwb and nwbinspector come with the ``report`` extra; they are imported when first needed.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import CortexloopError, StoreError

if TYPE_CHECKING:
    from controller.store import Damage

log = logging.getLogger(__name__)

DEFAULT_SPECIES = "Macaca mulatta"
#: age of a subject whose age is not known: "at least 0 days" (an ISO 8601 range open above),
#: the form nwbinspector and DANDI accept when no better value is given
UNKNOWN_AGE = "P0D/"
STIM_CLOCK = ("the stimulus server's monotonic clock (CLOCK_MONOTONIC of the stimulus machine, seconds); "
              "not shifted to session_start_time")


@dataclass
class _Session:
    """The documents of one session file, grouped by kind."""

    path: Path
    start: StartDoc
    docs: list[Any]
    problems: list[str]
    damage: list[Damage] = field(default_factory=list)
    stop: StopDoc | None = None
    blocks: list[BlockDoc] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    trials: list[TrialDoc] = field(default_factory=list)
    responses: dict[str, ResponseDoc] = field(default_factory=dict)
    model_versions: list[ModelVersionDoc] = field(default_factory=list)
    picks: list[PickDoc] = field(default_factory=list)
    events: list[EventDoc] = field(default_factory=list)
    steps: list[StepDoc] = field(default_factory=list)

    def since_start(self, t: float) -> float:
        """A document's wall-clock time as seconds after the session's start document."""
        return t - self.start.time


def _read_session(path: Path, *, allow_damaged: bool = False) -> _Session:
    """The session's documents; DamagedSession when damage matters for an export (``Damage.matters``:
    a start, block, image, trial or response record, one of unknown kind, or the file itself) unless
    ``allow_damaged``. Whatever was skipped is listed in ``problems`` (and in the NWB file's notes)."""
    from controller.store import DamagedSession, SessionReader, damage_that_matters

    with SessionReader(path) as reader:
        docs = list(reader.documents())
        damage = reader.damage
    serious = damage_that_matters(damage)
    if serious and not allow_damaged:
        raise DamagedSession(path, serious, "an NWB export")
    for d in damage:
        log.warning("export of %s skips %s", path.name, d)
    if not docs or not isinstance(docs[0], StartDoc):
        raise StoreError(f"{path} has no start document; it cannot be exported"
                         + (" (its first record is damaged)" if any(d.index == 0 for d in damage) else ""))
    s = _Session(path=path, start=docs[0], docs=docs, problems=[str(d) for d in damage], damage=damage)
    for d in docs[1:]:
        if isinstance(d, BlockDoc):
            s.blocks.append(d)
        elif isinstance(d, ImageDoc):
            s.images.setdefault(d.image_id, d.pixels)
        elif isinstance(d, TrialDoc):
            s.trials.append(d)
        elif isinstance(d, ResponseDoc):
            if d.trial_id in s.responses:
                log.warning("%s: trial %s has more than one response; the last is exported", path, d.trial_id)
            s.responses[d.trial_id] = d
        elif isinstance(d, ModelVersionDoc):
            s.model_versions.append(d)
        elif isinstance(d, PickDoc):
            s.picks.append(d)
        elif isinstance(d, EventDoc):
            s.events.append(d)
        elif isinstance(d, StepDoc):
            s.steps.append(d)
        elif isinstance(d, StopDoc):
            s.stop = d
    s.trials.sort(key=lambda t: t.onset)  # stable: trials recovered late keep their place by onset
    shown = {t.trial_id for t in s.trials}
    orphans = [tid for tid in s.responses if tid not in shown]
    if orphans:
        log.warning("%s: %d responses have no trial document (kept in scratch/cortexloop_documents only): %s",
                    path, len(orphans), ", ".join(orphans[:5]))
    missing = sorted({t.image_id for t in s.trials} - s.images.keys())
    lost = {d.image_id for d in damage if d.kind == "image" and d.image_id} | (
        set(missing) if any(d.kind in ("image", None) for d in damage) else set())
    if set(missing) - lost:
        raise StoreError(f"{path}: trials show images that were never stored: "
                         f"{', '.join(sorted(set(missing) - lost)[:5])}")
    if missing:
        log.warning("%s: %d images shown are lost to damage; their trials have image_index -1 and are left "
                    "out of stimulus_presentations", path, len(missing))
    return s


def _conditions(s: _Session) -> list[str]:
    """The condition of each trial, from its block's trial list.

    A trial re-shown after a resume has the id ``<id>.again``; it takes the condition of ``<id>``.
    A trial missing from its block's list takes the condition its image has in that block, else "".
    """
    by_trial: dict[str, str] = {}
    by_image: dict[tuple[str, str], str] = {}
    for b in s.blocks:
        for tid, image, cond in b.params.get("trials", []):
            by_trial[str(tid)] = str(cond)
            by_image.setdefault((b.block_id, str(image)), str(cond))
    out = []
    for t in s.trials:
        tid = t.trial_id
        while tid not in by_trial and tid.endswith(".again"):
            tid = tid.removesuffix(".again")
        out.append(by_trial.get(tid, by_image.get((t.block_id, t.image_id), "")))
    return out


def _units(s: _Session) -> list[str]:
    return list(dict.fromkeys(u for r in s.responses.values() for u in r.units))


def _count_matrix(s: _Session, units: list[str]) -> np.ndarray:
    """Counts (trials x units) in the order of the trials table; NaN where nothing was counted."""
    col = {u: j for j, u in enumerate(units)}
    out = np.full((len(s.trials), len(units)), np.nan)
    for i, t in enumerate(s.trials):
        r = s.responses.get(t.trial_id)
        if r is not None:
            out[i, [col[u] for u in r.units]] = np.asarray(r.counts, dtype=np.float64).reshape(-1)
    return out


def _safe(name: str) -> str:
    """An NWB object name: no slashes (nwbinspector: CRITICAL) and no colons."""
    return re.sub(r"[/\\:]", "-", name)


def _column_name(key: str) -> str:
    return re.sub(r"\W", "_", key)


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


# -- building the NWB file ---------------------------------------------------------------------------
def _table(name: str, description: str, columns: Sequence[tuple[str, str, Any]]) -> Any:
    from hdmf.common import DynamicTable, VectorData

    return DynamicTable(name=name, description=description,
                        columns=[VectorData(name=n, description=d, data=v) for n, d, v in columns])


def _nwbfile(s: _Session, *, lab: str | None, institution: str | None, experimenter: Sequence[str] | None,
             species: str, age: str, sex: str) -> Any:
    from pynwb import NWBFile
    from pynwb.file import Subject

    proto = s.start.protocol
    name = str(proto.get("protocol") or proto.get("name") or "unnamed protocol")
    title = str(proto.get("title") or "")
    stop = (f"stopped: {s.stop.exit_status}" + (f" ({s.stop.reason})" if s.stop.reason else "")
            if s.stop is not None else "no stop document (the session did not finish)")
    notes = [f"exported by cortexloop from {s.path.name}: {len(s.docs)} documents; {stop}",
             f"rig: {s.start.rig}"]
    notes += [f"store problem: {p}" for p in s.problems]
    return NWBFile(
        session_description=f"cortexloop {name} session" + (f": {title}" if title else ""),
        identifier=s.start.uid,
        session_start_time=datetime.fromtimestamp(s.start.time, tz=UTC),
        session_id=_safe(s.start.session_id),
        experimenter=list(experimenter) if experimenter else None,
        lab=lab,
        institution=institution,
        experiment_description=title or f"closed-loop {name} protocol run by cortexloop",
        keywords=["cortexloop", "closed loop", name],
        protocol=json.dumps(proto, sort_keys=True),
        data_collection="controller configuration: " + json.dumps(s.start.config, sort_keys=True),
        notes="\n".join(notes),
        source_script=f"cortexloop {s.start.code_version}",
        source_script_file_name="cortexloop",
        stimulus_notes="images shown one per trial; see stimulus/presentation/stimulus_presentations",
        subject=Subject(subject_id=_safe(s.start.subject), species=species, age=age, sex=sex,
                        description=f"subject id as recorded: {s.start.subject}"),
    )


def _trials(s: _Session, image_index: dict[str, int]) -> Any:
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    block_index = {b.block_id: b.index for b in s.blocks}
    ts = s.trials
    resp = [s.responses.get(t.trial_id) for t in ts]
    cols: list[tuple[str, str, Any]] = [
        ("start_time", f"measured image onset (first flip showing it) on {STIM_CLOCK}",
         np.array([t.onset for t in ts], dtype=np.float64)),
        ("stop_time", f"measured image offset (flip that removed it) on {STIM_CLOCK}",
         np.array([t.offset for t in ts], dtype=np.float64)),
        ("trial_id", "cortexloop trial id (block id / position; '.again' marks a trial re-shown "
                     "after a resume)", [t.trial_id for t in ts]),
        ("block_id", "id of the block the trial belongs to (processing/misc/blocks)", [t.block_id for t in ts]),
        ("block_index", "position of the block in the session (-1: block document missing)",
         np.array([block_index.get(t.block_id, -1) for t in ts], dtype=np.int64)),
        ("index_in_block", "position of the trial within its block", np.array([t.index for t in ts], np.int64)),
        ("image_id", "content hash of the image shown (name of its stimulus template)", [t.image_id for t in ts]),
        ("image_index", "index of the image in stimulus/templates/stimulus_images (order_of_images); -1: "
                        "the image's record is damaged in the session file",
         np.array([image_index.get(t.image_id, -1) for t in ts], dtype=np.int64)),
        ("condition", "condition of the trial in its block's trial list", _conditions(s)),
        ("on_frames", "display frames the image was on", np.array([t.on_frames for t in ts], np.int64)),
        ("dropped_frames", "display frames dropped during the trial",
         np.array([t.dropped_frames for t in ts], np.int64)),
        ("counted", "true if spike counts were recorded for the trial (processing/ecephys/spike_counts)",
         np.array([r is not None for r in resp], dtype=bool)),
        ("complete", "true if counts were recorded and no spike of the counting window may be missing",
         np.array([r is not None and r.complete for r in resp], dtype=bool)),
    ]
    if any(t.requested_onset is not None for t in ts):  # left out when never recorded (all NaN)
        cols.append(("requested_onset", f"scheduled onset on {STIM_CLOCK} (NaN: not recorded)",
                     np.array([_nan(t.requested_onset) for t in ts], dtype=np.float64)))
    return TimeIntervals(
        name="trials",
        description=f"one row per shown trial, sorted by onset; start_time/stop_time are on {STIM_CLOCK}",
        columns=[VectorData(name=n, description=d, data=v) for n, d, v in cols])


def _stimuli(s: _Session) -> tuple[Any, dict[str, int]]:
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb.base import ImageReferences, Images
    from pynwb.image import GrayscaleImage, RGBAImage, RGBImage

    images = []
    for iid, px in s.images.items():
        a = np.asarray(px)
        kind = {2: GrayscaleImage, 3: {1: GrayscaleImage, 3: RGBImage, 4: RGBAImage}.get(a.shape[-1])}.get(a.ndim)
        if kind is None:
            raise StoreError(f"{s.path}: image {iid} has shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
        if kind is GrayscaleImage and a.ndim == 3:
            a = a[..., 0]
        images.append(kind(name=_safe(iid), data=H5DataIO(a, compression="gzip", compression_opts=4),
                           description=f"cortexloop image {iid}; array (height, width[, channels]) as displayed, "
                                       "row 0 at the top"))
    container = Images(name="stimulus_images", images=images,
                       description="every image stored in the session, in the order first stored",
                       order_of_images=ImageReferences(name="order_of_images", data=images))
    return container, {iid: i for i, iid in enumerate(s.images)}


def _presentations(s: _Session, images: Any, image_index: dict[str, int]) -> Any:
    from pynwb.image import IndexSeries

    shown = [t for t in s.trials if t.image_id in image_index]  # all, unless images were lost to damage
    onsets = np.array([t.onset for t in shown], dtype=np.float64)
    timing: dict[str, Any] = {"timestamps": onsets}
    steps = np.unique(np.diff(onsets).round(9)) if len(onsets) > 2 else np.array([])
    if steps.size == 1 and steps[0] > 0:  # perfectly regular: nwbinspector wants starting_time + rate
        timing = {"starting_time": float(onsets[0]), "rate": float(1.0 / steps[0])}
    return IndexSeries(
        name="stimulus_presentations",
        data=np.array([image_index[t.image_id] for t in shown], dtype=np.uint32),
        indexed_images=images, unit="N/A",
        description=f"index (into stimulus_images) of the image shown on each trial, in the order of the "
                    f"trials table; times are onsets on {STIM_CLOCK}"
                    + ("" if len(shown) == len(s.trials) else
                       f"; {len(s.trials) - len(shown)} trials whose image record is damaged are left out"),
        **timing)


def _counts(s: _Session, trials: Any) -> list[Any]:
    units = _units(s)
    if not s.trials or not units:
        return []
    resp = [s.responses.get(t.trial_id) for t in s.trials]
    counts = _count_matrix(s, units)
    table = _table("spike_counts", "spike counts per trial (rows, in the order of intervals/trials) and unit "
                   "(columns of counts, named by spike_count_units); NaN where no count was recorded", [
        ("counts", "spike counts in the window [window_start, window_stop] after onset; column j is row j "
                   "of spike_count_units", counts),
        ("window_start", "start of the counting window after the trial onset (s; NaN: not counted)",
         np.array([r.window[0] if r else math.nan for r in resp], dtype=np.float64)),
        ("window_stop", "end of the counting window after the trial onset (s; NaN: not counted)",
         np.array([r.window[1] if r else math.nan for r in resp], dtype=np.float64)),
        ("onset_acq", "the trial onset mapped into the acquisition clock (s; NaN: not counted)",
         np.array([r.onset_acq if r else math.nan for r in resp], dtype=np.float64)),
        ("complete", "false if spikes of the window may be missing or nothing was counted",
         np.array([r is not None and r.complete for r in resp], dtype=bool)),
    ])
    table.add_column(name="trial", description="the row of intervals/trials this row counts",
                     data=np.arange(len(s.trials)), table=trials)
    names = _table("spike_count_units", "units of the spike counts: row j names column j of "
                   "spike_counts.counts", [("unit_name", "unit id as recorded by the acquisition system", units)])
    return [table, names]


def _bookkeeping(s: _Session, image_index: dict[str, int]) -> list[Any]:
    wall = "wall-clock seconds after session_start_time when the document was written"
    out = []
    if s.blocks:
        out.append(_table("blocks", "blocks of trials as planned (processing/misc)", [
            ("block_id", "block id", [b.block_id for b in s.blocks]),
            ("index", "position of the block in the session", np.array([b.index for b in s.blocks], np.int64)),
            ("source", "where the images came from (normal, gaudy, active, ...)", [b.source for b in s.blocks]),
            ("fallback", "true if the protocol's fallback images replaced some images",
             np.array([b.fallback for b in s.blocks], dtype=bool)),
            ("fallback_sets", "comma-separated labels of the image sets that fell back",
             [",".join(map(str, b.params.get("fallbacks", []))) for b in s.blocks]),
            ("n_trials", "trials planned", np.array([b.n_trials for b in s.blocks], np.int64)),
            ("wall_clock", wall, np.array([s.since_start(b.time) for b in s.blocks], np.float64)),
            ("uid", "document uid (scratch/cortexloop_documents)", [b.uid for b in s.blocks]),
        ]))
    if s.model_versions:
        mv = s.model_versions
        keys = list(dict.fromkeys(k for m in mv for k in m.metrics))
        out.append(_table("model_versions", "model versions trained during the session; metric_* columns "
                          "are their metrics (NaN: not reported)", [
            ("version", "model version", [m.version for m in mv]),
            ("n_images", "images the model was trained on", np.array([m.n_images for m in mv], np.int64)),
            *[(f"metric_{_column_name(k)}", f"metric {k}",
               np.array([_nan(m.metrics.get(k)) for m in mv], np.float64)) for k in keys],
            ("wall_clock", wall, np.array([s.since_start(m.time) for m in mv], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [m.uid for m in mv]),
        ]))
    if s.picks:
        p = s.picks
        out.append(_table("picks", "why each model-chosen image was picked for a block", [
            ("image_id", "image id", [x.image_id for x in p]),
            ("image_index", "index in stimulus/templates/stimulus_images (-1: image not stored)",
             np.array([image_index.get(x.image_id, -1) for x in p], np.int64)),
            ("block_id", "block the image was picked for", [x.block_id for x in p]),
            ("generator", "how the image was chosen", [x.generator for x in p]),
            ("model_version", "model version used ('' if none)", [x.model_version or "" for x in p]),
            ("neuron", "target neuron (-1 if none)", np.array([-1 if x.neuron is None else x.neuron for x in p],
                                                              np.int64)),
            ("score", "the generator's score (NaN if none)", np.array([_nan(x.score) for x in p], np.float64)),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in p], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [x.uid for x in p]),
        ]))
    if s.events:
        e = s.events
        out.append(_table("events", "what happened to the session: pauses, faults, fallbacks, operator commands", [
            ("what", "kind of event", [x.what for x in e]),
            ("message", "message", [x.message for x in e]),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in e], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [x.uid for x in e]),
        ]))
    if s.steps:
        st = s.steps
        out.append(_table("steps", "protocol steps and the kind of their results", [
            ("index", "position of the step in the session", np.array([x.index for x in st], np.int64)),
            ("step", "kind of step", [str(x.step.get("kind", "")) for x in st]),
            ("result", "kind of result", [str(x.result.get("kind", "")) for x in st]),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in st], np.float64)),
            ("uid", "document uid (step and result in scratch/cortexloop_documents)", [x.uid for x in st]),
        ]))
    return out


def _document_log(s: _Session) -> Any:
    from pynwb.core import ScratchData

    shown = {t.trial_id for t in s.trials}

    def leave_out(d: Any) -> set[str] | None:
        if isinstance(d, ImageDoc):
            return {"pixels"}
        if isinstance(d, ResponseDoc) and d.trial_id in shown and s.responses.get(d.trial_id) is d:
            return {"counts"}
        return None

    rows = [json.dumps(d.model_dump(mode="json", exclude=leave_out(d)), separators=(",", ":"), sort_keys=True)
            for d in s.docs]
    return ScratchData(name="cortexloop_documents", data=rows,
                       description="JSON of every document of the cortexloop session file, in order; image pixels "
                                   "are left out (they are stimulus/templates/stimulus_images/<image_id>) and so "
                                   "are the counts of responses exported in processing/ecephys/spike_counts")


def build_nwbfile(session_path: str | Path, *, lab: str | None = None, institution: str | None = None,
                  experimenter: str | Sequence[str] | None = None, species: str = DEFAULT_SPECIES,
                  age: str = UNKNOWN_AGE, sex: str = "U", allow_damaged: bool = False,
                  damage: list[Damage] | None = None) -> Any:
    """The in-memory ``pynwb.NWBFile`` of a session file (see :func:`export_nwb`)."""
    from pynwb import ProcessingModule

    s = _read_session(Path(session_path), allow_damaged=allow_damaged)
    if damage is not None:
        damage.extend(s.damage)
    people = [experimenter] if isinstance(experimenter, str) else experimenter
    nwb = _nwbfile(s, lab=lab, institution=institution, experimenter=people, species=species, age=age, sex=sex)
    images, image_index = _stimuli(s) if s.images else (None, {})
    if images is not None:
        nwb.add_stimulus_template(images)
    if s.trials:
        nwb.trials = _trials(s, image_index)
        if images is not None and any(t.image_id in image_index for t in s.trials):
            nwb.add_stimulus(_presentations(s, images, image_index))
        counts = _counts(s, nwb.trials)
        if counts:
            ecephys = ProcessingModule(name="ecephys", description="spike counts per trial and unit, counted "
                                       "online by cortexloop from the acquisition system's spikes")
            nwb.add_processing_module(ecephys)  # first, so the trial column's table shares an ancestor
            for t in counts:
                ecephys.add(t)
    tables = _bookkeeping(s, image_index)
    if tables:
        misc = ProcessingModule(name="misc", description="cortexloop closed-loop bookkeeping: blocks, model "
                                "versions, picks, events and protocol steps")
        for t in tables:
            misc.add(t)
        nwb.add_processing_module(misc)
    nwb.add_scratch(_document_log(s))
    return nwb


def export_nwb(session_path: str | Path, out_path: str | Path, *, overwrite: bool = False,
               lab: str | None = None, institution: str | None = None,
               experimenter: str | Sequence[str] | None = None, species: str | None = None,
               age: str | None = None, sex: str | None = None, allow_damaged: bool = False,
               damage: list[Damage] | None = None) -> Path:
    """Write a session file as an NWB file and return its path.

    ``experimenter`` is one name or several ("Last, First" is DANDI's form). ``species`` defaults
    to Macaca mulatta, ``age`` to "P0D/" (unknown: at least 0 days; give e.g. "P7Y"), ``sex`` to
    "U" (unknown; or "M", "F", "O"). Raises StoreError when the session file is missing or not
    readable, has no start document, or ``out_path`` exists and ``overwrite`` is false. The file
    is written beside ``out_path`` and renamed into place, so a failed export leaves no half file.

    Damaged records are skipped, appended to ``damage`` (``controller.store.Damage``, when given)
    and listed in the NWB file's notes. Damage that matters (a start, block, image, trial or response
    record, one of unknown kind, or the file itself) raises ``DamagedSession`` (a StoreError) and
    writes nothing, unless ``allow_damaged``: then what could be read is exported (trials whose image
    is lost get image_index -1).
    """
    try:
        from pynwb import NWBHDF5IO
    except ImportError as exc:  # pragma: no cover - the report extra is not installed
        raise CortexloopError("NWB export needs pynwb: pip install 'cortexloop[report]'") from exc
    session_path, out = Path(session_path), Path(out_path)
    if not session_path.is_file():
        raise StoreError(f"no session file at {session_path}")
    if out.resolve() == session_path.resolve():
        raise StoreError(f"the NWB file {out} would replace its own session file")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    nwb = build_nwbfile(session_path, lab=lab, institution=institution, experimenter=experimenter,
                        species=species or DEFAULT_SPECIES, age=age or UNKNOWN_AGE, sex=sex or "U",
                        allow_damaged=allow_damaged, damage=damage)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.nwb")
    try:
        with NWBHDF5IO(tmp, "w") as io:
            io.write(nwb)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s to %s", session_path, out)
    return out


def check_nwb(path: str | Path, *, dandi: bool = True) -> list[str]:
    """nwbinspector's messages of importance BEST_PRACTICE_VIOLATION or worse for an NWB file.

    With ``dandi`` (the default) checks are weighted as ``dandi validate`` weighs them before an
    upload. Each message reads ``IMPORTANCE check_name at location (type): message``; an empty
    list means the file passes.
    """
    try:
        from nwbinspector import Importance, inspect_nwbfile, load_config
    except ImportError as exc:  # pragma: no cover - the report extra is not installed
        raise CortexloopError("checking NWB files needs nwbinspector: pip install 'cortexloop[report]'") from exc
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no NWB file at {path}")
    config = load_config("dandi") if dandi else None
    msgs = inspect_nwbfile(nwbfile_path=path, config=config,
                           importance_threshold=Importance.BEST_PRACTICE_VIOLATION)
    return [f"{m.importance.name} {m.check_function_name} at {m.location} ({m.object_type}): {m.message}"
            for m in msgs if m is not None]
