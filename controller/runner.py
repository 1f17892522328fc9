"""Assemble a session from a rig configuration and run a protocol: ``cortexloop run``.

The runner starts what the configuration asks it to start (a stimserver child process, the
in-process virtual rig, an embedded MQTT broker), connects to the rest, runs the engine with
a progress display, and shuts everything down whatever happens. A session file that already
exists is resumed (``--resume``), never overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner, BinningConfig
from controller.config import RunConfig
from controller.engine import Engine, EngineConfig, ModelLink
from controller.images import ImageLibrary, synthetic_images
from controller.links import StimLink
from controller.store import SessionReader, SessionWriter
from protocols.library import ProtocolBase
from wire.documents import StopDoc
from wire.errors import StoreError

log = logging.getLogger(__name__)


def build_images(cfg: RunConfig) -> ImageLibrary:
    if cfg.images.pool is not None:
        return ImageLibrary.from_pool(cfg.images.pool)
    if cfg.images.v4_dir is not None:
        return ImageLibrary.from_v4(cfg.images.v4_dir, cfg.images.v4_sessions)
    return ImageLibrary(synthetic_images(cfg.images.synthetic, seed=cfg.seed), name="synthetic")


@dataclass
class Session:
    """The running parts of one session (``async with open_session(...) as s``)."""

    engine: Engine
    store: SessionWriter
    path: Path


@contextlib.asynccontextmanager
async def stimserver(cfg: RunConfig) -> AsyncIterator[tuple[str, str]]:
    """Endpoints of the configured stimserver, starting a child process when none is given."""
    if cfg.stim.rpc is not None and cfg.stim.events is not None:
        yield cfg.stim.rpc, cfg.stim.events
        return
    from stimserver.process import StimServerProcess

    args = ["--presenter", cfg.stim.presenter, "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0",
            "--fake-refresh-hz", str(cfg.stim.refresh_hz), *cfg.stim.extra_args]
    proc = StimServerProcess(args)
    if proc.display_error:
        proc.stop()
        from wire.errors import DisplayError

        raise DisplayError(f"the stimserver could not open its window: {proc.display_error}")
    try:
        yield proc.rpc, proc.events
    finally:
        proc.stop()


def build_source(cfg: RunConfig, events_endpoint: str, pixels: Callable[[str], np.ndarray],
                 rate_model: Any = None) -> AcquisitionSource:
    acq = cfg.acquisition
    if acq.kind == "virtual":
        from virtualrig.loopback import LoopbackRig
        from virtualrig.rates import make_rate_model

        v = acq.virtual
        model = rate_model if rate_model is not None else make_rate_model(
            compact_models=v.compact_models, n_units=v.n_units, seed=v.seed)
        return LoopbackRig(events_endpoint, model, pixels, latency=v.latency, duration=v.duration,
                           baseline=v.baseline, seed=v.seed, silence_timeout=acq.silence_timeout)
    if acq.kind == "lsl":
        from controller.acquisition.lsl import LslSource

        return LslSource(spike_name=acq.lsl_spike_name, silence_timeout=acq.silence_timeout)
    from controller.acquisition.openephys import OpenEphysSource

    return OpenEphysSource(acq.openephys_endpoint, silence_timeout=acq.silence_timeout)


@contextlib.asynccontextmanager
async def open_session(cfg: RunConfig, *, name: str, resume: bool = False, models: ModelLink | None = None,
                       images: ImageLibrary | None = None, rate_model: Any = None) -> AsyncIterator[Session]:
    session_id = cfg.session_id or f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.rig}_{name}"
    path = cfg.out_dir / f"{session_id}.h5"
    docs: list[Any] = []
    if path.exists():
        if not resume:
            raise StoreError(f"{path} exists: pass --resume to continue it")
        with SessionReader(path) as reader:
            docs = list(reader.documents())
        store = SessionWriter.resume(path)
    else:
        store = SessionWriter.create(path)
    images = images if images is not None else build_images(cfg)
    try:
        async with stimserver(cfg) as (rpc, events), StimLink(rpc, events) as stim:
            engine = Engine(EngineConfig(session_id=session_id, rig=cfg.rig, subject=cfg.subject, seed=cfg.seed),
                            store=store, stim=stim, source=None,  # type: ignore[arg-type]
                            binner=Binner(BinningConfig(window=cfg.acquisition.window,
                                                        lateness=cfg.acquisition.lateness)),
                            images=images, models=models)
            engine.source = build_source(cfg, events, lambda i: engine.pixels[i], rate_model)
            prepare = getattr(engine.source, "prepare", None)
            if prepare is not None:  # the virtual rig computes its rates before each block
                engine.on_images(prepare)
            if docs:
                engine.resume_from(docs)
            yield Session(engine, store, path)
    finally:
        store.close()


async def run_protocol(protocol: ProtocolBase, cfg: RunConfig, *, resume: bool = False,
                       models: ModelLink | None = None,
                       on_status: Callable[[str, dict[str, Any]], None] | None = None) -> tuple[StopDoc, Path]:
    """Run one protocol as one session; returns its stop document and the session file."""
    async with open_session(cfg, name=protocol.protocol, resume=resume, models=models) as s:
        if on_status is not None:
            s.engine.on_status(on_status)
        bridge_cm: Any = contextlib.nullcontext()
        if cfg.bus.broker != "none":
            bridge_cm = _bus(cfg, s.engine, protocol.protocol)
        async with bridge_cm:
            stop = await s.engine.run(protocol.plan(), protocol=protocol.model_dump(mode="json"),
                                      configuration=cfg.model_dump(mode="json"))
        return stop, s.path


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
    import json

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
