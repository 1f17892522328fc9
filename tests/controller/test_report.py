"""Report helpers: turnaround between blocks from document times; the held-out repeats for r2_ER."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.demo_scoring import heldout_trials
from controller.report import turnarounds, write_report
from controller.store import SessionWriter
from wire.documents import BlockDoc, ImageDoc, ResponseDoc, StartDoc, TrialDoc


def block(block_id: str, trials: list[tuple[str, str]]) -> BlockDoc:
    return BlockDoc(block_id=block_id, index=0, source="normal", n_trials=len(trials),
                    params={"trials": [[t, i, "c"] for t, i in trials]})


def trial(tid: str, block_id: str, image: str, t: float) -> TrialDoc:
    return TrialDoc(trial_id=tid, block_id=block_id, index=0, image_id=image, onset=0, offset=0.1, on_frames=1,
                    dropped_frames=0, time=t)


def resp(tid: str, counts: list[int], t: float = 0.0) -> ResponseDoc:
    return ResponseDoc(trial_id=tid, units=[str(u) for u in range(len(counts))], counts=np.array(counts),
                       window=(0.05, 0.15), onset_acq=0, time=t)


def test_turnaround_is_last_counts_to_next_first_trial() -> None:
    docs = [block("b0", [("b0/0", "a"), ("b0/1", "b")]), trial("b0/0", "b0", "a", 10), resp("b0/0", [1], 10.2),
            trial("b0/1", "b0", "b", 11), resp("b0/1", [1], 11.3),
            block("b1", [("b1/0", "a")]), trial("b1/0", "b1", "a", 15.8), resp("b1/0", [1], 16),
            block("b2", [("b2/0", "a")]), trial("b2/0", "b2", "a", 16.5)]
    got = turnarounds(docs)
    assert [b for b, _ in got] == ["b1", "b2"]
    np.testing.assert_allclose([t for _, t in got], [15.8 - 11.3, 0.5])


def test_heldout_repeats_and_report(tmp_path: Path) -> None:
    px = {k: np.full((4, 4, 3), v, np.uint8) for k, v in (("a", 1), ("b", 2))}
    path = tmp_path / "s.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s", code_version="x"))
        w.write_many(ImageDoc(image_id=k, pixels=v) for k, v in px.items())
        w.write(block("heldout", [("h/0", "a"), ("h/1", "b"), ("h/2", "a"), ("h/3", "b"), ("h/4", "a")]))
        w.write_many([resp("h/0", [1]), resp("h/1", [3, 4]), resp("h/2.again", [5, 6]), resp("h/3", [7, 8])])
    ids, raw, pix = heldout_trials(path)
    assert ids == ["a", "b"] and raw.shape == (2, 2, 2)  # h/4 never counted: a NaN repeat slot
    np.testing.assert_array_equal(raw[0], [[1, 5], [3, 7]])  # unit 1 was not seen yet in h/0: NaN
    np.testing.assert_array_equal(raw[1], [[np.nan, 6], [4, 8]])
    assert pix[1][0, 0, 0] == 2
    page = write_report([path], tmp_path / "rep")
    assert "turnaround" in page.read_text()


def test_an_awake_session_gets_per_block_behaviour_figures(tmp_path: Path) -> None:
    """The report shows how the animal worked, block by block, from the blocks' behaviour events."""
    from wire.documents import EventDoc, StopDoc

    path = tmp_path / "awake.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="awake", code_version="x"))
        for b, (seq, done, inv) in {"heldout": (9, 7, 3), "sysid-0": (12, 12, 0)}.items():
            w.write(EventDoc(what="behavior", message=f"{b}: ...", details={
                "block_id": b, "sequences": seq, "completed": done, "invalid": inv, "no_fixation": 1,
                "rewards": done, "missing": 0, "status": "completed"}))
        w.write(StopDoc(exit_status="success"))
    page = write_report([path], tmp_path / "report").read_text()
    assert "Behaviour" in page and (tmp_path / "report" / "behavior.png").is_file()
    assert "<td>awake:heldout</td><td>9</td><td>7</td><td>78%</td><td>3</td><td>1</td><td>7</td><td>0</td>" in page
    assert "<td>awake:sysid-0</td><td>12</td><td>12</td><td>100%</td>" in page
    plain = tmp_path / "plain.h5"
    with SessionWriter.create(plain) as w:
        w.write(StartDoc(session_id="plain", code_version="x"))
        w.write(StopDoc(exit_status="success"))
    assert "Behaviour" not in write_report([plain], tmp_path / "report2").read_text()
