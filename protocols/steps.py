"""The steps a protocol yields and the results the engine sends back: the engine's contract.

A protocol is a generator (bluesky style)::

    def plan() -> Plan:
        block = yield PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=50)])
        counts = yield WaitForCounts(block_id="b0")
        ...

The engine executes each step and sends back the result model named in :data:`RESULT_TYPES`
(``result = yield step``). Every step is a frozen pydantic model with a literal ``kind``;
:data:`AnyStep` is their discriminated union and :data:`AnyResult` that of the results, so a
step list is plain data (JSON/YAML/TOML) and an engine dispatches on ``kind`` exhaustively.

Step kinds (see each class):

=================  ===========================================  ====================
kind               what the engine does                         result
=================  ===========================================  ====================
present_block      shows a block of images (stimserver)         BlockResult
wait_for_counts    waits until the block's spike counts exist   CountsResult
ingest             adds blocks' counts to the training data     IngestResult
retrain            refits the model (block or session scope)    RetrainResult
generate_images    asks the modelserver for images              GenerateResult
match_models       matches neurons to models on held-out data   MatchResult
analyse            runs a :mod:`protocols.analysis` analysis    AnalysisResult
pause_for_operator waits for the operator (MQTT resume/abort)   OperatorResult
=================  ===========================================  ====================

Conditions: every trial carries a condition label, the :attr:`ImageSet.condition` of the set
its image came from, or ``"<condition>/<label>"`` when the generator labelled the image (see
:attr:`GenerateResult.labels`, e.g. ``"dots/size=2"``). Analyses select trials by condition.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Where the images of an image set come from.
#:
#: - ``normal``: natural images from the image pool, the same ones for a given seed (held-out sets)
#: - ``pool_random``: natural images drawn at random from the pool (fresh each block)
#: - ``gaudy``: gaudy (high-contrast, colour-saturated) versions of pool images
#: - ``active``: active-learning picks from the pool (the modelserver's acquisition function)
#: - ``maximize_normal``: pool images the model predicts to drive the neurons most
#: - ``maximize_synth``: images synthesized by gradient ascent on the model
#: - ``adversarial``: small perturbations of base images that raise (adv+) or lower (adv-) a response
#: - ``smooth``: smoothed images (smooth-: smoothed to lower the response; random smoothing as control)
#: - ``dots``: parametric dot images (size, location, number)
SourceKind: TypeAlias = Literal[
    "normal", "pool_random", "gaudy", "active", "maximize_normal", "maximize_synth",
    "adversarial", "smooth", "dots",
]
SOURCE_KINDS: tuple[str, ...] = SourceKind.__args__  # type: ignore[attr-defined]
#: Sources the modelserver must compute (so they can be slow or fail and need a fallback).
MODEL_SOURCES: frozenset[str] = frozenset(
    {"active", "maximize_normal", "maximize_synth", "adversarial", "smooth"})
#: Sources whose images come from a generator (a GenerateImages request, named or inline).
GENERATED_SOURCES: frozenset[str] = MODEL_SOURCES | {"dots"}

Alternative: TypeAlias = Literal["two-sided", "greater", "less"]
Json: TypeAlias = str | int | float | bool | list[Any] | dict[str, Any] | None
#: An id or condition label: letters, digits and ``_ . : + -`` ('/' and '=' are reserved for labels).
Ident = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:+\-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# =============================================================================================
# steps
# =============================================================================================
class Step(_Model):
    """Base of every step. ``note`` is free text the engine logs with the step."""

    kind: str
    note: str = Field(default="", description="free text logged with the step")


class ImageSet(_Model):
    """A group of images in a block, all from one source and labelled with one condition.

    Give either ``source`` (a :data:`SourceKind`) or ``image_ids`` (explicit content hashes).
    ``request`` names a :class:`GenerateImages` request whose images this set shows (the
    engine waits for that request if it was prefetched); a generated source without
    ``request`` is generated inline (:meth:`inline_request`, ``params`` = the generator's
    parameters). ``fallback`` is the pool source used when the modelserver is slow
    (``timeout_s``) or down; its trials are labelled ``<condition>/fallback``.
    """

    source: SourceKind | None = Field(default=None, description="where the images come from")
    image_ids: list[Ident] | None = Field(default=None, min_length=1, description="explicit image ids")
    n_images: int = Field(default=0, ge=0, le=100_000,
                          description="pool sources: distinct images; generated sets show all the request's "
                                      "images (inline: this is the request's n_images) and this many "
                                      "fallback images (0: as many as requested)")
    condition: Ident | None = Field(default=None, description="condition label (default: the source name)")
    request: Ident | None = Field(default=None, description="request_id of a GenerateImages step")
    fallback: SourceKind | None = Field(default=None, description="source used if the modelserver fails")
    timeout_s: float = Field(default=60.0, gt=0, description="how long to wait for modelserver images")
    seed: int | None = Field(default=None, description="seed of random picks (None: engine's session seed)")
    params: dict[str, Json] = Field(default_factory=dict, description="source-specific options")

    @model_validator(mode="after")
    def _one_origin(self) -> ImageSet:
        if (self.source is None) == (self.image_ids is None):
            raise ValueError("give exactly one of 'source' and 'image_ids'")
        if self.image_ids is None and self.n_images == 0 and self.request is None and self.source != "dots":
            raise ValueError("'n_images' must be > 0 unless 'image_ids', 'request' or dots give the images")
        if self.fallback is not None and self.fallback in MODEL_SOURCES:
            raise ValueError(f"fallback {self.fallback!r} needs the modelserver too; use a pool source")
        return self

    @property
    def label(self) -> str:
        return self.condition or self.source or "explicit"

    @property
    def generated(self) -> bool:
        """Whether the images come from a generator (a model source or dots), not the pool."""
        return self.image_ids is None and (self.request is not None or self.source in GENERATED_SOURCES)

    def inline_request(self, block_id: str) -> GenerateImages:
        """The request the engine makes for a generated set without ``request``: generator
        ``source``, its parameters from ``params``, ``n_images`` (None for dots: all of them).
        Raises pydantic's ValidationError when ``params`` do not fit the generator."""
        return GenerateImages.model_validate({
            "request_id": f"{block_id}.{self.label}", "n_images": self.n_images or None,
            "timeout_s": self.timeout_s, "params": {"generator": self.source, **self.params}})


