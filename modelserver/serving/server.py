"""The model server: one dispatch table over ``wire.model`` commands.

* ``ingest`` appends to the persistent :class:`~modelserver.training.dataset.TrainingSet` (flushed before
  the reply, so an acknowledged ingest survives a SIGKILL);
* ``train`` starts a background job (a worker thread: torch releases the GIL) that fits the
  :class:`~modelserver.training.ensemble.DeepEnsemble` and publishes ``TrainProgress`` / ``TrainDone``
  events; ``status`` and ``predict`` keep answering meanwhile, from the current version;
* every finished job is saved as a model version (``versions/<id>.pt``, tensors only), which
  can be listed, loaded and exported.

Image-generation commands plug in through ``extra_handlers`` (a dict CommandClass -> async
handler); at start the server adds ``modelserver.generate.handlers.generation_handlers`` over a
``modelserver.generate.context.ServerGenerationContext`` where those modules exist (``generate=False`` to skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserver.generate.confine import file_in, plain_name
from modelserver.generate.limits import RequestLimits
from modelserver.serving.versions import (
    current_version,
    load_intact,
    load_version,
    save_version,
    set_current,
    version_infos,
    version_path,
    write_atomic,
)
from modelserver.training.dataset import TrainingSet
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig
from wire.base import Message
from wire.codec import DEFAULT_MAX_BYTES
from wire.errors import Busy, Forbidden, InvalidRequest, ModelError, NotFound
from wire.messages import Ok
from wire.model import (
    CancelTraining,
    Exported,
    ExportVersion,
    Ingest,
    Ingested,
    JobStarted,
    ListVersions,
    LoadVersion,
    Predict,
    Prediction,
    ServerStatus,
    SessionSummary,
    Status,
    Train,
    TrainDone,
    TrainProgress,
    Versions,
)
from wire.security import CurveServer, check_bind
from wire.transport import DEFAULT_MAX_CONCURRENT, EventPublisher, RpcServer

log = logging.getLogger(__name__)

Handler = Callable[[Any], Awaitable[Message]]

__all__ = ["ModelServer", "ModelServerConfig", "serve"]


@dataclass
class ModelServerConfig:
    data_dir: Path
    endpoint: str = "tcp://127.0.0.1:5560"
    events_endpoint: str = "tcp://127.0.0.1:5561"
    device: str = "cpu"
    threads: int | None = None
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    generate: bool = True  # serve modelserver.generate's gen.* commands too
    v4_dir: Path | None = None  # real V4 images for generation pools, where available
    curve: CurveServer | None = None  # CURVE on both sockets: only the allowed clients are answered
    insecure: bool = False  # allow endpoints other machines can reach without CURVE (wire.security.check_bind)
    #: folders gen.build_pool may read images from (``modelserver serve --image-root DIR``, repeatable);
    #: ``v4_dir`` counts as one too. Nothing outside them is read (docs/security.md)
    image_roots: list[Path] = field(default_factory=list)
    #: what one request may cost: output images, memory and work estimates, pool and export sizes
    limits: RequestLimits = field(default_factory=RequestLimits)
    #: requests the RPC server runs at once (more get ``busy`` at once); RpcServer's max_concurrent
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    #: largest message (ZeroMQ MAXMSGSIZE on the RPC socket); RpcServer's max_bytes
    max_message_bytes: int = DEFAULT_MAX_BYTES
    #: a Ray cluster for the heavy work (``auto``, ``local`` or an address; modelserver.cluster); None: in process
    ray: str | None = None
    #: GPUs per member task or scorer on a cluster with GPUs (a fraction shares one)
    ray_gpus: float = 1.0


class ModelServer:
    """Owns the training set, the model versions and the training job. Use ``async with``."""

    def __init__(self, config: ModelServerConfig,
                 extra_handlers: Mapping[type[Message], Handler] | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.data_dir = Path(config.data_dir)
        self.versions_dir = self.data_dir / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = TrainingSet(self.data_dir / "training_set.h5")
        #: command class -> handler; image generation registers here (see module docstring)
        self.extra_handlers: dict[type[Message], Handler] = dict(extra_handlers or {})
        self.cluster = None
        if config.ray:
            from modelserver.cluster import RayCluster

            self.cluster = RayCluster.connect(config.ray, gpus=config.ray_gpus)
        if config.generate:
            self._register_generate()
        self.model: DeepEnsemble | None = None
        self.version: str | None = None
        #: versions skipped at start because they could not be loaded (a damaged file), with why
        self.skipped_versions: list[str] = []
        self._model_lock = threading.Lock()
        self._job: asyncio.Task[None] | None = None
        self._job_id: str | None = None
        self._job_info: dict[str, float] = {}
        self._cancel = threading.Event()
        self._rpc: RpcServer | None = None
        self._pub: EventPublisher | None = None
        current = current_version(self.versions_dir)  # what it served before a restart
        if current is not None:
            model, version, skipped = load_intact(self.versions_dir, current, self.device)
            if skipped:  # a damaged version must not stop every later session on this folder
                log.warning("model version(s) that cannot be loaded were skipped: %s; serving %s",
                            "; ".join(skipped), version)
            self.skipped_versions = skipped
            # already versions/CURRENT (or the newest) unless it fell back: then the fallback is remembered
            self._serve(model, version, remember=version != current)

    def _register_generate(self) -> None:
        """The ``gen.*`` commands over this server's own models (``modelserver.generate.context``)."""
        from modelserver.generate.context import ServerGenerationContext
        from modelserver.generate.handlers import generation_handlers

        ctx: Any = ServerGenerationContext(self.device, self.data_dir, lambda: self.model, self._read_version,
                                           self.config.v4_dir)
        if self.cluster is not None:  # pool scoring on the cluster's scorer actors
            from modelserver.cluster.context import ClusterGenerationContext

            ctx = ClusterGenerationContext(ctx, self.cluster)
        table = generation_handlers(ctx, image_roots=self.config.image_roots, limits=self.config.limits)
        for cls, h in table.items():
            self.extra_handlers.setdefault(cls, h)

    # --- lifecycle -----------------------------------------------------------------------
    def handlers(self) -> dict[type[Message], Handler]:
        base: dict[type[Message], Handler] = {
            Ingest: self.ingest, Train: self.train, CancelTraining: self.cancel, Status: self.status,
            Predict: self.predict, ListVersions: self.list_versions, LoadVersion: self.load_version,
            ExportVersion: self.export_version,
        }
        return {**base, **self.extra_handlers}

    async def start(self) -> None:
        c = self.config
        for endpoint in (c.endpoint, c.events_endpoint):  # before anything is bound
            check_bind(endpoint, c.curve, c.insecure, server="modelserver")
        self._pub = EventPublisher(c.events_endpoint, name="modelserver-events", curve=c.curve)
        self._rpc = RpcServer(c.endpoint, self.handlers(), name="modelserver", curve=c.curve,
                              max_bytes=c.max_message_bytes, max_concurrent=c.max_concurrent)
        await self._rpc.start()

    @property
    def endpoint(self) -> str:
        assert self._rpc is not None
        return self._rpc.endpoint

    @property
    def events_endpoint(self) -> str:
        assert self._pub is not None
        return self._pub.endpoint

    async def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> None:
        """Return once ``n`` event subscribers are connected (no sleeps as synchronisation)."""
        assert self._pub is not None
        await self._pub.wait_for_subscribers(n, timeout)

    async def stop(self) -> None:
        self._cancel.set()
        if self._job is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._job
        if self._rpc is not None:
            await self._rpc.stop()
        if self._pub is not None:
            self._pub.close()
        if self.cluster is not None:  # its scorer actors hold cluster resources
            await asyncio.to_thread(self.cluster.close)
        self.dataset.close()

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        assert self._rpc is not None
        await self._rpc.serve_forever()

    # --- handlers ------------------------------------------------------------------------
    async def ingest(self, cmd: Ingest) -> Ingested:
        r = await asyncio.to_thread(self.dataset.ingest, cmd.session, cmd.image_ids, cmd.counts, cmd.images)
        return Ingested(session=r.session, new_images=r.new_images, trials=r.trials,
                        total_trials=r.total_trials, total_images=r.total_images)

    async def status(self, _cmd: Status) -> ServerStatus:
        sessions = [SessionSummary(name=s.name, neurons=s.neurons, trials=s.trials, images=s.images)
                    for s in self.dataset.sessions()]
        training = self._job is not None and not self._job.done()
        return ServerStatus(state="training" if training else "idle", device=str(self.device),
                            job_id=self._job_id if training else None,
                            epoch=int(self._job_info["epoch"]) if training and self._job_info else None,
                            val_r=self._job_info.get("val_r") if training else None,
                            current_version=self.version, sessions=sessions,
                            versions=len(version_infos(self.versions_dir)))

    async def train(self, cmd: Train) -> JobStarted:
        if self._job is not None and not self._job.done():
            raise Busy(f"training job {self._job_id} is still running")
        known = {s.name: s for s in self.dataset.sessions()}
        names = cmd.sessions if cmd.sessions is not None else sorted(known)
        unknown = [s for s in names if s not in known]
        if unknown:
            raise NotFound(f"unknown sessions: {unknown}")
        if not names or sum(known[s].images for s in names) < 2:
            raise ModelError("no training data: ingest images and counts first")
        cfg = self.config.ensemble
        overrides: dict[str, Any] = {k: v for k, v in {"members": cmd.members, "max_epochs": cmd.max_epochs,
                                       "time_budget_s": cmd.time_budget_s, "loss": cmd.loss}.items()
                     if v is not None}
        cfg = replace(cfg, **overrides)
        self._job_id = uuid.uuid4().hex[:12]
        self._job_info = {}
        self._cancel.clear()
        warm = self.model if cmd.warm_start else None
        self._job = asyncio.create_task(self._run_job(self._job_id, names, cfg, warm), name="modelserver-train")
        return JobStarted(job_id=self._job_id)

    async def cancel(self, _cmd: CancelTraining) -> Ok:
        if self._job is None or self._job.done():
            raise InvalidRequest("no training job is running")
        self._cancel.set()
        return Ok()

    async def predict(self, cmd: Predict) -> Prediction:
        model, version = self.model, self.version
        if cmd.version is not None and cmd.version != self.version:
            model, version = await asyncio.to_thread(self._read_version, cmd.version), cmd.version
        if model is None or version is None:
            raise ModelError("no trained model yet: train first")
        if cmd.session not in model.session_neurons:
            raise NotFound(f"version {version} has no readout for session {cmd.session!r}")
        imgs = cmd.images
        self.config.limits.predict_images(int(imgs.shape[0]) if imgs.ndim else 0, "model.predict: images")
        if imgs.dtype != np.uint8 or imgs.ndim != 4 or imgs.shape[-1] != 3 or len(imgs) == 0:
            raise InvalidRequest(f"images must be non-empty uint8 (N, H, W, 3), got {imgs.dtype} {imgs.shape}")
        shape = self.dataset.image_shape
        if shape is not None and tuple(imgs.shape[1:3]) != shape:
            raise InvalidRequest(f"images must be {shape[0]}x{shape[1]}, got {imgs.shape[1]}x{imgs.shape[2]}")
        out = await asyncio.to_thread(self._predict, model, imgs, cmd.session)
        return Prediction(session=cmd.session, version=version, responses=out.astype(np.float32))

    def _predict(self, model: DeepEnsemble, images: np.ndarray, session: str) -> np.ndarray:
        with self._model_lock:
            return model.predict(images, session)

    async def list_versions(self, _cmd: ListVersions) -> Versions:
        return Versions(versions=version_infos(self.versions_dir), current=self.version)

    async def load_version(self, cmd: LoadVersion) -> Ok:
        await asyncio.to_thread(self._load, cmd.version)
        return Ok()

    @property
    def exports_dir(self) -> Path:
        """The only folder ``model.export`` writes to: ``<data_dir>/exports``."""
        return self.data_dir / "exports"

    async def export_version(self, cmd: ExportVersion) -> Exported:
        """The version's file (``torch.save`` of tensors and plain data: ``torch.load(weights_only=True)``
        reads it) into ``<data_dir>/exports/<name>`` and/or back inline; every check before any write."""
        if cmd.name is not None and cmd.path is not None and cmd.name != cmd.path:
            raise InvalidRequest("give 'name' (or its older spelling 'path'), not both")
        name = cmd.name if cmd.name is not None else cmd.path
        if name is None and not cmd.inline:
            raise InvalidRequest("give a file name (written into the server's exports folder) or inline=true")
        version = cmd.version or self.version
        if version is None:
            raise ModelError("no model version to export")
        src = version_path(self.versions_dir, version)
        dest = file_in(self.exports_dir, plain_name(name, "export name"), "export") if name is not None else None
        if dest is not None and not cmd.overwrite and (dest.exists() or dest.is_symlink()):
            raise Forbidden(f"export {name!r} exists; set overwrite to replace it")
        size = src.stat().st_size
        if cmd.inline:
            self.config.limits.export_bytes(size, f"model.export inline: version {version}")
        data = await asyncio.to_thread(self._export, src, dest, cmd.overwrite, cmd.inline)
        return Exported(version=version, path=str(dest) if dest is not None else None, bytes=size, data=data)

    def _export(self, src: Path, dest: Path | None, overwrite: bool, inline: bool) -> np.ndarray | None:
        blob = src.read_bytes()
        if dest is not None:
            try:
                dest.parent.mkdir(exist_ok=True)
                if overwrite:  # a new file renamed over the old one (a symlink is replaced, not followed)
                    write_atomic(dest, lambda f: f.write(blob))
                else:
                    self._write_new(dest, blob)
            except FileExistsError as exc:
                raise Forbidden(f"export {dest.name!r} exists; set overwrite to replace it") from exc
            except OSError as exc:
                raise InvalidRequest(f"cannot write export {dest.name!r}: {exc.strerror or exc}") from exc
        return np.frombuffer(blob, dtype=np.uint8) if inline else None

    @staticmethod
    def _write_new(dest: Path, blob: bytes) -> None:
        """Create ``dest`` exclusively (O_EXCL: an existing file or link is never opened)."""
        with open(dest, "xb") as f:
            try:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    dest.unlink()
                raise

    # --- the training job --------------------------------------------------------------------
    async def _publish(self, event: Message) -> None:
        if self._pub is not None:
            await self._pub.publish(event)

    async def _run_job(self, job_id: str, sessions: list[str], cfg: EnsembleConfig,
                       warm: DeepEnsemble | None) -> None:
        loop = asyncio.get_running_loop()

        def progress(info: dict[str, float]) -> None:
            self._job_info = info
            ev = TrainProgress(job_id=job_id, epoch=int(info["epoch"]), train_loss=info["train_loss"],
                               val_r=info["val_r"], seconds=info["seconds"])
            asyncio.run_coroutine_threadsafe(self._publish(ev), loop)

        try:
            model, report = await asyncio.to_thread(self._fit, sessions, cfg, warm, progress)
            if report.stopped == "cancelled":
                await self._publish(TrainDone(job_id=job_id, status="cancelled", message="cancelled"))
                return
            version = await asyncio.to_thread(self._save_version, model, report)
            self._serve(model, version)
            await self._publish(TrainDone(job_id=job_id, status="done", version=version,
                                          message=f"{report.epochs} epochs, {report.stopped}"))
        except Exception as exc:
            log.exception("training job %s failed", job_id)
            await self._publish(TrainDone(job_id=job_id, status="failed", message=f"{type(exc).__name__}: {exc}"))

    def _fit(self, sessions: list[str], cfg: EnsembleConfig, warm: DeepEnsemble | None,
             progress: Callable[[dict[str, float]], None]) -> tuple[DeepEnsemble, Any]:
        data = {}
        for s in sessions:
            sd = self.dataset.session(s)
            data[s] = (self.dataset.images(sd.image_rows), sd.mean)
        if self.cluster is not None:  # members as Ray tasks (modelserver.cluster.members)
            return self._fit_on_cluster(data, cfg, warm, progress)
        arch = ("members", "channels", "strides", "first_stride", "first_kernel", "frontend", "input_size",
                "weights", "layer")
        if warm is not None and all(getattr(warm.config, a) == getattr(cfg, a) for a in arch):
            with self._model_lock:  # continue from the current version (same architecture)
                model = DeepEnsemble.from_state(warm.export_state(), self.device)
            model.config = cfg
        else:
            model = DeepEnsemble(cfg).to(self.device)
        report = model.fit(data, progress=progress, should_stop=self._cancel.is_set)
        return model, report

    def _fit_on_cluster(self, data: dict[str, Any], cfg: EnsembleConfig, warm: DeepEnsemble | None,
                        progress: Callable[[dict[str, float]], None]) -> tuple[DeepEnsemble, Any]:
        from modelserver.cluster.members import fit_members

        arch = ("channels", "strides", "first_stride", "first_kernel", "frontend", "input_size", "weights", "layer")
        if warm is not None and (warm.ridge or not all(getattr(warm.config, a) == getattr(cfg, a) for a in arch)
                                 or warm.config.members != cfg.members):
            warm = None
        with self._model_lock:
            start = DeepEnsemble.from_state(warm.export_state()) if warm is not None else None
        return fit_members(cfg, data, self.cluster, device=str(self.device), warm=start, progress=progress,
                           should_stop=self._cancel.is_set)

    # --- versions (stored as modelserver.serving.versions reads and writes them) ----------------------
    def _save_version(self, model: DeepEnsemble, report: Any) -> str:
        return save_version(self.versions_dir, model, report)

    def _read_version(self, version: str) -> DeepEnsemble:
        return load_version(self.versions_dir, version, self.device)

    def _load(self, version: str, remember: bool = True) -> None:
        self._serve(self._read_version(version), version, remember)

    def _serve(self, model: DeepEnsemble, version: str, remember: bool = True) -> None:
        """Serve ``model`` as ``version`` from now on, and with ``remember`` after a restart too
        (``versions/CURRENT``)."""
        with self._model_lock:
            self.model, self.version = model, version
        if remember:
            set_current(self.versions_dir, version)


async def serve(config: ModelServerConfig, ready: Callable[[ModelServer], None] | None = None) -> None:
    """Run a model server until cancelled."""
    async with ModelServer(config) as server:
        log.info("modelserver on %s (events %s), device %s", server.endpoint, server.events_endpoint,
                 server.device)
        if ready is not None:
            ready(server)
        await server.serve_forever()
