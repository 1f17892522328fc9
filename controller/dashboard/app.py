"""The dashboard's web app (Starlette): the page, its data as server-sent events, images, commands.

Routes: ``GET /`` the page (pause/resume/abort buttons only when the dashboard holds operator
credentials), ``GET /static/<file>`` its script and style, ``GET /api/state`` every section as
JSON, ``GET /api/events`` the sections as they change (``text/event-stream``: one ``data:`` line of
JSON per update, holding only the sections that changed), ``GET /api/image/<id>.png`` an image of
the session file by its id (a strict pattern; never a path), ``POST /api/command/<pause|resume|abort|reward>``
(403 without operator credentials or without the page's token in ``X-Cortexloop-Token``; a reward's body may
be ``{"duration_ms": N}``).

A page from another site cannot send commands: it cannot read the token (same-origin policy), and
a request for another host name (DNS rebinding) is refused by the host check.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from controller.dashboard.follow import BusFollower, FileFollower
from controller.dashboard.png import valid_image_id
from controller.dashboard.state import DashboardState
from wire.errors import BusError
from wire.topics import COMMAND_NAMES, RewardCommand

log = logging.getLogger(__name__)

#: the files under ``static/`` the app serves, with their media types
STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
#: seconds between updates of the clock-driven parts (time since the last trial, ETA) when nothing else changes
TICK = 1.0
CONTROLS = """<div id="controls" class="controls">
  <button id="btn-pause" data-command="pause">Pause</button>
  <button id="btn-resume" data-command="resume">Resume</button>
  <button id="btn-abort" data-command="abort" class="danger">Abort</button>
  <button id="btn-reward" data-command="reward" class="reward" title="a manual reward now">Reward</button>
  <input id="reward-ms" type="number" min="1" max="5000" step="10" placeholder="ms"
         title="reward length (ms); empty: the reward schedule's base length">
  <span id="command-note"></span>
</div>"""


def _static(name: str) -> str:
    return resources.files("controller.dashboard").joinpath("static", name).read_text(encoding="utf-8")


def clean(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(clean(obj), separators=(",", ":"), allow_nan=False, default=str)


async def _reward_fields(request: Request) -> dict[str, Any]:
    """A reward's optional ``{"duration_ms": N}`` body, checked as the command checks it (ValueError)."""
    body = await request.body()
    if len(body) > 1024:
        raise ValueError("a reward's body is at most 1 KiB")
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_constant=_not_json)
    except ValueError as exc:
        raise ValueError(f"not JSON ({str(exc)[:100]})") from exc
    if not isinstance(data, dict) or set(data) - {"duration_ms"}:
        raise ValueError('expected {"duration_ms": N} or nothing')
    value = data.get("duration_ms")
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("duration_ms: a number of milliseconds")
    try:
        cmd = RewardCommand(duration_ms=value)
    except ValidationError as exc:
        raise ValueError(f"duration_ms: {exc.errors(include_url=False)[0]['msg']}") from exc
    return {"duration_ms": cmd.duration_ms}


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def create_app(state: DashboardState, *, bus: BusFollower | None = None, file: FileFollower | None = None,
               allowed_hosts: list[str] | None = None, token: str | None = None) -> Starlette:
    """The app serving ``state``. ``bus`` sends the commands (only when ``state`` has controls)."""
    token = token or secrets.token_urlsafe(24)
    controls = bool(state.session["controls"]) and bus is not None
    state.session["controls"] = controls
    page = _static("index.html").replace("<!--CONTROLS-->", CONTROLS if controls else "").replace(
        "<!--TOKEN-->", f'<meta name="cortexloop-token" content="{html.escape(token)}">' if controls else "")
    closing = asyncio.Event()

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return PlainTextResponse("not found", 404)
        return Response(_static(name), media_type=STATIC[name])

    async def snapshot(request: Request) -> Response:
        return Response(dumps(state.snapshot()), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            watcher = state.watch()
            try:
                while not closing.is_set():
                    try:
                        await asyncio.wait_for(watcher.wake.wait(), TICK)
                    except TimeoutError:
                        watcher.touch("trials")
                        watcher.touch("block")
                    yield f"data: {dumps(state.snapshot(watcher.take()))}\n\n"
            finally:
                state.unwatch(watcher)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def image(request: Request) -> Response:
        image_id = request.path_params["image_id"]
        if not valid_image_id(image_id):
            return PlainTextResponse("invalid image id", 400)
        png = await asyncio.to_thread(file.image_png, image_id) if file is not None else None
        if png is None:
            return PlainTextResponse("no such image in the session file", 404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=86400, immutable"})

    async def command(request: Request) -> Response:
        kind = request.path_params["kind"]
        if not controls or bus is None:
            return JSONResponse({"error": "this dashboard has no operator credentials"}, 403)
        if not secrets.compare_digest(request.headers.get("x-cortexloop-token", ""), token):
            return JSONResponse({"error": "missing or wrong X-Cortexloop-Token"}, 403)
        if kind not in COMMAND_NAMES:
            return JSONResponse({"error": f"unknown command {kind[:40]!r}"}, 404)
        fields: dict[str, Any] = {}
        if kind == "reward":
            try:
                fields = await _reward_fields(request)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, 400)
        try:
            command_id = await bus.send(kind, f"{kind} from the dashboard", **fields)
        except BusError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        log.info("dashboard: %s sent (%s)", kind, command_id)
        return JSONResponse({"sent": kind, "command_id": command_id})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        closing.set()

    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "::1"]
    app = Starlette(routes=[
        Route("/", index),
        Route("/static/{name}", static),
        Route("/api/state", snapshot),
        Route("/api/events", events),
        Route("/api/image/{image_id}.png", image),
        Route("/api/command/{kind}", command, methods=["POST"]),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        lifespan=lifespan)
    app.state.token = token
    app.state.closing = closing
    return app

