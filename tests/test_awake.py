"""An awake session end to end: ``cortexloop run`` of the shipped sysid protocol on the shipped awake rig file.

The virtual rig plays a fixating monkey (gaze over LSL at 1 kHz, breaks and blinks); the stimulus
server reads that gaze at frame rate and runs the trial state machine. The session must end in success
with some trials invalid (each with a reason), every image of every block counted, one reward per
completed sequence, and no invalid trial in what the modelserver was sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.behavior_summary import summarize
from controller.demo import demo_config
from controller.store import SessionReader
from wire.behavior import InvalidReason
from wire.documents import BlockDoc, EventDoc, GazeDoc, ResponseDoc, RewardDoc, StepDoc, StopDoc, TrialDoc

REPO = Path(__file__).resolve().parents[1]
AWAKE = REPO / "protocols" / "examples" / "rigs" / "awake_virtual.yaml"
SHRINK = ["n_blocks=2", "normal=24", "gaudy=6", "active.n_images=8", "active.timeout_s=300",
          "heldout.n_images=12", "heldout.repeats=2", "timing.on_frames=6", "timing.off_frames=6"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_awake_sysid_session_counts_only_what_the_monkey_looked_at(tmp_path: Path) -> None:
    rig = yaml.safe_load(AWAKE.read_text())
    rig.update({"acquisition": {"kind": "virtual", "virtual": {"n_units": 12, "seed": 3}},
                "model": {"members": 2, "block_epochs": 3, "session_epochs": 4, "max_epochs": 4,
                          "pool_crops": 400, "device": "cpu"},
                "images": {"synthetic": 500}})
    # a monkey that breaks often, and enough attempts that every image gets its valid showing
    rig["behavior"]["break_rate"] = 0.5
    rig["behavior"]["fixation"]["max_attempts"] = 12
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(rig))
    out = tmp_path / "out"
    args = [sys.executable, "-c", "from controller.cli import entry; entry()", "run",
            str(REPO / "protocols" / "examples" / "sysid.yaml"), "--config", str(path), "--out", str(out),
            "--session-id", "awake"]
    for s in SHRINK:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1100, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"})
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    with SessionReader(out / "awake.h5") as r:
        docs = list(r.documents())
    stop = docs[-1]
    assert isinstance(stop, StopDoc) and stop.exit_status == "success", stop

    trials = [d for d in docs if isinstance(d, TrialDoc)]
    invalid = [t for t in trials if not t.valid]
    assert invalid, "the monkey broke fixation: some trials must be invalid"
    assert {t.invalid_reason for t in invalid} <= {r.value for r in InvalidReason}
    assert all(t.valid and t.invalid_reason is None for t in trials if t.valid)

    # an image cut short by a break ends at the flip that blanked the screen: the first frame drawn after the
    # breaking sample reached the stimserver (the virtual rig pushes gaze every 5 ms; the frame already
    # drawn when it arrived may still show), so sample-to-blank is at most two refreshes plus that push
    cut = [t for t in invalid if t.broke_at is not None and t.offset - t.onset < 6 / 60 - 1e-3]
    assert cut, "some breaks happened while an image was on screen"
    lag = sorted(t.offset - t.broke_at for t in cut if t.broke_at is not None)
    assert lag[0] > 0 and lag[len(lag) // 2] <= 2 / 60 + 0.006, lag

    # every trial of every block has a valid showing with counts; none was given up
    valid_ids = {t.trial_id for t in trials if t.valid}
    counted = {d.trial_id for d in docs if isinstance(d, ResponseDoc)}
    for b in (d for d in docs if isinstance(d, BlockDoc)):
        planned = [tid for tid, _, _ in b.params["trials"]]
        assert set(planned) <= valid_ids, f"{b.block_id}: {len(set(planned) - valid_ids)} trials never counted"
        assert set(planned) <= counted
    assert not [d for d in docs if isinstance(d, EventDoc) and d.what == "trials_missing"]

    # one reward per completed sequence
    behavior = [d for d in docs if isinstance(d, EventDoc) and d.what == "behavior"]
    rewards = [d for d in docs if isinstance(d, RewardDoc)]
    assert behavior and len(rewards) == sum(int(e.details["completed"]) for e in behavior) > 0
    assert sum(int(e.details["invalid"]) for e in behavior) == len(invalid)

    # the modelserver was sent the valid trials only: its training data (the last ingest's count, which
    # leaves the held-out block aside) holds exactly the valid trials with counts of the other blocks,
    # although the invalid ones have counts stored too
    ingests = [d.result for d in docs if isinstance(d, StepDoc) and d.result.get("kind") == "ingest_result"]
    block_of = {t.trial_id: t.block_id for t in trials}
    training = Counter(block_of[t] for t in valid_ids & counted if block_of[t] != "heldout")
    assert ingests and max(int(i["n_trials"]) for i in ingests) == sum(training.values()), (ingests, training)
    invalid_counted = [t for t in invalid if t.trial_id in counted and t.block_id != "heldout"]
    assert invalid_counted, "invalid trials' counts are stored (and must not be trained on)"

    # the gaze the stimserver judged is kept: ~1 kHz samples spanning every block, times increasing
    gaze = [d for d in docs if isinstance(d, GazeDoc)]
    blocks = {d.block_id for d in docs if isinstance(d, BlockDoc)}
    assert gaze and {g.block_id for g in gaze} == blocks
    t = np.concatenate([g.t for g in gaze])
    assert np.all(np.diff(t) > 0) and sum(len(g.xy) for g in gaze) == len(t)
    shown = 0.0
    for b in blocks:
        of_block = [x for x in trials if x.block_id == b]
        start, end = min(x.onset for x in of_block), max(x.offset for x in of_block)
        shown += end - start
        g = np.concatenate([g.t for g in gaze if g.block_id == b])
        assert g[0] <= start + 0.1 and g[-1] >= end - 0.1, (b, g[0], g[-1], start, end)
    assert 0.5 * 1000 * shown <= len(t) <= 2 * 1000 * shown, (len(t), shown)

    # the demo's --awake summary reads the same figures from the file
    summary = summarize([out / "awake.h5"])
    assert summary["invalid"] == len(invalid) and summary["rewards"] == len(rewards)
    assert summary["trials"] == len(trials) and summary["completed"] == len(rewards)
    assert summary["break_to_blank_ms"]["median"] == pytest.approx(1000 * lag[len(lag) // 2], abs=20)


def test_demo_awake_uses_the_shipped_awake_rig_file(tmp_path: Path) -> None:
    from controller.demo import DemoSettings

    settings = DemoSettings.for_device("cpu", 1)
    shipped = yaml.safe_load(AWAKE.read_text())["behavior"]
    cfg = demo_config(tmp_path, settings, None, awake=True)
    assert cfg.behavior is not None and cfg.behavior.gaze == "virtual"
    assert cfg.behavior.fixation.images_per_fixation == shipped["fixation"]["images_per_fixation"]
    assert cfg.behavior.fixation.count_window_s == cfg.acquisition.window[1]
    assert demo_config(tmp_path, settings, None).behavior is None
