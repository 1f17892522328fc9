"""PsychoPy's first run on a fresh machine: two stimulus servers starting at once must not race.

psychopy's import creates ``~/.psychopy3`` and copies its theme files without locking, so two
processes starting together on a machine without that folder failed (FileExistsError,
JSONDecodeError). The presenter holds an exclusive lock beside the folder while it imports psychopy
and opens its window; this test holds that lock itself and checks that a presenter in another process
with the same fresh HOME waits for it before it touches the folder, then opens normally.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.display

OPEN_WINDOW = """
from stimserver.presenter import PresenterConfig
from stimserver.psychopy_presenter import PsychoPyPresenter
p = PsychoPyPresenter(PresenterConfig(size=(160, 120), refresh_hz=60.0))
p.open()
p.close()
print("opened", flush=True)
"""


def test_presenter_waits_for_the_first_run_lock(xdisplay: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "DISPLAY": xdisplay, "PYTHONPATH": str(REPO)}
    with open(home / ".psychopy3.cortexloop.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", OPEN_WINDOW], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 4.0  # psychopy's import alone takes ~1-2 s here
            while time.monotonic() < deadline and proc.poll() is None:
                assert not (home / ".psychopy3").exists(), "psychopy ran its first-run set-up without the lock"
                time.sleep(0.05)
            assert proc.poll() is None, f"the presenter did not wait for the lock: {proc.communicate()[0]}"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "opened" in out.splitlines()
    assert (home / ".psychopy3").is_dir()
