"""Maximizing images (Cowley et al. 2023, Fig. 2).

1. Match recorded neurons to models by prediction performance on held-out normal images
   shown earlier in the session (or in a held-out block this protocol shows first).
2. For each matched neuron, ask its model for the pool images it predicts to drive the
   neuron most (``max_normal``) and for images synthesized by gradient ascent
   (``max_synth``); both requests run in the background (prefetch).
3. Show them, interleaved with randomly chosen normal images (``random_normal``).
4. Analysis: per neuron, percent change of its mean response to its own maximizing images
   relative to the random normal images, with a one-sided permutation test.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Annotated, Literal

from pydantic import Field

from protocols.library.common import (
    AnalysisConfig,
    Config,
    HeldoutConfig,
    MatchConfig,
    ProtocolBase,
    match_neurons,
    show_and_ingest,
)
from protocols.plan import call
from protocols.steps import (
    Analyse,
    AnalysisResult,
    GenerateImages,
    GenerateResult,
    ImageSet,
    MatchResult,
    MaximizeNormalParams,
    MaximizeSynthParams,
    OperatorResult,
    PauseForOperator,
    Plan,
    Result,
    Step,
)


class SynthConfig(Config):
    steps: int = Field(default=200, ge=1)
    lr: float = Field(default=0.05, gt=0, description="unused (the modelserver sets the step size); "
                      "kept so existing protocol files and stored sessions load")
    init: Literal["noise", "pool"] = "noise"
    max_contrast: float | None = Field(default=None, ge=1, le=8, description=(
        "contrast phase before the pixel steps: gain 1..this per image, set by the model's gradient "
        "(None: 2 from the pool, none from noise; 1: off)"))
    timeout_s: float = Field(default=600.0, gt=0)


NeuronsField = Field(default=None, max_length=100_000, description=(
    "only these recorded neurons (indices as in match results) among those that match; "
    "null: every matched neuron (a schedule's 'neurons: qualified' sets it)"))


def matched_subset(proto: ProtocolBase, heldout: HeldoutConfig, match: MatchConfig,
                   neurons: list[int] | None) -> Generator[Step, Result, list[int] | None]:
    """Match neurons (:func:`match_neurons`); with ``neurons``, keep only those (``max_neurons`` then
    applies to them). None (after telling the operator) when none is left."""
    limit = match.max_neurons
    if neurons is not None:
        match = match.model_copy(update={"max_neurons": None})
    result: MatchResult | None = yield from match_neurons(proto, heldout, match)
    if result is None:
        return None
    if neurons is None:
        return result.neurons
    wanted = set(neurons)
    kept = [j for j in result.neurons if j in wanted][:limit]
    if not kept:
        yield from call(PauseForOperator(
            message=f"none of the neurons {sorted(wanted)} matched a model on the held-out images; the causal "
                    "test is skipped (resume or abort to end the protocol)"), OperatorResult)
        return None
    return kept


class MaximizeProtocol(ProtocolBase):
    protocol: Literal["maximize"] = "maximize"
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    n_per_neuron: int = Field(default=5, ge=1, le=1000, description="maximizing images per neuron and kind")
    n_random: int = Field(default=50, ge=2, le=100_000, description="randomly chosen normal images")
    repeats: int = Field(default=5, ge=1, le=1000)
    pool_size: int = Field(default=10_000, ge=1, description="pool images scored for max_normal")
    synth: SynthConfig = Field(default_factory=SynthConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    neurons: list[Annotated[int, Field(ge=0)]] | None = NeuronsField

    def plan(self) -> Plan:
        neurons = yield from matched_subset(self, self.heldout, self.match, self.neurons)
        if neurons is None:
            return
        yield from call(GenerateImages(
            request_id="max_normal", n_images=self.n_per_neuron, prefetch=True,
            params=MaximizeNormalParams(neurons=neurons, pool_size=self.pool_size)), GenerateResult)
        yield from call(GenerateImages(
            request_id="max_synth", n_images=self.n_per_neuron, prefetch=True, timeout_s=self.synth.timeout_s,
            params=MaximizeSynthParams(neurons=neurons, steps=self.synth.steps, lr=self.synth.lr,
                                       init=self.synth.init, max_contrast=self.synth.max_contrast)), GenerateResult)
        sets = [
            ImageSet(source="maximize_normal", request="max_normal", condition="max_normal",
                     fallback="pool_random", timeout_s=self.synth.timeout_s),
            ImageSet(source="maximize_synth", request="max_synth", condition="max_synth",
                     fallback="pool_random", timeout_s=self.synth.timeout_s),
            ImageSet(source="pool_random", n_images=self.n_random, condition="random_normal"),
        ]
        yield from show_and_ingest(self.block("maximize", sets, self.repeats, salt=2))
        a = self.analysis
        yield from call(Analyse(
            analysis="percent_change", name="maximize", blocks=["maximize"],
            conditions=["max_normal", "max_synth"], baseline="random_normal", neurons=neurons,
            alternative="greater", n_permutations=a.n_permutations, alpha=a.alpha, seed=a.seed), AnalysisResult)
