"""NWB export of an awake session: trial validity, invalid trials never counted, rewards, behaviour per block.

The session file is written with SessionWriter as the engine writes an awake session
(``controller.engine.blocks``): an invalid showing is a trial ``<trial id>~x<n>`` with ``valid`` false and
its reason, and has its counts stored like any other; the image is shown again later in the block; the
block's rewards are ``reward`` documents and its behaviour a ``behavior`` event (after a ``trials_missing``
event when an image was given up).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.config import RunConfig
from controller.store import SessionReader, SessionWriter
from tests.conftest import require_module
from wire.base import image_id
from wire.behavior import InvalidReason
from wire.documents import (
    BlockDoc,
    EventDoc,
    GazeDoc,
    ImageDoc,
    ResponseDoc,
    RewardDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)

require_module("pynwb")
require_module("nwbinspector")
require_module("dandi")
require_module("ndx_binned_spikes")
from pynwb import NWBHDF5IO  # noqa: E402

from controller.nwb import check_dandiset, check_nwb, export_dandi, export_nwb  # noqa: E402

RIG = {"rig": "rig3", "subject": {"subject_id": "M9", "species": "Macaca mulatta", "sex": "M", "age": "P8Y"},
       "lab": "V4 lab", "institution": "Somewhere University", "experimenter": ["Doe, Jane"],
       "acquisition": {"kind": "virtual"},
       "behavior": {"gaze": "virtual", "reward": "serial:/dev/ttyACM0",
                    "fixation": {"images_per_fixation": 2, "max_attempts": 2}}}
UNITS = ["u0", "u1", "u2", "u3", "u4"]
WINDOW = (0.05, 0.15)
LINE = "serial:/dev/ttyACM0"
# Per block: the planned trials (image letter, condition), the showings in order (planned position,
# invalid reason or None), whether each showing's response was recorded, the rewards (showing after whose
# offset it came, duration, manual) and the failed acquisitions. In b0, image A is planned twice with two
# conditions, so an invalid showing's condition must come from its trial id, not from its image.
BLOCKS: list[dict[str, Any]] = [
    {"plan": [("A", "active"), ("B", "normal"), ("A", "heldout"), ("C", "normal")],
     "shows": [(0, None), (1, None), (2, "break_fixation"), (3, "sequence_broken"), (2, None), (3, "no_gaze"),
               (3, None)],
     "no_response": set(),
     "rewards": [(1, 0.08, False), (4, 0.1, False), (5, 0.05, True)], "no_fixation": 1, "missing": []},
    {"plan": [("B", "normal"), ("D", "active"), ("C", "normal"), ("D", "normal")],
     "shows": [(0, None), (1, "paused"), (2, None), (3, "break_fixation"), (1, None), (3, "break_fixation")],
     "no_response": {5},  # the last showing's counts were lost (a crash before its window closed)
     "rewards": [(2, 0.12, False)], "no_fixation": 0, "missing": [3]},  # b1/3: 2 invalid showings, given up
]


def awake_session(path: Path) -> dict[str, Any]:
    """Write the session of BLOCKS; returns the expected trials table rows (in onset order) and rewards."""
    cfg = RunConfig.model_validate(RIG).model_dump(mode="json")
    rng = np.random.default_rng(11)
    pixels = {c: rng.integers(0, 256, (10, 10, 3), dtype=np.uint8) for c in "ABCD"}
    ids = {c: image_id(a) for c, a in pixels.items()}
    t0 = time.time() - 900
    docs: list[Any] = [StartDoc(session_id="2026-12-09_rig3_M9", config=cfg, code_version="t", rig="rig3",
                                subject="M9", time=t0, protocol={"protocol": "sysid", "title": "awake"})]
    docs += [ImageDoc(image_id=ids[c], pixels=a, time=t0 + 1) for c, a in pixels.items()]
    rows: list[dict[str, Any]] = []
    rewards: list[dict[str, Any]] = []
    behavior: list[dict[str, Any]] = []
    gaze_t: list[np.ndarray] = []
    gaze_xy: list[np.ndarray] = []
    clock = 300.0
    for b, blk in enumerate(BLOCKS):
        bid = f"b{b}"
        plan = [(f"{bid}/{k}", ids[img], cond) for k, (img, cond) in enumerate(blk["plan"])]
        docs.append(BlockDoc(block_id=bid, index=b, source="normal", n_trials=len(plan),
                             params={"trials": [list(p) for p in plan], "fallbacks": []}, time=t0 + 2 + b))
        shown_invalid = [0] * len(plan)
        offsets = []
        clock += 1.0  # a gap between blocks
        first = clock
        for n, (k, reason) in enumerate(blk["shows"]):
            tid, img, cond = plan[k]
            onset = clock + 0.002 * rng.random()
            clock += 0.25
            if reason is None:
                trial = TrialDoc(trial_id=tid, block_id=bid, index=k, image_id=img, onset=onset, offset=onset + 0.1,
                                 on_frames=6, dropped_frames=0, time=t0 + 3 + b)
            else:  # the engine's _on_invalid: its own id, valid false, the stimserver's reason
                trial = TrialDoc(trial_id=f"{tid}~x{shown_invalid[k]}", block_id=bid, index=k, image_id=img,
                                 onset=onset, offset=onset + 0.1, on_frames=6, dropped_frames=0, valid=False,
                                 invalid_reason=reason, broke_at=None if reason == "paused" else onset + 0.06,
                                 time=t0 + 3 + b)
                shown_invalid[k] += 1
            docs.append(trial)
            offsets.append(trial.offset)
            row = {"trial_id": trial.trial_id, "onset": onset, "valid": reason is None, "reason": reason or "",
                   "cond": cond, "counts": None, "onset_acq": np.nan, "broke_at": trial.broke_at}
            if n not in blk["no_response"]:  # invalid showings are counted by the binner too
                counts = rng.poisson(6, len(UNITS)).astype(np.uint32) + 1  # never all zero
                row["counts"], row["onset_acq"] = counts.astype(float), 40.0 + onset
                docs.append(ResponseDoc(trial_id=trial.trial_id, units=UNITS, counts=counts, window=WINDOW,
                                        onset_acq=40.0 + onset, time=t0 + 3 + b))
            rows.append(row)
        # the engine's _on_gaze: the block's gaze at 1 kHz in chunks of 0.25 s, with a blink (NaN) in each
        t = np.round(np.arange(first - 0.5, clock, 0.001), 6)
        xy = np.stack([0.3 * np.sin(t), 0.2 * np.cos(t) - 0.1 * b], axis=1).astype(np.float32)
        xy[100:130] = np.nan
        for k in range(0, len(t), 250):
            docs.append(GazeDoc(block_id=bid, t=t[k:k + 250], xy=xy[k:k + 250], time=t0 + 3 + b))
        gaze_t.append(t)
        gaze_xy.append(xy)
        # the engine's _record_behavior, at the end of the block: rewards, images given up, the behaviour
        these = [{"block_id": bid, "block_index": b, "onset": offsets[i] + 0.002, "duration": d, "manual": m}
                 for i, d, m in blk["rewards"]]
        docs += [RewardDoc(block_id=bid, onset=r["onset"], duration_s=r["duration"], manual=r["manual"], line=LINE,
                           time=t0 + 4 + b) for r in these]
        rewards += these
        if blk["missing"]:
            docs.append(EventDoc(what="trials_missing", message=f"{len(blk['missing'])} image(s) of {bid} did not "
                                 "count in 2 showings; recorded as missing", time=t0 + 4 + b,
                                 details={"block_id": bid, "trials": [plan[k][0] for k in blk["missing"]]}))
        invalid = sum(r is not None for _, r in blk["shows"])
        completed = sum(not m for _, _, m in blk["rewards"])
        details = {"block_id": bid, "sequences": completed + 2, "completed": completed, "invalid": invalid,
                   "no_fixation": blk["no_fixation"], "rewards": len(these), "missing": len(blk["missing"]),
                   "status": "completed"}
        behavior.append(details)
        docs.append(EventDoc(what="behavior", message=f"{bid}: {completed} of {completed + 2} sequences completed, "
                             f"{invalid} trials invalid, {blk['no_fixation']} failed acquisitions, {len(these)} "
                             "rewards", details=details, time=t0 + 4 + b))
        docs.append(StepDoc(index=b, step={"kind": "present_block", "block_id": bid},
                            result={"kind": "block_result", "n_trials": len(plan)}, time=t0 + 4 + b))
    docs.append(StopDoc(exit_status="success", n_trials=len(rows), time=t0 + 9))
    with SessionWriter.create(path) as w:
        w.write_many(docs)
    return {"rows": rows, "rewards": rewards, "behavior": behavior, "docs": docs,
            "gaze_t": np.concatenate(gaze_t), "gaze_xy": np.concatenate(gaze_xy)}


@pytest.fixture
def awake(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "awake.h5"
    return path, awake_session(path)


def test_awake_session_round_trip(awake: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, ex = awake
    rows = ex["rows"]
    assert {r["reason"] for r in rows} - {""} <= {r.value for r in InvalidReason}
    out = export_nwb(path, tmp_path / "awake.nwb")
    with NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        trials = nwb.trials.to_dataframe()
        assert list(trials["trial_id"]) == [r["trial_id"] for r in rows]
        assert np.array_equal(trials["start_time"], [r["onset"] for r in rows])
        assert list(trials["valid"]) == [r["valid"] for r in rows]
        assert list(trials["invalid_reason"]) == [r["reason"] for r in rows]
        assert trials["valid"].dtype == bool and (~trials["valid"]).sum() == 6
        np.testing.assert_array_equal(trials["broke_at"], [np.nan if r["broke_at"] is None else r["broke_at"]
                                                           for r in rows])
        assert np.isfinite(trials["broke_at"]).sum() == 5  # the paused showing has no breaking sample
        # an invalid showing takes the condition of its trial (b0/2~x0 shows image A, planned as b0/2 "heldout")
        assert list(trials["condition"]) == [r["cond"] for r in rows]
        assert trials["condition"][2] == "heldout"

        # invalid trials are never counted: counted false, NaN in every BinnedAlignedSpikes
        counted = [r["valid"] and r["counts"] is not None for r in rows]
        assert list(trials["counted"]) == counted and list(trials["complete"]) == counted
        assert "Invalid trials are never counted" in nwb.trials["counted"].description
        binned = nwb.processing["ecephys"]["spike_counts"]
        assert list(binned.units_region.table["unit_name"].data[:]) == UNITS
        data = binned.data[:]
        assert data.shape == (len(UNITS), len(rows), 1)
        for i, r in enumerate(rows):
            if counted[i]:
                np.testing.assert_array_equal(data[:, i, 0], r["counts"])
            else:
                assert np.isnan(data[:, i, 0]).all(), r["trial_id"]
        assert not [k for k in nwb.processing["ecephys"].data_interfaces if k.startswith("spike_counts_")]
        # the acquisition-clock onset of an invalid trial with a response is still exported (timing, not counts)
        np.testing.assert_array_equal(trials["onset_acq"], [r["onset_acq"] for r in rows])

        # their counts stay in the document log only (not exported as counts); exported ones are left out there
        logged = [json.loads(x) for x in nwb.scratch["cortexloop_documents"].data[:]]
        kept = {d["trial_id"]: "counts" in d for d in logged if d["kind"] == "response"}
        assert kept == {r["trial_id"]: not r["valid"] for r in rows if r["counts"] is not None}

        rewards = nwb.events["rewards"]
        assert type(rewards).__name__ == "EventsTable"
        rw = rewards.to_dataframe()
        np.testing.assert_array_equal(rw["timestamp"], [r["onset"] for r in ex["rewards"]])
        np.testing.assert_array_equal(rw["duration"], [r["duration"] for r in ex["rewards"]])
        assert list(rw["manual"]) == [r["manual"] for r in ex["rewards"]] == [False, False, True, False]
        assert list(rw["line"]) == [LINE] * 4
        assert list(rw["block_id"]) == ["b0"] * 3 + ["b1"]
        assert list(rw["block_index"]) == [0, 0, 0, 1]
        assert "stimulus server's monotonic clock" in rewards["timestamp"].description
        # on the clock of the trials: each reward follows the offset of a shown trial by 2 ms
        stops = np.asarray(trials["stop_time"])
        assert all(np.isclose(stops, t - 0.002, rtol=0, atol=1e-9).any() for t in rw["timestamp"])

        misc = nwb.processing["misc"]
        beh = misc["behavior"].to_dataframe()
        assert list(beh["block_id"]) == ["b0", "b1"] and list(beh["block_index"]) == [0, 1]
        for key in ("sequences", "completed", "invalid", "no_fixation", "rewards", "missing"):
            assert list(beh[key]) == [d[key] for d in ex["behavior"]], key
        assert list(beh["invalid"]) == [3, 3] and list(beh["missing"]) == [0, 1] and list(beh["rewards"]) == [3, 1]
        assert list(beh["status"]) == ["completed"] * 2
        assert list(misc["events"].to_dataframe()["what"]) == ["behavior", "trials_missing", "behavior"]
        assert "awake animal: 7 of 13 trials valid" in nwb.notes and "4 rewards" in nwb.notes

        # every gaze sample, concatenated in time order, NaN kept, on the clock of the trials
        eyes = nwb.processing["behavior"]["EyeTracking"]
        assert type(eyes).__name__ == "EyeTracking"
        series = eyes.spatial_series["gaze"]
        assert type(series).__name__ == "SpatialSeries" and series.unit == "degrees"
        assert series.reference_frame == "degrees from the screen centre, x right, y up"
        assert series.data.dtype == np.float32 and series.data.shape == (len(ex["gaze_t"]), 2)
        np.testing.assert_array_equal(series.timestamps[:], ex["gaze_t"])
        np.testing.assert_array_equal(series.data[:], ex["gaze_xy"])
        assert np.isnan(series.data[:]).sum() == 2 * 30 * len(BLOCKS)
        assert series.timestamps[0] < trials["start_time"].min() and series.timestamps[-1] > stops.max()
        assert "stimulus server's monotonic clock" in series.description
        # the samples are left out of the document log (they are in the series)
        assert all("t" not in d and "xy" not in d for d in logged if d["kind"] == "gaze")
    # what the analyses read from the session file agrees: the valid trials with counts, and no other
    with SessionReader(path) as r:
        valid, _, _ = r.counts()
    assert [t.trial_id for t in valid] == [r["trial_id"] for r, c in zip(rows, counted, strict=True) if c]


def test_awake_session_passes_nwbinspector(awake: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = awake
    out = export_nwb(path, tmp_path / "awake.nwb")
    assert check_nwb(out) == []
    assert check_nwb(out, dandi=False) == []


def test_awake_session_passes_dandi_validate(awake: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = awake
    folder = tmp_path / "dandiset"
    (nwb,) = export_dandi([path], folder)
    assert nwb.relative_to(folder).as_posix() == "sub-M9/sub-M9_ses-2026-12-09-rig3-M9_behavior+image.nwb"  # behavior: the gaze
    assert check_dandiset(folder) == ([], [])

    from click.testing import CliRunner
    from dandi.cli.command import main as dandi_main

    res = CliRunner().invoke(dandi_main, ["validate", str(folder)], env={"DANDI_NO_ET": "1"})
    assert res.exit_code == 0 and "No errors found" in res.output, res.output


class OldTrialDoc(TrialDoc):
    """A trial as written before awake sessions: no ``valid`` and ``invalid_reason`` in its record."""

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        d = super().model_dump(**kwargs)
        del d["valid"], d["invalid_reason"]
        return d


def test_session_without_validity_fields(tmp_path: Path) -> None:
    """An older session file: every trial valid, reason "", counted as before; no rewards, no behavior table."""
    path = tmp_path / "old.h5"
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    trials = [OldTrialDoc(trial_id=f"b/{i}", block_id="b", index=i, image_id=image_id(img), onset=10.0 + 0.3 * i
                          + 0.001 * i * i, offset=10.1 + 0.3 * i, on_frames=6, dropped_frames=0) for i in range(3)]
    assert "valid" not in trials[0].model_dump(mode="python")
    with SessionWriter.create(path) as w:
        w.write_many([StartDoc(session_id="old", code_version="x", time=time.time() - 60),
                      ImageDoc(image_id=image_id(img), pixels=img), *trials,
                      *[ResponseDoc(trial_id=t.trial_id, units=UNITS, counts=np.full(len(UNITS), i, np.uint32),
                                    window=WINDOW, onset_acq=t.onset) for i, t in enumerate(trials)]])
    out = export_nwb(path, tmp_path / "old.nwb")
    with NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        df = nwb.trials.to_dataframe()
        assert list(df["valid"]) == [True] * 3 and list(df["invalid_reason"]) == [""] * 3
        assert list(df["counted"]) == [True] * 3 and "broke_at" not in df
        np.testing.assert_array_equal(nwb.processing["ecephys"]["spike_counts"].data[0, :, 0], [0, 1, 2])
        assert "rewards" not in nwb.events and "misc" not in nwb.processing and "awake" not in nwb.notes
    assert check_nwb(out) == []
