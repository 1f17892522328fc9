"""Offline replay of stored sessions: ``cortexloop replay SESSION.h5 [MORE.h5 ...]``.

A replay re-drives a session file through the same engine, stimserver (its display-free
presenter, not in real time) and modelserver as a live session, with the recorded counts
answering in place of the rig:

* the protocol is the one recorded in the start document, run with the recorded seed;
* every block is shown exactly as recorded (same trial ids, images, order and conditions) and
  each trial gets the counts recorded for it, so the new file holds the same counts;
* ingest, retrain, generate, match and analyse steps run for real, so the new file holds the
  model versions the modelserver reaches on these data, and the picks it makes (written as
  pick documents with ``details.counterfactual`` and ``details.shown``);
* ``policy`` swaps the active-learning strategy: what would another policy have picked?

The replay ends where the recording ends: the first block the recording does not hold stops the
plan (an aborted session replays up to its last block). Deterministic: the same files, seeds and
settings give the same model metrics and picks (the modelserver starts empty for each replay).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.acquisition.base import AcquisitionSource, Item
from controller.acquisition.binning import ClosedTrial
from controller.config import BusConfig, ImagesConfig, ModelConfig, RunConfig, StimConfig
from controller.images import ImageLibrary
from controller.store import DamagedSession, SessionReader, damage_that_matters
from protocols.library import PROTOCOL_ADAPTER, ProtocolBase
from protocols.steps import GenerateImages, Plan, PresentBlock, Step
from wire.documents import (
    BlockDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
)
from wire.errors import InvalidRequest, StoreError
from wire.stim import TrialEvent

log = logging.getLogger(__name__)

__all__ = ["POLICIES", "Recording", "ReplayOutcome", "compare", "replay_plan", "replay_session"]

#: active-learning strategies a replay can swap in (``--policy``)
POLICIES = ("ensemble_variance", "max_entropy", "random")


class Recording:
    """A session file's blocks, images and counts, as the engine's replay needs them.

    The file is read once. Damaged records are skipped and listed in :attr:`damage` (and logged);
    damage that matters for a replay (``Damage.matters``: a start, block, image, trial or response
    record, a record of unknown kind, or the file itself) raises ``DamagedSession`` (a StoreError
    naming every damaged part) unless ``allow_damaged``."""

    def __init__(self, path: str | Path, *, allow_damaged: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no session file at {self.path}")
        with SessionReader(self.path) as reader:
            self.docs = list(reader.documents())
            #: what the reader skipped (controller.store.Damage), in file order
            self.damage = reader.damage
        serious = damage_that_matters(self.damage)
        if serious and not allow_damaged:
            raise DamagedSession(self.path, serious, "a replay")
        for d in self.damage:
            log.warning("replay of %s skips %s", self.path.name, d)
        self.images = {d.image_id: d.pixels for d in self.docs if isinstance(d, ImageDoc)}
        starts = [d for d in self.docs if isinstance(d, StartDoc)]
        if not starts:
            raise StoreError(f"{self.path} has no start document: not a session file, or empty")
        self.start: StartDoc = starts[0]
        self.blocks = {d.block_id: d for d in self.docs if isinstance(d, BlockDoc)}
        self.responses: dict[str, ResponseDoc] = {}
        for d in self.docs:
            if isinstance(d, ResponseDoc):  # a trial re-shown after a crash was recorded as '<id>.again'
                self.responses.setdefault(d.trial_id.removesuffix(".again"), d)

    @property
    def session_id(self) -> str:
        return self.start.session_id

    @property
    def seed(self) -> int:
        return int(self.start.config.get("seed", 0))

    def protocol(self) -> ProtocolBase:
        if not self.start.protocol:
            raise StoreError(f"{self.path}: the start document records no protocol; it cannot be replayed")
        proto: ProtocolBase = PROTOCOL_ADAPTER.validate_python(self.start.protocol)
        return proto

    # -- what the engine asks (controller.engine.Recording) ------------------------------------------
    def block(self, block_id: str) -> BlockDoc | None:
        return self.blocks.get(block_id)

    def image(self, image_id: str) -> np.ndarray:
        try:
            return self.images[image_id]
        except KeyError:
            raise StoreError(f"{self.path}: image {image_id} is shown but not stored") from None

    def closed_trial(self, trial_id: str, ev: TrialEvent) -> ClosedTrial:
        doc = self.responses.get(trial_id)
        if doc is None:  # never counted in the recording: closed without counts, as it was
            return ClosedTrial(trial_id=trial_id, unit_ids=(), counts=np.zeros(0), window=(0.0, 0.0),
                               onset_acq=ev.onset, onset_stim=ev.onset, complete=False, block_id=ev.block_id,
                               image_id=ev.image_id, index=ev.index)
        return ClosedTrial(trial_id=trial_id, unit_ids=tuple(doc.units), counts=np.asarray(doc.counts),
                           window=doc.window, onset_acq=doc.onset_acq, onset_stim=ev.onset, complete=doc.complete,
                           block_id=ev.block_id, image_id=ev.image_id, index=ev.index)

    def operator_answer(self, n: int) -> dict[str, Any] | None:
        """The result of the ``n``-th operator pause of the recording (resume or abort, and why), or None
        where the recording has no answer for it (it ended while waiting)."""
        answers = [d.result for d in self.docs if isinstance(d, StepDoc) and d.step.get("kind") == "pause_for_operator"]
        return answers[n] if n < len(answers) else None

    def library(self) -> ImageLibrary:
        ids = list(self.images)
        if not ids:
            raise StoreError(f"{self.path} stores no images")
        return ImageLibrary(np.stack([self.images[i] for i in ids]), ids, name=f"replay of {self.session_id}")


class SilentSource(AcquisitionSource):
    """No acquisition stream: the recording answers every trial (never silent, never done)."""

    name = "replay"

    def __init__(self) -> None:
        super().__init__(silence_timeout=None)

    async def _items(self) -> AsyncIterator[Item]:
        await asyncio.Event().wait()  # until the engine cancels its acquisition pump
        nothing: tuple[Item, ...] = ()
        for item in nothing:  # an async generator that never yields
            yield item


# --- the plan --------------------------------------------------------------------------------------
def _with_policy(step: Step, policy: str) -> Step:
    """``step`` with every active-learning request switched to ``policy``."""
    if isinstance(step, GenerateImages) and step.params.generator == "active":
        return step.model_copy(update={"params": step.params.model_copy(update={"strategy": policy})})
    if isinstance(step, PresentBlock):
        sets = [s.model_copy(update={"params": {**s.params, "strategy": policy}})
                if s.source == "active" and s.request is None else s for s in step.images]
        return step.model_copy(update={"images": sets})
    return step


def replay_plan(plan: Plan, recording: Recording, policy: str | None = None) -> Plan:
    """The protocol's plan, ending at the first block the recording does not hold.

    An error the engine throws into this plan (a failed step) is thrown into the protocol's own
    plan, so a protocol that handles it (e.g. catches ``AcquisitionError``) does so under replay too.
    """
    pending: tuple[str, Any] = ("send", None)
    while True:
        how, value = pending
        try:
            step = plan.throw(value) if how == "throw" else plan.send(value)
        except StopIteration:
            return
        if isinstance(step, PresentBlock) and recording.block(step.block_id) is None:
            plan.close()
            return
        try:
            pending = ("send", (yield _with_policy(step, policy) if policy is not None else step))
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:
            pending = ("throw", exc)


# --- running ---------------------------------------------------------------------------------------
@dataclass
class ReplayOutcome:
    source: Path
    path: Path
    stop: StopDoc
    comparison: dict[str, Any] = field(default_factory=dict)


def replay_config(out_dir: Path, model: ModelConfig | None = None, images: ImagesConfig | None = None) -> RunConfig:
    """The assembly's configuration for a replay: the display-free presenter flipping as fast as it
    can (no point waiting frames offline), no bus, and the given modelserver (default: none)."""
    return RunConfig(out_dir=out_dir, stim=StimConfig(presenter="fake", extra_args=["--no-fake-realtime"]),
                     model=model or ModelConfig(kind="none"), images=images or ImagesConfig(),
                     bus=BusConfig(broker="none"))


def recorded_images(recording: Recording, v4_dir: Path | None = None) -> ImageLibrary:
    """The image library the recorded session drew from (its rig file's ``images``, with ``v4_dir``
    in place of the recorded folder when given; synthetic images made again from the recorded seed),
    or the recording's own images when that folder or file is gone."""
    from pydantic import ValidationError

    from controller.assembly import build_images

    if not isinstance(recording.start.config.get("images"), dict):
        return recording.library()
    try:
        images = ImagesConfig.model_validate(recording.start.config["images"])
    except ValidationError:
        return recording.library()
    if v4_dir is not None:
        images = images.model_copy(update={"v4_dir": v4_dir, "pool": None})
    source = images.pool or images.v4_dir
    if source is not None and not Path(source).exists():
        return recording.library()
    # synthetic images are made again from the recorded seed: the same library the session drew from
    return build_images(RunConfig(images=images, seed=recording.seed))[0]


