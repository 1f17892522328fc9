"""A schedule under `cortexloop run`: sysid until its condition, an operator pause over MQTT, the causal
test on the qualified neurons; the controller killed (SIGKILL) mid-session, then `--resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from controller.store import SessionReader
from wire.documents import ResponseDoc, StartDoc, StopDoc

REPO = Path(__file__).resolve().parents[2]

RIG = """\
rig: lab1
acquisition: {kind: virtual, virtual: {n_units: 8, seed: 3}}
model: {members: 1, block_epochs: 2, session_epochs: 3, max_epochs: 3, pool_crops: 200, device: cpu}
images: {synthetic: 300}
"""

SCHEDULE = """\
protocol: schedule
stages:
  - name: sysid
    protocol:
      protocol: sysid
      n_blocks: 1
      normal: 30
      gaudy: 0
      active: null
      retrain: session
      timing: {on_frames: 3, off_frames: 2}
      heldout: {n_images: 12, repeats: 2}
    repeat_until: {metric: r, threshold: -1.0, min_neurons: 1, max_sessions: 2}
  - name: max
    protocol:
      protocol: maximize
      timing: {on_frames: 3, off_frames: 2}
      heldout: {present: true, n_images: 12, repeats: 2}
      match: {min_score: -1.0, max_neurons: 2}
      n_per_neuron: 1
      n_random: 16
      repeats: 2
      synth: {steps: 3, timeout_s: 300}
      analysis: {n_permutations: 50}
    neurons: qualified
    pause_before: true
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from controller.cli import entry; entry()", *args]


def state(out: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((out / "day.schedule.json").read_text()))
    except (OSError, ValueError):
        return {}


def responses(path: Path) -> int:
    try:
        with SessionReader(path) as r:
            return sum(isinstance(d, ResponseDoc) for d in r.documents())
    except Exception:
        return 0  # not created yet, or being written


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_schedule_paused_killed_and_resumed(tmp_path: Path) -> None:
    (tmp_path / "rig.yaml").write_text(RIG)
    (tmp_path / "day.yaml").write_text(SCHEDULE)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    cmd = cli("run", str(tmp_path / "day.yaml"), "--config", str(tmp_path / "rig.yaml"), "--out", str(out),
              "--session-id", "day")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 400

    def wait(what: str, cond: Any) -> None:
        while not cond():  # polling files another process writes: no event to wait on
            assert proc.poll() is None and time.monotonic() < deadline, f"ended or timed out before: {what}"
            time.sleep(0.3)

    try:
        wait("the pause", lambda: state(out).get("stages", {}).get("max", {}).get("pause") == {"action": "waiting"})
        sysid = state(out)["stages"]["sysid"]
        (first,) = sysid["sessions"]
        assert first["exit_status"] == "success" and sysid["met"] is True, sysid
        assert first["metric"]["metric"] == "r" and len(first["metric"]["per_neuron"]) == 8, first
        assert sysid["qualified"] == [j for j, v in enumerate(first["metric"]["per_neuron"]) if v is not None]
        sent = subprocess.run(cli("resume", "--reason", "go", "--credentials", str(out / "bus-operator.json")),
                              env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        max_file = out / "day-max-1.h5"
        wait("maximize trials", lambda: responses(max_file) >= 10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = state(out)
    assert killed["status"] == "running" and killed["stages"]["max"]["pause"]["action"] == "resume"
    assert killed["stages"]["max"]["sessions"][0]["exit_status"] is None

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=400, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = state(out)
    assert final["status"] == "success", final
    (mx,) = final["stages"]["max"]["sessions"]
    assert mx["exit_status"] == "success" and len(final["stages"]["sysid"]["sessions"]) == 1
    assert list(out.glob("day-max-1.crashed-*.h5")), "the session itself was resumed from its file"
    with SessionReader(max_file) as r:
        docs = list(r.documents())
    start, stop = docs[0], docs[-1]
    assert isinstance(start, StartDoc) and isinstance(stop, StopDoc) and stop.exit_status == "success"
    assert start.protocol["neurons"] == final["qualified"] and start.config["stage"] == "max"
    assert sum(isinstance(d, StartDoc) for d in docs) == 1
