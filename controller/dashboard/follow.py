"""The dashboard's two sources: the rig's MQTT bus (live) and its session file (read live, SWMR).

:class:`BusFollower` keeps an operator's (or viewer's) connection to the broker, feeds every
status to the state and sends the page's commands on the same connection; it reconnects after a
lost connection, reading its login again each time (a ``cortexloop run`` writes a fresh
``bus-operator.json`` when its embedded broker starts). :class:`FileFollower` reads the session
file's new documents a few times a second with one :class:`~controller.store.SessionReader`
(HDF5 shares an open file between the readers of one process, so there is only one), in a worker
thread, and serves image pixels from the same reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.bus.mqtt import MqttOperator
from controller.dashboard.png import encode_png
from controller.dashboard.state import DashboardState
from controller.store import SessionReader
from wire.documents import ImageDoc, StopDoc
from wire.errors import BusError, DecodeError, StoreError
from wire.topics import COMMAND_CLASSES, check_rig

log = logging.getLogger(__name__)

#: a session id that may name a file in the sessions folder
SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


@dataclass(frozen=True)
class BusLogin:
    host: str
    port: int
    rig: str
    username: str | None
    password: str | None

    @classmethod
    def from_file(cls, path: Path, **override: str | None) -> BusLogin:
        """A login from a ``bus-operator.json`` (as an embedded broker writes it); ``override`` wins."""
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise BusError(f"{path}: not a credentials file (expected a JSON object)")
        return cls.of({k: info.get(k) for k in ("broker", "rig", "username", "password")}, **override)

    @classmethod
    def of(cls, base: dict[str, Any], **override: str | None) -> BusLogin:
        """A login from ``base`` (broker ``host:port``, rig, username, password), ``override`` winning."""
        got = {**base, **{k: v for k, v in override.items() if v is not None}}
        host, _, port = str(got.get("broker") or "127.0.0.1:1883").rpartition(":")
        return cls(host or "127.0.0.1", int(port or 1883), check_rig(got.get("rig") or "rig1"),
                   got.get("username"), got.get("password"))


def session_file(folder: Path, session_id: str | None) -> Path | None:
    """``folder/<session_id>.h5`` for a well-formed id, resolved inside ``folder``; else None."""
    if not session_id or not SESSION_ID.fullmatch(session_id) or ".." in session_id:
        return None
    base = folder.resolve()
    path = (base / f"{session_id}.h5").resolve()
    return path if path.parent == base else None


class BusFollower:
    """Follows one rig on the bus; ``login()`` is asked for credentials before each connection."""

    def __init__(self, state: DashboardState, login: Callable[[], BusLogin | None], *, retry: float = 0.5) -> None:
        self.state = state
        self.login = login
        self.retry = retry
        self._op: MqttOperator | None = None
        self._user: str | None = None
        #: the operator's bus password (from the login): the dashboard's own login checks it
        self.password: str | None = None

    async def run(self) -> None:
        """Follow until cancelled; after a refused or lost connection, try again (waiting 0.5 s,
        doubling up to 5 s while it keeps failing)."""
        delay = self.retry
        while True:
            try:
                login = self.login()
            except (OSError, ValueError, BusError) as exc:
                log.debug("no bus login yet: %s", exc)
                login = None
            if login is not None:
                self.password = login.password
            if login is not None and await self._follow(login):
                delay = self.retry
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _follow(self, login: BusLogin) -> bool:
        """Follow on one connection until it ends; whether it was made at all."""
        self.state.set_link(bus="connecting")
        op = MqttOperator(login.rig, login.host, login.port, username=login.username, password=login.password,
                          timeout=5.0)
        made = False
        try:
            async with op:
                made = True
                self._op, self._user = op, login.username
                self.state.set_link(bus="connected", rig=login.rig)
                while True:
                    try:
                        async for msg in op.statuses():
                            self.state.on_bus(msg)
                    except DecodeError as exc:  # one bad payload; the stream goes on
                        log.warning("bus message ignored: %s", exc)
        except BusError as exc:
            log.info("bus: %s", exc)
        finally:
            self._op = None
            self.state.set_link(bus="lost")
        return made

    @property
    def connected(self) -> bool:
        return self._op is not None

    async def send(self, kind: str, reason: str = "", *, operator: str | None = None, **fields: Any) -> str:
        """Send ``pause``, ``resume``, ``abort`` or ``reward`` (``fields``: the command's own, e.g. a
        reward's ``duration_ms``) in the name of ``operator`` (who logged in to the page); returns its
        command id (BusError when not connected)."""
        op = self._op
        if op is None:
            raise BusError("not connected to the bus")
        who = f"{operator} (dashboard, bus user {self._user})" if operator else self._user
        cmd = COMMAND_CLASSES[kind](reason=reason or f"{kind} from the dashboard", issued_by=who, **fields)
        await op.send(cmd)
        return cmd.command_id


class FileFollower:
    """Reads a session file's documents as they are written; ``path()`` names the file (None: not yet)."""

    def __init__(self, state: DashboardState, path: Callable[[], Path | None], *, interval: float = 0.25) -> None:
        self.state = state
        self.path = path
        self.interval = interval
        self.reader: SessionReader | None = None
        self._next = 0
        self._lock = threading.Lock()

    async def run(self) -> None:
        """Read until the session's stop document (or all of a closed file); the reader stays open
        for :meth:`image_png` until :meth:`close`."""
        while True:
            if self.reader is None:
                await asyncio.to_thread(self._open)
            if self.reader is not None:
                docs, unfinished = await asyncio.to_thread(self._read)
                for pos, doc in docs:
                    self.state.on_document(pos, doc)
                if not unfinished or any(isinstance(d, StopDoc) for _, d in docs):
                    self.state.set_link(live=False)
                    return  # a finished session: everything is shown
            await asyncio.sleep(self.interval)

    def _open(self) -> None:
        path = self.path()
        if path is None or not path.is_file():
            return
        try:
            reader = SessionReader(path)
        except StoreError as exc:  # being created right now, or damaged: try again
            log.debug("session file not readable yet: %s", exc)
            return
        with self._lock:
            self.reader = reader
        self.state.set_link(file=path.name, live=reader.unfinished)

    def _read(self) -> tuple[list[tuple[int, Any]], bool]:
        with self._lock:
            assert self.reader is not None
            docs = list(self.reader.indexed_documents(self._next))
            if docs:
                self._next = docs[-1][0] + 1
            return docs, self.reader.unfinished

    def image_png(self, image_id: str) -> bytes | None:
        """PNG of an image stored in the file (by id, looked up in the documents read so far)."""
        pos = self.state.book.positions.get(image_id)
        if pos is None:
            return None
        with self._lock:
            if self.reader is None:
                return None
            docs = self.reader.indexed_documents(pos)
            got = next(docs, None)
            del docs  # the generator (and the datasets it opened) goes while the lock is held
        if got is None or got[0] != pos or not isinstance(got[1], ImageDoc) or got[1].image_id != image_id:
            return None
        return encode_png(got[1].pixels)

    def close(self) -> None:
        with self._lock:
            if self.reader is not None:
                with contextlib.suppress(Exception):
                    self.reader.close()
                self.reader = None
