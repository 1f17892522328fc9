"""Configuration blocks and sub-plans shared by the library protocols."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocols.plan import call
from protocols.steps import (
    BlockResult,
    CountsResult,
    GenerateImages,
    GenerateResult,
    GeneratorParams,
    Ident,
    ImageSet,
    Ingest,
    IngestResult,
    MatchModels,
    MatchResult,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Step,
    WaitForCounts,
)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timing(Config):
    """Frames per trial: image ON, then blank OFF (at 60 Hz, 6 + 6 frames = 100 + 100 ms)."""

    on_frames: int = Field(default=6, ge=1, le=10_000)
    off_frames: int = Field(default=6, ge=0, le=10_000)


class HeldoutConfig(Config):
    """Held-out normal images used to match neurons to models.

    ``present: true`` shows them in a block of this protocol first; ``present: false`` uses
    ``blocks`` shown earlier in the session (e.g. by a sysid protocol).
    """

    present: bool = True
    block_id: Ident = "heldout"
    n_images: int = Field(default=50, ge=2, le=10_000)
    repeats: int = Field(default=5, ge=2, le=1000, description="repeats (>=2 for noise-corrected scores)")
    seed: int = Field(default=7, description="fixes which pool images are held out")
    blocks: list[Ident] = Field(default_factory=list, description="earlier held-out blocks (present: false)")

    @model_validator(mode="after")
    def _blocks(self) -> HeldoutConfig:
        if not self.present and not self.blocks:
            raise ValueError("with 'present: false' list the earlier held-out 'blocks'")
        return self

    @property
    def block_ids(self) -> list[str]:
        return [self.block_id] if self.present else list(self.blocks)


class MatchConfig(Config):
    metric: Literal["pearson_r", "r2_er"] = "pearson_r"
    min_score: float = Field(default=0.5, ge=-1.0, le=1.0)
    max_neurons: int | None = Field(default=None, ge=1)
    models: list[Ident] | None = None
    assignment: Literal["best", "one_to_one"] = Field(
        default="best", description="best: each neuron its best model neuron (may share); one_to_one: one "
                                    "model session, each model neuron for one recorded neuron")


class AnalysisConfig(Config):
    n_permutations: int = Field(default=2000, ge=10, le=1_000_000)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    seed: int = 0


class ProtocolBase(Config, ABC):
    """A protocol file's top level: ``protocol`` names the library entry, the rest configures it."""

    protocol: str
    title: str = Field(default="", description="free text shown to the operator")
    seed: int = Field(default=0, description="seed of trial orders and random picks")
    timing: Timing = Field(default_factory=Timing)

    @abstractmethod
    def plan(self) -> Plan:
        """The generator of steps (no I/O)."""

    def block(self, block_id: str, images: list[ImageSet], repeats: int, salt: int = 0) -> PresentBlock:
        return PresentBlock(block_id=block_id, images=images, repeats=repeats,
                            on_frames=self.timing.on_frames, off_frames=self.timing.off_frames,
                            seed=self.seed * 1000 + salt)


def show_and_ingest(block: PresentBlock, heldout: bool = False) -> Generator[Step, Result, CountsResult]:
    """Present a block, wait for its counts and add them to the training data."""
    yield from call(block, BlockResult)
    counts = yield from call(WaitForCounts(block_id=block.block_id), CountsResult)
    yield from call(Ingest(block_ids=[block.block_id], heldout=heldout), IngestResult)
    return counts


def match_neurons(proto: ProtocolBase, heldout: HeldoutConfig,
                  match: MatchConfig) -> Generator[Step, Result, MatchResult | None]:
    """Show the held-out block (if configured) and match neurons to models on it.

    Returns None when no neuron reached ``min_score`` (after telling the operator).
    """
    if heldout.present:
        block = proto.block(heldout.block_id, [ImageSet(source="normal", n_images=heldout.n_images,
                                                        condition="heldout", seed=heldout.seed)],
                            repeats=heldout.repeats, salt=1)
        yield from show_and_ingest(block, heldout=True)
    result = yield from call(MatchModels(heldout_blocks=heldout.block_ids, models=match.models,
                                         metric=match.metric, min_score=match.min_score,
                                         max_neurons=match.max_neurons, assignment=match.assignment),
                             MatchResult)
    if not result.matches:
        yield from call(PauseForOperator(
            message=f"no neuron reached {match.metric} >= {match.min_score} on the held-out images; "
                    "the causal test is skipped (resume or abort to end the protocol)"), OperatorResult)
        return None
    return result


def generate_with_retry(request: GenerateImages, retries: int = 1) -> Generator[Step, Result, GenerateResult | None]:
    """Generate and wait; on failure ask the operator to retry (resume) or give up (abort -> None)."""
    for attempt in range(retries + 1):
        result = yield from call(request, GenerateResult)
        if result.status == "ready":
            return result
        if attempt == retries:
            break
        op = yield from call(PauseForOperator(
            message=f"image generation {request.request_id!r} failed ({result.error or result.status}); "
                    "resume to retry, abort to skip"), OperatorResult)
        if op.action == "abort":
            return None
        request = request.model_copy(update={"request_id": f"{request.request_id}.r{attempt + 1}"})
    return None


def paired_params(params: GeneratorParams, base_ids: list[str] | None) -> GeneratorParams:
    """``params`` with its ``base_ids`` replaced (adversarial and smooth generators)."""
    return params.model_copy(update={"base_ids": base_ids})
