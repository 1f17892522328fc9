"""Run ``python -m stimserver`` as a child process and wait for its ready line (tests, bench, controller).

The server prints ``stimserver ready rpc=<endpoint> events=<endpoint>[ display_error: ...]`` once its
sockets are bound; :class:`StimServerProcess` waits for that line (no sleeps), so ``tcp://...:0``
endpoints work: the bound ones are read from it.
"""

from __future__ import annotations

import collections
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

#: the folder holding the ``stimserver`` package (put on the child's PYTHONPATH)
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class StimServerProcess:
    """``StimServerProcess(["--presenter", "fake", ...])``; ``.rpc`` / ``.events`` are the bound endpoints."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, ready_timeout: float = 60.0,
                 log_level: str = "WARNING") -> None:
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), full_env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "stimserver", "--log-level", log_level, *args],
                                     env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: collections.deque[str] = collections.deque(maxlen=2000)
        threading.Thread(target=self._pump, daemon=True, name="stimserver-stdout").start()
        self.ready = self._wait_ready(ready_timeout)
        fields = dict(part.split("=", 1) for part in self.ready.split()[2:4])
        self.rpc, self.events = fields["rpc"], fields["events"]
        self.display_error = self.ready.split(" display_error: ", 1)[1] if " display_error: " in self.ready else None

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, timeout: float) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError("stimserver did not report ready:\n" + "".join(self.output)) from None
            if line is None:
                raise RuntimeError(f"stimserver exited with {self.proc.wait()}:\n" + "".join(self.output))
            if line.startswith("stimserver ready"):
                return line.strip()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the server aborts any block and closes its window), SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> StimServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
