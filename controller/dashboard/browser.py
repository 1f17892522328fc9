"""A small live session with its dashboard, and a headless chromium to look at it.

Shared by the browser test, ``scripts/dashboard_screenshot.py`` and ``bench/dashboard_bench.py``:
:func:`start_session` runs ``cortexloop run`` on embedded defaults (stimserver, virtual rig,
modelserver, embedded broker) with ``--dashboard 0`` and returns once the dashboard's address is
printed; :func:`chromium` drives Debian's chromium through its chromedriver (selenium; nothing is
downloaded). The update latency is measured in the page: for each trial it shows, the page
records the time from the trial's bus message to the DOM update (``window.cortexloopLatency``).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from controller.children import stop_process

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: a small rig: 12 synthetic units, a 2-member ensemble trained a few epochs on the CPU
RIG = """\
rig: dash1
subject: virtual
acquisition: {kind: virtual, virtual: {n_units: 12, seed: 3}}
model: {members: 2, block_epochs: 3, session_epochs: 4, max_epochs: 4, pool_crops: 400, device: cpu, threads: 1}
images: {synthetic: 500}
"""
#: protocols/examples/sysid.yaml, shrunk: a held-out block, then blocks of 60 trials with a retrain after each
SYSID_SHRINK = ["n_blocks=3", "normal=48", "gaudy=12", "active.n_images=8", "active.timeout_s=300",
                "heldout.n_images=8", "heldout.repeats=2", "timing.on_frames=3", "timing.off_frames=3"]
URL = re.compile(r"dashboard: (http://\S+)")


class RunningSession:
    """A ``cortexloop run --dashboard 0`` process; its output lines are kept in :attr:`lines`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_url(self, timeout: float = 120.0) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no dashboard address within {timeout} s:\n{self.output()}") from None
            if line is None:
                raise RuntimeError(f"cortexloop run ended before its dashboard was up:\n{self.output()}")
            m = URL.search(line)
            if m:
                return m.group(1)

    def output(self) -> str:
        return "".join(self.lines[-60:])

    def stop(self, timeout: float = 60.0) -> int:
        return stop_process(self.proc, timeout, "cortexloop run")


def start_session(out: Path, session_id: str, overrides: list[str] | None = None,
                  protocol: Path | None = None, dashboard: bool = True) -> RunningSession:
    """Start ``cortexloop run`` (sysid, shrunk) writing to ``out``; with ``dashboard`` on a free port."""
    out.mkdir(parents=True, exist_ok=True)
    rig = out / "rig.yaml"
    rig.write_text(RIG)
    args = [sys.executable, "-c", "from controller.cli import entry; entry()", "run",
            str(protocol or REPO / "protocols" / "examples" / "sysid.yaml"), "--config", str(rig),
            "--out", str(out), "--session-id", session_id]
    for o in SYSID_SHRINK if overrides is None else overrides:
        args += ["--set", o]
    if dashboard:
        args += ["--dashboard", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=REPO)
    return RunningSession(proc)


def chromium(profile: Path, width: int = 1400, height: int = 1100) -> Any:
    """A headless chromium (selenium WebDriver) with a fresh profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def latency(driver: Any) -> list[float]:
    """The page's bus-to-DOM delays so far (s), one per trial update it showed."""
    return [float(x) for x in driver.execute_script("return window.cortexloopLatency || [];")]


def summary(values: list[float]) -> str:
    if not values:
        return "no trial updates measured"
    xs = sorted(values)
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return (f"bus -> DOM over {len(xs)} trial updates: median {pick(0.5) * 1000:.0f} ms, "
            f"p95 {pick(0.95) * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms")
