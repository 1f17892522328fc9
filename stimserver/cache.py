"""The image cache: uint8 (H, W, 3) images keyed by their content hash (``wire.base.image_id``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from wire.base import image_id
from wire.errors import InvalidRequest
from wire.stim import LoadImages


def _check_image(a: np.ndarray, what: str) -> None:
    if a.dtype != np.uint8:
        raise InvalidRequest(f"{what}: dtype {a.dtype} is not uint8")
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidRequest(f"{what}: shape {a.shape} is not (H, W, 3)")


def images_of(cmd: LoadImages) -> list[np.ndarray]:
    """The command's images as a list of (H, W, 3) uint8 arrays, checked against ``image_ids``' length."""
    n = len(cmd.image_ids)
    if cmd.pixels is not None:
        px = cmd.pixels
        if px.dtype != np.uint8:
            raise InvalidRequest(f"pixels: dtype {px.dtype} is not uint8")
        if px.ndim != 4 or px.shape[3] != 3:
            raise InvalidRequest(f"pixels: shape {px.shape} is not (N, H, W, 3)")
        if px.shape[0] != n:
            raise InvalidRequest(f"pixels holds {px.shape[0]} images for {n} image_ids")
        images = list(px)
    else:
        assert cmd.images is not None
        if len(cmd.images) != n:
            raise InvalidRequest(f"images holds {len(cmd.images)} arrays for {n} image_ids")
        images = list(cmd.images)
    for i, a in enumerate(images):
        _check_image(a, f"image {i}")
    return images


class ImageCache:
    """Images by id. ``verify_new`` checks every new id against its pixels and skips ids already held.

    With ``max_images``, :meth:`evict` drops the least recently used images (loaded or shown) beyond
    that number, never those of the running block.
    """

    def __init__(self, max_images: int | None = None) -> None:
        if max_images is not None and max_images < 1:
            raise ValueError("max_images must be >= 1")
        self.max_images = max_images
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._images)

    def __contains__(self, key: object) -> bool:
        return key in self._images

    def get(self, key: str) -> np.ndarray:
        return self._images[key]

    def ids(self) -> set[str]:
        return set(self._images)

    def touch(self, ids: Iterable[str]) -> None:
        """Mark images as just used (they are evicted last)."""
        for key in ids:
            if key in self._images:
                self._images.move_to_end(key)

    def evict(self, protect: set[str]) -> list[str]:
        """Drop least recently used images beyond ``max_images`` (not those in ``protect``)."""
        if self.max_images is None or len(self._images) <= self.max_images:
            return []
        excess = len(self._images) - self.max_images
        victims = [k for k in self._images if k not in protect][:excess]
        for k in victims:
            del self._images[k]
        return victims

    def missing(self, ids: Sequence[str]) -> list[str]:
        return [i for i in dict.fromkeys(ids) if i not in self._images]

    def verify_new(self, ids: Sequence[str], images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The images not yet cached, each checked against its id (InvalidRequest on a mismatch).

        Pure (adds nothing), so it can run off the event loop and the whole message is accepted or
        rejected as one.
        """
        new: dict[str, np.ndarray] = {}
        for i, (key, a) in enumerate(zip(ids, images, strict=True)):
            if key in self._images or key in new:
                continue
            actual = image_id(a)
            if actual != key:
                raise InvalidRequest(f"image {i}: id {key!r} does not match its pixels (their id is {actual!r})")
            new[key] = np.array(a, dtype=np.uint8, order="C", copy=True)  # own memory, not the ZMQ frame
        return new

    def add(self, new: dict[str, np.ndarray]) -> int:
        added = 0
        for key, a in new.items():
            if key not in self._images:
                self._images[key] = a
                added += 1
            else:
                self._images.move_to_end(key)
        return added