class PresentBlock(Step):
    """Show a block: every image of every set ``repeats`` times, in a shuffled order.

    Each trial shows one image for ``on_frames`` frames then a blank for ``off_frames``.
    The engine resolves each set's images (pool, generated, or fallback), sends the block to
    the stimserver and returns once the last trial has been shown.
    """

    kind: Literal["present_block"] = "present_block"
    block_id: Ident = Field(description="unique id of this block within the session")
    images: list[ImageSet] = Field(min_length=1, description="the image sets shown in this block")
    repeats: int = Field(default=1, ge=1, le=1000, description="presentations of each image")
    on_frames: int = Field(default=6, ge=1, le=10_000, description="frames each image stays on")
    off_frames: int = Field(default=6, ge=0, le=10_000, description="blank frames after each image")
    shuffle: bool = Field(default=True, description="shuffle trial order (else sets in order)")
    seed: int | None = Field(default=None, description="seed of the trial order")

    @model_validator(mode="after")
    def _unique_conditions(self) -> PresentBlock:
        labels = [s.label for s in self.images]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"image sets share condition labels {dup}; give each a distinct 'condition'")
        return self


class WaitForCounts(Step):
    """Wait until the spike counts of every trial of ``block_id`` are binned (or ``timeout_s``)."""

    kind: Literal["wait_for_counts"] = "wait_for_counts"
    block_id: Ident
    timeout_s: float = Field(default=30.0, gt=0)
    min_fraction: float = Field(default=1.0, gt=0, le=1.0,
                                description="fraction of trials that must have counts (else an error)")


