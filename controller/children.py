"""Child processes of a session (stimserver, modelserver, virtual rig), started and stopped safely.

A child is ``python -m PACKAGE ...`` with the repository on its ``PYTHONPATH``. It prints one
ready line once its sockets are bound (``tcp://...:0`` endpoints work: the bound ones are read
from that line); :meth:`Child.start` waits for it without blocking the event loop. On Linux a
child gets ``PR_SET_PDEATHSIG`` = SIGTERM, so a controller that is killed (SIGKILL included) takes
its children with it; :meth:`Child.stop` sends SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from wire.errors import ServerUnavailable

log = logging.getLogger(__name__)

#: the repository root (the packages' parent), put on every child's PYTHONPATH
REPO = Path(__file__).resolve().parents[1]

_PR_SET_PDEATHSIG = 1


def stop_process(proc: subprocess.Popen[str], grace: float, name: str = "") -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code (logged when killed)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %g s: killed", name or f"process {proc.pid}", grace)
        proc.kill()
        return proc.wait()


def _death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies (None elsewhere).

    libc and its ``prctl`` are looked up here, in the parent, so the hook only calls a function
    pointer between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook


class Child:
    """``child = await Child.start("modelserver", [...], ready="modelserver ready")``; ``child.stop()``."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.name = name
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), full_env.get("PYTHONPATH")) if p)
        self.argv = [sys.executable, *argv]
        # started from the calling (event-loop) thread: the death signal follows the thread that forked
        self.proc = subprocess.Popen(self.argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, preexec_fn=_death_signal())
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.ready_line = ""
        #: called (on the pump thread) with each traceback the child prints after it is ready, whole
        #: (the assembly records them as the session's ``child_error`` events)
        self.on_traceback: Callable[[str, str], None] | None = None
        threading.Thread(target=self._pump, daemon=True, name=f"{name}-stdout").start()

    @classmethod
    async def start(cls, name: str, argv: Sequence[str], *, ready: str, timeout: float = 120.0,
                    env: dict[str, str] | None = None) -> Child:
        child = cls(name, argv, env=env)
        try:
            child.ready_line = await asyncio.to_thread(child._wait_ready, ready, timeout)
        except BaseException:
            child.stop()
            raise
        log.info("%s started (pid %d): %s", name, child.pid, child.ready_line)
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        return "".join(list(self.output)[-n:])

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        trace: list[str] = []
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
            if self.ready_line:  # a child's warnings, errors and tracebacks reach the operator
                quiet = " INFO " in line or " DEBUG " in line
                log.log(logging.DEBUG if quiet else logging.WARNING, "%s: %s", self.name, line.rstrip())
                trace = self._collect(trace, line)
        if trace:
            self._report(trace)
        self._lines.put(None)

    def _collect(self, trace: list[str], line: str) -> list[str]:
        """A traceback runs from its header to the first line that is not indented (the exception)."""
        if line.startswith("Traceback (most recent call last)"):
            return [line]
        if not trace:
            return []
        trace.append(line)
        if line[:1] not in (" ", "\t") and not line.startswith(("During handling", "The above exception")) \
                and line.strip():
            self._report(trace)
            return []
        return trace

    def _report(self, trace: list[str]) -> None:
        hook = self.on_traceback
        if hook is not None:
            try:
                hook(self.name, "".join(trace)[-8000:])
            except Exception:  # the hook must never stop the pump
                log.exception("recording a traceback of %s failed", self.name)

    def _wait_ready(self, prefix: str, timeout: float) -> str:
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise ServerUnavailable(f"the {self.name} did not start within {timeout:g} s:\n{self.tail()}") \
                    from None
            if line is None:
                code = self.proc.wait()
                raise ServerUnavailable(f"the {self.name} exited ({code}) before it was ready:\n{self.tail()}")
            if line.startswith(prefix):
                return line.strip()

    def fields(self) -> dict[str, str]:
        """``key=value`` words of the ready line."""
        return dict(w.split("=", 1) for w in self.ready_line.split() if "=" in w)

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        return stop_process(self.proc, grace, self.name)
