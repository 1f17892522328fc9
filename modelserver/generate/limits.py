"""What one request to the modelserver may cost, checked before any work starts, and the cancel points.

The wire models (:mod:`wire.generate`, :mod:`wire.model`) bound every size field on its own
(pydantic ``le=`` / ``max_length=``); a request can still combine in-bound fields into something
absurd (1,000 neurons x 1,000 images each x 100,000 steps). Every heavy handler therefore
estimates the request's output size, working memory and work before it starts and refuses it
with :class:`~wire.errors.LimitExceeded`, whose message names the limit and its value, when an
estimate exceeds :class:`RequestLimits` (``ModelServerConfig.limits``; docs/security.md lists them).

The estimates are deliberately coarse and conservative: memory counts float32 112x112 RGB images
(the generators' working size) times a factor for the activations and gradients a model keeps per
image; work counts images x optimisation steps (or forward evaluations), the quantity a request's
run time is proportional to on a given machine.

Long loops call :func:`stop_point` each step with the request's cancel test
(:func:`wire.transport.cancel_check`): a ``job.cancel`` (or the client's timeout) raises
:class:`~wire.errors.Cancelled` there, and the worker thread ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from wire.errors import Cancelled, LimitExceeded

T = TypeVar("T")
StopCheck = Callable[[], bool]

#: floats of one 112x112 RGB image (the generators' working size)
IMAGE_FLOATS = 3 * 112 * 112
#: bytes of one float32 112x112 RGB image
IMAGE_BYTES = 4 * IMAGE_FLOATS
#: working memory of one image pushed through a model *with* gradients, in image sizes: the
#: activations the model keeps for the backward pass, their gradients and the optimiser's copies
#: (coarse; the compact models and the ensemble's core at 112x112 stay below it)
GRAD_IMAGE_FACTOR = 32


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may ask of the modelserver (each refusal names the field)."""

    #: images one request returns or takes in (synthesized, adversarial, smoothed, picked, dots)
    max_images: int = 4096
    #: images x optimisation steps of one request (synthesize, adversarial), or forward
    #: evaluations (smooth): proportional to its run time
    max_image_steps: int = 2_000_000
    #: estimated working memory of one request (bytes)
    max_memory_bytes: int = 8 << 30
    #: images a pool may be built with (crops + folder images, doubled with gaudy versions), and
    #: pool images one request may score
    max_pool_images: int = 1_000_000
    #: images one ``model.predict`` may carry
    max_predict_images: int = 65_536
    #: size of a model version sent back inline by ``model.export`` (bytes)
    max_export_bytes: int = 512 << 20

    def _check(self, value: int, limit: int, field: str, what: str, unit: str = "") -> None:
        if value > limit:
            raise LimitExceeded(f"{what}: {value:,}{unit} exceeds this server's limit of {limit:,}{unit} "
                                f"(RequestLimits.{field})")

    def images(self, n: int, what: str) -> None:
        self._check(n, self.max_images, "max_images", what, " images")

    def work(self, image_steps: int, what: str) -> None:
        self._check(image_steps, self.max_image_steps, "max_image_steps", what, " image-steps")

    def memory(self, nbytes: int, what: str) -> None:
        self._check(nbytes, self.max_memory_bytes, "max_memory_bytes", f"{what} (estimated memory)", " bytes")

    def pool_images(self, n: int, what: str) -> None:
        self._check(n, self.max_pool_images, "max_pool_images", what, " images")

    def predict_images(self, n: int, what: str) -> None:
        self._check(n, self.max_predict_images, "max_predict_images", what, " images")

    def export_bytes(self, n: int, what: str) -> None:
        self._check(n, self.max_export_bytes, "max_export_bytes", what, " bytes")


def image_bytes(height: int = 112, width: int = 112) -> int:
    """Bytes of one float32 RGB image of that size."""
    return 4 * 3 * int(height) * int(width)


# --- per command ----------------------------------------------------------------------------
def check_synthesize(lim: RequestLimits, images: int, steps: int) -> None:
    lim.images(images, "gen.synthesize: neurons x per_neuron")
    lim.work(images * max(steps, 1), "gen.synthesize: images x steps")
    lim.memory(images * IMAGE_BYTES * GRAD_IMAGE_FACTOR, "gen.synthesize: all images in one batch, with gradients")


def adversarial_steps(max_abs: float, step: float, steps: int | None) -> int:
    """The steps :func:`modelserver.generate.adversarial.adversarial` takes."""
    return steps if steps is not None else int(-(-2 * max_abs // step)) + 4


def check_adversarial(lim: RequestLimits, images: int, height: int, width: int, steps: int) -> None:
    lim.images(images, "gen.adversarial: base images")
    lim.work(images * steps, "gen.adversarial: images x steps")
    lim.memory(images * image_bytes(height, width) * GRAD_IMAGE_FACTOR,
               "gen.adversarial: all images in one batch, with gradients")


def check_smooth(lim: RequestLimits, images: int, height: int, width: int, grid: int, max_patches: int) -> None:
    lim.images(images, "gen.smooth: base images")
    candidates = images * grid * grid
    lim.work(candidates * max_patches, "gen.smooth: images x grid^2 x max_patches model evaluations")
    # every candidate of a greedy step is composed at once: the mask, the image and two gathered copies
    lim.memory(candidates * image_bytes(height, width) * 4, "gen.smooth: images x grid^2 candidate images")


def check_dots(lim: RequestLimits, images: int) -> None:
    lim.images(images, "gen.dots: radii x counts x per_condition")


def check_picks(lim: RequestLimits, images: int, what: str) -> None:
    lim.images(images, what)


def check_scan(lim: RequestLimits, images: int, what: str) -> None:
    lim.pool_images(images, what)


# --- cancellation -----------------------------------------------------------------------------
def stop_point(should_stop: StopCheck | None, what: str = "the request") -> None:
    """Raise :class:`~wire.errors.Cancelled` if the request's client cancelled it."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} was cancelled by its client")


def stoppable(items: Iterable[T], should_stop: StopCheck | None, what: str = "the request") -> Iterator[T]:
    """``items``, with a cancel point before each."""
    for item in items:
        stop_point(should_stop, what)
        yield item
