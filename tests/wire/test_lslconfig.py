"""liblsl is quiet in cortexloop's processes: its INFO lines (version, "Loaded default config") filled
the console of every run, one set per child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

OUTLET = """
import sys
from wire import lslconfig
if sys.argv[1] == "configure":
    lslconfig.configure()
import pylsl
pylsl.StreamOutlet(pylsl.StreamInfo("lslconfig-test", "Markers", 1, 0, "string", "lslconfig-test"))
print("done", flush=True)
"""


def _run(mode: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "LSLAPICFG"}
    return subprocess.run([sys.executable, "-c", OUTLET, mode], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**base, "PYTHONPATH": str(REPO), "HOME": str(tmp_path), **env})


def test_liblsl_prints_info_lines_unless_configured(tmp_path: Path) -> None:
    plain = _run("plain", tmp_path)
    assert "done" in plain.stdout and "INFO|" in plain.stderr  # what every run used to print
    quiet = _run("configure", tmp_path)
    assert "done" in quiet.stdout and "INFO|" not in quiet.stderr, quiet.stderr


def test_a_labs_own_liblsl_config_is_kept(tmp_path: Path) -> None:
    own = tmp_path / "lab.cfg"
    own.write_text("[log]\nlevel = 0\n")
    kept = _run("configure", tmp_path, LSLAPICFG=str(own))
    assert "done" in kept.stdout and "INFO|" in kept.stderr