async def replay_session(source: str | Path, out_dir: Path, *, model: ModelConfig | None = None,
                         policy: str | None = None, seed: int | None = None, session_id: str | None = None,
                         images: ImageLibrary | None = None, stim: tuple[str, str] | None = None,
                         on_status: Any = None) -> ReplayOutcome:
    """Replay one session file into ``out_dir/<session_id>.h5`` (default ``<original>.replay[-policy]``).

    It goes through the one assembly (:func:`controller.assembly.assemble`) with the recording in
    place of the acquisition source. ``model``: the modelserver (default none: model steps then
    fail or fall back as in a live session without one). ``images``: the library that base images
    are drawn from (default: the recorded session's, see :func:`recorded_images`). ``stim``:
    (rpc, events) of a running stimserver (None: start a display-free one).
    """
    from controller.assembly import assemble

    if policy is not None and policy not in POLICIES:
        raise InvalidRequest(f"unknown policy {policy!r}: choose one of {', '.join(POLICIES)}")
    recording = Recording(source)
    proto = recording.protocol()
    sid = session_id or f"{recording.session_id}.replay" + (f"-{policy}" if policy else "")
    cfg = replay_config(out_dir, model).model_copy(update={
        "session_id": sid, "seed": recording.seed if seed is None else seed, "rig": recording.start.rig,
        "subject": recording.start.subject})
    if stim is not None:
        cfg.stim = StimConfig(rpc=stim[0], events=stim[1])
    record = {"replay_of": {"file": str(recording.path), "session_id": recording.session_id,
                            "start_uid": recording.start.uid, "policy": policy}}
    async with assemble(cfg, proto, recording=recording, images=images or recorded_images(recording),
                        record=record, on_status=on_status) as s:
        stop = await s.run(replay_plan(proto.plan(), recording, policy))
    return ReplayOutcome(recording.path, s.path, stop, compare(recording.path, s.path))


