"""Async handlers of the ``gen.*`` commands, for the modelserver's dispatch table.

The server supplies a :class:`GenerationContext` (how to find a model, an ensemble and a
pool by name, and which device to use); :func:`generation_handlers` returns the
``{CommandClass: handler}`` table to merge into its ``RpcServer``. The compute runs in a
worker thread so the server keeps answering other requests. :class:`LocalGenerationContext`
is a complete in-memory context (dicts of models and a folder of pools).

Every handler checks the request against :class:`~modelserver.generate.limits.RequestLimits`
before it starts (``LimitExceeded``, naming the limit), and its loops test the request's cancel
flag (``job.cancel``, or the client's timeout) each step (``Cancelled``). Pools are built only
from folders inside the configured image roots (:mod:`modelserver.generate.confine`); pool names
are plain names, never paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from modelserver.generate.active import active_pool
from modelserver.generate.adversarial import adversarial
from modelserver.generate.confine import POOL_NAME, confined_folder, count_image_files, file_in, plain_name
from modelserver.generate.dots import dot_stimuli
from modelserver.generate.limits import (
    RequestLimits,
    StopCheck,
    adversarial_steps,
    check_adversarial,
    check_dots,
    check_picks,
    check_scan,
    check_smooth,
    check_synthesize,
    stop_point,
    stoppable,
)
from modelserver.generate.maximize import maximize_pool
from modelserver.generate.models import Ensemble, Generated, ResponseModel
from modelserver.generate.pool import (
    ImagePool,
    build_pool,
    fitted_batches,
    folder_images,
    natural_crops,
    package_sample_images,
    v4_images,
)
from modelserver.generate.smooth import smooth_images
from modelserver.generate.synthesize import SynthesisConfig, synthesize
from wire.base import Message, image_id
from wire.errors import InvalidRequest, NotFound
from wire.generate import (
    GenActive,
    GenAdversarial,
    GenBuildPool,
    GenDots,
    GenImages,
    GenMaximize,
    GenPoolInfo,
    GenProvenance,
    GenSmooth,
    GenSynthesize,
)
from wire.transport import cancel_check


class GenerationContext(Protocol):
    device: torch.device | str

    def response_model(self, model_id: str) -> ResponseModel: ...

    def ensemble(self, ensemble_id: str) -> Ensemble: ...

    def pool_path(self, name: str, create: bool = False) -> Path: ...

    def natural_sources(self) -> list[np.ndarray]: ...


@dataclass
class LocalGenerationContext:
    """Models and ensembles in dicts, pools as ``<pool_dir>/<name>.h5``, crops from V4 + package images.

    Pools are built from folders inside ``image_roots`` (and ``v4_dir``) only."""

    pool_dir: Path
    models: dict[str, ResponseModel] = field(default_factory=dict)
    ensembles: dict[str, Ensemble] = field(default_factory=dict)
    v4_dir: Path | None = None
    device: torch.device | str = "cpu"
    image_roots: list[Path] = field(default_factory=list)

    def response_model(self, model_id: str) -> ResponseModel:
        if model_id not in self.models:
            raise NotFound(f"no model {model_id!r}; known: {sorted(self.models)}")
        return self.models[model_id]

    def ensemble(self, ensemble_id: str) -> Ensemble:
        if ensemble_id not in self.ensembles:
            raise NotFound(f"no ensemble {ensemble_id!r}; known: {sorted(self.ensembles)}")
        return self.ensembles[ensemble_id]

    def pool_path(self, name: str, create: bool = False) -> Path:
        return pool_file(self.pool_dir, name, create)

    def natural_sources(self) -> list[np.ndarray]:
        return natural_images(self.v4_dir)


def pool_file(pool_dir: Path, name: str, create: bool = False) -> Path:
    """``<pool_dir>/<name>.h5``: a name that is a path (separator, ``..``, leading dot) or a pool file
    that links out of ``pool_dir`` is Forbidden, another bad name InvalidRequest, a missing pool
    NotFound (unless ``create``)."""
    plain_name(name, "pool name", POOL_NAME)
    path = file_in(Path(pool_dir), f"{name}.h5", "pool")
    if not create and not path.is_file():
        raise NotFound(f"no pool {name!r}")
    return path


def image_roots_of(ctx: object, image_roots: Sequence[Path] | None = None) -> list[Path]:
    """The folders pools may be built from: ``image_roots`` (else the context's own ``image_roots``)
    and the context's V4 folder (``v4_dir``), where it has one."""
    roots = [Path(r) for r in (image_roots if image_roots is not None else getattr(ctx, "image_roots", ()) or ())]
    v4 = getattr(ctx, "v4_dir", None)
    if v4 is not None:
        roots.append(Path(v4))
    return roots


def natural_images(v4_dir: Path | None) -> list[np.ndarray]:
    """Local natural images for pool crops: the V4 session images (if given) and packages' samples."""
    src = list(v4_images(v4_dir)) if v4_dir is not None else []
    return src + package_sample_images()


def to_reply(gen: Generated, controls: Generated | None = None) -> GenImages:
    return GenImages(
        images=gen.images, image_ids=[image_id(im) for im in gen.images],
        provenance=[GenProvenance(method=p.method, model=p.model, neuron=p.neuron, score=p.score,
                                  source=p.source, details=p.details) for p in gen.picks],
        controls=to_reply(controls) if controls is not None else None)


def _named(gen: Generated, name: str) -> Generated:
    for p in gen.picks:
        p.model = name
    return gen


Handler = Callable[[Any], Awaitable[Message]]


def generation_handlers(ctx: GenerationContext, *, image_roots: Sequence[Path] | None = None,
                        limits: RequestLimits | None = None) -> dict[type[Message], Handler]:
    """The ``gen.*`` dispatch table over ``ctx``.

    ``image_roots``: folders ``gen.build_pool`` may read (default: ``ctx.image_roots`` if any),
    plus ``ctx.v4_dir``; ``limits``: what one request may cost (default :class:`RequestLimits`)."""
    lim = limits or RequestLimits()
    roots = image_roots_of(ctx, image_roots)

    async def run(fn: Callable[[StopCheck], Message]) -> Message:
        stop = cancel_check()  # the request's cancel flag, tested by the work's loops
        return await asyncio.to_thread(fn, stop)

    async def on_active(cmd: GenActive) -> Message:
        check_picks(lim, cmd.k, "gen.active: k")
        if cmd.candidates is not None:
            check_scan(lim, cmd.candidates, "gen.active: candidates")

        def work(stop: StopCheck) -> Message:
            ens = ctx.ensemble(cmd.ensemble)
            with ImagePool(ctx.pool_path(cmd.pool)) as pool:
                check_scan(lim, min(cmd.candidates or len(pool), len(pool)), "gen.active: pool images scored")
                gen = active_pool(ens, pool, cmd.k, cmd.min_distance, cmd.neurons, seed=cmd.seed,
                                  device=ctx.device, strategy=cmd.strategy, candidates=cmd.candidates,
                                  exclude=cmd.exclude, should_stop=stop)
            return to_reply(_named(gen, cmd.ensemble))
        return await run(work)

    async def on_maximize(cmd: GenMaximize) -> Message:
        check_picks(lim, len(cmd.neurons) * cmd.k, "gen.maximize: neurons x k")

        def work(stop: StopCheck) -> Message:
            model = ctx.response_model(cmd.model)
            with ImagePool(ctx.pool_path(cmd.pool)) as pool:
                check_scan(lim, len(pool), "gen.maximize: pool images scored")
                gen = maximize_pool(model, pool, cmd.neurons, cmd.k, device=ctx.device, should_stop=stop)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    async def on_synthesize(cmd: GenSynthesize) -> Message:
        cfg = SynthesisConfig(steps=cmd.steps, step_size=cmd.step_size, lp_weight=cmd.lp_weight,
                              tv_weight=cmd.tv_weight, spread_weight=cmd.spread_weight, jitter=cmd.jitter,
                              scale_jitter=cmd.scale_jitter, init_std=cmd.init_std, diversity=cmd.diversity,
                              max_contrast=cmd.max_contrast)
        check_synthesize(lim, len(cmd.neurons) * cmd.per_neuron, cfg.gradient_steps)

        def work(stop: StopCheck) -> Message:
            init = None
            if cmd.pool is not None:  # start from each neuron's top pool images
                with ImagePool(ctx.pool_path(cmd.pool)) as pool:
                    check_scan(lim, len(pool), "gen.synthesize: pool images scored")
                    init = maximize_pool(ctx.response_model(cmd.model), pool, cmd.neurons, cmd.per_neuron,
                                         device=ctx.device, should_stop=stop).images
            # the members' spread needs the ensemble behind the model id, where there is one
            model: ResponseModel = ctx.response_model(cmd.model)
            if cmd.spread_weight > 0:
                with contextlib.suppress(NotFound):
                    model = ctx.ensemble(cmd.model)
            gen = synthesize(model, cmd.neurons, cmd.per_neuron, cmd.seed, cfg, device=ctx.device,
                             should_stop=stop, init_images=init)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    def _base_shape(images: np.ndarray) -> tuple[int, int, int]:
        if images.ndim != 4:
            raise InvalidRequest(f"base images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return int(images.shape[0]), int(images.shape[1]), int(images.shape[2])

    async def on_adversarial(cmd: GenAdversarial) -> Message:
        n, h, w = _base_shape(cmd.base_images)
        check_adversarial(lim, n, h, w, adversarial_steps(cmd.max_abs, cmd.step, cmd.steps))

        def work(stop: StopCheck) -> Message:
            gen = adversarial(ctx.response_model(cmd.model), cmd.base_images, cmd.neurons, cmd.direction,
                              cmd.max_abs, cmd.max_l2, cmd.step, cmd.steps, device=ctx.device, should_stop=stop,
                              blur=cmd.blur, jitter=cmd.jitter, scale_jitter=cmd.scale_jitter, seed=cmd.seed)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    async def on_smooth(cmd: GenSmooth) -> Message:
        n, h, w = _base_shape(cmd.base_images)
        check_smooth(lim, n, h, w, cmd.grid, cmd.max_patches)

        def work(stop: StopCheck) -> Message:
            sm, ctrl = smooth_images(ctx.response_model(cmd.model), cmd.base_images, cmd.neurons, cmd.grid,
                                     cmd.sigma, cmd.max_patches, cmd.target_drop, cmd.seed, device=ctx.device,
                                     should_stop=stop, shortlist=cmd.shortlist)
            return to_reply(_named(sm, cmd.model), _named(ctrl, cmd.model))
        return await run(work)

    async def on_dots(cmd: GenDots) -> Message:
        check_dots(lim, len(cmd.radii) * len(cmd.counts) * cmd.per_condition * len(cmd.centers or [None]))

        def work(stop: StopCheck) -> Message:
            model = ctx.response_model(cmd.model) if cmd.model is not None else None
            gen = dot_stimuli(cmd.radii, cmd.counts, cmd.per_condition, cmd.seed, model=model,
                              neurons=cmd.neurons, device=ctx.device, should_stop=stop, centers=cmd.centers,
                              spread=cmd.spread)
            return to_reply(_named(gen, cmd.model) if cmd.model else gen)
        return await run(work)

    async def on_build_pool(cmd: GenBuildPool) -> Message:
        path = ctx.pool_path(cmd.pool, create=True)  # a bad name is refused before anything is read
        folders = [confined_folder(f, roots) for f in cmd.folders]
        copies = 2 if cmd.gaudy else 1
        check_scan(lim, cmd.crops * copies, "gen.build_pool: crops (x2 with gaudy)")

        def work(stop: StopCheck) -> Message:
            n_files = 0
            for folder, root in folders:
                stop_point(stop, "gen.build_pool")
                n_files += count_image_files(folder, root, lim.max_pool_images)
            check_scan(lim, (n_files + cmd.crops) * copies, "gen.build_pool: folder images + crops (x2 with gaudy)")
            parts = [fitted_batches(folder_images(folder)) for folder, _ in folders]
            if cmd.crops:
                parts.append(natural_crops(ctx.natural_sources(), cmd.crops, seed=cmd.seed))
            if not parts:
                raise InvalidRequest("a pool needs folders or crops > 0")
            # each build its own partial file: two requests for one pool never write one file
            tmp = path.with_name(f"{path.stem}.{uuid.uuid4().hex[:8]}.h5.partial")
            try:
                size = build_pool(tmp, stoppable(itertools.chain(*parts), stop, "gen.build_pool"),
                                  gaudy_versions=cmd.gaudy,
                                  sources=f"folders={cmd.folders} crops={cmd.crops} seed={cmd.seed}")
                tmp.replace(path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()  # a failed or cancelled build leaves nothing behind
            return GenPoolInfo(pool=cmd.pool, size=size, path=str(path))
        return await run(work)

    return {GenActive: on_active, GenMaximize: on_maximize, GenSynthesize: on_synthesize,
            GenAdversarial: on_adversarial, GenSmooth: on_smooth, GenDots: on_dots,
            GenBuildPool: on_build_pool}
