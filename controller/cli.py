"""The ``cortexloop`` command line (typer). Subcommands arrive with the parts they drive."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller import __version__
from wire import lslconfig

app = typer.Typer(help="Closed-loop experiment control for visual neuroscience.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="ZeroMQ CURVE key files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()


def _mount(module: str, name: str, help_text: str) -> None:
    """Mount a sub-application (a typer app named ``app`` in ``module``) if its package is present."""
    try:
        sub = importlib.import_module(module).app
    except (ImportError, AttributeError):
        return
    app.add_typer(sub, name=name, help=help_text)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lslconfig.configure(verbose)  # liblsl's INFO lines only with -v (children inherit it)
    if not verbose:  # the embedded broker's libraries narrate every connection at INFO
        for noisy in ("amqtt", "transitions", "controller.state", "wire.transport"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def version() -> None:
    """Print the cortexloop version."""
    console.print(__version__)


@keys_app.command("generate")
def keys_generate(folder: Path, name: str) -> None:
    """Write NAME.key (public) and NAME.key_secret into FOLDER."""
    from wire.security import generate_keypair

    public, secret = generate_keypair(folder, name)
    console.print(f"public: {public}\nsecret: {secret} (keep it private; mode 600)")


@keys_app.command("generate-rig")
def keys_generate_rig(folder: Path) -> None:
    """Write the key pairs a rig file's ``keys: {folder: FOLDER}`` names by default: controller,
    stimserver, modelserver, virtualrig. Existing pairs are kept."""
    from wire.security import generate_keypair

    for name in ("controller", "stimserver", "modelserver", "virtualrig"):
        if (folder / f"{name}.key_secret").exists():
            console.print(f"{name}: kept {folder / (name + '.key_secret')}")
            continue
        public, _ = generate_keypair(folder, name)
        console.print(f"{name}: {public}")
    console.print(f"rig file: keys: {{folder: {folder}}}")


@app.command()
def inspect(session: Path, documents: Annotated[bool, typer.Option(help="print every document")] = False) -> None:
    """Summarise a session file: documents by kind, trials, counts, problems.

    Every damaged part that was skipped is printed (position and cause) and the exit status is 1
    when there is any (docs/store.md, "Damaged files")."""
    from rich.markup import escape

    from controller.store import SessionReader, damage_that_matters

    with SessionReader(session) as reader:
        kinds: dict[str, int] = {}
        for doc in reader.documents():
            kinds[doc.kind] = kinds.get(doc.kind, 0) + 1
            if documents:
                console.print_json(json.dumps(doc.model_dump(mode="json", exclude={"pixels", "counts"})))
        damage = reader.damage
    table = Table(title=str(session))
    table.add_column("document")
    table.add_column("count", justify="right")
    for k, n in kinds.items():
        table.add_row(k, str(n))
    lost: dict[str, int] = {}
    for d in damage:
        if d.index is not None:
            key = f"{d.kind or 'unknown kind'} (damaged, skipped)"
            lost[key] = lost.get(key, 0) + (d.last - d.index + 1 if d.last is not None else 1)
    for k, n in lost.items():
        table.add_row(f"[red]{escape(k)}[/red]", f"[red]{n}[/red]")
    console.print(table)
    for d in damage:
        console.print(f"[red]problem:[/red] {escape(str(d))}", soft_wrap=True)
    if damage:
        serious = damage_that_matters(damage)
        console.print(f"[red]{len(damage)} damaged part(s) skipped[/red]; "
                      + (f"{len(serious)} of them matter for replay and export" if serious else
                         "none of them matters for replay or export"), soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def smoke(out: Annotated[Path, typer.Option(help="folder for the session file")] = Path("out/smoke")) -> None:
    """Start a server, exchange typed messages and an event stream, and write a session file."""
    from controller.smoke import run_smoke

    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run_smoke(out, console))


@app.command()
def demo(
    data: Annotated[Path | None, typer.Option(help="a folder in the layout of the V4 data (default: "
                                                 "../shared/data/v4 if present, else synthetic)")] = None,
    out: Annotated[Path, typer.Option(help="where session files, model data and summary.json go")] = Path("out/demo"),
    sessions: Annotated[int | None, typer.Option(help="sysid sessions before the causal test")] = None,
    device: Annotated[str, typer.Option(help="modelserver device: auto, cpu, cuda, cuda:1, ...")] = "auto",
    ground_truth: Annotated[str | None, typer.Option(
        help="the session of --data whose compact models are the hidden neurons (default: the first)")] = None,
    neurons: Annotated[str | None, typer.Option(
        help="which of its compact models are the hidden neurons: 8-15, 0,3,5-8 (default: the first 8)")] = None,
    compare: Annotated[bool, typer.Option(
        help="also run, beside the day (in OUT/random), the sessions with random picks in place of the active "
             "ones, and each session's model without the shared core (the 'does the loop help' figures)")] = True,
    awake: Annotated[bool, typer.Option(
        help="the whole day on an awake virtual monkey (the behavior section of "
             "protocols/examples/rigs/awake_virtual.yaml: gaze, fixation, reward, invalid trials shown again)")] = False,
) -> None:
    """The closed loop on embedded defaults: sysid sessions with retraining, then the causal battery
    (maximize natural and synthesized, adversarial +/-, smooth- with its control), scored on the ground truth."""
    from controller.demo import DEFAULT_DATA, parse_neurons
    from controller.demo import main as demo_main

    if data is None and DEFAULT_DATA.is_dir():
        data = DEFAULT_DATA
    try:
        chosen = parse_neurons(neurons) if neurons else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--neurons") from exc
    demo_main(data, out, sessions, device, ground_truth, chosen, compare, awake)


@app.command()
def report(
    sessions: Annotated[list[Path], typer.Argument(help="session files (HDF5)")],
    out: Annotated[Path, typer.Option(help="folder for index.html and its figures")] = Path("out/report"),
    summary: Annotated[Path | None, typer.Option(help="a demo's summary.json (ground-truth figures)")] = None,
) -> None:
    """An HTML page with PNG figures: model versions, causal tests, image grids, timing.

    Damaged records are skipped and listed on the page ("damaged records") and here; the exit
    status is then 1 (the page is written all the same)."""
    from rich.markup import escape

    from controller.report import write_report

    problems: list[str] = []
    page = write_report(sessions, out, summary, problems=problems)
    for p in problems:
        console.print(f"[red]problem:[/red] {escape(p)}", soft_wrap=True)
    console.print(f"report: {page}")
    if problems:
        console.print(f"[red]{len(problems)} damaged part(s) skipped[/red]: the page lists them under "
                      "'damaged records'", soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def simulate(files: list[Path], neurons: Annotated[int, typer.Option(help="simulated neurons")] = 20) -> None:
    """Run protocol files without any server and print the steps they would take (a schedule: its stages)."""
    from protocols.simulate import SimConfig, simulate_file

    for report in simulate_file(*files, config=SimConfig(n_neurons=neurons)):
        console.print(report.text())


@app.command()
def run(
    protocol: Annotated[Path, typer.Argument(help="protocol file (YAML or TOML)")],
    config: Annotated[Path | None, typer.Option(help="rig configuration (YAML); default: embedded")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the session file")] = None,
    session_id: Annotated[str | None, typer.Option(help="session name (default: time_rig_protocol)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the session file of --session-id")] = False,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE: change a protocol value (repeatable; e.g. n_blocks=2, active.n_images=10); "
                      "validated like the file and recorded in the session")] = None,
    dashboard: Annotated[int | None, typer.Option(
        "--dashboard", metavar="PORT", help="serve this session's live dashboard on http://127.0.0.1:PORT "
                                            "(0: any free port; its address is printed)")] = None,
) -> None:
    """Run a protocol as one recording session (the closed loop), with progress on the terminal;
    a schedule (``protocol: schedule``) runs its stages, each as its own session.

    The rig file (--config) names the parts: stimserver, acquisition (a virtual rig process on
    embedded defaults), modelserver (a child process whose data folder persists under --out),
    images and bus; every part it does not name runs on its embedded default."""
    from controller.assembly import run_protocol
    from controller.config import load_config
    from controller.progress import SessionProgress
    from controller.schedule import run_schedule
    from protocols.library.schedule import ScheduleProtocol
    from protocols.loader import load_protocol

    overrides = list(set_ or [])
    proto = load_protocol(protocol, overrides=overrides)
    cfg = load_config(config)
    if out is not None:
        cfg.out_dir = out
    if session_id is not None:
        cfg.session_id = session_id
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    record = {"protocol_file": str(protocol), "overrides": overrides, "rig_file": str(config) if config else None}
    if isinstance(proto, ScheduleProtocol) and dashboard is not None:
        raise typer.BadParameter("--dashboard follows one session; for a schedule run `cortexloop dashboard "
                                 "--credentials OUT/bus-operator.json` beside it")
    if isinstance(proto, ScheduleProtocol):  # stages, each its own session (docs/protocols.md, "Schedules")
        with SessionProgress(console) as progress:
            outcome = asyncio.run(run_schedule(proto, cfg, resume=resume, on_status=progress.update, record=record))
        colour = {"success": "green", "abort": "yellow", "unmet": "yellow"}.get(outcome.status, "red")
        console.print(f"[{colour}]{outcome.status}[/{colour}]: schedule {outcome.schedule_id}, "
                      f"{len(outcome.sessions)} session(s), qualified neurons {outcome.qualified}; state in "
                      f"{outcome.state_path}" + (f" ({outcome.reason})" if outcome.reason else ""), soft_wrap=True)
        if outcome.status == "fail":
            raise typer.Exit(1)
        return

    async def session() -> tuple[Any, Path]:
        if dashboard is None:
            return await run_protocol(proto, cfg, resume=resume, on_status=progress.update, record=record)
        from controller.dashboard.child import session_dashboard

        async with session_dashboard(cfg, proto.protocol, dashboard, say=console.print):
            return await run_protocol(proto, cfg, resume=resume, on_status=progress.update, record=record)

    with SessionProgress(console) as progress:
        stop, path = asyncio.run(session())
    colour = {"success": "green", "abort": "yellow"}.get(stop.exit_status, "red")
    console.print(f"[{colour}]{stop.exit_status}[/{colour}]: {stop.n_trials} trials with counts in {path}"
                  + (f" ({stop.reason})" if stop.reason else ""))
    if stop.exit_status == "fail":
        raise typer.Exit(1)


@app.command()
def replay(
    sessions: Annotated[list[Path], typer.Argument(help="session files, replayed in this order")],
    out: Annotated[Path, typer.Option(help="folder for the replayed session files")] = Path("out/replay"),
    policy: Annotated[str | None, typer.Option(
        help="active-learning strategy to use instead of the recorded one: ensemble_variance, max_entropy, "
             "random (what would it have picked?)")] = None,
    modelserver: Annotated[str, typer.Option(
        help="auto (start one if the protocol has model steps), start, none, or RPC,EVENTS")] = "auto",
    data: Annotated[Path | None, typer.Option(help="the demo's V4 data folder (its image pool), when "
                                                 "replaying demo sessions")] = None,
    device: Annotated[str, typer.Option(help="modelserver device: auto, cpu, cuda, ...")] = "auto",
    seed: Annotated[int | None, typer.Option(help="session seed (default: the recorded one)")] = None,
) -> None:
    """Re-drive stored sessions: recorded counts answer, the display-free presenter shows, the model learns."""
    from controller.replay_cli import run_replay

    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_replay(sessions, out, policy=policy, modelserver=modelserver, data=data, device=device,
                          seed=seed, console=console)
    if any(o.stop.exit_status == "fail" for o in outcomes):
        raise typer.Exit(1)


@app.command()
def export(
    sessions: Annotated[list[Path], typer.Argument(help="session file(s) (HDF5)")],
    nwb: Annotated[bool, typer.Option("--nwb", help="write an NWB file beside each session (for DANDI)")] = False,
    dandi: Annotated[Path | None, typer.Option(help="write NWB files into this folder in dandi's layout "
                                                    "(sub-<subject>/sub-<subject>_ses-<session>_*.nwb) and check "
                                                    "it as `dandi validate` does")] = None,
    out: Annotated[Path | None, typer.Option(help="output file with --nwb and one session (default: "
                                                  "SESSION.nwb)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
    experimenter: Annotated[list[str] | None, typer.Option(help='"Last, First"; repeatable (default: the rig '
                                                                "file's)")] = None,
    lab: Annotated[str | None, typer.Option(help="lab name (default: the rig file's)")] = None,
    institution: Annotated[str | None, typer.Option(help="institution (default: the rig file's)")] = None,
    species: Annotated[str | None, typer.Option(help="default: the rig file's, else Macaca mulatta")] = None,
    age: Annotated[str | None, typer.Option(help="ISO 8601 duration, e.g. P7Y (default: the rig file's)")] = None,
    sex: Annotated[str | None, typer.Option(help="M, F, U or O (default: the rig file's, else U)")] = None,
    allow_damaged: Annotated[bool, typer.Option(
        help="export what can be read even when records the export needs are damaged (exit status "
             "stays 1)")] = False,
) -> None:
    """Export session files for sharing: NWB (checked with nwbinspector), or a DANDI folder (--dandi DIR).

    Subject, lab and experimenter come from the rig file each session recorded; options replace them.
    Damaged records are skipped and printed. When the damage matters (a start, block, image, trial
    or response record, one of unknown kind, or the file itself) nothing is written and the exit
    status is 1; with --allow-damaged the file is written all the same, still with status 1. An
    nwbinspector violation (--nwb) or a `dandi validate` error (--dandi) also gives exit status 1."""
    from rich.markup import escape

    from controller.nwb import check_dandiset, check_nwb, export_dandi, export_nwb
    from controller.store import Damage, DamagedSession, damage_that_matters

    if nwb == (dandi is not None):
        raise typer.BadParameter("choose one format: --nwb or --dandi DIR")
    if out is not None and (dandi is not None or len(sessions) != 1):
        raise typer.BadParameter("--out names the file of one session exported with --nwb")
    damage: list[Damage] = []
    meta: dict[str, Any] = {"lab": lab, "institution": institution, "experimenter": experimenter,
                            "species": species, "age": age, "sex": sex}
    try:
        if dandi is not None:
            paths = export_dandi(sessions, dandi, overwrite=overwrite, allow_damaged=allow_damaged, damage=damage,
                                 **meta)
        else:
            paths = [export_nwb(s, out or s.with_suffix(".nwb"), overwrite=overwrite, allow_damaged=allow_damaged,
                                damage=damage, **meta) for s in sessions]
    except DamagedSession as exc:
        for d in exc.damage:
            console.print(f"[red]problem:[/red] {escape(str(d))}", soft_wrap=True)
        console.print(f"[red]not exported[/red]: {len(exc.damage)} damaged part(s) of {escape(str(exc.path))} "
                      "that an export needs (--allow-damaged exports what can be read)", soft_wrap=True)
        raise typer.Exit(1) from None
    for d in damage:
        console.print(f"[{'red' if d.matters() else 'yellow'}]problem:[/] {escape(str(d))}", soft_wrap=True)
    serious = damage_that_matters(damage)
    if damage:
        console.print(f"{len(damage)} damaged part(s) skipped (listed in the NWB file's notes)"
                      + (f"; [red]{len(serious)} of them matter[/red]" if serious else ""), soft_wrap=True)
    failed = bool(serious)
    for path in paths if dandi is None else []:  # a dandiset folder is checked as a whole below
        problems = check_nwb(path)
        for p in problems:
            console.print(f"[yellow]nwbinspector:[/yellow] {escape(p)}", soft_wrap=True)
        console.print(f"NWB file: {escape(str(path))}" + ("" if problems else " (nwbinspector: no violations)"))
        failed = failed or bool(problems)
    if dandi is not None:
        errors, warnings = check_dandiset(dandi)
        for line in warnings:
            console.print(f"[yellow]dandi validate:[/yellow] {escape(line)}", soft_wrap=True)
        for line in errors:
            console.print(f"[red]dandi validate:[/red] {escape(line)}", soft_wrap=True)
        for path in paths:
            console.print(f"NWB file: {escape(str(path))}", soft_wrap=True)
        console.print(f"dandiset folder: {escape(str(dandi))} (dandi validate: "
                      + (f"[red]{len(errors)} error(s)[/red])" if errors else "no errors)"), soft_wrap=True)
        failed = failed or bool(errors)
    if failed:
        raise typer.Exit(1)


@app.command("import-v4")
def import_v4(
    sessions: Annotated[list[str], typer.Argument(help="session names, e.g. 190923 210325")],
    data: Annotated[Path, typer.Option(help="a folder in the layout of ../shared/data/v4")] = Path("../shared/data/v4"),
    out: Annotated[Path, typer.Option(help="folder for the session files (v4-<session>.h5)")] = Path("out/v4"),
    responses: Annotated[str, typer.Option(help="auto (raw when present), avg or raw")] = "auto",
    block_size: Annotated[int, typer.Option(help="images per block")] = 300,
    overwrite: Annotated[bool, typer.Option(help="replace existing files")] = False,
) -> None:
    """Turn recorded V4 sessions (images + counts) into session files that can be replayed."""
    from controller.importer import import_v4 as do_import

    if responses not in ("auto", "avg", "raw"):
        raise typer.BadParameter("--responses takes auto, avg or raw")
    for s in sessions:
        path = do_import(data, s, out, kind=responses, block_size=block_size,  # type: ignore[arg-type]
                         overwrite=overwrite)
        console.print(f"{s}: {path}")


def _operator(credentials: Path | None, broker: str | None, rig: str | None, username: str | None,
              password: str | None) -> Any:
    from controller.bus.mqtt import MqttOperator

    info: dict[str, Any] = json.loads(credentials.read_text()) if credentials else {}
    host, _, port = (broker or info.get("broker", "127.0.0.1:1883")).partition(":")
    return MqttOperator(rig or info.get("rig", "rig1"), host, int(port or 1883),
                        username=username or info.get("username"), password=password or info.get("password"))


CredOpt = Annotated[Path | None, typer.Option(help="bus-operator.json written by an embedded broker")]
BrokerOpt = Annotated[str | None, typer.Option(help="MQTT broker host:port")]
RigOpt = Annotated[str | None, typer.Option(help="rig name")]
UserOpt = Annotated[str | None, typer.Option(help="MQTT user name")]
PassOpt = Annotated[str | None, typer.Option(help="MQTT password", envvar="CORTEXLOOP_MQTT_PASSWORD")]


@app.command()
def status(credentials: CredOpt = None, broker: BrokerOpt = None, rig: RigOpt = None, username: UserOpt = None,
           password: PassOpt = None, timeout: float = 5.0) -> None:
    """Print a rig's current session status and its latest model progress (both retained on MQTT)."""
    import contextlib
    import time

    from wire.errors import BusError
    from wire.topics import BusMessage, ModelProgress, SessionStatus

    model_wait = min(1.0, timeout)  # retained messages follow the subscription at once; none may exist

    def progress_line(p: ModelProgress, session_id: str | None) -> str:
        epoch = "" if p.epoch is None else f" epoch {p.epoch}" + ("" if p.max_epochs is None else f"/{p.max_epochs}")
        parts = [f"model: {p.task}" + (f" ({p.scope})" if p.scope else "") + epoch, f"{p.fraction:.0%}"]
        if p.val_r is not None:
            parts.append(f"val r {p.val_r:.3f}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.4g}")
        parts.append(f"version {p.model_version}" if p.model_version else "in progress")
        if p.message:
            parts.append(p.message)
        parts.append(f"{max(0.0, time.time() - p.time):.0f} s ago")
        if p.session_id and p.session_id != session_id:
            parts.append(f"from session {p.session_id}")
        return ", ".join(parts)

    async def go() -> None:
        async with _operator(credentials, broker, rig, username, password) as op:
            latest: dict[type[BusMessage], BusMessage] = {}
            stream = op.statuses()
            loop = asyncio.get_running_loop()

            async def read_until(kind: type[BusMessage], seconds: float) -> None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(loop.time() + seconds):
                        while kind not in latest:
                            msg = await anext(stream)
                            if isinstance(msg, SessionStatus | ModelProgress):
                                latest[type(msg)] = msg

            await read_until(SessionStatus, timeout)
            msg = latest.get(SessionStatus)
            if not isinstance(msg, SessionStatus):
                raise BusError(f"no status from rig {op.rig!r} within {timeout} s")
            await read_until(ModelProgress, model_wait)
            console.print_json(msg.model_dump_json())
            progress = latest.get(ModelProgress)
            if isinstance(progress, ModelProgress):
                console.print(progress_line(progress, msg.session_id), markup=False, highlight=False, soft_wrap=True)

    asyncio.run(go())


