"""The modelserver's image-generation vocabulary: commands for the next block's images and the replies.

Every command names the model (or ensemble) by the id the modelserver registered it under
and, for pool-based methods, a pool by name. Every reply carries uint8 (N, H, W, 3) RGB
images, their content ids and one :class:`GenProvenance` per image saying why it was
chosen (method, model, neuron, score, source). Errors: ``k`` larger than the pool or a
malformed pool file -> ``InvalidRequest``; an unknown model, pool or neuron -> ``NotFound``.

Sizes: every count has an upper bound here (a larger value is a ``decode`` error before any
work); the modelserver also refuses a request whose combined size, memory or work estimate
exceeds its configured limits (``LimitExceeded``, naming the limit; docs/security.md). A long
request can be stopped with ``job.cancel`` (:class:`wire.transport.CancelRequest`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from wire.base import Array, Message

#: most neurons one request names
MAX_NEURONS = 10_000
#: largest seed (numpy and torch both take it)
MAX_SEED = 2**63 - 1

NeuronList = Annotated[list[Annotated[int, Field(ge=0, le=10_000_000)]], Field(min_length=1, max_length=MAX_NEURONS)]
Name = Annotated[str, Field(min_length=1, max_length=256)]
PoolName = Annotated[str, Field(min_length=1, max_length=64)]
Seed = Annotated[int, Field(ge=-MAX_SEED, le=MAX_SEED)]
ImageIdList = Annotated[list[Annotated[str, Field(max_length=128)]], Field(max_length=1_000_000)]


class GenProvenance(Message):
    """Why one image was generated or picked."""

    kind: Literal["gen.why"] = "gen.why"
    method: str = Field(description="active, maximize, synthesize, adversarial+/-, smooth-, smooth-control, dots")
    model: str = Field(description="id of the model or ensemble that chose the image ('none' for dots)")
    neuron: int | None = Field(default=None, description="neuron the image was made for (None: all, e.g. active)")
    score: float = Field(description="the model's score of the final image (response, or disagreement)")
    source: str = Field(description="pool:<index>:<id>, base:<image id>, noise:seed<s>:<i>, dots:seed<s>:<i>")
    details: dict[str, float] = Field(default_factory=dict, description="method-specific numbers")


class GenImages(Message):
    """Reply of every generation command: images, their ids and their provenance (same order)."""

    kind: Literal["gen.images"] = "gen.images"
    images: Array = Field(description="uint8 (N, H, W, 3) RGB")
    image_ids: list[str] = Field(description="wire.base.image_id of each image")
    provenance: list[GenProvenance]
    controls: GenImages | None = Field(default=None, description="matched controls (smooth-: random smoothing)")


class GenActive(Message):
    """Active-learning picks: top-k pool images by normalized ensemble disagreement, no near-duplicates."""

    kind: Literal["gen.active"] = "gen.active"
    ensemble: Name = Field(description="id of the ensemble")
    pool: PoolName = Field(description="name of the candidate pool")
    k: int = Field(ge=1, le=10_000)
    neurons: NeuronList | None = Field(default=None, description="neurons whose disagreement counts (None: all)")
    min_distance: float = Field(default=0.04, ge=0, le=1, description="RMS distance (0..1 pixels, 4x pooled) between picks")
    seed: Seed = Field(default=0, description="seed of the reference sample used to normalize per neuron")
    strategy: Literal["ensemble_variance", "max_entropy", "random"] = Field(
        default="ensemble_variance", description="acquisition function (random: the control policy)")
    candidates: int | None = Field(default=None, ge=1, le=100_000_000,
                                   description="score this many random pool images (None: all)")
    exclude: ImageIdList = Field(default_factory=list, description="image ids never to pick (already shown or picked)")


class GenMaximize(Message):
    """Maximizing normal images: top-k pool images per neuron under the model."""

    kind: Literal["gen.maximize"] = "gen.maximize"
    model: Name
    pool: PoolName
    neurons: NeuronList
    k: int = Field(ge=1, le=10_000)


#: GenSynthesize settings for an ascent from the top pool images (``pool`` set): a contrast phase
#: (gain up to 2, set by the model), then small steps, no added noise, no push apart (the start images
#: already differ), light smoothness priors (natural images carry large deviations the Lp prior would
#: pull to grey). Measured on the ground truth with ``bench/causal_bench.py --variant poolstart``
#: (docs/generation.md, Evidence).
POOL_START_SYNTHESIS: dict[str, float] = {"step_size": 1.0, "init_std": 0.0, "diversity": 0.0,
                                          "lp_weight": 0.2, "tv_weight": 0.1, "max_contrast": 2.0}


class GenSynthesize(Message):
    """Maximizing synthesized images (smooth DeepTune from white noise), all neurons in one batch."""

    kind: Literal["gen.synthesize"] = "gen.synthesize"
    model: Name
    neurons: NeuronList
    per_neuron: int = Field(default=1, ge=1, le=1000)
    steps: int = Field(default=150, ge=0, le=100_000)
    step_size: float = Field(default=3.0, gt=0, le=1000)
    lp_weight: float = Field(default=1.0, ge=0, le=1e6)
    tv_weight: float = Field(default=0.4, ge=0, le=1e6)
    seed: Seed = 0
    spread_weight: float = Field(default=1.0, ge=0, le=100, description="where the model is an ensemble: "
                                 "ascend the members' mean minus this x their standard deviation")
    jitter: int = Field(default=4, ge=0, le=32, description="random shift (pixels) of the images at each step")
    scale_jitter: float = Field(default=0.1, ge=0, lt=0.5, description="random rescale (1 +- this) at each step")
    pool: PoolName | None = Field(default=None, description="start from each neuron's top images of this pool "
                                                            "under the model (None: from noise)")
    init_std: float = Field(default=10.0, ge=0, le=255, description="white noise (pixels) added to the start")
    diversity: float = Field(default=1.0, ge=0, le=100, description="push one neuron's images apart (decaying)")
    max_contrast: float = Field(default=1.0, ge=1, le=8, description="> 1: before the pixel steps, scale each start "
                                "image's contrast about its mean by a gain in 1..this that the model's gradient sets")


class GenAdversarial(Message):
    """Adversarial images: ``base_images[i]`` changed within the thresholds to raise/lower ``neurons[i]``."""

    kind: Literal["gen.adversarial"] = "gen.adversarial"
    model: Name
    neurons: NeuronList
    base_images: Array = Field(description="uint8 (N, H, W, 3), one per neuron")
    direction: Literal["+", "-"] = "+"
    max_abs: float = Field(default=8.0, gt=0, le=255, description="largest absolute pixel change (0..255 units)")
    max_l2: float | None = Field(default=None, gt=0, le=1e9, description="largest L2 norm of the change (pixel units)")
    step: float = Field(default=1.0, gt=0, le=255)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    blur: float = Field(default=0.0, ge=0, le=16,
                        description="> 0: smooth steps (gradient blurred by this many pixels, L2-scaled; needs max_l2)")
    jitter: int = Field(default=0, ge=0, le=32, description="each step's view shifted by up to this many pixels")
    scale_jitter: float = Field(default=0.0, ge=0, lt=0.5, description="each step's view rescaled by 1 +- this")
    seed: Seed = 0

    @model_validator(mode="after")
    def _blur_needs_l2(self) -> GenAdversarial:
        if self.blur > 0 and self.max_l2 is None:
            raise ValueError("blur > 0 (smooth L2 steps) needs max_l2")
        return self


class GenSmooth(Message):
    """Smooth- images (greedy patch smoothing) plus random-smoothed controls (reply's ``controls``)."""

    kind: Literal["gen.smooth"] = "gen.smooth"
    model: Name
    neurons: NeuronList
    base_images: Array = Field(description="uint8 (N, H, W, 3), one per neuron")
    grid: int = Field(default=8, ge=1, le=56)
    sigma: float = Field(default=4.0, gt=0, le=1000)
    max_patches: int = Field(default=16, ge=1, le=56 * 56)
    target_drop: float | None = Field(default=None, gt=0, le=1)
    seed: Seed = 0
    shortlist: int | None = Field(default=None, ge=1, le=56 * 56,
                                  description="try only this many patches per step, ranked by the gradient "
                                              "(None: every sharp patch)")


class GenDots(Message):
    """Dot stimuli varying in size, location and number; scored by ``model`` if given."""

    kind: Literal["gen.dots"] = "gen.dots"
    radii: list[Annotated[float, Field(gt=0, le=1000)]] = Field(default_factory=lambda: [3.0, 6.0, 12.0],
                                                                max_length=256)
    counts: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(default_factory=lambda: [1, 2, 4, 8],
                                                                  max_length=256)
    per_condition: int = Field(default=4, ge=1, le=10_000)
    centers: list[tuple[Annotated[float, Field(ge=0, le=4096)], Annotated[float, Field(ge=0, le=4096)]]] | None = Field(
        default=None, max_length=256, description="(x, y) pixel centres of the dot cloud, one condition each "
                                                  "(None: dots anywhere in the image)")
    spread: float = Field(default=16.0, gt=0, le=4096, description="with centres: dots lie within this "
                                                                   "distance (px) of their centre")
    seed: Seed = 0
    model: Name | None = None
    neurons: NeuronList | None = None


class GenBuildPool(Message):
    """Build (or replace) a named candidate pool from image folders and/or natural-image crops.

    ``pool`` is a plain name (letters, digits, ``_-.``; never a path). Each folder is a folder
    inside one of the image roots the modelserver was started with (``--image-root DIR``, and the
    V4 folder): relative to a root, or absolute inside one; ``..``, other absolute paths and
    symbolic links out of a root are refused (``forbidden``)."""

    kind: Literal["gen.build_pool"] = "gen.build_pool"
    pool: PoolName
    folders: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="folders inside the server's image roots (added whole)")
    crops: int = Field(default=0, ge=0, le=100_000_000, description="random crops of local natural images to add")
    gaudy: bool = Field(default=False, description="also add the gaudy version of every image")
    seed: Seed = 0


class GenPoolInfo(Message):
    kind: Literal["gen.pool_info"] = "gen.pool_info"
    pool: str
    size: int
    path: str


#: Generation commands and the reply type each expects.
GENERATE_COMMANDS: dict[type[Message], type[Message]] = {
    GenActive: GenImages, GenMaximize: GenImages, GenSynthesize: GenImages, GenAdversarial: GenImages,
    GenSmooth: GenImages, GenDots: GenImages, GenBuildPool: GenPoolInfo,
}
