"""The modelserver's image-generation vocabulary: commands for the next block's images and the replies.

Every command names the model (or ensemble) by the id the modelserver registered it under
and, for pool-based methods, a pool by name. Every reply carries uint8 (N, H, W, 3) RGB
images, their content ids and one :class:`GenProvenance` per image saying why it was
chosen (method, model, neuron, score, source). Errors: ``k`` larger than the pool or a
malformed pool file -> ``InvalidRequest``; an unknown model, pool or neuron -> ``NotFound``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from wire.base import Array, Message

NeuronList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


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
    ensemble: str = Field(description="id of the ensemble")
    pool: str = Field(description="name of the candidate pool")
    k: int = Field(ge=1)
    neurons: NeuronList | None = Field(default=None, description="neurons whose disagreement counts (None: all)")
    min_distance: float = Field(default=0.04, ge=0, description="RMS distance (0..1 pixels, 4x pooled) between picks")
    seed: int = Field(default=0, description="seed of the reference sample used to normalize per neuron")
    strategy: Literal["ensemble_variance", "max_entropy", "random"] = Field(
        default="ensemble_variance", description="acquisition function (random: the control policy)")
    candidates: int | None = Field(default=None, ge=1, description="score this many random pool images (None: all)")
    exclude: list[str] = Field(default_factory=list, description="image ids never to pick (already shown or picked)")


class GenMaximize(Message):
    """Maximizing normal images: top-k pool images per neuron under the model."""

    kind: Literal["gen.maximize"] = "gen.maximize"
    model: str
    pool: str
    neurons: NeuronList
    k: int = Field(ge=1)


class GenSynthesize(Message):
    """Maximizing synthesized images (smooth DeepTune from white noise), all neurons in one batch."""

    kind: Literal["gen.synthesize"] = "gen.synthesize"
    model: str
    neurons: NeuronList
    per_neuron: int = Field(default=1, ge=1)
    steps: int = Field(default=150, ge=0)
    step_size: float = Field(default=3.0, gt=0)
    lp_weight: float = Field(default=1.0, ge=0)
    tv_weight: float = Field(default=0.4, ge=0)
    seed: int = 0


class GenAdversarial(Message):
    """Adversarial images: ``base_images[i]`` changed within the thresholds to raise/lower ``neurons[i]``."""

    kind: Literal["gen.adversarial"] = "gen.adversarial"
    model: str
    neurons: NeuronList
    base_images: Array = Field(description="uint8 (N, H, W, 3), one per neuron")
    direction: Literal["+", "-"] = "+"
    max_abs: float = Field(default=8.0, gt=0, description="largest absolute pixel change (0..255 units)")
    max_l2: float | None = Field(default=None, gt=0, description="largest L2 norm of the change (pixel units)")
    step: float = Field(default=1.0, gt=0)
    steps: int | None = Field(default=None, ge=1)


class GenSmooth(Message):
    """Smooth- images (greedy patch smoothing) plus random-smoothed controls (reply's ``controls``)."""

    kind: Literal["gen.smooth"] = "gen.smooth"
    model: str
    neurons: NeuronList
    base_images: Array = Field(description="uint8 (N, H, W, 3), one per neuron")
    grid: int = Field(default=8, ge=1, le=56)
    sigma: float = Field(default=4.0, gt=0)
    max_patches: int = Field(default=16, ge=1)
    target_drop: float | None = Field(default=None, gt=0, le=1)
    seed: int = 0


class GenDots(Message):
    """Dot stimuli varying in size, location and number; scored by ``model`` if given."""

    kind: Literal["gen.dots"] = "gen.dots"
    radii: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [3.0, 6.0, 12.0])
    counts: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 8])
    per_condition: int = Field(default=4, ge=1)
    seed: int = 0
    model: str | None = None
    neurons: NeuronList | None = None


class GenBuildPool(Message):
    """Build (or replace) a named candidate pool from image folders and/or natural-image crops."""

    kind: Literal["gen.build_pool"] = "gen.build_pool"
    pool: str
    folders: list[str] = Field(default_factory=list, description="folders of the user's images (added whole)")
    crops: int = Field(default=0, ge=0, description="random crops of local natural images to add")
    gaudy: bool = Field(default=False, description="also add the gaudy version of every image")
    seed: int = 0


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
