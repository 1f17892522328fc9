"""Shared fixtures: the real V4 data folder and an X display (Xvfb), and :func:`require`.

A test whose prerequisite is missing (mosquitto, Xvfb, the V4 data, ...) is skipped on a
developer's machine, and fails where the environment variable ``CI`` is ``true``: CI never
skips a missing prerequisite silently. Check prerequisites with :func:`require`.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import hypothesis  # imported here, at a shallow stack: pytest rewrites it on first import,
import pytest  # and CPython 3.11's AST checks can fail when that happens deep in the session's teardown

# Property tests draw the same examples on every run (a failure in CI reproduces on any machine), and
# a failure prints the blob that replays it. HYPOTHESIS_PROFILE=explore draws fresh ones.
hypothesis.settings.register_profile("cortexloop", derandomize=True, print_blob=True)
hypothesis.settings.register_profile("explore", derandomize=False, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cortexloop"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist: each worker (and every process it starts) gets one compute thread, so two workers
    # share the cores instead of oversubscribing them (torch's default is one thread per core)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]
V4_DIR = Path(os.environ.get("CORTEXLOOP_V4_DATA", REPO.parent / "shared" / "data" / "v4"))


def in_ci() -> bool:
    """Whether the tests run under CI (the environment variable ``CI`` is ``true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(condition: object, reason: str) -> None:
    """Go on when ``condition`` holds; else skip the test, or fail it under ``CI=true``."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true, and a prerequisite of this test is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, reason: str = "") -> object:
    """The imported module ``name``; where it is not installed, a skip (a failure under CI=true)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, reason or f"{name} is not installed (bash scripts/bootstrap.sh installs every extra)")
        raise


@pytest.fixture(scope="session")
def v4_dir() -> Path:
    """The real V4 data folder (``../shared/data/v4`` or $CORTEXLOOP_V4_DATA); where it is absent,
    a skip (a failure under CI=true)."""
    require((V4_DIR / "compact_models").is_dir(),
            f"real V4 data not found at {V4_DIR} (set CORTEXLOOP_V4_DATA to its folder)")
    return V4_DIR


@pytest.fixture(scope="session")
def xdisplay() -> Iterator[str]:
    """An X display: $DISPLAY if set, else a private Xvfb started for the test session (where
    there is none, a skip; a failure under CI=true)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    require(xvfb is not None, "no DISPLAY and no Xvfb (apt-get install xvfb); scripts/bootstrap.sh installs it")
    assert xvfb is not None
    # -displayfd: Xvfb picks a free display itself and writes its number (no race between workers)
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,))
    os.close(write_fd)
    ready, _, _ = select.select([read_fd], [], [], 15.0)
    with os.fdopen(read_fd) as pipe:  # EOF (empty) if Xvfb exits without a display
        number = pipe.readline().strip() if ready else ""
    if not number.isdigit():
        proc.kill()
        pytest.fail("Xvfb did not start")
    display = f":{number}"
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        os.environ.pop("DISPLAY", None)
        proc.terminate()
        proc.wait(5)
