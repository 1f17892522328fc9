"""The engine's modelserver seam over ZeroMQ (``wire.model`` and ``wire.generate``).

Each recording session is one modelserver session (neurons are never matched across
sessions). Its neurons are the units that fired in the first ingested block, in natural
order (unit "2" before "10"); a later trial that lacks one of them is not ingested, so a unit
that was not recorded is never sent as a zero. Held-out blocks are not ingested: they are kept
for matching neurons to models (``match_models``, :mod:`controller.matching`), which predicts
them with the current version and scores each pair of recorded and model neuron.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from controller.engine import Generated
from controller.engine import _natural_key as natural_key
from controller.matching import assign, repeats_array, score_matrix
from protocols.analysis import TrialData
from protocols.steps import (
    ActiveParams,
    AdversarialParams,
    DotsParams,
    GenerateImages,
    GenerateResult,
    IngestResult,
    MatchModels,
    MatchResult,
    MaximizeNormalParams,
    MaximizeSynthParams,
    NeuronMatch,
    Retrain,
    RetrainResult,
    SmoothParams,
)
from wire.base import image_id
from wire.documents import PickDoc, ResponseDoc, TrialDoc
from wire.errors import InvalidRequest, ModelError, RequestTimeout, ServerUnavailable
from wire.generate import (
    POOL_START_SYNTHESIS,
    GenActive,
    GenAdversarial,
    GenBuildPool,
    GenDots,
    GenImages,
    GenMaximize,
    GenPoolInfo,
    GenSmooth,
    GenSynthesize,
)
from wire.model import (
    Ingest,
    Ingested,
    JobStarted,
    ListVersions,
    Predict,
    Prediction,
    Train,
    TrainDone,
    TrainProgress,
    Versions,
)
from wire.security import CurveClient
from wire.transport import EventSubscriber, RpcClient

log = logging.getLogger(__name__)

#: called with each progress payload of a job (see :meth:`ZmqModelLink.retrain`)
ProgressFn = Callable[[dict[str, Any]], None]


def model_session(session_id: str) -> str:
    """The modelserver's name for a recording session (its allowed characters, 64 at most)."""
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in session_id)
    return name[-64:]


#: driving base images: candidates per base image (of which the upper quartile is taken)
BASE_CANDIDATES = 8


