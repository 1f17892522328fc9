"""Shared fixtures: the real V4 data folder (skip where absent) and an X display (Xvfb)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
V4_DIR = Path(os.environ.get("CORTEXLOOP_V4_DATA", REPO.parent / "shared" / "data" / "v4"))


@pytest.fixture(scope="session")
def v4_dir() -> Path:
    """The real V4 data folder (``../shared/data/v4`` or $CORTEXLOOP_V4_DATA); skips where absent."""
    if not (V4_DIR / "compact_models").is_dir():
        pytest.skip(f"real V4 data not found at {V4_DIR} (set CORTEXLOOP_V4_DATA to its folder)")
    return V4_DIR


@pytest.fixture(scope="session")
def xdisplay() -> Iterator[str]:
    """An X display: $DISPLAY if set, else a private Xvfb started for the test session."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no DISPLAY and no Xvfb (apt-get install xvfb); scripts/bootstrap.sh installs it")
    for num in range(90, 140):
        if not Path(f"/tmp/.X{num}-lock").exists():
            break
    display = f":{num}"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{num}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Xvfb {display} did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        os.environ.pop("DISPLAY", None)
        proc.terminate()
        proc.wait(5)
