"""NWB export: round trip through pynwb, nwbinspector finds no violation, errors are typed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from controller.nwb import check_nwb, export_nwb
from controller.store import SessionWriter
from tests.conftest import require_module
from wire.base import image_id
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
from wire.errors import StoreError

require_module("pynwb")
require_module("nwbinspector")
from pynwb import NWBHDF5IO  # noqa: E402

N_UNITS = 40  # more units than trials: a trials x units TimeSeries would fail check_data_orientation
UNITS = [f"ch{j:03d}#{j % 3}" for j in range(N_UNITS)]
WINDOW = (0.05, 0.15)


def make_session(path: Path, *, n_blocks: int = 2, per_block: int = 12, uncounted: frozenset[int] = frozenset({5}),
                 finish: bool = True) -> dict:
    """A session file written directly with SessionWriter; returns what was written, by trial (global index)."""
    rng = np.random.default_rng(7)
    imgs = [rng.integers(0, 256, (16, 12, 3), dtype=np.uint8) for _ in range(5)]
    ids = [image_id(a) for a in imgs]
    t0 = time.time() - 3600
    docs: list = [StartDoc(session_id="2026-11-25_rig1_M1", protocol={"protocol": "sysid", "title": "test day"},
                           config={"window": list(WINDOW)}, code_version="0.1.0+test", rig="rig1",
                           subject="M/1", time=t0)]
    expect: dict = {"onset": [], "offset": [], "image": [], "cond": [], "counts": [], "trial_id": [],
                    "dropped": [], "complete": [], "pixels": dict(zip(ids, imgs, strict=True))}
    docs += [ImageDoc(image_id=i, pixels=a, source="v4", time=t0 + 1) for i, a in zip(ids, imgs, strict=True)]
    onset = 1000.0
    n = 0
    for b in range(n_blocks):
        bid = f"b{b}"
        plan = [(f"{bid}/{k}", ids[(k + b) % 5], "normal" if k % 2 else f"maximize_{b}") for k in range(per_block)]
        docs.append(PickDoc(image_id=ids[b], block_id=bid, generator="active", model_version="v1" if b else None,
                            neuron=3 if b else None, score=1.5 if b else None, details={"rank": b}, time=t0 + 2))
        docs.append(BlockDoc(block_id=bid, index=b, source="normal", n_trials=per_block,
                             params={"trials": [list(p) for p in plan], "fallbacks": []}, time=t0 + 2))
        for k, (tid, img, cond) in enumerate(plan):
            onset += 0.2 + 0.001 * rng.random()  # measured flips jitter
            trial = TrialDoc(trial_id=tid, block_id=bid, index=k, image_id=img, onset=onset,
                             offset=onset + 0.1, on_frames=6, dropped_frames=int(k % 3 == 0), time=t0 + 3)
            docs.append(trial)
            expect["onset"].append(onset)
            expect["offset"].append(onset + 0.1)
            expect["image"].append(img)
            expect["cond"].append(cond)
            expect["trial_id"].append(tid)
            expect["dropped"].append(int(k % 3 == 0))
            if n in uncounted:
                expect["counts"].append(np.full(N_UNITS, np.nan))
                expect["complete"].append(False)
            else:
                c = rng.poisson(5, N_UNITS).astype(np.uint32)
                ok = n != 7
                docs.append(ResponseDoc(trial_id=tid, units=UNITS, counts=c, window=WINDOW, onset_acq=onset + 50,
                                        complete=ok, time=t0 + 4))
                expect["counts"].append(c.astype(float))
                expect["complete"].append(ok)
            n += 1
        docs.append(ModelVersionDoc(version=f"v{b + 1}", n_images=per_block * (b + 1),
                                    metrics={"median_r": 0.4 + b / 10, **({"r/heldout": 0.3} if b else {})},
                                    details={"neurons": [1, 2]}, time=t0 + 5))
        docs.append(StepDoc(index=b, step={"kind": "present_block", "block_id": bid},
                            result={"kind": "block_result", "n_trials": per_block}, time=t0 + 5))
    docs.append(EventDoc(what="paused", message="operator pause", details={"by": "me"}, time=t0 + 6))
    if finish:
        docs.append(StopDoc(exit_status="success", n_trials=n, time=t0 + 7))
    with SessionWriter.create(path) as w:
        w.write_many(docs)
    expect["docs"] = docs
    return expect


@pytest.fixture
def session(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "s.h5"
    return path, make_session(path)


def test_round_trip(session: tuple[Path, dict], tmp_path: Path) -> None:
    path, ex = session
    out = export_nwb(path, tmp_path / "s.nwb", lab="V4 lab", institution="Somewhere", experimenter="Doe, Jane")
    assert out == tmp_path / "s.nwb"
    with NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        start = ex["docs"][0]
        assert nwb.identifier == start.uid and nwb.session_id == "2026-11-25_rig1_M1"
        assert nwb.session_start_time.timestamp() == pytest.approx(start.time, abs=1e-3)
        assert nwb.session_start_time.utcoffset().total_seconds() == 0
        assert nwb.session_description == "cortexloop sysid session: test day"
        assert nwb.subject.subject_id == "M-1" and nwb.subject.species == "Macaca mulatta"
        assert list(nwb.experimenter) == ["Doe, Jane"] and nwb.lab == "V4 lab"
        assert "0.1.0+test" in nwb.source_script

        trials = nwb.trials.to_dataframe()
        assert len(trials) == len(ex["onset"]) == 24
        assert np.array_equal(trials["start_time"], ex["onset"]) and np.array_equal(trials["stop_time"], ex["offset"])
        assert list(trials["trial_id"]) == ex["trial_id"] and list(trials["condition"]) == ex["cond"]
        assert list(trials["image_id"]) == ex["image"]
        assert list(trials["dropped_frames"]) == ex["dropped"]
        assert list(trials["complete"]) == ex["complete"]
        assert list(trials["counted"]) == [i != 5 for i in range(24)]
        assert list(trials["block_id"]) == ["b0"] * 12 + ["b1"] * 12

        ecephys = nwb.processing["ecephys"]
        binned = ecephys["spike_counts"]  # BinnedAlignedSpikes: units x trials x 1 bin
        assert type(binned).__name__ == "BinnedAlignedSpikes"
        counts = binned.data[:]
        assert counts.shape == (N_UNITS, 24, 1)
        # exactly the session's counts per trial and unit; NaN for the trial never counted
        np.testing.assert_array_equal(counts[:, :, 0].T, np.stack(ex["counts"]))
        assert np.array_equal(binned.event_timestamps[:], trials["start_time"])  # event i is trial i
        assert binned.bin_width_in_ms == pytest.approx(100.0) and binned.event_to_bin_offset_in_ms == 50.0
        assert list(binned.units_region.table["unit_name"].data[:]) == UNITS
        assert list(binned.units_region.data[:]) == list(range(N_UNITS))
        labels = list(binned.condition_labels[:])
        assert [labels[i] for i in binned.condition_indices[:]] == ex["image"]  # condition = the image shown
        assert list(binned.condition_indices[:]) == list(trials["image_index"])
        assert np.isnan(trials["onset_acq"][5]) and trials["onset_acq"][0] == ex["onset"][0] + 50

        onsets = nwb.events["stimulus_onsets"]
        assert type(onsets).__name__ == "EventsTable"
        ev = onsets.to_dataframe()
        assert np.array_equal(ev["timestamp"], ex["onset"])
        np.testing.assert_allclose(ev["duration"], np.array(ex["offset"]) - ex["onset"])
        assert list(ev["image_index"]) == list(trials["image_index"])
        assert list(onsets["trial"].data[:]) == list(range(24)) and onsets["trial"].table is nwb.trials

        templates = nwb.stimulus_template["stimulus_images"]
        order = [im.name for im in templates.order_of_images.data[:]]
        assert order == list(ex["pixels"])
        for name, px in ex["pixels"].items():
            assert np.array_equal(templates.images[name].data[:], px)
        pres = nwb.stimulus["stimulus_presentations"]
        assert pres.indexed_images.name == "stimulus_images"
        idx = pres.data[:]
        assert [order[i] for i in idx] == ex["image"]
        assert list(trials["image_index"]) == list(idx)
        assert np.array_equal(pres.timestamps[:], ex["onset"])

        misc = nwb.processing["misc"]
        mv = misc["model_versions"].to_dataframe()
        assert list(mv["version"]) == ["v1", "v2"] and np.isnan(mv["metric_r_heldout"][0])
        picks = misc["picks"].to_dataframe()
        assert list(picks["neuron"]) == [-1, 3] and np.isnan(picks["score"][0])
        assert list(misc["events"].to_dataframe()["what"]) == ["paused"]
        assert list(misc["blocks"].to_dataframe()["block_id"]) == ["b0", "b1"]
        assert len(misc["steps"]) == 2
        log = nwb.scratch["cortexloop_documents"].data[:]
        assert len(log) == len(ex["docs"])  # every document is kept


def test_inspector_finds_no_violation(session: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = session
    out = export_nwb(path, tmp_path / "s.nwb", experimenter=["Doe, Jane"], institution="Somewhere")
    assert check_nwb(out) == []
    assert check_nwb(out, dandi=False) == []


def test_inspector_reports_violations(tmp_path: Path) -> None:
    """check_nwb is not vacuous: a file with a slash in its session id is reported."""
    from datetime import UTC, datetime

    from pynwb import NWBFile

    nwb = NWBFile(session_description="x", identifier="x", session_start_time=datetime(2020, 1, 1, tzinfo=UTC),
                  session_id="a/b")
    with NWBHDF5IO(tmp_path / "bad.nwb", "w") as io:
        io.write(nwb)
    msgs = check_nwb(tmp_path / "bad.nwb")
    assert any("check_session_id_no_slashes" in m for m in msgs)
    assert any("check_subject_exists" in m for m in msgs)


def test_unfinished_session_with_regular_onsets(tmp_path: Path) -> None:
    """No stop document, no counts at all, one trial: exported, and still inspector-clean."""
    path = tmp_path / "s.h5"
    img = np.zeros((4, 4, 3), np.uint8)
    with SessionWriter.create(path) as w:
        w.write_many([StartDoc(session_id="s", code_version="x", time=time.time() - 60),
                      ImageDoc(image_id=image_id(img), pixels=img),
                      *[TrialDoc(trial_id=f"b/{i}", block_id="b", index=i, image_id=image_id(img),
                                 onset=10.0 + 0.25 * i, offset=10.1 + 0.25 * i, on_frames=6, dropped_frames=0)
                        for i in range(4)]])
    out = export_nwb(path, tmp_path / "s.nwb")
    with NWBHDF5IO(out, "r") as io:
        nwb = io.read()
        assert "no stop document" in nwb.notes
        assert "ecephys" not in nwb.processing  # nothing was counted
        trials = nwb.trials.to_dataframe()
        assert not trials["complete"].any() and list(trials["condition"]) == [""] * 4
        pres = nwb.stimulus["stimulus_presentations"]
        assert pres.timestamps is None and pres.rate == pytest.approx(4.0) and pres.starting_time == 10.0
    assert check_nwb(out) == []


def test_condition_of_a_trial_shown_again(tmp_path: Path) -> None:
    """After a resume, a trial shown but never counted is shown again as ``<id>.again``."""
    path2 = tmp_path / "again.h5"
    # image 0 is shown twice in the block: trial 0 as maximize_0, trial 5 as normal
    ex = make_session(path2, n_blocks=1, per_block=6, uncounted=frozenset({5}), finish=False)
    assert ex["image"][5] == ex["image"][0] and ex["cond"][0] != ex["cond"][5]
    again = TrialDoc(trial_id="b0/5.again", block_id="b0", index=5, image_id=ex["image"][5], onset=2000.0,
                     offset=2000.1, on_frames=6, dropped_frames=0)
    with SessionWriter.resume(path2) as w:
        w.write(again)
    out = export_nwb(path2, tmp_path / "a.nwb")
    with NWBHDF5IO(out, "r") as io:
        trials = io.read().trials.to_dataframe()
        assert list(trials["trial_id"])[-2:] == ["b0/5", "b0/5.again"]
        assert list(trials["condition"])[-2:] == [ex["cond"][5]] * 2 == ["normal"] * 2
        assert list(trials["counted"])[-2:] == [False, False]


def test_errors(session: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = session
    with pytest.raises(StoreError, match="no session file"):
        export_nwb(tmp_path / "missing.h5", tmp_path / "x.nwb")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="cannot open session file"):
        export_nwb(junk, tmp_path / "x.nwb")
    out = tmp_path / "s.nwb"
    out.write_bytes(b"keep me")
    with pytest.raises(StoreError, match="exists"):
        export_nwb(path, out)
    assert out.read_bytes() == b"keep me"
    export_nwb(path, out, overwrite=True)
    with NWBHDF5IO(out, "r") as io:
        assert len(io.read().trials) == 24
    with pytest.raises(StoreError, match="its own session file"):
        export_nwb(path, path, overwrite=True)
    empty = tmp_path / "empty.h5"
    SessionWriter.create(empty).close()
    with pytest.raises(StoreError, match="no start document"):
        export_nwb(empty, tmp_path / "e.nwb")
    assert not (tmp_path / "e.nwb").exists() and list(tmp_path.glob("*.partial.nwb")) == []
    with pytest.raises(StoreError, match="no NWB file"):
        check_nwb(tmp_path / "none.nwb")
