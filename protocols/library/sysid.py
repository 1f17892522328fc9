"""System identification: normal + gaudy + active-learning blocks, retraining as configured.

Each block shows fresh random pool images (condition ``normal``), gaudy versions of pool
images (``gaudy``) and, from block ``active.start_block`` on, active-learning picks
(``active``, falling back to random pool images when the modelserver is slow or down).
After each block the counts are ingested; the model is retrained after every block
(``retrain: block``), once at the end of the session (``session``), both, or never.

With ``prefetch`` the picks for block ``i+1`` are requested before block ``i`` starts, so
they are computed while block ``i`` is shown (by the model as retrained after block
``i-1``); without it, or while no model exists yet, they are requested just before their
block (after the previous block's retraining) and the block waits for them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from protocols.library.common import Config, HeldoutConfig, ProtocolBase, show_and_ingest
from protocols.plan import call
from protocols.steps import (
    ActiveParams,
    GenerateImages,
    GenerateResult,
    ImageSet,
    Plan,
    Retrain,
    RetrainResult,
)


class ActiveConfig(Config):
    n_images: int = Field(default=100, ge=1, le=100_000, description="active-learning picks per block")
    strategy: Literal["ensemble_variance", "max_entropy", "random"] = "ensemble_variance"
    pool_size: int = Field(default=10_000, ge=1)
    start_block: int = Field(default=1, ge=0, description="first block with picks (0 needs an earlier model)")
    timeout_s: float = Field(default=60.0, gt=0, description="wait this long for picks, then fall back")


class SysidProtocol(ProtocolBase):
    protocol: Literal["sysid"] = "sysid"
    n_blocks: int = Field(default=5, ge=1, le=10_000)
    repeats: int = Field(default=1, ge=1, le=1000)
    normal: int = Field(default=400, ge=0, le=100_000, description="random pool images per block")
    gaudy: int = Field(default=100, ge=0, le=100_000, description="gaudy images per block")
    active: ActiveConfig | None = Field(default_factory=ActiveConfig)
    heldout: HeldoutConfig | None = Field(default=None, description="a held-out block shown first")
    retrain: Literal["block", "session", "both", "none"] = "block"
    prefetch: bool = True

    @model_validator(mode="after")
    def _nonempty(self) -> SysidProtocol:
        if self.normal == 0 and self.gaudy == 0 and (self.active is None or self.active.start_block > 0):
            raise ValueError("block 0 would be empty: set 'normal' or 'gaudy' > 0")
        if self.heldout is not None and not self.heldout.present:
            raise ValueError("sysid shows its own held-out block: 'heldout.present' must be true")
        return self

    def _wants_active(self, i: int) -> bool:
        return self.active is not None and i >= self.active.start_block and i < self.n_blocks

    def _request(self, i: int) -> GenerateImages:
        assert self.active is not None
        return GenerateImages(
            request_id=f"active-{i}", n_images=self.active.n_images, prefetch=self.prefetch,
            timeout_s=self.active.timeout_s,
            params=ActiveParams(strategy=self.active.strategy, pool_size=self.active.pool_size))

    def plan(self) -> Plan:
        if self.heldout is not None:
            h = self.heldout
            yield from show_and_ingest(self.block(h.block_id, [ImageSet(
                source="normal", n_images=h.n_images, condition="heldout", seed=h.seed)],
                repeats=h.repeats, salt=10_000), heldout=True)
        retrain_blocks = self.retrain in ("block", "both")
        requested: set[int] = set()
        # a model exists from an earlier session when picks start at block 0, else after a retrain
        have_model = self.active is not None and self.active.start_block == 0
        for i in range(self.n_blocks):
            if self._wants_active(i) and i not in requested:
                yield from call(self._request(i), GenerateResult)
                requested.add(i)
            if self.prefetch and have_model and self._wants_active(i + 1):
                yield from call(self._request(i + 1), GenerateResult)
                requested.add(i + 1)
            sets: list[ImageSet] = []
            if self.normal:
                sets.append(ImageSet(source="pool_random", n_images=self.normal, condition="normal"))
            if self.gaudy:
                sets.append(ImageSet(source="gaudy", n_images=self.gaudy, condition="gaudy"))
            if self._wants_active(i):
                assert self.active is not None
                sets.append(ImageSet(source="active", n_images=self.active.n_images, request=f"active-{i}",
                                     fallback="pool_random", timeout_s=self.active.timeout_s))
            yield from show_and_ingest(self.block(f"sysid-{i}", sets, self.repeats, salt=i))
            if retrain_blocks and i < self.n_blocks - 1:
                yield from call(Retrain(scope="block"), RetrainResult)
                have_model = True
        if self.retrain in ("session", "both"):
            yield from call(Retrain(scope="session"), RetrainResult)
        elif retrain_blocks:
            yield from call(Retrain(scope="block"), RetrainResult)
