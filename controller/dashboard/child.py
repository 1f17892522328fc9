"""``cortexloop run --dashboard PORT``: the dashboard of the run's own session, in a child process.

A child process, so that reading the session file (HDF5) and serving pages never compete with the
engine for the controller's interpreter. It follows the session file by name and, with the
embedded broker, the bus with the operator credentials that broker writes (``bus-operator.json``,
waited for until this run has written it; an earlier run's file is ignored). With a lab's broker
the child follows the file only: run ``cortexloop dashboard`` with your own bus login for the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from controller.children import Child
from controller.config import RunConfig

CLI = "from controller.cli import entry; entry()"


def default_session_id(cfg: RunConfig, protocol: str) -> str:
    """The session name ``assemble`` gives a session without ``--session-id`` (time_rig_protocol)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.rig}_{protocol}"


@contextlib.asynccontextmanager
async def session_dashboard(cfg: RunConfig, protocol: str, port: int,
                            say: Callable[[str], Any] = print) -> AsyncIterator[str]:
    """Serve the dashboard of the session ``cfg`` is about to run on 127.0.0.1:``port`` (0: any free
    port); yields its URL. Sets ``cfg.session_id`` when unset, so the dashboard knows the file's name."""
    if cfg.session_id is None:
        cfg.session_id = default_session_id(cfg, protocol)
    started = time.time() - 1.0  # file times have coarse resolution on some file systems
    args = ["-c", CLI, "dashboard", str(cfg.out_dir / f"{cfg.session_id}.h5"), "--port", str(port),
            "--not-before", f"{started:.3f}"]
    if cfg.bus.broker == "embedded":
        args += ["--credentials", str(cfg.out_dir / "bus-operator.json")]
    child = await Child.start("dashboard", args, ready="dashboard ready", timeout=60)
    try:
        url = child.fields()["url"]
        say(f"dashboard: {url}")
        yield url
    finally:
        child.stop(grace=5.0)
