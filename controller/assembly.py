"""One assembly: a running session built from a rig configuration, torn down whatever happens.

``cortexloop run``, ``cortexloop demo`` and ``cortexloop replay`` all go through :func:`assemble`.
The parts are built first, each from its section of :class:`~controller.config.RunConfig`
(started here as a child process, or reached at its endpoints), then connected in one place. The
stimserver (then the virtual rig, which needs its events endpoint) and the modelserver start side
by side while the image library loads; if one fails, the others are stopped and its error is raised.

============  ==========================================================================
stimserver    ``stim``: a ``python -m stimserver`` child, or a running server's endpoints
modelserver   ``model``: a ``python -m modelserver serve`` child on a persistent data folder,
              a running server's endpoints, or none (model-made image sets fall back)
acquisition   ``acquisition``: a ``python -m virtualrig`` child streaming over LSL (the
              embedded default), a rig's LSL streams, or Open Ephys; the sync channel
              named there builds the clock map from stimulus onsets to acquisition time
images        ``images``: a pool file, a V4-layout folder, or synthetic images
bus           ``bus``: the embedded MQTT broker, a lab's broker, or none
============  ==========================================================================

A replay passes its recording (blocks as recorded; recorded counts answer in place of an
acquisition source); tests pass ``source_factory`` to use an in-process rig. The controller
never holds the ground truth: a virtual rig is reached only through its RPC (it is sent the
pixels of the images loaded into the stimserver, and a scorer may ask it for its rates).

A session file that already exists is resumed (``resume=True``), never overwritten; a session
that fails before its start document is written leaves no file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner, BinningConfig
from controller.acquisition.clock import ClockMap, ClockSync
from controller.children import Child
from controller.config import RunConfig
from controller.engine import Engine, EngineConfig, ModelLink, Recording
from controller.images import ImageLibrary, synthetic_images
from controller.links import RigLink, StimLink
from controller.store import SessionReader, SessionWriter
from protocols.library import ProtocolBase
from protocols.steps import Plan
from wire.documents import EventDoc, StartDoc, StopDoc
from wire.errors import DisplayError, ServerUnavailable, StoreError
from wire.security import CurveClient, check_client_keys, check_server_keys, is_local_endpoint
from wire.transport import RpcClient

log = logging.getLogger(__name__)

__all__ = ["Session", "assemble", "build_images", "run_protocol"]

#: (events endpoint of the stimserver, the engine's pixel store) -> an acquisition source
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
SourceFactory = Callable[[str, dict[str, np.ndarray]], AcquisitionSource]


# --- images ----------------------------------------------------------------------------------------
def build_images(cfg: RunConfig) -> tuple[ImageLibrary, np.ndarray]:
    """(the library sessions draw from, the images kept back from it: ``images.holdout``)."""
    c = cfg.images
    if c.pool is not None:
        lib = ImageLibrary.from_pool(c.pool)
    elif c.v4_dir is not None:
        sessions = c.v4_sessions or sorted(p.stem.removeprefix("images_")
                                           for p in (c.v4_dir / "images").glob("images_*.zip"))
        lib = ImageLibrary.from_v4(c.v4_dir, sessions)
    else:
        lib = ImageLibrary(synthetic_images(c.synthetic + c.holdout, seed=cfg.seed), name="synthetic")
    if not c.holdout:
        return lib, np.zeros((0, *lib.images.shape[1:]), np.uint8)
    if c.holdout >= len(lib):
        raise StoreError(f"images.holdout {c.holdout} leaves nothing of the {len(lib)} images to show")
    order = np.random.default_rng(c.holdout_seed).permutation(len(lib))
    held, rest = order[:c.holdout], np.sort(order[c.holdout:])
    return ImageLibrary(lib.images[rest], [lib.ids[i] for i in rest], name=lib.name), lib.images[held]


# --- the running session ---------------------------------------------------------------------------
@dataclass
class Session:
    """The running parts of one session (``async with assemble(...) as session``)."""

    engine: Engine
    store: SessionWriter
    path: Path
    config: RunConfig
    protocol: ProtocolBase
    images: ImageLibrary
    heldback: np.ndarray
    model_endpoints: tuple[str, str] | None = None
    rig: RigLink | None = None
    children: dict[str, Child] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    def model_client(self, timeout: float = 120.0) -> RpcClient:
        """A client of the session's modelserver, with the rig file's keys (``async with``)."""
        if self.model_endpoints is None:
            raise ServerUnavailable("this session has no modelserver")
        rpc = self.model_endpoints[0]
        return RpcClient(rpc, timeout=timeout, curve=_client_keys(self.config, "model", rpc))

    async def run(self, plan: Plan | None = None) -> StopDoc:
        """Run the protocol's plan (or ``plan``, e.g. a replay's) to its stop document."""
        return await self.engine.run(plan if plan is not None else self.protocol.plan(),
                                     protocol=self.protocol.model_dump(mode="json"),
                                     configuration={**self.config.model_dump(mode="json"), **self.record})


@contextlib.asynccontextmanager
async def assemble(cfg: RunConfig, protocol: ProtocolBase, *, resume: bool = False,
                   recording: Recording | None = None, source_factory: SourceFactory | None = None,
                   images: ImageLibrary | None = None, record: dict[str, Any] | None = None,
                   on_status: Callable[[str, dict[str, Any]], Any] | None = None,
                   wrap: Callable[[str, Any], Any] | None = None) -> AsyncIterator[Session]:
    """Build every part ``cfg`` names, connect them, yield the :class:`Session`, tear down.

    ``wrap(name, part)``, when given, may replace a part before the parts are connected (names:
    ``store``, ``stim``, ``models``, ``source``, ``rig``): a benchmark times them this way."""
    def w(name: str, part: Any) -> Any:
        return part if wrap is None or part is None else wrap(name, part)

    session_id = cfg.session_id or f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.rig}_{protocol.protocol}"
    path = cfg.out_dir / f"{session_id}.h5"
    store, docs = _open_store(path, resume)
    try:
        async with contextlib.AsyncExitStack() as stack:
            pixels: dict[str, np.ndarray] = {}
            children: dict[str, Child] = {}
            live = source_factory is None and recording is None

            # stream names of this session's own: two sessions on one machine never hear each other
            streams = _stream_names(cfg)

            async def stim_and_acquisition() -> tuple[str, str, tuple[AcquisitionSource, RigLink | None] | None]:
                rpc, events = await stack.enter_async_context(_stimserver(cfg, children, streams))
                acq = await stack.enter_async_context(
                    _acquisition(cfg, events, children, session_id, streams)) if live else None
                return rpc, events, acq

            async def library() -> tuple[ImageLibrary, np.ndarray]:
                if images is None:
                    return await asyncio.to_thread(build_images, cfg)
                return images, np.zeros((0, *images.images.shape[1:]), np.uint8)

            # the children start side by side (the rig needs the stimserver's events endpoint), and the
            # image library loads meanwhile: a session is ready in the time of its slowest part
            (rpc, events, acq), model_eps, (lib, heldback) = await _concurrently(
                stim_and_acquisition(), stack.enter_async_context(_modelserver(cfg, children)), library())
            stim = await stack.enter_async_context(StimLink(rpc, events, curve=_client_keys(cfg, "stim", rpc)))
            models: ModelLink | None = None
            if model_eps is not None:
                models = await stack.enter_async_context(_model_link(cfg, model_eps, session_id, pixels, lib))
            rig: RigLink | None = None
            if source_factory is not None:
                source = source_factory(events, pixels)
            elif recording is not None:
                from controller.replay import SilentSource

                source = SilentSource()
            else:
                assert acq is not None
                source, rig = acq
            rig_part = w("rig", rig)
            awake = cfg.behavior
            engine = Engine(EngineConfig(session_id=session_id, rig=cfg.rig, subject=cfg.subject, seed=cfg.seed,
                                         refresh_hz=cfg.stim.refresh_hz,
                                         behavior=awake.fixation if awake is not None else None,
                                         fixation_spot=awake.spot if awake is not None else None,
                                         idle_warn_s=awake.idle_warn_s if awake is not None else 30.0,
                                         idle_pause=awake.idle_pause if awake is not None else False),
                            store=w("store", store), stim=w("stim", stim), source=w("source", source),
                            binner=_binner(cfg), images=lib, models=w("models", models), pixels=pixels,
                            recording=recording, image_listeners=[rig_part.load] if rig_part is not None else [])
            if on_status is not None:
                engine.on_status(on_status)
            _record_tracebacks(engine, children)
            if docs:
                engine.resume_from(docs)
            if cfg.bus.broker != "none":
                await stack.enter_async_context(_bus(cfg, engine, protocol.protocol))
            _watch_timing(engine, store)
            extra = dict(record or {})
            if cfg.acquisition.control is not None and recording is None:  # RECORD now, back after the session
                extra["openephys_recording"] = await stack.enter_async_context(_openephys(cfg, session_id))
            yield Session(engine, store, path, cfg, protocol, lib, heldback, model_eps, rig, children, extra)
    finally:
        store.close()
        if not docs and not _has_start(path):
            path.unlink(missing_ok=True)  # a start that failed leaves no session file behind


async def run_protocol(protocol: ProtocolBase, cfg: RunConfig, *, resume: bool = False,
                       record: dict[str, Any] | None = None,
                       on_status: Callable[[str, dict[str, Any]], Any] | None = None) -> tuple[StopDoc, Path]:
    """Run one protocol as one session (``cortexloop run``); returns its stop document and file."""
    async with assemble(cfg, protocol, resume=resume, record=record, on_status=on_status) as s:
        return await s.run(), s.path


# --- parts -----------------------------------------------------------------------------------------
async def _concurrently(first: Coroutine[Any, Any, A], second: Coroutine[Any, Any, B],
                        third: Coroutine[Any, Any, C]) -> tuple[A, B, C]:
    """Await all three side by side; when one fails the others are cancelled (a child being started
    is stopped) and that failure is raised as itself, not as an exception group."""
    try:
        async with asyncio.TaskGroup() as tg:
            a, b, c = tg.create_task(first), tg.create_task(second), tg.create_task(third)
    except BaseExceptionGroup as group:
        for extra in group.exceptions[1:]:
            log.warning("also failed while starting: %r", extra)
        raise group.exceptions[0] from None
    return a.result(), b.result(), c.result()


def _server_keys(cfg: RunConfig, part: str) -> list[str]:
    """The CURVE options of a started child (``part``: stim, model or rig), key files checked; none
    without a ``keys`` section or when it sets this server to null."""
    keys = cfg.keys
    name = getattr(keys, part) if keys is not None else None
    if keys is None or name is None:
        return []
    curve = keys.server(name)
    check_server_keys(curve)
    return ["--curve-secret", str(curve.secret_key_file), "--curve-clients", str(_admitted(cfg))]


def _admitted(cfg: RunConfig) -> Path:
    """The folder of public keys a started server admits: the rig file's ``allowed_clients``, or by default
    only the controller's own key (a copy in ``<out>/.keys/admitted``). Every started server (stimserver,
    modelserver, virtual rig) is a client of the controller alone (the rig subscribes to the stimserver
    with the controller's keys): the keys folder also holds the servers' own pairs, and admitting every
    ``*.key`` in it let the rig's key open the modelserver."""
    keys = cfg.keys
    assert keys is not None
    if keys.allowed_clients is not None:
        return keys.allowed_clients.absolute()
    folder = (cfg.out_dir / ".keys" / "admitted").absolute()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.key"):
        if stale.name != f"{keys.client}.key":
            stale.unlink()
    public = (keys.folder / f"{keys.client}.key").read_bytes()
    target = folder / f"{keys.client}.key"
    if not target.is_file() or target.read_bytes() != public:
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(public)
        tmp.replace(target)
    return folder


def _client_keys(cfg: RunConfig, part: str, endpoint: str) -> CurveClient | None:
    """The controller's CURVE client configuration for a server (``part``: stim, model or rig), key
    files checked; None without a ``keys`` section or when it sets this server to null."""
    keys = cfg.keys
    name = getattr(keys, part) if keys is not None else None
    if keys is None or name is None:
        if not is_local_endpoint(endpoint):
            log.warning("%s at %s is reached without authentication (no keys.%s in the rig file)", part, endpoint,
                        part)
        return None
    curve = keys.client_of(name)
    check_client_keys(curve)
    return curve


def _open_store(path: Path, resume: bool) -> tuple[SessionWriter, list[Any]]:
    if path.exists():
        if not _has_start(path):
            log.warning("%s holds no start document (a start that failed): replaced", path)
            path.unlink()
        elif not resume:
            raise StoreError(f"{path} exists: pass --resume to continue it")
        else:
            with SessionReader(path) as reader:
                docs = list(reader.documents())
            return SessionWriter.resume(path), docs
    path.parent.mkdir(parents=True, exist_ok=True)
    return SessionWriter.create(path), []


def _has_start(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with SessionReader(path) as reader:
            return any(isinstance(d, StartDoc) for d in reader.documents())
    except Exception:  # unreadable: treated as holding a start, so it is never deleted here
        return True


def _binner(cfg: RunConfig) -> Binner:
    acq = cfg.acquisition
    clock: ClockMap | ClockSync | None = None
    if acq.sync is not None:
        # LSL timestamps are already on this machine's clock (its time correction): start from the
        # identity and refine from the pulses; a sample clock (Open Ephys) waits for the first pulses
        initial = ClockMap.identity() if acq.kind in ("virtual", "lsl") else None
        clock = ClockSync(acq.sync.channel, tolerance=acq.sync.tolerance, initial=initial)
    config = BinningConfig(window=acq.window, lateness=acq.lateness)
    if acq.sync is not None and acq.sync.monitor:
        from controller.timing import MonitoredBinner, TimingMonitor

        s = acq.sync
        monitor = TimingMonitor(s.channel, tolerance=s.tolerance, lost_after=s.lost_after, max_latency=s.max_latency,
                                same_clock=acq.kind in ("virtual", "lsl"))
        return MonitoredBinner(config, clock, monitor)
    return Binner(config, clock=clock)


def _watch_timing(engine: Engine, store: SessionWriter) -> None:
    """Route a timing monitor's checks to the session file and its alarms to an event and the bus."""
    from controller.timing import MonitoredBinner, OnsetCheck, timing_details

    if not isinstance(engine.binner, MonitoredBinner):
        return
    mon = engine.binner.monitor
    mon.on_event = lambda what, message, details: engine.raise_event(what, message, **details)

    def write(checks: list[OnsetCheck]) -> None:
        store.write(EventDoc(what="onset_timing", message=f"{len(checks)} onsets checked against {mon.channel!r}",
                             details=timing_details(checks, mon.channel, mon.same_clock)))

    mon.write = write
    engine.on_finish(mon.flush)


@contextlib.asynccontextmanager
async def _openephys(cfg: RunConfig, session_id: str) -> AsyncIterator[dict[str, Any]]:
    """The Open Ephys GUI recording named ``session_id``, from now until the session's teardown."""
    from controller.acquisition.oecontrol import OpenEphysControl

    acq = cfg.acquisition
    assert acq.control is not None
    async with OpenEphysControl(acq.control, directory=acq.control_dir, stop_mode=acq.control_stop) as oe:
        info = await oe.prepare(session_id)
        await oe.record()
        try:
            yield {"control": oe.url, "base_text": session_id, "parent_directory": info.get("parent_directory"),
                   "stop_mode": acq.control_stop}
        finally:
            await oe.stop()


def _record_tracebacks(engine: Engine, children: dict[str, Child]) -> None:
    """Every traceback a child prints during the session becomes a ``child_error`` event of the session
    (the whole traceback in its details): a fallback's cause is then in the file, not only on a console."""
    loop = asyncio.get_running_loop()

    def record(name: str, text: str) -> None:
        last = text.strip().splitlines()[-1] if text.strip() else ""
        loop.call_soon_threadsafe(engine.record_event, "child_error", f"{name}: {last[:300]}",
                                  {"child": name, "traceback": text})

    for child in children.values():
        child.on_traceback = record


def _stream_names(cfg: RunConfig) -> dict[str, str]:
    """LSL stream names of the session's virtual rig (spikes, sync, gaze), unique to the session."""
    acq = cfg.acquisition
    if acq.kind != "virtual":
        return {"spikes": acq.lsl_spike_name or "", "sync": acq.lsl_marker_name or "", "gaze": ""}
    tag = uuid.uuid4().hex[:8]
    return {"spikes": f"cortexloop-spikes-{tag}", "sync": f"cortexloop-sync-{tag}", "gaze": f"cortexloop-gaze-{tag}"}


def _behavior_args(cfg: RunConfig, streams: dict[str, str]) -> list[str]:
    """The stimserver's gaze and reward options of an awake session."""
    b = cfg.behavior
    if b is None:
        return []
    gaze = f"lsl:{streams['gaze']}" if b.gaze == "virtual" else b.gaze
    return ["--gaze", gaze, "--reward", b.reward]


@contextlib.asynccontextmanager
async def _stimserver(cfg: RunConfig, children: dict[str, Child],
                      streams: dict[str, str]) -> AsyncIterator[tuple[str, str]]:
    if cfg.stim.rpc is not None and cfg.stim.events is not None:
        yield cfg.stim.rpc, cfg.stim.events
        return
    args = ["-m", "stimserver", "--log-level", "WARNING", "--presenter", cfg.stim.presenter,
            "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
            "--fake-refresh-hz", str(cfg.stim.refresh_hz), *_server_keys(cfg, "stim"),
            *(["--markers-source-id", f"cortexloop-stim-{cfg.rig}"] if cfg.stim.markers else ["--no-markers"]),
            *_behavior_args(cfg, streams), *cfg.stim.extra_args]
    child = await Child.start("stimserver", args, ready="stimserver ready", timeout=60)
    children["stimserver"] = child
    try:
        if " display_error: " in child.ready_line:
            raise DisplayError("the stimserver could not open its window: "
                               + child.ready_line.split(" display_error: ", 1)[1])
        f = child.fields()
        yield f["rpc"], f["events"]
    finally:
        child.stop()


@contextlib.asynccontextmanager
async def _modelserver(cfg: RunConfig, children: dict[str, Child]) -> AsyncIterator[tuple[str, str] | None]:
    m = cfg.model
    if m.kind == "none":
        yield None
        return
    if m.kind == "connect":
        assert m.rpc is not None and m.events is not None
        yield m.rpc, m.events
        return
    folder = cfg.model_dir()
    folder.mkdir(parents=True, exist_ok=True)
    args = ["-m", "modelserver", "serve", "--data-dir", str(folder), "--endpoint", "tcp://127.0.0.1:0",
            "--events", "tcp://127.0.0.1:0", "--device", m.device, "--members", str(m.members),
            "--max-epochs", str(max(m.max_epochs, m.session_epochs, m.block_epochs)), "--threads", str(m.threads)]
    if m.v4_dir is not None:
        args += ["--v4-dir", str(m.v4_dir)]
    if m.ray is not None:
        args += ["--ray", m.ray, "--ray-gpus", str(m.ray_gpus)]
    args += ["--frontend", m.frontend, "--layer", m.layer] + (["--autocast"] if m.autocast else [])
    if m.weights is not None:
        args += ["--weights", str(m.weights.resolve())]
    if m.input_size is not None:
        args += ["--input-size", str(m.input_size)]
    args += _server_keys(cfg, "model")
    child = await Child.start("modelserver", args, ready="modelserver ready", timeout=m.start_timeout)
    children["modelserver"] = child
    try:
        f = child.fields()
        log.info("modelserver on %s (device %s), data in %s", f["rpc"], f.get("device"), folder)
        yield f["rpc"], f["events"]
    finally:
        child.stop()


@contextlib.asynccontextmanager
async def _model_link(cfg: RunConfig, endpoints: tuple[str, str], session_id: str, pixels: dict[str, np.ndarray],
                      images: ImageLibrary) -> AsyncIterator[ModelLink]:
    from controller.modellink import ZmqModelLink

    m = cfg.model
    link = ZmqModelLink(endpoints[0], endpoints[1], session_id=session_id, pixels=pixels.__getitem__,
                        base_images=lambda n, seed: [images.images[i] for i in images.take(n, seed)],
                        pool_crops=m.pool_crops, block_epochs=m.block_epochs, session_epochs=m.session_epochs,
                        timeout=m.timeout, curve=_client_keys(cfg, "model", endpoints[0]))
    async with link:
        yield link


@contextlib.asynccontextmanager
async def _acquisition(cfg: RunConfig, events: str, children: dict[str, Child], session_id: str,
                       streams: dict[str, str]) -> AsyncIterator[tuple[AcquisitionSource, RigLink | None]]:
    acq = cfg.acquisition
    if acq.kind == "openephys":
        from controller.acquisition.openephys import OpenEphysSource

        yield OpenEphysSource(acq.openephys_endpoint, silence_timeout=acq.silence_timeout), None
        return
    from controller.acquisition.lsl import LslSource

    spikes, markers = acq.lsl_spike_name, acq.lsl_marker_name
    rig_rpc = acq.virtual.rpc
    async with contextlib.AsyncExitStack() as stack:
        if acq.kind == "virtual":
            spikes, markers = streams["spikes"], streams["sync"]
            child = await Child.start("virtual rig", _rig_args(cfg, events, streams),
                                      ready="virtualrig rpc=", timeout=300)
            children["virtualrig"] = child
            stack.callback(child.stop)
            rig_rpc = child.fields()["rpc"]
        rig = None
        if rig_rpc is not None:
            rig = await stack.enter_async_context(RigLink(rig_rpc, curve=_client_keys(cfg, "rig", rig_rpc)))
        sync = acq.sync
        pin = acq.lsl_pin.model_dump()
        source = (LslSource(spike_name=spikes, marker_name=markers, silence_timeout=acq.silence_timeout, pin=pin)
                  if sync is not None else
                  LslSource(spike_name=spikes, marker_name=None, marker_type=None, silence_timeout=acq.silence_timeout,
                            pin=pin))
        log.info("acquisition %s: LSL %r%s%s", acq.kind, spikes, f", sync {sync.channel} on {markers!r}" if sync
                 else "", f", virtual rig at {rig_rpc}" if rig_rpc else "")
        yield source, rig


def _rig_args(cfg: RunConfig, events: str, streams: dict[str, str]) -> list[str]:
    v = cfg.acquisition.virtual
    args = ["-m", "virtualrig", "--stim-events", events, "--spike-stream", streams["spikes"],
            "--sync-stream", streams["sync"],
            "--seed", str(v.seed), "--baseline", str(v.baseline), "--latency", str(v.latency), "--delay", str(v.delay),
            "--device", v.device]
    if v.data is not None:
        args += ["--v4-dir", str(v.data)]
        if v.session is not None:
            args += ["--ground-truth", v.session]
        if v.neurons is not None:
            args += ["--neurons", str(v.neurons) if isinstance(v.neurons, int) else ",".join(map(str, v.neurons))]
    else:
        args += ["--n-units", str(v.n_units)]
    b = cfg.behavior
    if b is not None and b.gaze == "virtual":  # the monkey: gaze on the session's own LSL stream
        args += ["--gaze", "--gaze-stream", streams["gaze"], "--gaze-rate", str(b.gaze_rate_hz),
                 "--break-rate", str(b.break_rate), "--gaze-seed", str(v.seed)]
    args += _server_keys(cfg, "rig")
    stim_curve = _client_keys(cfg, "stim", events)  # the rig subscribes to the stimserver as the controller
    if stim_curve is not None:
        args += ["--curve-client-secret", str(stim_curve.secret_key_file),
                 "--curve-server-key", str(stim_curve.server_public_key_file)]
    return [*args, *v.extra_args]


@contextlib.asynccontextmanager
async def _bus(cfg: RunConfig, engine: Engine, protocol: str) -> AsyncIterator[None]:
    from controller.bus.mqtt import MqttBus
    from controller.busbridge import BusBridge

    async with _broker(cfg) as (host, port, username, password):
        bus = MqttBus(cfg.rig, host, port, username=username, password=password)
        async with bus, BusBridge(engine, bus, protocol=protocol):
            yield


@contextlib.asynccontextmanager
async def _broker(cfg: RunConfig) -> AsyncIterator[tuple[str, int, str | None, str | None]]:
    """(host, port, user, password) of the configured broker; ``embedded`` starts amqtt here and
    writes an operator's credentials to ``<out_dir>/bus-operator.json`` (mode 600)."""
    if cfg.bus.broker != "embedded":
        host, _, port = cfg.bus.broker.partition(":")
        yield host, int(port or 1883), cfg.bus.username, cfg.bus.password
        return
    from controller.bus.access import BusUser, new_password
    from controller.bus.broker import EmbeddedBroker

    ctl = BusUser("controller", new_password(), "controller", cfg.rig)
    op = BusUser("operator", new_password(), "operator", cfg.rig)
    folder = cfg.out_dir / ".bus"
    folder.mkdir(parents=True, exist_ok=True)
    async with EmbeddedBroker.for_users(folder, [ctl, op]) as broker:
        cred = cfg.out_dir / "bus-operator.json"
        cred.write_text(json.dumps({"broker": f"{broker.host}:{broker.port}", "rig": cfg.rig,
                                    "username": op.name, "password": op.password}))
        cred.chmod(0o600)
        log.info("embedded MQTT broker on %s:%d; operator credentials in %s", broker.host, broker.port, cred)
        yield broker.host, broker.port, ctl.name, ctl.password