# --- comparing a replay with its recording ------------------------------------------------------------
def compare(original: Path, replay: Path) -> dict[str, Any]:
    """Counts identical trial by trial; model versions' metrics; per block and generator, how many of
    the replay's picks the recording showed."""
    with SessionReader(original) as a, SessionReader(replay) as b:
        docs_a, docs_b = list(a.documents()), list(b.documents())
    resp_a = {d.trial_id.removesuffix(".again"): d for d in docs_a if isinstance(d, ResponseDoc)}
    resp_b = {d.trial_id: d for d in docs_b if isinstance(d, ResponseDoc)}
    same = sum(1 for t, d in resp_b.items() if t in resp_a and _same_counts(resp_a[t], d))
    picks: dict[str, dict[str, Any]] = {}
    for p in docs_b:
        if isinstance(p, PickDoc) and p.details.get("counterfactual"):
            row = picks.setdefault(f"{p.block_id} {p.generator}", {"picked": 0, "shown": 0, "image_ids": []})
            row["picked"] += 1
            row["shown"] += bool(p.details.get("shown"))
            row["image_ids"].append(p.image_id)
    return {
        "trials_with_counts": {"recording": len(resp_a), "replay": len(resp_b), "identical": same},
        "model_versions": {"recording": [d.metrics for d in docs_a if isinstance(d, ModelVersionDoc)],
                           "replay": [d.metrics for d in docs_b if isinstance(d, ModelVersionDoc)]},
        "picks": picks,
    }


def _same_counts(a: ResponseDoc, b: ResponseDoc) -> bool:
    ca, cb = np.asarray(a.counts), np.asarray(b.counts)
    return a.units == b.units and ca.dtype == cb.dtype and np.array_equal(ca, cb)
