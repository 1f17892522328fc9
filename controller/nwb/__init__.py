"""Export a session file to NWB (Neurodata Without Borders) for DANDI, and check it offline.

``export_nwb(session, out)`` reads every document of a session file (``controller.store``) and
writes one NWB 2.x file with the community's types (``docs/nwb.md``):

* ``/intervals/trials``: one row per shown trial, sorted by onset (stimulus clock), with ``valid`` and
  ``invalid_reason`` (awake animals); invalid trials are never ``counted``.
* ``/processing/ecephys/spike_counts``: a ``BinnedAlignedSpikes`` (ndx-binned-spikes) of shape
  (units, trials, 1), one bin per trial covering the counting window, aligned to the measured
  onsets; condition = the image shown; ``spike_count_units`` names the units. NaN where a trial was not
  counted or is invalid.
* ``/events/stimulus_onsets``: a core ``EventsTable`` of the onsets (with their acquisition-clock time).
* ``/events/rewards``: a core ``EventsTable`` of the rewards (onset on the stimulus clock, duration, manual, line).
* ``/processing/behavior/EyeTracking/gaze``: the gaze samples of awake blocks (degrees, stimulus clock).
* ``/stimulus/templates/stimulus_images`` and ``/stimulus/presentation/stimulus_presentations``.
* subject, lab, institution, experimenter and devices from the rig file the start document recorded.
* ``/processing/misc`` (blocks, model versions, picks, events, steps, behavior per block) and
  ``/scratch/cortexloop_documents``.

``export_dandi`` lays exported files out as ``dandi organize`` does; ``check_nwb`` and
``check_dandiset`` run nwbinspector and dandi's validation without the network.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.nwb.check import check_dandiset, check_nwb
from controller.nwb.dandi import export_dandi
from wire.errors import CortexloopError, StoreError

if TYPE_CHECKING:
    from controller.store import Damage

__all__ = ["build_nwbfile", "check_dandiset", "check_nwb", "export_dandi", "export_nwb"]

log = logging.getLogger(__name__)


def build_nwbfile(session_path: str | Path, *, lab: str | None = None, institution: str | None = None,
                  experimenter: str | Sequence[str] | None = None, species: str | None = None,
                  age: str | None = None, sex: str | None = None, allow_damaged: bool = False,
                  damage: list[Damage] | None = None) -> Any:
    """The in-memory ``pynwb.NWBFile`` of a session file (see :func:`export_nwb`)."""
    from pynwb import ProcessingModule

    from controller.nwb.behavior import behavior, eye_tracking, rewards
    from controller.nwb.binned import spike_counts, stimulus_onsets
    from controller.nwb.build import nwbfile, presentations, stimuli, trials
    from controller.nwb.metadata import session_metadata, sync_channel
    from controller.nwb.misc import bookkeeping, document_log
    from controller.nwb.session import read_session

    s = read_session(Path(session_path), allow_damaged=allow_damaged)
    if damage is not None:
        damage.extend(s.damage)
    meta = session_metadata(s.start, lab=lab, institution=institution, experimenter=experimenter,
                            species=species, age=age, sex=sex)
    nwb = nwbfile(s, meta)
    images, image_index = stimuli(s) if s.images else (None, {})
    if images is not None:
        nwb.add_stimulus_template(images)
    if s.trials:
        nwb.trials = trials(s, image_index)
        if images is not None and any(t.image_id in image_index for t in s.trials):
            nwb.add_stimulus(presentations(s, images, image_index))
        nwb.add_events_table(stimulus_onsets(s, nwb.trials, image_index, sync_channel(s.start)))
        counts = spike_counts(s, image_index, list(s.images))
        if counts:
            ecephys = ProcessingModule(name="ecephys", description="spike counts per trial and unit, counted "
                                       "online by cortexloop from the acquisition system's spikes in a window "
                                       "after each measured onset (ndx-binned-spikes BinnedAlignedSpikes: "
                                       "units x trials x 1 bin; trials not counted hold NaN, and so do invalid "
                                       "trials, when the animal did not hold fixation)")
            nwb.add_processing_module(ecephys)
            for c in counts:
                ecephys.add(c)
    if s.rewards:
        nwb.add_events_table(rewards(s))
    eyes = eye_tracking(s)
    if eyes is not None:
        nwb.add_processing_module(ProcessingModule(name="behavior", description="the animal's gaze as the stimulus "
                                                   "server read it to judge fixation (awake blocks)",
                                                   data_interfaces=[eyes]))
    tables = bookkeeping(s, image_index)
    behaviour = behavior(s)
    if behaviour is not None:
        tables.append(behaviour)
    if tables:
        misc = ProcessingModule(name="misc", description="cortexloop closed-loop bookkeeping: blocks, model "
                                "versions, picks, events, protocol steps and the animal's behaviour per block")
        for t in tables:
            misc.add(t)
        nwb.add_processing_module(misc)
    nwb.add_scratch(document_log(s))
    return nwb


def export_nwb(session_path: str | Path, out_path: str | Path, *, overwrite: bool = False,
               lab: str | None = None, institution: str | None = None,
               experimenter: str | Sequence[str] | None = None, species: str | None = None,
               age: str | None = None, sex: str | None = None, allow_damaged: bool = False,
               damage: list[Damage] | None = None) -> Path:
    """Write a session file as an NWB file and return its path.

    Subject (species, age, sex, description), lab, institution and experimenter come from the rig
    file recorded in the start document (``subject:`` mapping, ``lab``, ...); an argument given here
    replaces the recorded value. Defaults: Macaca mulatta, age "P0D/" (unknown), sex "U". Raises
    StoreError when the session file is missing or not readable, has no start document, a metadata
    value is not valid, or ``out_path`` exists and ``overwrite`` is false. The file is written beside
    ``out_path`` and renamed into place, so a failed export leaves no half file.

    Damaged records are skipped, appended to ``damage`` (when given) and listed in the NWB file's
    notes. Damage that matters (``controller.store.Damage.matters``) raises ``DamagedSession`` and
    writes nothing, unless ``allow_damaged``: then what could be read is exported.
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
                        species=species, age=age, sex=sex, allow_damaged=allow_damaged, damage=damage)
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