def _command(kind: str) -> Any:
    def command(reason: Annotated[str, typer.Option(help="why (recorded in the session)")] = "",
                credentials: CredOpt = None, broker: BrokerOpt = None, rig: RigOpt = None,
                username: UserOpt = None, password: PassOpt = None) -> None:
        from wire.topics import COMMAND_CLASSES

        async def go() -> None:
            async with _operator(credentials, broker, rig, username, password) as op:
                await op.send(COMMAND_CLASSES[kind](reason=reason, issued_by=username))
            console.print(f"{kind} sent")

        asyncio.run(go())

    command.__doc__ = f"Send {kind} to a rig's running session over MQTT."
    return command


for _kind in ("pause", "resume", "abort"):
    app.command(_kind)(_command(_kind))


@app.command()
def dashboard(
    session: Annotated[Path | None, typer.Argument(help="a session file (shown live while it is written)")] = None,
    sessions_dir: Annotated[Path | None, typer.Option(
        help="folder of session files: the one named by the bus's session id is shown (default: the folder "
             "of --credentials)")] = None,
    credentials: CredOpt = None, broker: BrokerOpt = None, rig: RigOpt = None, username: UserOpt = None,
    password: PassOpt = None,
    host: Annotated[str, typer.Option(help="address to serve on. HTTP has no CURVE: a non-loopback address "
                                           "needs --insecure (anyone who reaches it sees the session and its "
                                           "buttons)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8050,
    insecure: Annotated[bool, typer.Option(help="serve a non-loopback --host without authentication")] = False,
    read_only: Annotated[bool, typer.Option(help="no pause/resume/abort buttons, even with operator "
                                                 "credentials")] = False,
    not_before: Annotated[float | None, typer.Option(hidden=True)] = None,
) -> None:
    """Serve a live dashboard of a rig's session in the browser (docs/dashboard.md).

    It follows the rig on the bus (with --credentials or --broker/--username) and the session file;
    with operator credentials the page has pause, resume and abort buttons. A finished session file
    alone is shown whole, nothing live."""
    from controller.dashboard import DashboardOptions, serve

    if session is None and sessions_dir is None and credentials is not None:
        sessions_dir = credentials.parent
    if session is None and sessions_dir is None and not (broker or username):
        raise typer.BadParameter("give a session file, --sessions-dir, or a bus login (--credentials, --broker)")
    opts = DashboardOptions(session=session, sessions_dir=sessions_dir, credentials=credentials, broker=broker,
                            rig=rig, username=username, password=password, not_before=not_before, host=host,
                            port=port, insecure=insecure, read_only=read_only)
    asyncio.run(serve(opts, ready=lambda url: print(f"dashboard ready url={url}", flush=True)))


_mount("stimserver.cli", "stimserver", "Run the PsychoPy stimulus server.")
_mount("modelserver.cli", "modelserver", "Run the model server.")
_mount("virtualrig.cli", "virtualrig", "Run the virtual rig (model neurons over LSL).")


def entry() -> None:
    """Console entry point: domain errors are reported in one line, not as a traceback."""
    from wire.errors import CortexloopError

    try:
        app()
    except CortexloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
