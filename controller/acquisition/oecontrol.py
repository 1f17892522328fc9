"""The Open Ephys GUI under the session's control, through the GUI's HTTP API (port 37497).

The session names the recording after its session id (``PUT /api/recording`` with
``base_text``; the prepend/append texts are cleared, and the record nodes' parent folder is set
when ``directory`` is given), switches the GUI to ``RECORD`` (``PUT /api/status {"mode":
"RECORD"}``) before its first block, and back to ``ACQUIRE`` (or ``IDLE``) after the last,
also when it fails or is aborted. Endpoints and payloads are those of
``open_ephys.control.OpenEphysHTTPServer`` (open-ephys-python-tools); that class is synchronous
(``requests`` without timeouts, port fixed to 37497, errors printed), so this client speaks the
same API with httpx, asynchronously, with timeouts, and turns every failure into an
:class:`~wire.errors.AcquisitionError`.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from wire.errors import AcquisitionError

log = logging.getLogger(__name__)

__all__ = ["MODES", "OpenEphysControl"]

MODES = ("IDLE", "ACQUIRE", "RECORD")
DEFAULT_PORT = 37497


def _base_url(url: str) -> str:
    """``http://host:port`` of ``url`` (a bare ``host`` or ``host:port`` is accepted; default port 37497)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AcquisitionError(f"acquisition.control must be the GUI's HTTP address (http://HOST:37497), not {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port or DEFAULT_PORT}"


class OpenEphysControl:
    """``async with OpenEphysControl(url) as oe:`` then ``prepare(session_id)``, ``record()``, ``stop()``."""

    def __init__(self, url: str, *, directory: str | None = None, stop_mode: str = "ACQUIRE",
                 timeout: float = 5.0) -> None:
        if stop_mode not in ("IDLE", "ACQUIRE"):
            raise AcquisitionError(f"stop mode must be IDLE or ACQUIRE, not {stop_mode!r}")
        self.url = _base_url(url)
        self.directory = directory
        self.stop_mode = stop_mode
        self.timeout = timeout
        self.recording = False
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> OpenEphysControl:
        self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(self, endpoint: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET ``endpoint`` (PUT with ``payload``, JSON as the GUI expects); its JSON answer."""
        if self._client is None:
            raise AcquisitionError("OpenEphysControl used outside 'async with'")
        what = f"{'PUT' if payload is not None else 'GET'} {self.url}{endpoint}"
        try:
            if payload is None:
                resp = await self._client.get(endpoint)
            else:
                resp = await self._client.put(endpoint, json=payload)
            resp.raise_for_status()
            data = resp.json()
        except httpx.HTTPError as exc:
            raise AcquisitionError(f"Open Ephys GUI: {what} failed ({type(exc).__name__}: {exc}); is its HTTP "
                                   "server on (File > HTTP server, port 37497)?") from exc
        except ValueError as exc:
            raise AcquisitionError(f"Open Ephys GUI: {what} answered no JSON") from exc
        if not isinstance(data, dict):
            raise AcquisitionError(f"Open Ephys GUI: {what} answered {type(data).__name__}, not a JSON object")
        return data

    async def status(self) -> str:
        """The GUI's mode: IDLE, ACQUIRE or RECORD."""
        mode = (await self._send("/api/status")).get("mode")
        if mode not in MODES:
            raise AcquisitionError(f"Open Ephys GUI reported mode {mode!r}, not one of {MODES}")
        return str(mode)

    async def set_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise AcquisitionError(f"mode must be one of {MODES}, not {mode!r}")
        got = (await self._send("/api/status", {"mode": mode})).get("mode")
        if got != mode:
            raise AcquisitionError(f"Open Ephys GUI asked for {mode} answered mode {got!r}")
        return mode

    async def prepare(self, session_id: str) -> dict[str, Any]:
        """Name the next recording ``session_id`` (and set its parent folder); the GUI's recording info."""
        mode = await self.status()
        if mode == "RECORD":
            raise AcquisitionError("Open Ephys GUI is already recording: stop that recording before the session "
                                   "starts (it would not be named after this session)")
        info = await self._send("/api/recording", {"prepend_text": "", "append_text": "", "base_text": session_id})
        if self.directory is not None:
            info = await self._send("/api/recording", {"parent_directory": self.directory})
            for node in info.get("record_nodes") or []:
                node_id = node.get("node_id") if isinstance(node, dict) else None
                if node_id is not None:
                    await self._send(f"/api/recording/{node_id}", {"parent_directory": self.directory})
        if info.get("base_text") not in (None, session_id):
            raise AcquisitionError(f"Open Ephys GUI kept recording name {info.get('base_text')!r}, not {session_id!r}")
        log.info("Open Ephys at %s: next recording %r%s (mode %s)", self.url, session_id,
                 f" in {self.directory}" if self.directory else "", mode)
        return info

    async def record(self) -> None:
        """Start recording (from IDLE the GUI starts acquisition too)."""
        await self.set_mode("RECORD")
        self.recording = True

    async def stop(self) -> None:
        """Stop recording: back to ``stop_mode`` (ACQUIRE keeps the signal flowing; IDLE stops it)."""
        if self.recording:
            await self.set_mode(self.stop_mode)
            self.recording = False