class Ingest(Step):
    """Add the counts of ``block_ids`` to the modelserver's training data."""

    kind: Literal["ingest"] = "ingest"
    block_ids: list[Ident] = Field(min_length=1)
    heldout: bool = Field(default=False, description="mark these blocks as held-out (never trained on)")


class Retrain(Step):
    """Refit the model: ``block`` scope is a quick update between blocks, ``session`` a full fit."""

    kind: Literal["retrain"] = "retrain"
    scope: Literal["block", "session"]
    wait: bool = Field(default=True, description="wait for the fit (False: continue, fit in background)")
    max_epochs: int | None = Field(default=None, ge=1)
    timeout_s: float = Field(default=600.0, gt=0)


# --- generator parameters (typed per generator) -----------------------------------------------
Neurons = list[Annotated[int, Field(ge=0)]]


class _GenParams(_Model):
    pass


class ActiveParams(_GenParams):
    generator: Literal["active"] = "active"
    strategy: Literal["ensemble_variance", "max_entropy", "random"] = "ensemble_variance"
    pool_size: int = Field(default=10_000, ge=1, description="candidates scored")


class PoolRandomParams(_GenParams):
    generator: Literal["pool_random"] = "pool_random"


class GaudyParams(_GenParams):
    generator: Literal["gaudy"] = "gaudy"


class MaximizeNormalParams(_GenParams):
    generator: Literal["maximize_normal"] = "maximize_normal"
    neurons: Neurons = Field(min_length=1)
    pool_size: int = Field(default=10_000, ge=1)


class MaximizeSynthParams(_GenParams):
    generator: Literal["maximize_synth"] = "maximize_synth"
    neurons: Neurons = Field(min_length=1)
    steps: int = Field(default=200, ge=1)
    lr: float = Field(default=0.05, gt=0, description="unused; kept so stored sessions load")
    init: Literal["noise", "pool"] = "noise"
    max_contrast: float | None = Field(default=None, ge=1, le=8,
                                       description="contrast phase's largest gain (None: the init's default)")


BaseChoice = Annotated[Literal["driving", "random"], Field(description=(
    "driving: each neuron's base images from the upper quartile of its model's predictions over 8 random "
    "library images per base image (a reliable response, room to rise and to fall); random: as drawn"))]


class AdversarialParams(_GenParams):
    """Adversarial images around ``base_ids`` (or random pool images): ``direction`` + raises the
    response of the target neurons, - lowers it, within an L2 budget ``epsilon`` (pixel units 0..1)
    and a largest pixel change ``max_abs`` (0..255); ``blur`` > 0 takes smooth steps (see
    :func:`modelserver.generate.adversarial.adversarial`), 0 signed-gradient steps; ``jitter`` and
    ``scale_jitter`` take each step on a randomly shifted and rescaled view (0 and 0: the image as is)."""

    generator: Literal["adversarial"] = "adversarial"
    neurons: Neurons = Field(min_length=1)
    direction: Literal["+", "-"]
    epsilon: float = Field(default=8.0, gt=0)
    max_abs: float = Field(default=32.0, gt=0, le=255)
    blur: float = Field(default=2.0, ge=0, le=16)
    jitter: int = Field(default=8, ge=0, le=32, description="each step's view shifted by up to this many pixels")
    scale_jitter: float = Field(default=0.15, ge=0, lt=0.5, description="each step's view rescaled by 1 +- this")
    steps: int = Field(default=50, ge=1)
    base_ids: list[Ident] | None = Field(default=None, description="base images (None: library draws)")
    bases: BaseChoice = "driving"


class SmoothParams(_GenParams):
    """Smoothed images of ``base_ids``: ``mode`` minus lowers the response by smoothing where the
    model is sensitive (Abbasi-Asl smooth images), ``random`` smooths random patches as control."""

    generator: Literal["smooth"] = "smooth"
    neurons: Neurons = Field(min_length=1)
    mode: Literal["minus", "random"]
    sigma: float = Field(default=2.0, gt=0, description="Gaussian blur width (px)")
    grid: int = Field(default=8, ge=1, le=56, description="the image is cut into grid x grid patches")
    max_patches: int = Field(default=16, ge=1, le=56 * 56, description="patches smoothed per image")
    shortlist: int | None = Field(default=8, ge=1, description="patches tried per greedy step, ranked by "
                                  "the gradient (None: every sharp patch; slower, hardly better)")
    base_ids: list[Ident] | None = None
    bases: BaseChoice = "driving"


