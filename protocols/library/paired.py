"""Causal tests of images paired with their base images: adversarial and smooth.

``adversarial``: for each matched neuron, small perturbations of base images that should
raise (``adv+``) or lower (``adv-``) its response; shown with the base images (``base``).

``smooth``: smoothed versions of base images (Abbasi-Asl et al.): ``smooth_minus`` smooths
where the model says the neuron is sensitive (should lower the response), ``smooth_random``
smooths random regions by the same amount (control); shown with the base images.

Both generate the first kind on pool picks, the second on the same base images, then show
all three conditions interleaved and test each against the base (and minus vs random).
If a generation fails the operator may retry (resume) or skip the test (abort).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from protocols.library.common import (
    AnalysisConfig,
    HeldoutConfig,
    MatchConfig,
    ProtocolBase,
    generate_with_retry,
    paired_params,
    show_and_ingest,
)
from protocols.library.maximize import NeuronsField, matched_subset
from protocols.plan import call
from protocols.steps import (
    AdversarialParams,
    Alternative,
    Analyse,
    AnalysisResult,
    BaseChoice,
    GenerateImages,
    GeneratorParams,
    ImageSet,
    Plan,
    SmoothParams,
)


class _PairedProtocol(ProtocolBase):
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    match: MatchConfig = Field(default_factory=MatchConfig)
    n_per_neuron: int = Field(default=5, ge=1, le=1000, description="base images per neuron")
    repeats: int = Field(default=5, ge=1, le=1000)
    timeout_s: float = Field(default=600.0, gt=0, description="per generation request")
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    neurons: list[Annotated[int, Field(ge=0)]] | None = NeuronsField
    bases: BaseChoice = "driving"

    # (condition, params, alternative vs base) of the two generated kinds
    def _kinds(self, neurons: list[int]) -> list[tuple[str, GeneratorParams, Alternative]]:
        raise NotImplementedError

    def _extra_comparisons(self) -> list[tuple[str, str, Alternative]]:
        """(condition, baseline, alternative) besides each kind vs base."""
        return []

    def plan(self) -> Plan:
        neurons = yield from matched_subset(self, self.heldout, self.match, self.neurons)
        if neurons is None:
            return
        kinds = self._kinds(neurons)
        sets: list[ImageSet] = []
        base_ids: list[str] | None = None
        for condition, params, _ in kinds:
            request = GenerateImages(request_id=condition, n_images=self.n_per_neuron,
                                     params=paired_params(params, base_ids), timeout_s=self.timeout_s)
            result = yield from generate_with_retry(request)
            if result is None:
                return
            if base_ids is None:
                base_ids = result.base_ids or None
            sets.append(ImageSet(source=params.generator, request=result.request_id, condition=condition))
        if not base_ids:
            raise ValueError("the generator returned no base images")  # engine contract violated
        sets.append(ImageSet(image_ids=sorted(set(base_ids)), condition="base"))
        block_id = f"{self.protocol}-test"
        yield from show_and_ingest(self.block(block_id, sets, self.repeats, salt=3))
        a = self.analysis
        comparisons = [(c, "base", alt) for c, _, alt in kinds] + self._extra_comparisons()
        for condition, baseline, alternative in comparisons:
            yield from call(Analyse(
                analysis="percent_change", name=f"{condition}_vs_{baseline}", blocks=[block_id],
                conditions=[condition], baseline=baseline, neurons=neurons, alternative=alternative,
                n_permutations=a.n_permutations, alpha=a.alpha, seed=a.seed), AnalysisResult)


class AdversarialProtocol(_PairedProtocol):
    protocol: Literal["adversarial"] = "adversarial"
    epsilon: float = Field(default=8.0, gt=0, description="L2 budget of the perturbation (pixels in 0..1)")
    max_abs: float = Field(default=32.0, gt=0, le=255, description="largest change of one pixel (0..255)")
    blur: float = Field(default=2.0, ge=0, le=16,
                        description="smooth steps: gradient blur in pixels (0: signed-gradient steps)")
    jitter: int = Field(default=8, ge=0, le=32, description="each step's view shifted by up to this many pixels")
    scale_jitter: float = Field(default=0.15, ge=0, lt=0.5, description="each step's view rescaled by 1 +- this")
    steps: int = Field(default=50, ge=1)

    def _kinds(self, neurons: list[int]) -> list[tuple[str, GeneratorParams, Alternative]]:
        def params(direction: Literal["+", "-"]) -> AdversarialParams:
            return AdversarialParams(neurons=neurons, direction=direction, epsilon=self.epsilon,
                                     max_abs=self.max_abs, blur=self.blur, steps=self.steps, bases=self.bases,
                                     jitter=self.jitter, scale_jitter=self.scale_jitter)
        return [("adv+", params("+"), "greater"), ("adv-", params("-"), "less")]


class SmoothProtocol(_PairedProtocol):
    protocol: Literal["smooth"] = "smooth"
    sigma: float = Field(default=2.0, gt=0, description="Gaussian blur width (px)")
    grid: int = Field(default=8, ge=1, le=56, description="the image is cut into grid x grid patches")
    max_patches: int = Field(default=16, ge=1, le=56 * 56, description="patches smoothed per image")
    shortlist: int | None = Field(default=8, ge=1, description="patches tried exactly per greedy step, the "
                                  "most promising by the gradient (None: all; slower)")

    def _kinds(self, neurons: list[int]) -> list[tuple[str, GeneratorParams, Alternative]]:
        def params(mode: Literal["minus", "random"]) -> SmoothParams:
            return SmoothParams(neurons=neurons, mode=mode, sigma=self.sigma, grid=self.grid,
                                max_patches=self.max_patches, shortlist=self.shortlist, bases=self.bases)
        return [("smooth_minus", params("minus"), "less"), ("smooth_random", params("random"), "two-sided")]

    def _extra_comparisons(self) -> list[tuple[str, str, Alternative]]:
        return [("smooth_minus", "smooth_random", "less")]
