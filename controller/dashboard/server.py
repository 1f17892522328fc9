"""Serving the dashboard with uvicorn: the bind check, the sources it follows, the ready line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.dashboard.app import create_app
from controller.dashboard.follow import BusFollower, BusLogin, FileFollower, session_file
from controller.dashboard.state import DashboardState
from wire.security import InsecureBind, is_local_endpoint

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", "::1"]


@dataclass
class DashboardOptions:
    """What ``cortexloop dashboard`` serves. With no bus login it follows the file only (no buttons)."""

    session: Path | None = None
    sessions_dir: Path | None = None
    credentials: Path | None = None
    broker: str | None = None
    rig: str | None = None
    username: str | None = None
    password: str | None = None
    #: a credentials file older than this (s since the epoch) is an earlier run's: waited for until replaced
    not_before: float | None = None
    host: str = "127.0.0.1"
    port: int = 8050
    insecure: bool = False
    read_only: bool = False

    @property
    def uses_bus(self) -> bool:
        return bool(self.credentials or self.broker or self.username)


def check_http_bind(host: str, insecure: bool) -> None:
    """Refuse (:class:`InsecureBind`) a non-loopback address unless ``insecure``: HTTP has no CURVE,
    so anyone who reaches the port sees the session (and, with operator credentials, its buttons)."""
    if is_local_endpoint(f"tcp://{host}:0"):
        return
    if insecure:
        log.warning("dashboard on %s WITHOUT authentication (--insecure): anyone who can reach it sees the session"
                    " and may use its buttons", host)
        return
    raise InsecureBind(f"refusing to serve the dashboard on {host}: other machines could reach it, and HTTP here has "
                       "no authentication. Bind 127.0.0.1 (and use an SSH tunnel), or pass --insecure on a network "
                       "you trust")


def _login(opts: DashboardOptions) -> Callable[[], BusLogin | None]:
    def login() -> BusLogin | None:
        override = {"broker": opts.broker, "rig": opts.rig, "username": opts.username, "password": opts.password}
        if opts.credentials is None:
            return BusLogin.of({}, **override)
        if not opts.credentials.is_file():
            return None
        if opts.not_before is not None and opts.credentials.stat().st_mtime < opts.not_before:
            return None
        return BusLogin.from_file(opts.credentials, **override)

    return login


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def build(opts: DashboardOptions) -> tuple[DashboardState, BusFollower | None, FileFollower | None]:
    state = DashboardState(controls=opts.uses_bus and not opts.read_only)
    bus = BusFollower(state, _login(opts)) if opts.uses_bus else None
    file: FileFollower | None = None
    if opts.session is not None:
        path, since = opts.session, opts.not_before
        file = FileFollower(state, lambda: path if since is None or _mtime(path) >= since else None)
    elif opts.sessions_dir is not None:
        folder = opts.sessions_dir
        file = FileFollower(state, lambda: session_file(folder, state.session["session_id"]))
    return state, bus, file


async def serve(opts: DashboardOptions, ready: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled or signalled (SIGINT/SIGTERM); ``ready(url)`` once the port is bound."""
    import uvicorn

    check_http_bind(opts.host, opts.insecure)
    state, bus, file = build(opts)
    hosts = LOOPBACK_HOSTS if is_local_endpoint(f"tcp://{opts.host}:0") else (
        ["*"] if opts.host in ("0.0.0.0", "::", "") else [*LOOPBACK_HOSTS, opts.host])
    app = create_app(state, bus=bus, file=file, allowed_hosts=hosts)
    family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((opts.host, opts.port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=1))
    sock.listen(128)  # connections wait in the backlog until uvicorn accepts them: ready from here on
    tasks = [asyncio.create_task(t.run()) for t in (bus, file) if t is not None]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        if ready is not None:
            shown = f"[{opts.host}]" if ":" in opts.host else opts.host
            ready(f"http://{shown}:{port}/")
        await serving
    finally:
        server.should_exit = True
        for t in tasks:
            t.cancel()
        for t in [*tasks, serving]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if file is not None:
            file.close()
        sock.close()