class DotsParams(_GenParams):
    """Full factorial of dot images; each image is labelled ``size=..,x=..,y=..,n=..``."""

    generator: Literal["dots"] = "dots"
    sizes: list[Annotated[float, Field(gt=0)]] = Field(min_length=1, description="dot diameter (deg)")
    locations: list[tuple[float, float]] = Field(min_length=1, description="(x, y) of the dot cloud (deg)")
    numbers: list[Annotated[int, Field(ge=1)]] = Field(min_length=1, description="dots per image")
    color: tuple[int, int, int] = (255, 255, 255)
    px_per_deg: float = Field(default=10.0, gt=0, description="image pixels per degree of visual angle (the "
                                                              "modelserver's 112-px images span 11.2 deg)")

    @property
    def n_images(self) -> int:
        return len(self.sizes) * len(self.locations) * len(self.numbers)


GeneratorParams = Annotated[
    ActiveParams | PoolRandomParams | GaudyParams | MaximizeNormalParams | MaximizeSynthParams
    | AdversarialParams | SmoothParams | DotsParams,
    Field(discriminator="generator"),
]


class GenerateImages(Step):
    """Ask the modelserver for ``n_images`` images from a generator.

    With ``prefetch`` the engine starts the request and answers at once
    (``GenerateResult.status == "pending"``); a later :class:`ImageSet` with the same
    ``request`` waits for it, so synthesis runs while the current block is shown.
    """

    kind: Literal["generate_images"] = "generate_images"
    request_id: Ident = Field(description="unique id, referenced by ImageSet.request")
    n_images: int | None = Field(
        default=None, ge=1, le=100_000,
        description="images per target neuron for generators with 'neurons', else in total; "
                    "None only for dots (the full factorial)")
    params: GeneratorParams
    prefetch: bool = Field(default=False, description="return at once; images awaited by the block")
    timeout_s: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _count(self) -> GenerateImages:
        if isinstance(self.params, DotsParams):
            if self.n_images not in (None, self.params.n_images):
                raise ValueError(f"dots make the full factorial: n_images must be {self.params.n_images} or omitted")
        elif self.n_images is None:
            raise ValueError(f"'n_images' is required for generator {self.params.generator!r}")
        return self

    @property
    def total_images(self) -> int:
        """Images the request returns: per neuron times neurons, or the total."""
        if isinstance(self.params, DotsParams):
            return self.params.n_images
        n = self.n_images or 0
        neurons = getattr(self.params, "neurons", None)
        return n * len(neurons) if neurons else n

    @property
    def generator(self) -> str:
        return self.params.generator


class MatchModels(Step):
    """Match recorded neurons to models by prediction performance on held-out blocks.

    The engine scores each recorded neuron against every neuron of the candidate model sessions
    (``models``: ids, or all the current version predicts) on the held-out trials by ``metric``
    (Pearson r against the repeat means, or the noise-corrected R2 signed by r) and keeps pairs
    scoring at least ``min_score``. ``assignment`` ``best``: each recorded neuron its best model
    neuron anywhere (several may share one); ``one_to_one``: one model session, each of its
    neurons for at most one recorded neuron (the same population recorded again).
    """

    kind: Literal["match_models"] = "match_models"
    heldout_blocks: list[Ident] = Field(min_length=1)
    models: list[Ident] | None = Field(default=None, description="candidate model ids (None: all)")
    metric: Literal["pearson_r", "r2_er"] = "pearson_r"
    min_score: float = Field(default=0.5, ge=-1.0, le=1.0)
    max_neurons: int | None = Field(default=None, ge=1, description="keep only the best matched neurons")
    assignment: Literal["best", "one_to_one"] = "best"


