"""A controller killed with SIGKILL mid-block, then `cortexloop run --resume`: nothing lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.store import SessionReader
from wire.documents import ResponseDoc, StopDoc

REPO = Path(__file__).resolve().parents[1]

PROTOCOL = """
protocol: script
steps:
  - kind: present_block
    block_id: b0
    repeats: 4
    on_frames: 6
    off_frames: 6
    images: [{source: normal, n_images: 25, seed: 3}]
  - kind: wait_for_counts
    block_id: b0
"""


def responses(path: Path) -> list[str]:
    if not path.exists():
        return []
    try:
        with SessionReader(path) as r:
            return [d.trial_id for d in r.documents() if isinstance(d, ResponseDoc)]
    except Exception:
        return []  # the file is still being created


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path: Path) -> None:
    proto = tmp_path / "p.yaml"
    proto.write_text(PROTOCOL)
    cmd = [sys.executable, "-c", "from controller.cli import entry; entry()", "run", str(proto),
           "--out", str(tmp_path), "--session-id", "k1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp_path / "k1.h5"
    deadline = time.monotonic() + 120
    while len(responses(path)) < 20:  # polling a file another process writes: no event to wait on
        assert proc.poll() is None and time.monotonic() < deadline, "the session ended before it was killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = set(responses(path))
    assert 20 <= len(before) < 100
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "success: 100 trials with counts" in done.stdout
    with SessionReader(path) as r:
        docs = list(r.documents())
    ids = [d.trial_id for d in docs if isinstance(d, ResponseDoc)]
    assert len(ids) == len(set(ids)) == 100 and before <= set(ids)
    assert isinstance(docs[-1], StopDoc) and docs[-1].exit_status == "success"
    assert list(tmp_path.glob("k1.crashed-*.h5")), "the crashed original is kept"
