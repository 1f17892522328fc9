"""An awake session's behaviour in NWB: rewards as a core ``EventsTable``, each block's behaviour as a table,
and the gaze samples the stimulus server judged as a core ``EyeTracking`` (``processing/behavior``).

Trial validity (fixation held or not) is in ``intervals/trials`` (``valid``, ``invalid_reason``,
``controller.nwb.build.trials``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.nwb.misc import table
from controller.nwb.session import STIM_CLOCK, Session

#: the integer details of a ``behavior`` event (``controller.engine.blocks``), in column order
BEHAVIOR_COUNTS = (
    ("sequences", "fixation sequences started"),
    ("completed", "sequences completed (each one earned a reward)"),
    ("invalid", "trials that did not count (rows of intervals/trials with valid false)"),
    ("no_fixation", "failed acquisitions: the animal did not bring its gaze into the window in time"),
    ("rewards", "rewards given (rows of events/rewards)"),
    ("missing", "images given up: shown the rule's max_attempts times without counting once"),
)


def rewards(s: Session) -> Any:
    """A core EventsTable ``rewards``: one row per reward pulse, sorted by onset (stimulus clock)."""
    from hdmf.common import VectorData
    from pynwb.event import DurationVectorData, EventsTable, TimestampVectorData

    rw = s.rewards
    block_index = {b.block_id: b.index for b in s.blocks}
    cols = [
        TimestampVectorData(name="timestamp", description=f"when the reward line opened (start of the pulse) on "
                            f"{STIM_CLOCK}", data=np.array([r.onset for r in rw], dtype=np.float64)),
        DurationVectorData(name="duration", description="length of the pulse (s)",
                           data=np.array([r.duration_s for r in rw], dtype=np.float64)),
        VectorData(name="manual", description="true if given by the operator (stim.give_reward), false if earned by "
                   "a completed fixation sequence", data=np.array([r.manual for r in rw], dtype=bool)),
        VectorData(name="line", description="the reward output that pulsed (serial, lsl, nidaqmx, labjack; '' if "
                   "not recorded)", data=[r.line for r in rw]),
        VectorData(name="block_id", description="block during which it was given ('' if between blocks)",
                   data=[r.block_id or "" for r in rw]),
        VectorData(name="block_index", description="position of that block in the session (processing/misc/blocks; "
                   "-1: between blocks or block document missing)",
                   data=np.array([block_index.get(r.block_id or "", -1) for r in rw], dtype=np.int64)),
    ]
    return EventsTable(name="rewards", columns=cols,
                       description=f"rewards given to the animal (juice): pulse start and length; times on {STIM_CLOCK}, "
                                   "the clock of intervals/trials",
                       source_description="the stimulus server's reward output, stamped on its clock when the "
                                          "pulse started (cortexloop stimserver)")


GAZE_FRAME = "degrees from the screen centre, x right, y up"


def eye_tracking(s: Session) -> Any | None:
    """Every ``gaze`` document of the session, concatenated and sorted by time, as an ``EyeTracking`` holding
    the SpatialSeries ``gaze`` ((N, 2) float32 degrees; NaN: the tracker saw no eye); None without gaze."""
    from hdmf.backends.hdf5 import H5DataIO
    from pynwb.behavior import EyeTracking, SpatialSeries

    docs = [g for g in s.gaze if len(g.t)]
    if not docs:
        return None
    t = np.concatenate([np.asarray(g.t, np.float64).reshape(-1) for g in docs])
    xy = np.concatenate([np.asarray(g.xy, np.float32).reshape(-1, 2) for g in docs])
    order = np.argsort(t, kind="stable")
    series = SpatialSeries(
        name="gaze", data=H5DataIO(xy[order], compression="gzip", compression_opts=4),
        timestamps=H5DataIO(t[order], compression="gzip", compression_opts=4), reference_frame=GAZE_FRAME,
        unit="degrees", description=f"eye position (x, y) in {GAZE_FRAME}, every sample the stimulus server's "
                                    f"trial state machine read during awake blocks; NaN: no eye (a blink, a lost "
                                    f"pupil); times on {STIM_CLOCK}, the clock of intervals/trials")
    return EyeTracking(name="EyeTracking", spatial_series=series)


def behavior(s: Session) -> Any | None:
    """The ``behavior`` events as a table of processing/misc (one row per event: one per presentation of a
    block, more when a block was presented again); None when the session has none."""
    ev = [e for e in s.events if e.what == "behavior"]
    if not ev:
        return None
    block_index = {b.block_id: b.index for b in s.blocks}

    def count(v: Any) -> int:
        try:
            return int(v)
        except (TypeError, ValueError):
            return -1

    ids = [str(e.details.get("block_id") or "") for e in ev]
    return table("behavior", "the animal's behaviour per presentation of a block, as the stimulus server's trial "
                 "state machine reported it (cortexloop behavior events); -1: not reported", [
        ("block_id", "block id", ids),
        ("block_index", "position of the block in the session (-1: block document missing)",
         np.array([block_index.get(b, -1) for b in ids], np.int64)),
        *[(k, text, np.array([count(e.details.get(k)) for e in ev], np.int64)) for k, text in BEHAVIOR_COUNTS],
        ("status", "how the stimulus server ended the presentation (completed, fixation_timeout, ...)",
         [str(e.details.get("status", "")) for e in ev]),
        ("wall_clock", "wall-clock seconds after session_start_time when the event was written",
         np.array([s.since_start(e.time) for e in ev], np.float64)),
        ("uid", "document uid (processing/misc/events, scratch/cortexloop_documents)", [e.uid for e in ev]),
    ])
