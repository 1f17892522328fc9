"""Spike counts as ndx-binned-spikes ``BinnedAlignedSpikes`` and stimulus onsets as a core ``EventsTable``.

Each counting window of the session (normally one) is one BinnedAlignedSpikes of shape
(units, trials, 1): one bin per trial covering the window, aligned to the measured onsets. Its
events are the rows of the trials table, in order; trials not counted hold NaN, and so do invalid
trials (an awake animal that did not hold fixation): their counts are never exported as counts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from controller.nwb.misc import table
from controller.nwb.session import STIM_CLOCK, Session, units_of

#: label of the condition of trials whose image record is damaged (no stimulus template)
LOST_IMAGE = "(image record damaged)"


def _ms(x: float) -> float:
    return round(x * 1000.0, 6)


def windows(s: Session) -> list[tuple[float, float]]:
    """The counting windows of the exported counts (valid shown trials), the most used first."""
    used = Counter(tuple(r.window) for t in s.trials if (r := s.counted(t)) is not None)
    return [(float(w[0]), float(w[1])) for w, _ in used.most_common()]


def window_name(k: int, w: tuple[float, float]) -> str:
    """Name of the BinnedAlignedSpikes of window ``w``, the ``k``-th most used."""
    return "spike_counts" if k == 0 else f"spike_counts_{_ms(w[0]):g}_{_ms(w[1]):g}ms"


def spike_counts(s: Session, image_index: dict[str, int], labels: list[str]) -> list[Any]:
    """The unit table and one BinnedAlignedSpikes per counting window; [] when nothing was counted.

    ``condition_indices`` of event i is the image index of trial i (``labels``: image ids in the
    order of stimulus_images, plus LOST_IMAGE when an image record is damaged)."""
    from hdmf.common import DynamicTableRegion
    from ndx_binned_spikes import BinnedAlignedSpikes

    units = units_of(s)
    wins = windows(s)
    if not s.trials or not units or not wins:
        return []
    col = {u: j for j, u in enumerate(units)}
    unit_table = table("spike_count_units", "units of the spike counts: row j is unit j of every "
                       "BinnedAlignedSpikes in this module (units_region)",
                       [("unit_name", "unit id as recorded by the acquisition system", units)])
    lost = len(labels)
    cond = np.array([image_index.get(t.image_id, lost) for t in s.trials], dtype=np.uint64)
    all_labels = labels + ([LOST_IMAGE] if (cond == lost).any() else [])
    onsets = np.array([t.onset for t in s.trials], dtype=np.float64)
    out: list[Any] = [unit_table]
    for k, w in enumerate(wins):
        data = np.full((len(units), len(s.trials), 1), np.nan)
        for i, t in enumerate(s.trials):
            r = s.counted(t)
            if r is not None and tuple(r.window) == w:
                data[[col[u] for u in r.units], i, 0] = np.asarray(r.counts, dtype=np.float64).reshape(-1)
        region = DynamicTableRegion(name="units_region", data=np.arange(len(units)), table=unit_table,
                                    description="the units of data's first axis (rows of spike_count_units)")
        out.append(BinnedAlignedSpikes(
            name=window_name(k, w), bin_width_in_ms=_ms(w[1] - w[0]), event_to_bin_offset_in_ms=_ms(w[0]),
            data=data, event_timestamps=onsets,
            condition_indices=cond, condition_labels=np.array(all_labels, dtype=object), units_region=region))
    return out


def stimulus_onsets(s: Session, trials: Any, image_index: dict[str, int], channel: str | None) -> Any:
    """A core EventsTable with one row per trial: measured onset, duration, image, acquisition-clock onset."""
    from hdmf.common import DynamicTableRegion, VectorData
    from pynwb.event import DurationVectorData, EventsTable, TimestampVectorData

    ts = s.trials
    resp = [s.responses.get(t.trial_id) for t in ts]
    via = (f"the clock fitted to the {channel} pulses" if channel else
           "the acquisition system's clock map (no sync line configured)")
    cols = [
        TimestampVectorData(name="timestamp", description=f"measured image onset (first flip showing it) on "
                            f"{STIM_CLOCK}", data=np.array([t.onset for t in ts], dtype=np.float64)),
        DurationVectorData(name="duration", description="time the image was on (offset minus onset, s)",
                           data=np.array([t.offset - t.onset for t in ts], dtype=np.float64)),
        VectorData(name="image_index", description="index of the image in stimulus/templates/stimulus_images "
                   "(-1: image record damaged)",
                   data=np.array([image_index.get(t.image_id, -1) for t in ts], dtype=np.int64)),
        VectorData(name="onset_acq", description=f"the same onset on the acquisition clock, mapped by {via} "
                   "(s; NaN: no response was recorded for the trial)",
                   data=np.array([r.onset_acq if r is not None else np.nan for r in resp], dtype=np.float64)),
        DynamicTableRegion(name="trial", description="the row of intervals/trials of this onset",
                           data=np.arange(len(ts)), table=trials),
    ]
    return EventsTable(name="stimulus_onsets", columns=cols,
                       description="image onsets as measured by the stimulus server's flip timestamps, one per "
                                   f"trial in the order of intervals/trials; times on {STIM_CLOCK}",
                       source_description="stimulus server flip timestamps (cortexloop stimserver)")
