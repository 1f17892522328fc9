"""Dots: tuning to dot size, location and number.

The full factorial of dot images (every size x location x number, each image labelled
``size=..,loc=x:y,n=..``) is shown ``repeats`` times per block for ``n_blocks`` blocks; the
analysis tests, per neuron, whether the mean response differs across sizes, across
locations and across numbers (permutation tests of the between-condition variance).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from protocols.library.common import AnalysisConfig, ProtocolBase, show_and_ingest
from protocols.plan import call
from protocols.steps import (
    Analyse,
    AnalysisResult,
    DotsParams,
    GenerateImages,
    GenerateResult,
    ImageSet,
    Plan,
)


class DotsProtocol(ProtocolBase):
    protocol: Literal["dots"] = "dots"
    sizes: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1)
    locations: list[tuple[float, float]] = Field(default_factory=lambda: [(0.0, 0.0)], min_length=1)
    numbers: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1)
    color: tuple[int, int, int] = (255, 255, 255)
    repeats: int = Field(default=5, ge=1, le=1000)
    n_blocks: int = Field(default=1, ge=1, le=1000)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    def plan(self) -> Plan:
        params = DotsParams(sizes=self.sizes, locations=self.locations, numbers=self.numbers, color=self.color)
        yield from call(GenerateImages(request_id="dots", params=params), GenerateResult)
        blocks = [f"dots-{i}" for i in range(self.n_blocks)]
        for i, block_id in enumerate(blocks):
            yield from show_and_ingest(self.block(
                block_id, [ImageSet(source="dots", request="dots", condition="dots")], self.repeats, salt=i))
        a = self.analysis
        factors = [("size", len(self.sizes)), ("loc", len(self.locations)), ("n", len(self.numbers))]
        for factor, n_levels in factors:
            if n_levels < 2:
                continue
            yield from call(Analyse(analysis="tuning", name=f"dots_{factor}", blocks=blocks, conditions=["dots"],
                                    factor=factor, n_permutations=a.n_permutations, alpha=a.alpha,
                                    seed=a.seed), AnalysisResult)
