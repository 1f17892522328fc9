"""The dashboard's web app (Starlette): the page, its data as server-sent events, images, commands.

Routes: ``GET /`` the page (with operator credentials: a login form, then pause/resume/abort/reward
buttons), ``GET /static/<file>`` its script and style, ``GET /api/state`` every section as JSON,
``GET /api/events`` the sections as they change (``text/event-stream``: one ``data:`` line of JSON per
update, holding only the sections that changed), ``GET /api/image/<id>.png`` an image of the session
file by its id (a strict pattern; never a path), ``POST /api/login`` (``{"name", "password"}``: the
operator's bus password), ``POST /api/logout``, ``GET /api/whoami``, and
``POST /api/command/<pause|resume|abort|reward>`` (401 without a login; a reward's body may be
``{"duration_ms": N}``).

Who may command: only a person who logs in with the operator's password (the ``password`` of
``OUT/bus-operator.json``, which only the operator's account can read). The page carries no secret:
loading it gives nothing to command with. A login sets an HttpOnly, SameSite=Strict cookie naming a
random server-side session, so a page from another site can neither read nor send it; a request for
another host name (DNS rebinding) is refused by the host check. Each command names the person who
logged in (``issued_by``), so the session file records who paused, resumed, aborted or rewarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
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
CONTROLS = """<form id="login" class="login">
  <input id="login-name" maxlength="64" placeholder="your name" autocomplete="username" required>
  <input id="login-password" type="password" maxlength="256" placeholder="operator password"
         autocomplete="current-password" required>
  <button id="btn-login" type="submit">Log in</button>
  <span id="login-note"></span>
</form>
<div id="controls" class="controls" hidden>
  <span id="operator-name"></span>
  <button id="btn-logout" type="button">Log out</button>
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
    except (ValueError, RecursionError) as exc:
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


#: cookie of a logged-in operator (a random id of a server-side session); most sessions kept at once
COOKIE = "cortexloop_operator"
MAX_LOGINS = 64
#: a wrong password is answered after this long (slows guessing)
LOGIN_DELAY_S = 1.0


async def _login_fields(request: Request) -> tuple[str, str]:
    """(name, password) of a login request, or ValueError saying what is wrong."""
    raw = await request.body()
    if len(raw) > 4096:
        raise ValueError("a login's body is at most 4 KiB")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
        raise ValueError("the body must be JSON: {\"name\": ..., \"password\": ...}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not isinstance(body.get("password"), str):
        raise ValueError("give name and password as strings")
    name = " ".join(body["name"].split())
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise ValueError("name: 1 to 64 printable characters")
    if len(body["password"]) > 256:
        raise ValueError("password: at most 256 characters")
    try:
        body["password"].encode()
    except UnicodeEncodeError as exc:  # a lone surrogate (\ud800) is not text
        raise ValueError("password: not valid text") from exc
    return name, body["password"]


def create_app(state: DashboardState, *, bus: BusFollower | None = None, file: FileFollower | None = None,
               allowed_hosts: list[str] | None = None,
               password: Callable[[], str | None] | None = None) -> Starlette:
    """The app serving ``state``. ``bus`` sends the commands (only when ``state`` has controls) for a
    person logged in with ``password()`` (default: the bus login's password)."""
    controls = bool(state.session["controls"]) and bus is not None
    state.session["controls"] = controls
    operator_password = password or (lambda: bus.password if bus is not None else None)
    page = _static("index.html").replace("<!--CONTROLS-->", CONTROLS if controls else "")
    closing = asyncio.Event()
    logins: dict[str, str] = {}  # session id -> the name given at login

    def who(request: Request) -> str | None:
        return logins.get(request.cookies.get(COOKIE, ""))

    async def login(request: Request) -> Response:
        if not controls:
            return JSONResponse({"error": "this dashboard has no operator credentials"}, 403)
        try:
            name, given = await _login_fields(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        expected = operator_password()
        if not expected:
            return JSONResponse({"error": "the dashboard has not read the operator's credentials yet"}, 503)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            await asyncio.sleep(LOGIN_DELAY_S)
            log.warning("dashboard: a login as %r with a wrong password", name)
            return JSONResponse({"error": "wrong password"}, 403)
        sid = secrets.token_urlsafe(32)
        logins[sid] = name
        while len(logins) > MAX_LOGINS:
            logins.pop(next(iter(logins)))
        log.info("dashboard: %s logged in", name)
        reply = JSONResponse({"operator": name})
        reply.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
        return reply

    async def logout(request: Request) -> Response:
        logins.pop(request.cookies.get(COOKIE, ""), None)
        reply = JSONResponse({"operator": None})
        reply.delete_cookie(COOKIE, path="/")
        return reply

    async def whoami(request: Request) -> Response:
        return JSONResponse({"operator": who(request), "controls": controls}, headers={"Cache-Control": "no-store"})

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
        operator = who(request)
        if operator is None:
            return JSONResponse({"error": "log in with the operator's password first"}, 401)
        if kind not in COMMAND_NAMES:
            return JSONResponse({"error": f"unknown command {kind[:40]!r}"}, 404)
        fields: dict[str, Any] = {}
        if kind == "reward":
            try:
                fields = await _reward_fields(request)
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, 400)
        try:
            command_id = await bus.send(kind, f"{kind} from the dashboard", operator=operator, **fields)
        except BusError as exc:
            return JSONResponse({"error": str(exc)}, 503)
        log.info("dashboard: %s sent by %s (%s)", kind, operator, command_id)
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
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
        Route("/api/whoami", whoami),
    ], middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        lifespan=lifespan)
    app.state.logins = logins
    app.state.closing = closing
    return app

