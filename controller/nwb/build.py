"""The core of the NWB file: general metadata, subject, devices, trials and the stimuli shown."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np

from controller.nwb.metadata import Metadata, devices
from controller.nwb.session import STIM_CLOCK, Session, conditions, nan_if_none, safe_name
from wire.errors import StoreError


def nwbfile(s: Session, meta: Metadata) -> Any:
    """An NWBFile with the session's general metadata, its subject and its rig's devices."""
    from pynwb import NWBFile
    from pynwb.file import Subject

    proto = s.start.protocol
    name = str(proto.get("protocol") or proto.get("name") or "unnamed protocol")
    title = str(proto.get("title") or "")
    stop = (f"stopped: {s.stop.exit_status}" + (f" ({s.stop.reason})" if s.stop.reason else "")
            if s.stop is not None else "no stop document (the session did not finish)")
    notes = [f"exported by cortexloop from {s.path.name}: {len(s.docs)} documents; {stop}",
             f"rig: {s.start.rig}"]
    invalid = sum(not t.valid for t in s.trials)
    if invalid or s.rewards:  # an awake session
        notes.append(f"awake animal: {len(s.trials) - invalid} of {len(s.trials)} trials valid (fixation held), "
                     f"{invalid} invalid (not counted), {len(s.rewards)} rewards")
    notes += [f"store problem: {p}" for p in s.problems]
    sub = meta.subject
    nwb = NWBFile(
        session_description=f"cortexloop {name} session" + (f": {title}" if title else ""),
        identifier=s.start.uid,
        session_start_time=datetime.fromtimestamp(s.start.time, tz=UTC),
        session_id=safe_name(s.start.session_id),
        experimenter=meta.experimenter or None,
        lab=meta.lab,
        institution=meta.institution,
        experiment_description=title or f"closed-loop {name} protocol run by cortexloop",
        keywords=["cortexloop", "closed loop", name],
        protocol=json.dumps(proto, sort_keys=True),
        data_collection="controller configuration: " + json.dumps(s.start.config, sort_keys=True),
        notes="\n".join(notes),
        source_script=f"cortexloop {s.start.code_version}",
        source_script_file_name="cortexloop",
        stimulus_notes="images shown one per trial; see stimulus/presentation/stimulus_presentations",
        subject=Subject(subject_id=safe_name(sub.subject_id), species=sub.species, age=sub.age, sex=sub.sex,
                        description=(sub.description + "; " if sub.description else "")
                        + f"subject id as recorded: {s.start.subject}"),
    )
    for dev, text in devices(s.start):
        nwb.create_device(name=dev, description=text)
    return nwb


def trials(s: Session, image_index: dict[str, int]) -> Any:
    from hdmf.common import VectorData
    from pynwb.epoch import TimeIntervals

    block_index = {b.block_id: b.index for b in s.blocks}
    ts = s.trials
    resp = [s.responses.get(t.trial_id) for t in ts]
    counted = [s.counted(t) for t in ts]
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
        ("condition", "condition of the trial in its block's trial list", conditions(s)),
        ("on_frames", "display frames the image was on", np.array([t.on_frames for t in ts], np.int64)),
        ("dropped_frames", "display frames dropped during the trial",
         np.array([t.dropped_frames for t in ts], np.int64)),
        ("valid", "true if the trial counts: the animal held fixation through the image and its counting "
                  "window (always true for a session without fixation control)",
         np.array([t.valid for t in ts], dtype=bool)),
        ("invalid_reason", "why the trial does not count ('' when valid or not recorded): break_fixation, "
                           "sequence_broken, no_fixation, no_gaze or paused (wire.behavior.InvalidReason)",
         [("" if t.valid else t.invalid_reason or "") for t in ts]),
        ("counted", "true if the trial's spike counts are exported (event i of processing/ecephys/spike_counts, "
                    "a BinnedAlignedSpikes, is row i of this table): a response was recorded and the trial is "
                    "valid. Invalid trials are never counted: the counts taken while the animal did not hold "
                    "fixation are kept in the session file (and scratch/cortexloop_documents) only, never "
                    "analysed, and NaN in spike_counts",
         np.array([c is not None for c in counted], dtype=bool)),
        ("complete", "true if counted and no spike of the counting window may be missing",
         np.array([c is not None and c.complete for c in counted], dtype=bool)),
        ("onset_acq", "the onset on the acquisition clock, where the counting window starts from (s; NaN: no "
                      "response was recorded; set for invalid trials too); start_time mapped by the controller's "
                      "clock map (fitted to the sync pulses where the rig has a sync line)",
         np.array([r.onset_acq if r is not None else np.nan for r in resp], dtype=np.float64)),
    ]
    if any(t.requested_onset is not None for t in ts):  # left out when never recorded (all NaN)
        cols.append(("requested_onset", f"scheduled onset on {STIM_CLOCK} (NaN: not recorded)",
                     np.array([nan_if_none(t.requested_onset) for t in ts], dtype=np.float64)))
    if any(t.broke_at is not None for t in ts):  # an awake session that broke fixation
        cols.append(("broke_at", f"invalid trials: time of the gaze sample that broke fixation on {STIM_CLOCK} (for "
                     "an image cut short by it, stop_time is the blanking flip); NaN: valid, paused or not recorded",
                     np.array([nan_if_none(t.broke_at) for t in ts], dtype=np.float64)))
    return TimeIntervals(
        name="trials",
        description=f"one row per shown trial, sorted by onset, invalid showings (valid false) included; "
                    f"start_time/stop_time are on {STIM_CLOCK}",
        columns=[VectorData(name=n, description=d, data=v) for n, d, v in cols])


def stimuli(s: Session) -> tuple[Any, dict[str, int]]:
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
        images.append(kind(name=safe_name(iid), data=H5DataIO(a, compression="gzip", compression_opts=4),
                           description=f"cortexloop image {iid}; array (height, width[, channels]) as displayed, "
                                       "row 0 at the top"))
    container = Images(name="stimulus_images", images=images,
                       description="every image stored in the session, in the order first stored",
                       order_of_images=ImageReferences(name="order_of_images", data=images))
    return container, {iid: i for i, iid in enumerate(s.images)}


def presentations(s: Session, images: Any, image_index: dict[str, int]) -> Any:
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


