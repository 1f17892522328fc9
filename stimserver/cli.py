"""``python -m stimserver`` / ``cortexloop stimserver``: run the stimulus server.

Mount it in another typer app with ``app.command("stimserver")(stimserver.cli.run)`` (or
``app.add_typer(stimserver.cli.app, name="stimserver")``). Once bound, the server prints one line
``stimserver ready rpc=<endpoint> events=<endpoint>`` on stdout (``tcp://...:0`` picks free ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from stimserver.gaze import make_gaze_source
from stimserver.markers import MarkerOutlet
from stimserver.presenter import PHOTODIODE_CORNERS, MonitorProfile, Presenter, PresenterConfig
from stimserver.reward import make_reward_line
from stimserver.server import StimServer
from wire import lslconfig
from wire.errors import CortexloopError
from wire.security import CurveServer, check_bind, check_server_keys, curve_server

app = typer.Typer(add_completion=False, help="The PsychoPy stimulus server.")


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"{what} must look like 1920x1080, not {text!r}") from exc
    return w, h


def make_presenter(kind: str, config: PresenterConfig, *, fake_refresh_hz: float = 60.0,
                   fake_realtime: bool = True) -> Presenter:
    """The presenter named ``kind`` ('psychopy' or 'fake'); psychopy is imported only for 'psychopy'."""
    if kind == "psychopy":
        from stimserver.psychopy_presenter import PsychoPyPresenter

        return PsychoPyPresenter(config)
    if kind == "fake":
        from stimserver.fake_presenter import FakePresenter

        return FakePresenter(config, refresh_hz=fake_refresh_hz, realtime=fake_realtime)
    raise typer.BadParameter(f"presenter must be 'psychopy' or 'fake', not {kind!r}")


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1: a configuration error is not a traceback."""
    print(f"stimserver: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise typer.Exit(1)


def server_security(rpc: str, events: str, secret: Path | None, clients: Path | None,
                    insecure: bool) -> CurveServer | None:
    """The CURVE configuration of ``--curve-secret``/``--curve-clients``, checked before anything opens;
    endpoints other machines can reach need it (or ``--insecure``). Exits with one line otherwise."""
    try:
        curve = curve_server(secret, clients)
        if curve is not None:
            check_server_keys(curve)
        for endpoint in (rpc, events):
            check_bind(endpoint, curve, insecure, server="stimserver")
    except CortexloopError as exc:
        _fail(str(exc))
    return curve


async def serve(server: StimServer) -> None:
    """Run ``server`` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        status = "" if server.display_error is None else f" display_error: {server.display_error}"
        print(f"stimserver ready rpc={server.rpc_endpoint} events={server.events_endpoint}{status}", flush=True)
        await stop.wait()


@app.callback(invoke_without_command=True)
def run(
    rpc: Annotated[str, typer.Option(help="RPC (ROUTER) endpoint to bind")] = "tcp://127.0.0.1:5560",
    events: Annotated[str, typer.Option(help="trial-event (PUB) endpoint to bind")] = "tcp://127.0.0.1:5561",
    presenter: Annotated[str, typer.Option(help="psychopy | fake")] = "psychopy",
    fullscreen: Annotated[bool, typer.Option(help="full-screen window")] = False,
    size: Annotated[str | None, typer.Option(help="window size WxH in px (default: monitor resolution)")] = None,
    screen: Annotated[int, typer.Option(help="screen number")] = 0,
    monitor_distance_cm: Annotated[float, typer.Option(help="eye-to-screen distance (cm)")] = 57.0,
    monitor_width_cm: Annotated[float, typer.Option(help="visible screen width (cm)")] = 53.0,
    monitor_resolution: Annotated[str, typer.Option(help="screen resolution WxH in px")] = "1920x1080",
    image_size_deg: Annotated[float | None, typer.Option(help="image width in degrees (default: native pixels)")
                              ] = None,
    image_x_deg: Annotated[float, typer.Option(help="image centre x (deg)")] = 0.0,
    image_y_deg: Annotated[float, typer.Option(help="image centre y (deg)")] = 0.0,
    background: Annotated[float, typer.Option(min=0.0, max=1.0, help="background grey level 0..1")] = 0.5,
    photodiode_corner: Annotated[str, typer.Option(help="top-left|top-right|bottom-left|bottom-right")
                                 ] = "bottom-left",
    photodiode_size_px: Annotated[int, typer.Option(min=1, help="photodiode patch side (px)")] = 40,
    refresh_hz: Annotated[float | None, typer.Option(help="nominal refresh rate (default: measured)")] = None,
    fake_refresh_hz: Annotated[float, typer.Option(help="fake presenter's simulated refresh rate")] = 60.0,
    fake_realtime: Annotated[bool, typer.Option(help="fake presenter flips in real time")] = True,
    max_images: Annotated[int | None, typer.Option(min=1, help="cache bound: least recently used images beyond "
                                                   "it are dropped (default: unbounded)")] = None,
    curve_secret: Annotated[Path | None, typer.Option(help="this server's NAME.key_secret: CURVE on (with "
                                                      "--curve-clients)")] = None,
    curve_clients: Annotated[Path | None, typer.Option(help="folder of the allowed clients' public NAME.key "
                                                       "files")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow binding beyond loopback without CURVE")
                        ] = False,
    markers: Annotated[bool, typer.Option(help="publish trial onsets as an LSL Markers stream (for LabRecorder)")
                       ] = True,
    markers_name: Annotated[str, typer.Option(help="name of the LSL Markers stream")] = "cortexloop-markers",
    markers_source_id: Annotated[str, typer.Option(help="its LSL source_id (keep it per rig: LabRecorder "
                                                   "re-finds a restarted stream by it)")] = "cortexloop-stimserver",
    gaze: Annotated[str, typer.Option(help="eye tracker for awake blocks: none | lsl[:NAME][?source_id=ID] | "
                                      "iohub[:mouse] (docs/behavior.md)")] = "none",
    reward: Annotated[str, typer.Option(help="reward output: none | serial:PORT[?mode=command|rts|dtr&baud=N] | "
                                        "lsl[:NAME] | nidaqmx:LINE | labjack:CHANNEL (docs/behavior.md)")] = "none",
    log_level: Annotated[str, typer.Option(help="logging level")] = "INFO",
) -> None:
    """Serve stim.* commands on RPC and publish a TrialEvent per trial on EVENTS.

    Endpoints other machines can reach (not loopback or ipc://) are bound only with CURVE
    (--curve-secret and --curve-clients), or with --insecure."""
    if photodiode_corner not in PHOTODIODE_CORNERS:
        raise typer.BadParameter(f"--photodiode-corner must be one of {sorted(PHOTODIODE_CORNERS)}")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lslconfig.configure(log_level.upper() == "DEBUG")  # liblsl quiet (a parent's LSLAPICFG is kept)
    curve = server_security(rpc, events, curve_secret, curve_clients, insecure)
    config = PresenterConfig(
        monitor=MonitorProfile(distance_cm=monitor_distance_cm, width_cm=monitor_width_cm,
                               resolution=_pair(monitor_resolution, "--monitor-resolution")),
        size=_pair(size, "--size") if size else None, fullscreen=fullscreen, image_size_deg=image_size_deg,
        image_pos_deg=(image_x_deg, image_y_deg), background=background, photodiode_corner=photodiode_corner,
        photodiode_size_px=photodiode_size_px, refresh_hz=refresh_hz, screen=screen,
    )
    pres = make_presenter(presenter, config, fake_refresh_hz=fake_refresh_hz, fake_realtime=fake_realtime)
    outlet = MarkerOutlet(markers_name, markers_source_id) if markers else None
    try:
        gaze_source = make_gaze_source(gaze, monitor=config.monitor)
        reward_line = make_reward_line(reward)
        asyncio.run(serve(StimServer(pres, rpc, events, max_images=max_images, curve=curve, insecure=insecure,
                                     markers=outlet, gaze=gaze_source, reward=reward_line)))
    except CortexloopError as exc:  # e.g. an endpoint in use: one line, not a traceback
        _fail(str(exc))


def main() -> None:
    app()