class Analyse(Step):
    """Run an analysis of :mod:`protocols.analysis` on the trials of ``blocks``.

    ``percent_change``: for each condition in ``conditions``, the percent change of mean
    response per neuron versus ``baseline`` and a permutation-test p-value. ``tuning``: mean
    response per condition (conditions are prefixes: ``dots`` selects ``dots/...``) and a
    permutation test of whether the condition means differ.
    """

    kind: Literal["analyse"] = "analyse"
    analysis: Literal["percent_change", "tuning"]
    name: Ident = Field(description="name of this analysis (stored with its result)")
    blocks: list[Ident] = Field(min_length=1)
    conditions: list[Ident] = Field(min_length=1)
    baseline: Ident | None = Field(default=None, description="baseline condition (percent_change)")
    neurons: Neurons | None = Field(default=None, description="neurons analysed (None: all)")
    factor: Ident | None = Field(
        default=None, description="tuning: group trials by this label key (e.g. 'size'), else by full label")
    n_permutations: int = Field(default=2000, ge=10, le=1_000_000)
    alternative: Alternative = "two-sided"
    alpha: float = Field(default=0.05, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _baseline(self) -> Analyse:
        if self.analysis == "percent_change" and self.baseline is None:
            raise ValueError("percent_change needs a 'baseline' condition")
        if self.baseline is not None and self.baseline in self.conditions:
            raise ValueError(f"baseline {self.baseline!r} is also listed in 'conditions'")
        return self


class PauseForOperator(Step):
    """Stop and wait for the operator (MQTT ``cmd/resume`` or ``cmd/abort``, or the console)."""

    kind: Literal["pause_for_operator"] = "pause_for_operator"
    message: str = Field(min_length=1, description="what the operator should check or do")
    timeout_s: float | None = Field(default=None, gt=0, description="None: wait forever")
    on_timeout: Literal["resume", "abort"] = "abort"


AnyStep = Annotated[
    PresentBlock | WaitForCounts | Ingest | Retrain | GenerateImages | MatchModels | Analyse
    | PauseForOperator,
    Field(discriminator="kind"),
]
STEP_TYPES: tuple[type[Step], ...] = (
    PresentBlock, WaitForCounts, Ingest, Retrain, GenerateImages, MatchModels, Analyse, PauseForOperator,
)


# =============================================================================================
# results
# =============================================================================================
class Result(_Model):
    kind: str


class BlockResult(Result):
    kind: Literal["block_result"] = "block_result"
    block_id: str
    status: Literal["completed", "aborted"] = "completed"
    n_trials: int = Field(ge=0, description="trials shown")
    image_ids: list[str] = Field(description="distinct images shown, in set order")
    conditions: dict[str, str] = Field(description="image id -> condition label")
    dropped_frames: int = Field(default=0, ge=0)
    fallbacks: list[str] = Field(default_factory=list, description="conditions whose fallback source was used")


class CountsResult(Result):
    kind: Literal["counts_result"] = "counts_result"
    block_id: str
    n_trials: int = Field(ge=0, description="trials with counts")
    n_neurons: int = Field(ge=0)
    mean_count: float = Field(ge=0, description="mean spike count per trial and neuron")


class IngestResult(Result):
    kind: Literal["ingest_result"] = "ingest_result"
    n_images: int = Field(ge=0, description="distinct images in the training data now")
    n_trials: int = Field(ge=0, description="trials in the training data now")
    dataset_version: str


class RetrainResult(Result):
    kind: Literal["retrain_result"] = "retrain_result"
    scope: Literal["block", "session"]
    model_version: str
    status: Literal["done", "started", "skipped"] = Field(
        default="done", description="skipped: the modelserver could not train (an event says why)")
    heldout_score: float | None = Field(default=None, description="median held-out score, if any")


class GenerateResult(Result):
    """Images a generator made. ``labels`` follow one convention: generators with ``neurons``
    label each image ``neuron=<k>`` (the neuron it targets); dots label it
    ``size=<d>,loc=<x>:<y>,n=<count>``. A set showing the request gets condition
    ``<condition>/<label>`` per image."""

    kind: Literal["generate_result"] = "generate_result"
    request_id: str
    status: Literal["ready", "pending", "failed"]
    image_ids: list[str] = Field(default_factory=list)
    labels: list[str] | None = Field(default=None, description="per-image label, parallel to image_ids")
    base_ids: list[str] | None = Field(default=None, description="per-image base image (adversarial, smooth)")
    model_version: str | None = None
    error: str | None = None


class NeuronMatch(_Model):
    neuron: int = Field(ge=0)
    model_id: str
    score: float


class MatchResult(Result):
    kind: Literal["match_result"] = "match_result"
    matches: list[NeuronMatch] = Field(description="matched neurons, best score first")
    n_neurons: int = Field(ge=0, description="neurons considered")

    @property
    def neurons(self) -> list[int]:
        return [m.neuron for m in self.matches]


class Comparison(_Model):
    """One condition against the baseline: per-neuron %dr and p-values (NaN-free lists)."""

    condition: str
    baseline: str
    neurons: list[int]
    percent_change: list[float | None] = Field(description="%dr per neuron (None where baseline mean is 0)")
    p_values: list[float]
    n_trials: int = Field(description="test trials per neuron (mean over neurons)")
    n_baseline_trials: int = Field(description="baseline trials per neuron (mean over neurons)")
    n_significant: int
    median_percent_change: float | None
    unit: Literal["image", "trial"] = Field(
        default="trial", description="what the permutation test and bootstrap resample: images (repeats "
        "averaged first) or single trials (only when no image ids were given)")
    n_images: int = Field(default=0, description="test images per neuron (mean over neurons)")
    n_baseline_images: int = Field(default=0, description="baseline images per neuron (mean over neurons)")
    ci_low: list[float | None] = Field(default_factory=list, description="bootstrap 95% CI of %dr per neuron")
    ci_high: list[float | None] = Field(default_factory=list)
    mean_test: list[float | None] = Field(default_factory=list, description="mean over test images per neuron")
    mean_baseline: list[float | None] = Field(default_factory=list)
    mean_test_ci: list[tuple[float | None, float | None]] = Field(default_factory=list)
    mean_baseline_ci: list[tuple[float | None, float | None]] = Field(default_factory=list)


class Tuning(_Model):
    conditions: list[str]
    neurons: list[int]
    means: list[list[float]] = Field(description="[condition][neuron] mean response")
    p_values: list[float] = Field(description="per neuron: do the condition means differ")
    n_significant: int
    unit: Literal["image", "trial"] = Field(default="trial", description="what the label shuffles permute")


class AnalysisResult(Result):
    kind: Literal["analysis_result"] = "analysis_result"
    name: str
    analysis: Literal["percent_change", "tuning"]
    comparisons: list[Comparison] = Field(default_factory=list)
    tuning: Tuning | None = None
    summary: str = ""


class OperatorResult(Result):
    kind: Literal["operator_result"] = "operator_result"
    action: Literal["resume", "abort"]
    operator: str | None = None
    reason: str = ""


AnyResult = Annotated[
    BlockResult | CountsResult | IngestResult | RetrainResult | GenerateResult | MatchResult
    | AnalysisResult | OperatorResult,
    Field(discriminator="kind"),
]

#: The result type the engine must send back for each step type.
RESULT_TYPES: dict[type[Step], type[Result]] = {
    PresentBlock: BlockResult,
    WaitForCounts: CountsResult,
    Ingest: IngestResult,
    Retrain: RetrainResult,
    GenerateImages: GenerateResult,
    MatchModels: MatchResult,
    Analyse: AnalysisResult,
    PauseForOperator: OperatorResult,
}

#: A protocol's plan: yields steps, receives each step's result, returns nothing.
Plan: TypeAlias = Generator[Step, Result, None]
