"""Model steps: what the engine asks of the modelserver, and the steps that ask it.

:class:`ModelLink` is the seam (``controller.modellink`` speaks it over ZeroMQ;
:class:`NoModelServer` stands in when none is configured, so every fallback runs).
:class:`ModelStepsMixin` runs the ``ingest``, ``retrain``, ``generate_images``, ``match_models``
and ``analyse`` steps; the images a generator made are shown by the block that asks for them
(``controller.engine.blocks``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from controller.engine.counts import CountsMixin
from protocols.analysis import TrialData, run_analysis
from protocols.steps import (
    Analyse,
    AnalysisResult,
    GenerateImages,
    GenerateResult,
    Ingest,
    IngestResult,
    MatchModels,
    MatchResult,
    Retrain,
    RetrainResult,
)
from wire.documents import ModelVersionDoc, PickDoc, ResponseDoc, TrialDoc
from wire.errors import CortexloopError, ModelError, ProtocolError, RequestTimeout, ServerUnavailable

#: what a modelserver that is down or restarting raises (the session goes on without it)
_UNREACHABLE = (RequestTimeout, ServerUnavailable)


# --- the modelserver seam -------------------------------------------------------------------
@dataclass
class Generated:
    """Images a generator made, with why each was picked."""

    result: GenerateResult
    pixels: dict[str, np.ndarray]
    picks: list[PickDoc] = field(default_factory=list)


class ModelLink(Protocol):
    """What the engine asks of the modelserver (``controller.modellink`` speaks it over ZeroMQ)."""

    async def ingest(self, session_id: str, trials: list[tuple[TrialDoc, ResponseDoc]],
                     images: dict[str, np.ndarray], heldout: bool) -> IngestResult: ...

    async def retrain(self, step: Retrain,
                      progress: Callable[[dict[str, Any]], None] | None = None) -> RetrainResult:
        """Retrain; ``progress`` (when given) is called with each training progress report."""
        ...

    async def generate(self, step: GenerateImages, seed: int) -> Generated: ...

    async def match(self, step: MatchModels, data: TrialData, image_ids: list[str]) -> MatchResult: ...


class NoModelServer:
    """The seam when no modelserver is configured: every request is unavailable (fallbacks run)."""

    async def _unavailable(self) -> Any:
        raise ServerUnavailable("no modelserver is configured for this session")

    async def ingest(self, *a: Any, **k: Any) -> IngestResult:
        return await self._unavailable()

    async def retrain(self, step: Retrain,
                      progress: Callable[[dict[str, Any]], None] | None = None) -> RetrainResult:
        return await self._unavailable()

    async def generate(self, *a: Any, **k: Any) -> Generated:
        return await self._unavailable()

    async def match(self, *a: Any, **k: Any) -> MatchResult:
        return await self._unavailable()


# --- the steps --------------------------------------------------------------------------------
class ModelStepsMixin(CountsMixin):
    """``ingest``, ``retrain``, ``generate_images``, ``match_models`` and ``analyse``."""

    async def _ingest(self, step: Ingest) -> IngestResult:
        """Send the counts of ``step``'s blocks (and of any block whose ingest was deferred) to the
        model. A modelserver that does not answer defers them: an ``ingest_deferred`` event, and
        they go with the next ingest or retrain once it answers again (nothing recorded is lost:
        every count is in the session file either way)."""
        for b in step.block_ids:
            if b not in self.blocks:
                raise ProtocolError(f"ingest: block {b!r} was not presented")
        if step.heldout:
            return await self._send(list(step.block_ids), heldout=True)
        self._deferred = list(dict.fromkeys([*self._deferred, *step.block_ids]))
        try:
            return await self._send_deferred()
        except _UNREACHABLE as exc:
            self._deferred_reported = True
            self._event("ingest_deferred", f"modelserver unreachable ({type(exc).__name__}: {exc}); counts of "
                        f"{', '.join(self._deferred)} are kept and sent when it answers again",
                        blocks=list(self._deferred))
            return IngestResult(n_images=0, n_trials=0, dataset_version="deferred")

    async def _send_deferred(self) -> IngestResult:
        result = await self._send(self._deferred, heldout=False)
        if self._deferred and self._deferred_reported:
            self._deferred_reported = False
            self._event("ingest_resent", f"modelserver answers again: counts of {', '.join(self._deferred)} sent",
                        blocks=list(self._deferred))
        self._deferred = []
        return result

    async def _send(self, block_ids: list[str], *, heldout: bool) -> IngestResult:
        pairs: list[tuple[TrialDoc, ResponseDoc]] = []
        for b in block_ids:
            for r in self.blocks[b].trials:
                if r.counts is not None and not r.sent_to_model:
                    pairs.append((TrialDoc(trial_id=r.trial_id, block_id=r.block_id, index=r.index,
                                           image_id=r.image_id, onset=0.0, offset=0.0, on_frames=1,
                                           dropped_frames=0), r.counts))
        if not pairs and not heldout:
            return IngestResult(n_images=0, n_trials=0, dataset_version="nothing-new")
        images = {t.image_id: self.pixels[t.image_id] for t, _ in pairs}
        result = await self.models.ingest(self.config.session_id, pairs, images, heldout)
        for t, _ in pairs:
            self.trials[t.trial_id].sent_to_model = True
        return result

    async def _retrain(self, step: Retrain) -> RetrainResult:
        """Retrain; training progress goes to the status listeners under the topic ``model``. A
        modelserver that cannot train (unreachable, or its job failed) skips the retrain with a
        ``retrain_skipped`` event; the session goes on with the models it has."""
        try:
            if self._deferred:
                await self._send_deferred()
            result = await self.models.retrain(step, progress=lambda p: self._status("model", p))
        except (*_UNREACHABLE, ModelError) as exc:
            self._event("retrain_skipped", f"{step.scope} retrain skipped: {type(exc).__name__}: {exc}",
                        scope=step.scope, unsent_blocks=list(self._deferred))
            return RetrainResult(scope=step.scope, model_version="none", status="skipped")
        if result.status == "done":
            metrics = {"val_r": result.heldout_score} if result.heldout_score is not None else {}
            self.store.write(ModelVersionDoc(version=result.model_version, n_images=0, metrics=metrics,
                                             details={"scope": result.scope}))
        return result

    async def _generate(self, step: GenerateImages) -> GenerateResult:
        task = asyncio.create_task(self.models.generate(step, self._seed("generate", step.request_id)))
        self.generated[step.request_id] = task
        self.requests[step.request_id] = step
        if step.prefetch:
            return GenerateResult(request_id=step.request_id, status="pending")
        try:
            async with asyncio.timeout(step.timeout_s):
                gen = await asyncio.shield(task)
        except (TimeoutError, CortexloopError) as exc:
            # the protocol decides; an image set showing this request falls back to its pool source
            why = f"{type(exc).__name__}: {exc}" if str(exc) else f"no images within {step.timeout_s:g} s"
            self._event("generate_failed", f"{step.generator} ({step.request_id}) failed: {why}",
                        request_id=step.request_id)
            return GenerateResult(request_id=step.request_id, status="failed", error=why)
        return gen.result

    async def _match(self, step: MatchModels) -> MatchResult:
        data, ids = self.trial_data(step.heldout_blocks)
        try:
            return await self.models.match(step, data, ids)
        except (*_UNREACHABLE, ModelError) as exc:
            self._event("match_failed", f"no neurons matched: {type(exc).__name__}: {exc}")
            return MatchResult(matches=[], n_neurons=data.n_neurons)

    def _analyse(self, step: Analyse) -> AnalysisResult:
        data, ids = self.trial_data(step.blocks)
        # image ids per trial: repeats of one image are averaged before the image-level tests
        return run_analysis(step, dataclasses.replace(data, images=ids))
