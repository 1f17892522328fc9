"""Exit with the process that started us: ``--parent-pid PID`` polls that process once a second.

Polling was chosen over Linux's ``prctl(PR_SET_PDEATHSIG)``:

* it can watch any process, not only the direct parent: a rig started through a shell, a
  launcher or ``uv run`` has a wrapper as its parent, and the process that matters is the
  controller above it;
* ``PR_SET_PDEATHSIG`` fires when the parent *thread* that forked us ends, not the parent
  process: a controller that starts the rig from a worker thread (``asyncio.to_thread``, a
  thread pool) would lose its rig when that thread finishes;
* it is Linux-only, and racy (the parent can die before ``prctl`` is called).

The cost is one ``kill(pid, 0)`` a second and an exit up to a second late. A zombie (dead
but not yet reaped by its own parent) counts as dead; when the watched process is our parent,
being re-parented (to init or a subreaper) counts as its death too, which no PID reuse can fool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["pid_alive", "watch_process"]


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie is not running)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:  # Linux: a zombie still answers kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    fields = stat.rsplit(")", 1)[-1].split()
    return not fields or fields[0] not in ("Z", "X", "x")


async def watch_process(pid: int, on_exit: Callable[[], None], interval: float = 1.0) -> None:
    """Call ``on_exit()`` once process ``pid`` has ended (checked every ``interval`` s), then return."""
    parent = os.getppid()
    is_parent = pid == parent
    while True:
        gone = not pid_alive(pid) or (is_parent and os.getppid() != parent)
        if gone:
            log.warning("process %d (--parent-pid) has ended: exiting", pid)
            on_exit()
            return
        await asyncio.sleep(interval)
