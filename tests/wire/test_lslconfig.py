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


LOCAL_OUTLET = """
import os, subprocess, sys, time
from wire import lslconfig
lslconfig.configure(scope=sys.argv[1])
import pylsl
o = pylsl.StreamOutlet(pylsl.StreamInfo(sys.argv[2], "Markers", 1, 0, "string", sys.argv[2]))
time.sleep(0.3)
print(subprocess.run(["ss", "-lnup"], capture_output=True, text=True).stdout.count(f"pid={os.getpid()},"), flush=True)
out = subprocess.run(["ss", "-lnup"], capture_output=True, text=True).stdout
print("|".join(l.split()[3] for l in out.splitlines() if f"pid={os.getpid()}," in l and ":16571" in l), flush=True)
sys.stdin.read()
"""


def test_machine_scope_keeps_discovery_on_this_machine(tmp_path: Path) -> None:
    """The embedded virtual rig's streams answer discovery on 127.0.0.1 only (no IPv6, no LAN multicast);
    a process of the session with the default configuration still finds them."""
    import shutil
    import uuid

    from tests.conftest import require

    require(shutil.which("ss") is not None, "ss (iproute2) is needed to list listening sockets")
    name = f"lslconfig-local-{uuid.uuid4().hex[:8]}"
    base = {k: v for k, v in os.environ.items() if k != "LSLAPICFG"}
    env = {**base, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_OUTLET, "machine", name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        discovery = proc.stdout.readline().strip().split("|")
        assert discovery and all(a.startswith("127.0.0.1:") for a in discovery), discovery
        found = subprocess.run([sys.executable, "-c", f"import pylsl; print(len(pylsl.resolve_byprop('name', "
                                f"{name!r}, 1, 5.0)))"], capture_output=True, text=True, timeout=30, env=base)
        assert found.stdout.strip() == "1", found.stderr
    finally:
        proc.communicate(timeout=10)
