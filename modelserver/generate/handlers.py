"""Async handlers of the ``gen.*`` commands, for the modelserver's dispatch table.

The server supplies a :class:`GenerationContext` (how to find a model, an ensemble and a
pool by name, and which device to use); :func:`generation_handlers` returns the
``{CommandClass: handler}`` table to merge into its ``RpcServer``. The compute runs in a
worker thread so the server keeps answering other requests. :class:`LocalGenerationContext`
is a complete in-memory context (dicts of models and a folder of pools).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from modelserver.generate.active import active_pool
from modelserver.generate.adversarial import adversarial
from modelserver.generate.dots import dot_stimuli
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


class GenerationContext(Protocol):
    device: torch.device | str

    def response_model(self, model_id: str) -> ResponseModel: ...

    def ensemble(self, ensemble_id: str) -> Ensemble: ...

    def pool_path(self, name: str, create: bool = False) -> Path: ...

    def natural_sources(self) -> list[np.ndarray]: ...


@dataclass
class LocalGenerationContext:
    """Models and ensembles in dicts, pools as ``<pool_dir>/<name>.h5``, crops from V4 + package images."""

    pool_dir: Path
    models: dict[str, ResponseModel] = field(default_factory=dict)
    ensembles: dict[str, Ensemble] = field(default_factory=dict)
    v4_dir: Path | None = None
    device: torch.device | str = "cpu"

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
    """``<pool_dir>/<name>.h5``; a bad name is InvalidRequest, a missing pool NotFound (unless ``create``)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InvalidRequest(f"bad pool name {name!r}")
    path = Path(pool_dir) / f"{name}.h5"
    if not create and not path.is_file():
        raise NotFound(f"no pool {name!r} in {pool_dir}")
    return path


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


def generation_handlers(ctx: GenerationContext) -> dict[type[Message], Handler]:
    """The ``gen.*`` dispatch table over ``ctx``."""

    async def run(fn: Callable[[], Message]) -> Message:
        return await asyncio.to_thread(fn)

    async def on_active(cmd: GenActive) -> Message:
        def work() -> Message:
            ens = ctx.ensemble(cmd.ensemble)
            with ImagePool(ctx.pool_path(cmd.pool)) as pool:
                gen = active_pool(ens, pool, cmd.k, cmd.min_distance, cmd.neurons, seed=cmd.seed,
                                  device=ctx.device, strategy=cmd.strategy, candidates=cmd.candidates,
                                  exclude=cmd.exclude)
            return to_reply(_named(gen, cmd.ensemble))
        return await run(work)

    async def on_maximize(cmd: GenMaximize) -> Message:
        def work() -> Message:
            model = ctx.response_model(cmd.model)
            with ImagePool(ctx.pool_path(cmd.pool)) as pool:
                gen = maximize_pool(model, pool, cmd.neurons, cmd.k, device=ctx.device)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    async def on_synthesize(cmd: GenSynthesize) -> Message:
        def work() -> Message:
            cfg = SynthesisConfig(steps=cmd.steps, step_size=cmd.step_size, lp_weight=cmd.lp_weight,
                                  tv_weight=cmd.tv_weight)
            gen = synthesize(ctx.response_model(cmd.model), cmd.neurons, cmd.per_neuron, cmd.seed, cfg,
                             device=ctx.device)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    async def on_adversarial(cmd: GenAdversarial) -> Message:
        def work() -> Message:
            gen = adversarial(ctx.response_model(cmd.model), cmd.base_images, cmd.neurons, cmd.direction,
                              cmd.max_abs, cmd.max_l2, cmd.step, cmd.steps, device=ctx.device)
            return to_reply(_named(gen, cmd.model))
        return await run(work)

    async def on_smooth(cmd: GenSmooth) -> Message:
        def work() -> Message:
            sm, ctrl = smooth_images(ctx.response_model(cmd.model), cmd.base_images, cmd.neurons, cmd.grid,
                                     cmd.sigma, cmd.max_patches, cmd.target_drop, cmd.seed, device=ctx.device)
            return to_reply(_named(sm, cmd.model), _named(ctrl, cmd.model))
        return await run(work)

    async def on_dots(cmd: GenDots) -> Message:
        def work() -> Message:
            model = ctx.response_model(cmd.model) if cmd.model is not None else None
            gen = dot_stimuli(cmd.radii, cmd.counts, cmd.per_condition, cmd.seed, model=model,
                              neurons=cmd.neurons, device=ctx.device)
            return to_reply(_named(gen, cmd.model) if cmd.model else gen)
        return await run(work)

    async def on_build_pool(cmd: GenBuildPool) -> Message:
        def work() -> Message:
            path = ctx.pool_path(cmd.pool, create=True)
            parts = [fitted_batches(folder_images(f)) for f in cmd.folders]
            if cmd.crops:
                parts.append(natural_crops(ctx.natural_sources(), cmd.crops, seed=cmd.seed))
            if not parts:
                raise InvalidRequest("a pool needs folders or crops > 0")
            tmp = path.with_suffix(".h5.partial")
            size = build_pool(tmp, itertools.chain(*parts), gaudy_versions=cmd.gaudy,
                              sources=f"folders={cmd.folders} crops={cmd.crops} seed={cmd.seed}")
            tmp.replace(path)
            return GenPoolInfo(pool=cmd.pool, size=size, path=str(path))
        return await run(work)

    return {GenActive: on_active, GenMaximize: on_maximize, GenSynthesize: on_synthesize,
            GenAdversarial: on_adversarial, GenSmooth: on_smooth, GenDots: on_dots,
            GenBuildPool: on_build_pool}
