"""Session store: round trip, dedup, SWMR reading while writing, SIGKILL recovery, damaged records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from controller.store import SessionReader, SessionWriter
from wire.base import image_id
from wire.documents import (
    BlockDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import CorruptRecord, StoreError

REPO = Path(__file__).resolve().parents[2]


def trial(i: int, block: str = "b0") -> list:
    counts = np.arange(100, dtype=np.uint32) + i
    return [
        TrialDoc(trial_id=f"t{i}", block_id=block, index=i, image_id=f"img{i % 7}", onset=10.0 + i,
                 offset=10.1 + i, on_frames=6, dropped_frames=i % 2),
        ResponseDoc(trial_id=f"t{i}", units=[f"u{j}" for j in range(100)], counts=counts,
                    window=(0.05, 0.15), onset_acq=110.0 + i),
    ]


def test_round_trip_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    docs = [
        StartDoc(session_id="s1", protocol={"name": "sysid", "blocks": [1, 2]}, config={"window": [0.05, 0.15]},
                 code_version="0.1.0", rig="rig1", subject="M1"),
        BlockDoc(block_id="b0", index=0, source="normal", n_trials=3),
        ImageDoc(image_id=image_id(img), pixels=img, source="v4"),
        *trial(0), *trial(1), *trial(2),
        ModelVersionDoc(version="v1", n_images=3, metrics={"median_r": 0.5}),
        PickDoc(image_id=image_id(img), block_id="b1", generator="active", model_version="v1", score=1.5),
        StopDoc(exit_status="success", n_trials=3),
    ]
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        for d in docs:
            w.write(d)
    with SessionReader(path) as r:
        back = list(r.documents())
        assert [type(d) for d in back] == [type(d) for d in docs]
        assert [d.uid for d in back] == [d.uid for d in docs]
        assert back[0].protocol == docs[0].protocol
        assert np.array_equal(back[2].pixels, img) and back[2].pixels.dtype == np.uint8
        trials, units, counts = r.counts()
        assert units[:2] == ["u0", "u1"]
        assert [t.trial_id for t in trials] == ["t0", "t1", "t2"]
        assert counts.shape == (3, 100) and counts[2, 5] == 7
        assert r.problems == []


def test_images_are_stored_once(tmp_path: Path) -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    with SessionWriter.create(tmp_path / "s.h5") as w:
        w.write(StartDoc(session_id="s", code_version="x"))
        assert w.write(ImageDoc(image_id=image_id(img), pixels=img)) is True
        assert w.write(ImageDoc(image_id=image_id(img), pixels=img)) is False
    with SessionReader(tmp_path / "s.h5") as r:
        assert len(r.images()) == 1 and len(r) == 2


def test_refuses_to_overwrite_and_to_write_after_stop(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write(StopDoc(exit_status="abort"))
        with pytest.raises(StoreError, match="stopped"):
            w.write(StartDoc(session_id="s", code_version="x"))
    with pytest.raises(StoreError, match="exists"):
        SessionWriter.create(path)
    with pytest.raises(StoreError, match="finished"):
        SessionWriter.resume(path)
    with pytest.raises(StoreError, match="no session file"):
        SessionReader(tmp_path / "missing.h5")
    h5py.File(tmp_path / "other.h5", "w").close()
    with pytest.raises(StoreError, match="not a cortexloop session"):
        SessionReader(tmp_path / "other.h5")


def test_reader_follows_a_file_being_written(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    w = SessionWriter.create(path)
    w.write(StartDoc(session_id="s", code_version="x"))
    r = SessionReader(path)
    assert len(list(r.documents())) == 1
    for i in range(5):
        w.write_many(trial(i))
    assert [d.kind for d in r.documents(start=1)] == ["trial", "response"] * 5
    w.close()
    r.close()


def test_clean_resume_appends_in_place(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s", code_version="x"))
        w.write_many(trial(0))
    with SessionWriter.resume(path) as w:
        assert w.responded == {"t0"}
        w.write_many(trial(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    with SessionReader(path) as r:
        assert [t.trial_id for t in r.counts()[0]] == ["t0", "t1"]


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from controller.store import SessionWriter
    from wire.documents import StartDoc, TrialDoc, ResponseDoc
    w = SessionWriter.create(sys.argv[1])
    w.write(StartDoc(session_id="crash", code_version="x"))
    i = 0
    while True:
        w.write_many([
            TrialDoc(trial_id=f"t{i}", block_id="b", index=i, image_id="x", onset=1.0, offset=2.0,
                     on_frames=1, dropped_frames=0),
            ResponseDoc(trial_id=f"t{i}", units=[str(u) for u in range(100)],
                        counts=np.full(100, i, np.int32), window=(0.05, 0.15), onset_acq=1.0),
        ])
        print(i, flush=True)  # acknowledged
        i += 1
""")


