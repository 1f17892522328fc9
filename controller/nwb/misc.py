"""The closed loop's bookkeeping in NWB: blocks, model versions, picks, events, steps and the document log."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from controller.nwb.session import Session, column_name, nan_if_none
from wire.documents import GazeDoc, ImageDoc, ResponseDoc


def table(name: str, description: str, columns: Sequence[tuple[str, str, Any]]) -> Any:
    """A DynamicTable of (name, description, data) columns."""
    from hdmf.common import DynamicTable, VectorData

    return DynamicTable(name=name, description=description,
                        columns=[VectorData(name=n, description=d, data=v) for n, d, v in columns])


def bookkeeping(s: Session, image_index: dict[str, int]) -> list[Any]:
    wall = "wall-clock seconds after session_start_time when the document was written"
    out = []
    if s.blocks:
        out.append(table("blocks", "blocks of trials as planned (processing/misc)", [
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
        out.append(table("model_versions", "model versions trained during the session; metric_* columns "
                          "are their metrics (NaN: not reported)", [
            ("version", "model version", [m.version for m in mv]),
            ("n_images", "images the model was trained on", np.array([m.n_images for m in mv], np.int64)),
            *[(f"metric_{column_name(k)}", f"metric {k}",
               np.array([nan_if_none(m.metrics.get(k)) for m in mv], np.float64)) for k in keys],
            ("wall_clock", wall, np.array([s.since_start(m.time) for m in mv], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [m.uid for m in mv]),
        ]))
    if s.picks:
        p = s.picks
        out.append(table("picks", "why each model-chosen image was picked for a block", [
            ("image_id", "image id", [x.image_id for x in p]),
            ("image_index", "index in stimulus/templates/stimulus_images (-1: image not stored)",
             np.array([image_index.get(x.image_id, -1) for x in p], np.int64)),
            ("block_id", "block the image was picked for", [x.block_id for x in p]),
            ("generator", "how the image was chosen", [x.generator for x in p]),
            ("model_version", "model version used ('' if none)", [x.model_version or "" for x in p]),
            ("neuron", "target neuron (-1 if none)", np.array([-1 if x.neuron is None else x.neuron for x in p],
                                                              np.int64)),
            ("score", "the generator's score (NaN if none)", np.array([nan_if_none(x.score) for x in p], np.float64)),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in p], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [x.uid for x in p]),
        ]))
    if s.events:
        e = s.events
        out.append(table("events", "what happened to the session: pauses, faults, fallbacks, operator commands", [
            ("what", "kind of event", [x.what for x in e]),
            ("message", "message", [x.message for x in e]),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in e], np.float64)),
            ("uid", "document uid (details in scratch/cortexloop_documents)", [x.uid for x in e]),
        ]))
    if s.steps:
        st = s.steps
        out.append(table("steps", "protocol steps and the kind of their results", [
            ("index", "position of the step in the session", np.array([x.index for x in st], np.int64)),
            ("step", "kind of step", [str(x.step.get("kind", "")) for x in st]),
            ("result", "kind of result", [str(x.result.get("kind", "")) for x in st]),
            ("wall_clock", wall, np.array([s.since_start(x.time) for x in st], np.float64)),
            ("uid", "document uid (step and result in scratch/cortexloop_documents)", [x.uid for x in st]),
        ]))
    return out


def document_log(s: Session) -> Any:
    from pynwb.core import ScratchData

    exported = {id(r) for t in s.trials if (r := s.counted(t)) is not None}  # in processing/ecephys

    def leave_out(d: Any) -> set[str] | None:
        if isinstance(d, ImageDoc):
            return {"pixels"}
        if isinstance(d, GazeDoc):
            return {"t", "xy"}
        if isinstance(d, ResponseDoc) and id(d) in exported:
            return {"counts"}
        return None

    rows = [json.dumps(d.model_dump(mode="json", exclude=leave_out(d)), separators=(",", ":"), sort_keys=True)
            for d in s.docs]
    return ScratchData(name="cortexloop_documents", data=rows,
                       description="JSON of every document of the cortexloop session file, in order; image pixels "
                                   "are left out (they are stimulus/templates/stimulus_images/<image_id>), so are "
                                   "the samples of gaze documents (processing/behavior/EyeTracking/gaze), and so "
                                   "are the counts of responses exported in processing/ecephys (BinnedAlignedSpikes); "
                                   "the counts of invalid trials (intervals/trials valid false), never exported as "
                                   "counts, stay in their response document here, as in the session file")