class ZmqModelLink:
    """Implements :class:`controller.engine.ModelLink` against a modelserver."""

    def __init__(self, rpc: str, events: str, *, session_id: str, pixels: Callable[[str], np.ndarray],
                 base_images: Callable[[int, int], list[np.ndarray]], timeout: float = 30.0,
                 pool: str = "session-pool", pool_crops: int = 2000,
                 block_epochs: int = 5, session_epochs: int | None = None,
                 curve: CurveClient | None = None) -> None:
        #: CURVE client configuration of the RPC and of every event subscription (None: plaintext)
        self.curve = curve
        self.client = RpcClient(rpc, timeout=timeout, curve=curve)
        #: seconds a ping may take before the modelserver counts as down
        self.ping_timeout = 5.0
        self.events_endpoint = events
        self.session = model_session(session_id)
        self.pixels = pixels
        self.base_images = base_images
        self.pool = pool
        self.pool_crops = pool_crops
        self.block_epochs = block_epochs
        self.session_epochs = session_epochs
        self.units: list[str] | None = None
        #: recorded neuron -> (model session, model neuron), set by match()
        self.matched: dict[int, tuple[str, int]] = {}
        self.version: str | None = None
        self._pool_ready = False
        self._pool_lock = asyncio.Lock()
        #: images ingested or picked in this session: active learning never picks them again
        self._seen: set[str] = set()
        self._last_smooth: tuple[tuple[object, ...], GenImages] | None = None
        #: base images drawn for adversarial/smooth requests, by id (a paired request reuses them)
        self._base_pixels: dict[str, np.ndarray] = {}

    async def __aenter__(self) -> ZmqModelLink:
        self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    # -- ingest -------------------------------------------------------------------------------------
    def _neurons(self, responses: Sequence[ResponseDoc]) -> list[str]:
        if self.units is None:
            seen: dict[str, int] = {}
            for r in responses:
                for u in r.units:
                    seen[u] = seen.get(u, 0) + 1
            if not seen:
                raise InvalidRequest("no counts to ingest")
            top = max(seen.values())
            self.units = sorted((u for u, n in seen.items() if n >= 0.9 * top), key=natural_key)
        return self.units

    async def _reachable(self) -> None:
        """Fail fast (``ServerUnavailable``) when the modelserver does not answer a ping: a server
        that died or restarts is found out in seconds, not after a long request's timeout."""
        try:
            await self.client.ping(timeout=self.ping_timeout)
        except RequestTimeout as exc:
            raise ServerUnavailable(f"the modelserver at {self.client.endpoint} does not answer") from exc

    async def ingest(self, session_id: str, trials: list[tuple[TrialDoc, ResponseDoc]],
                     images: dict[str, np.ndarray], heldout: bool) -> IngestResult:
        if heldout:  # kept for matching, never trained on
            return IngestResult(n_images=0, n_trials=0, dataset_version="heldout-not-ingested")
        await self._reachable()
        units = self._neurons([r for _, r in trials])
        ids, rows = [], []
        for t, r in trials:
            col = {u: c for u, c in zip(r.units, np.asarray(r.counts).tolist(), strict=True)}
            if all(u in col for u in units):
                ids.append(t.image_id)
                rows.append([col[u] for u in units])
        if len(rows) < len(trials):
            log.warning("%d of %d trials lack a counted neuron and were not ingested", len(trials) - len(rows),
                        len(trials))
        if not rows:
            raise InvalidRequest("no trial has counts for every neuron of this session")
        uniq = list(dict.fromkeys(ids))
        self._seen.update(uniq)
        reply = await self.client.request(
            Ingest(session=self.session, image_ids=ids, counts=np.asarray(rows, dtype=np.float32),
                   images=np.stack([images[i] for i in uniq])), Ingested, timeout=120.0)
        return IngestResult(n_images=reply.total_images, n_trials=reply.total_trials,
                            dataset_version=f"{self.session}:{reply.total_trials}")

    # -- retrain ------------------------------------------------------------------------------------
    async def retrain(self, step: Retrain, progress: ProgressFn | None = None) -> RetrainResult:
        """Train the model and (``step.wait``) wait for the new version.

        ``progress`` is called with a payload for each ``TrainProgress`` event of this job and once
        more when it is done: ``task`` ("retrain"), ``scope``, ``epoch``, ``max_epochs`` (None: the
        modelserver's default), ``fraction`` (0..1), ``val_r``, ``loss`` (None where unknown) and
        ``model_version`` (None until done). A failing callback is logged, never fatal to training.
        """
        epochs = step.max_epochs or (self.block_epochs if step.scope == "block" else self.session_epochs)
        last: dict[str, Any] = {"epoch": None, "val_r": None, "loss": None}

        def report(fraction: float, model_version: str | None = None) -> None:
            if progress is None:
                return
            try:
                progress({"task": "retrain", "scope": step.scope, "max_epochs": epochs,
                          "fraction": min(1.0, max(0.0, fraction)), "model_version": model_version, **last})
            except Exception:  # progress is for people watching; training goes on without it
                log.exception("retrain progress callback failed")

        await self._reachable()
        sub = EventSubscriber(self.events_endpoint, [TrainProgress, TrainDone], curve=self.curve)
        try:
            job = await self.client.request(Train(max_epochs=epochs), JobStarted)
            if not step.wait:
                return RetrainResult(scope=step.scope, model_version=self.version or "pending", status="started")
            async with asyncio.timeout(step.timeout_s):
                while True:
                    try:
                        ev = await sub.recv(timeout=5.0)
                    except RequestTimeout:
                        await self._reachable()  # a server that died mid-training ends the wait
                        continue  # long epochs: keep waiting up to the step's timeout
                    if isinstance(ev, TrainProgress) and ev.job_id == job.job_id:
                        last.update(epoch=ev.epoch, val_r=_finite(ev.val_r), loss=_finite(ev.train_loss))
                        report(ev.epoch / epochs if epochs else 0.0)
                    if isinstance(ev, TrainDone) and ev.job_id == job.job_id:
                        if ev.status != "done":
                            raise ModelError(f"training {ev.status}")
                        break
        except TimeoutError as exc:
            raise RequestTimeout(f"training did not finish within {step.timeout_s:g} s") from exc
        finally:
            sub.close()
        versions = await self.client.request(ListVersions(), Versions)
        self.version = versions.current
        info = next((v for v in versions.versions if v.version == versions.current), None)
        if info is not None:  # the new version's own numbers
            last["epoch"] = info.epochs
            if _finite(info.val_r) is not None:
                last["val_r"] = _finite(info.val_r)
        report(1.0, self.version)
        return RetrainResult(scope=step.scope, model_version=self.version or "none",
                             heldout_score=info.val_r if info else None)

    # -- generate -----------------------------------------------------------------------------------
    async def _ensure_pool(self) -> None:
        async with self._pool_lock:  # concurrent generate steps (prefetch) build the pool once
            if not self._pool_ready:
                await self.client.request(GenBuildPool(pool=self.pool, crops=self.pool_crops), GenPoolInfo,
                                          timeout=600.0)
                self._pool_ready = True

    async def generate(self, step: GenerateImages, seed: int) -> Generated:
        await self._reachable()
        p = step.params
        n = step.n_images or 1
        cmd: Any
        if isinstance(p, ActiveParams):
            await self._ensure_pool()
            cmd = GenActive(ensemble=await self._active_ensemble(), pool=self.pool, k=n, seed=seed,
                            strategy=p.strategy, candidates=p.pool_size, exclude=sorted(self._seen))
        elif isinstance(p, MaximizeNormalParams):
            await self._ensure_pool()
            return await self._per_model(step, p.neurons, lambda model, ns: GenMaximize(
                model=model, pool=self.pool, neurons=ns, k=n))
        elif isinstance(p, MaximizeSynthParams):
            from_pool = p.init == "pool"  # from each neuron's best pool images, in small steps (docs/generation.md)
            if from_pool:
                await self._ensure_pool()
            start: dict[str, float] = dict(POOL_START_SYNTHESIS) if from_pool else {}
            if p.max_contrast is not None:
                start["max_contrast"] = p.max_contrast
            return await self._per_model(step, p.neurons, lambda model, ns: GenSynthesize(
                model=model, neurons=ns, per_neuron=n, steps=p.steps, seed=seed,
                pool=self.pool if from_pool else None).model_copy(update=start))
        elif isinstance(p, AdversarialParams | SmoothParams):
            return await self._paired(step, p, n, seed)
        elif isinstance(p, DotsParams):
            return await self._dots(step, p, seed)
        else:
            raise InvalidRequest(f"the modelserver does not make {p.generator!r} images")
        reply = await self.client.request(cmd, GenImages, timeout=_rpc_timeout(step))
        if isinstance(p, ActiveParams):
            self._seen.update(reply.image_ids)
        return self._generated(step, reply)

    async def _active_ensemble(self) -> str:
        """This session's readouts once it has some, else the largest earlier session's: the members
        disagree through their shared core, which is what active learning probes on a new day."""
        versions = await self.client.request(ListVersions(), Versions)
        info = next((v for v in versions.versions if v.version == versions.current), None)
        if info is None or not info.sessions:
            raise ModelError("no trained model yet: active learning starts after the first retraining")
        self.version = info.version
        if self.session in info.sessions:
            return self.session
        return max(info.sessions, key=lambda name: (info.sessions[name], name))

    async def _per_model(self, step: GenerateImages, neurons: list[int],
                         make: Callable[[str, list[int]], Any]) -> Generated:
        """One request per model session of the matched neurons (or this session's own readout);
        images are labelled with the recorded neuron they target."""
        groups: dict[str, list[tuple[int, int]]] = {}
        for j in neurons:
            model, m = self._model_of(j)
            groups.setdefault(model, []).append((j, m))
        parts = []
        for model, pairs in groups.items():
            reply = await self.client.request(make(model, [m for _, m in pairs]), GenImages, timeout=_rpc_timeout(step))
            to_recorded = {m: j for j, m in pairs}
            for prov in reply.provenance:
                if prov.neuron is not None:
                    prov.neuron = to_recorded.get(prov.neuron, prov.neuron)
            parts.append(self._generated(step, reply))
        return _merge(parts)

    async def _dots(self, step: GenerateImages, p: DotsParams, seed: int, size: int = 112) -> Generated:
        """The full factorial size x location x number, one image each, labelled
        ``size=..,loc=x:y,n=..`` (as the protocol's simulation labels them) in degrees (``p.px_per_deg``; y is up)."""
        centre = size / 2
        centers = [(centre + x * p.px_per_deg, centre - y * p.px_per_deg) for x, y in p.locations]
        cmd = GenDots(radii=[d / 2 * p.px_per_deg for d in p.sizes], counts=p.numbers, per_condition=1,
                      centers=centers, spread=max(4.0, 1.5 * p.px_per_deg), seed=seed)
        reply = await self.client.request(cmd, GenImages, timeout=_rpc_timeout(step))
        gen = self._generated(step, reply)
        labels = [f"size={d:g},loc={x:g}:{y:g},n={n}" for d in p.sizes for n in p.numbers for x, y in p.locations]
        if len(labels) != len(gen.result.image_ids):
            raise ModelError(f"dots: {len(gen.result.image_ids)} images for {len(labels)} conditions")
        return Generated(gen.result.model_copy(update={"labels": labels}), gen.pixels, gen.picks)

    def _model_ref(self, neuron: int) -> tuple[str, str | None, int]:
        """(model session, version or None for the current one, model neuron) of a recorded neuron:
        its matched model at the matched version, or this session's readout."""
        sess, m = self.matched.get(neuron, (self.session, neuron))
        return sess, (self.version if self.version and sess != self.session else None), m

    def _model_of(self, neuron: int) -> tuple[str, int]:
        """(model id, model neuron) of a recorded neuron: its matched model, or this session's readout."""
        sess, version, m = self._model_ref(neuron)
        return (f"{version}/{sess}" if version else sess), m

    async def _paired(self, step: GenerateImages, p: AdversarialParams | SmoothParams, n: int,
                      seed: int) -> Generated:
        """Adversarial or smooth images: ``n`` base images per neuron (``p.base_ids`` when the
        protocol pairs this request with an earlier one, else drawn from the library), one request
        per matched model; the result names each image's base image (``base_ids``)."""
        targets = [j for j in p.neurons for _ in range(n)]
        bases = (await self._driving_bases(p.neurons, n, seed) if not p.base_ids and p.bases == "driving"
                 else self._bases(p.base_ids, len(targets), seed))
        groups: dict[str, list[int]] = {}
        for k, j in enumerate(targets):
            groups.setdefault(self._model_of(j)[0], []).append(k)
        parts = []
        for model, ks in groups.items():
            neurons = [self._model_of(targets[k])[1] for k in ks]
            images = np.stack([bases[k] for k in ks])
            cmd: GenAdversarial | GenSmooth
            if isinstance(p, AdversarialParams):  # epsilon: an L2 budget in 0..1 pixel units
                cmd = GenAdversarial(model=model, neurons=neurons, base_images=images, direction=p.direction,
                                     max_l2=p.epsilon * 255.0, max_abs=p.max_abs, blur=p.blur, steps=p.steps,
                                     jitter=p.jitter, scale_jitter=p.scale_jitter, seed=seed)
            else:
                cmd = GenSmooth(model=model, neurons=neurons, base_images=images, sigma=p.sigma, seed=seed,
                                grid=p.grid, max_patches=p.max_patches, shortlist=p.shortlist)
            reply = await self._paired_reply(cmd, step)
            if isinstance(p, SmoothParams) and p.mode == "random":
                if reply.controls is None:
                    raise ModelError("the modelserver sent no random-smoothing controls")
                reply = reply.controls
            if len(reply.provenance) != len(ks):
                raise ModelError(f"{p.generator}: {len(reply.provenance)} images for {len(ks)} base images")
            for k, prov in zip(ks, reply.provenance, strict=True):
                prov.neuron = targets[k]
            parts.append(self._generated(step, reply))
        first = _merge(parts)
        base_ids = [str(pk.details.get("source", "")).removeprefix("base:") for pk in first.picks]
        return Generated(first.result.model_copy(update={"base_ids": base_ids}), first.pixels, first.picks)

    async def _paired_reply(self, cmd: GenAdversarial | GenSmooth, step: GenerateImages) -> GenImages:
        """The modelserver's reply; a smooth request repeated with the same inputs (the smooth-
        protocol asks for the smoothed images, then for their random controls) reuses the last
        reply, which carries both, instead of running the greedy search twice. The seed (which
        only draws the controls' random patches) is left out of the match: the controls are those
        of the first request."""
        if not isinstance(cmd, GenSmooth):
            return await self.client.request(cmd, GenImages, timeout=_rpc_timeout(step))
        key = (cmd.model, tuple(cmd.neurons), tuple(image_id(b) for b in cmd.base_images), cmd.sigma,
               cmd.grid, cmd.max_patches, cmd.shortlist, cmd.target_drop)
        if self._last_smooth is None or self._last_smooth[0] != key:
            self._last_smooth = (key, await self.client.request(cmd, GenImages, timeout=_rpc_timeout(step)))
        return self._last_smooth[1]

    async def _driving_bases(self, neurons: list[int], n: int, seed: int) -> list[np.ndarray]:
        """``n`` base images per neuron (neuron-major): of ``BASE_CANDIDATES * n`` random library
        images, those its model ranks ``2n .. 3n - 1`` (the upper quartile). A base image that
        drives the neuron reliably leaves room to raise and to lower the response, and no
        percent change divides by a near-zero response (random bases gave +-100% swings)."""
        per = BASE_CANDIDATES * n
        try:
            drawn = self.base_images(per * len(neurons), seed)
        except InvalidRequest:  # a small library: the images as drawn
            return self._bases(None, n * len(neurons), seed)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for k, j in enumerate(neurons):
            groups.setdefault(self._model_ref(j)[:2], []).append(k)
        chosen: dict[int, list[np.ndarray]] = {}
        for (sess, version), ks in groups.items():
            images = np.stack([drawn[k * per + i] for k in ks for i in range(per)])
            pred = await self.client.request(Predict(session=sess, images=images, version=version), Prediction,
                                             timeout=120.0)
            responses = np.asarray(pred.responses)  # (model neurons, images)
            for g, k in enumerate(ks):
                own = responses[self._model_ref(neurons[k])[2], g * per:(g + 1) * per]
                ranks = np.argsort(-own, kind="stable")[2 * n:3 * n]
                chosen[k] = [images[g * per + int(r)] for r in ranks]
        bases = [b for k in range(len(neurons)) for b in chosen[k]]
        self._base_pixels.update((image_id(b), b) for b in bases)
        return bases

    def _bases(self, base_ids: list[str] | None, n: int, seed: int) -> list[np.ndarray]:
        """``n`` base images: those of ``base_ids`` (drawn here earlier, or shown), else new library draws."""
        if base_ids:
            ids = [base_ids[k % len(base_ids)] for k in range(n)]
            return [self._base_pixels[i] if i in self._base_pixels else self.pixels(i) for i in ids]
        drawn = self.base_images(n, seed)
        self._base_pixels.update((image_id(b), b) for b in drawn)
        return drawn

    def _generated(self, step: GenerateImages, reply: GenImages) -> Generated:
        ids = list(reply.image_ids)
        labels = [f"neuron={p.neuron}" if p.neuron is not None else p.method for p in reply.provenance]
        picks = [PickDoc(image_id=i, block_id="", generator=p.method, model_version=self.version,
                         neuron=p.neuron, score=p.score, details={"model": p.model, "source": p.source, **p.details})
                 for i, p in zip(ids, reply.provenance, strict=True)]
        pixels = {i: np.asarray(im) for i, im in zip(ids, reply.images, strict=True)}
        result = GenerateResult(request_id=step.request_id, status="ready", image_ids=ids, labels=labels,
                                model_version=self.version)
        return Generated(result, pixels, picks)

    # -- match --------------------------------------------------------------------------------------
    async def match(self, step: MatchModels, data: TrialData, image_ids: list[str]) -> MatchResult:
        """Match recorded neurons to model neurons of the sessions the current version predicts
        (Cowley et al.: models fitted on earlier days, chosen by held-out prediction), by the
        step's metric and assignment rule (:mod:`controller.matching`)."""
        await self._reachable()
        versions = await self.client.request(ListVersions(), Versions)
        info = next((v for v in versions.versions if v.version == versions.current), None)
        if info is None:
            raise ModelError("no trained model to match neurons with")
        self.version = info.version
        candidates = [m for m in (step.models or sorted(info.sessions)) if m in info.sessions]
        uniq, raw = repeats_array(data.counts, image_ids)
        pixels = np.stack([self.pixels(i) for i in uniq])
        scores = {}
        for sess in candidates:
            pred = await self.client.request(Predict(session=sess, images=pixels), Prediction, timeout=120.0)
            scores[sess] = score_matrix(raw, np.asarray(pred.responses), step.metric)
        chosen = assign(scores, step.assignment, step.min_score)[:step.max_neurons]
        self.matched = {x.neuron: (x.session, x.model) for x in chosen}
        matches = [NeuronMatch(neuron=x.neuron, model_id=f"{self.version}/{x.session}#{x.model}", score=x.score)
                   for x in chosen]
        return MatchResult(matches=matches, n_neurons=data.n_neurons)


def _finite(x: float | None) -> float | None:
    """``x`` as a float, or None when it is missing or not finite (JSON has no NaN)."""
    return float(x) if x is not None and math.isfinite(x) else None


#: seconds a prefetched generate request may run on the server: it starts a block before its images
#: are needed, and the protocol's own deadline (``timeout_s``) is applied by the engine when the
#: block needs them
PREFETCH_RPC_TIMEOUT = 900.0


def _rpc_timeout(step: GenerateImages) -> float:
    return max(step.timeout_s, PREFETCH_RPC_TIMEOUT) if step.prefetch else step.timeout_s


def _merge(parts: list[Generated]) -> Generated:
    """One result of the images of several requests (one per model), in order."""
    first = parts[0]
    for g in parts[1:]:
        first.result.image_ids.extend(g.result.image_ids)
        assert first.result.labels is not None and g.result.labels is not None
        first.result.labels.extend(g.result.labels)
        first.pixels.update(g.pixels)
        first.picks.extend(g.picks)
    return first