def test_sigkilled_writer_loses_no_acknowledged_trial(tmp_path: Path) -> None:
    path = tmp_path / "crash.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(OSError):  # HDF5 still flags the file as open for writing
        h5py.File(path, "r").close()
    with SessionReader(path) as r:
        trials, _, counts = r.counts()
        ids = [t.trial_id for t in trials]
    assert ids[: acked + 1] == [f"t{i}" for i in range(acked + 1)]  # every acknowledged trial, in order
    assert all(counts[i, 0] == i for i in range(acked + 1))
    w = SessionWriter.resume(path)  # rebuilds from acknowledged documents, keeps the original
    assert {f"t{i}" for i in range(acked + 1)} <= w.responded
    n_before = len(w.responded)
    w.write_many(trial(99999))
    w.write(StopDoc(exit_status="success"))
    w.close()
    crashed = [p for p in tmp_path.iterdir() if ".crashed-" in p.name]
    assert len(crashed) == 1
    with SessionReader(path) as r:
        trials, _, _ = r.counts()
        assert len(trials) == n_before + 1 and len({t.trial_id for t in trials}) == len(trials)  # nothing doubled
        h5py.File(path, "r").close()  # closed cleanly this time


def test_half_written_last_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s", code_version="x"))
        w.write_many(trial(0))
        w.write_many(trial(1))
    with h5py.File(path, "r+") as f:  # damage the last record's bytes, as a torn write would
        off, length = f["log/index"][-1, :2]
        f["log/bytes"][off + length - 3: off + length] = 0
    with SessionReader(path) as r:
        docs = list(r.documents())
        assert [d.kind for d in docs] == ["start", "trial", "response", "trial"]
        assert len(r.problems) == 1 and "document 4" in r.problems[0]
        with pytest.raises(CorruptRecord, match="checksum"):
            list(r.documents(strict=True))


def test_index_row_without_data_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s", code_version="x"))
    with h5py.File(path, "r+") as f:  # an index that grew but whose row never landed
        f["log/index"].resize((2, 4))
    with SessionReader(path) as r:
        assert len(list(r.documents())) == 1
        assert "incomplete" in r.problems[0]


def test_damaged_array_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write_many(trial(0))
    with h5py.File(path, "r+") as f:
        f["arrays/bytes"][0] ^= 0xFF
    with SessionReader(path) as r:
        assert [d.kind for d in r.documents()] == ["trial"]
        assert "array checksum" in r.problems[0]


@pytest.mark.parametrize("counts", [np.array([1.0, np.nan]), np.array([np.inf, 2.0]), np.array([3, -1], np.int32),
                                    np.array([1, 2, 3], np.int32)],
                         ids=["nan", "inf", "negative", "count-mismatch"])
def test_counts_that_cannot_be_spike_counts_are_refused(tmp_path: Path, counts: np.ndarray) -> None:
    bad = ResponseDoc(trial_id="t0", units=["u0", "u1"], counts=counts, window=(0.05, 0.15), onset_acq=1.0)
    with SessionWriter.create(tmp_path / "s.h5") as w:
        with pytest.raises(StoreError, match="trial t0"):
            w.write(bad)
        w.write(ResponseDoc(trial_id="t1", units=["u0", "u1"], counts=np.array([0.5, 2.0]), window=(0.05, 0.15),
                            onset_acq=1.0))  # repeat-averaged (imported) counts may be fractional
    with SessionReader(tmp_path / "s.h5") as r:
        assert [d.trial_id for d in r.documents()] == ["t1"]
