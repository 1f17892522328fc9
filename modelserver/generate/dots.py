"""Artificial dot stimuli varying in dot size, location and number (uniform background).

For every (radius, count[, centre]) condition, ``per_condition`` images with dots at random,
non-overlapping locations inside the image (or, with ``centers``, within ``spread`` pixels of the
condition's centre: the location of the dot cloud). Given a model and neurons, each image is
scored (response of each neuron) and the provenance records the best neuron's response.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from modelserver.compact.model import preprocess
from modelserver.generate.limits import StopCheck, stop_point
from modelserver.generate.models import Generated, Pick, ResponseModel, check_neurons, model_name
from wire.errors import InvalidRequest


def _place(rng: np.random.Generator, count: int, radius: float, size: int, tries: int = 2000,
           center: tuple[float, float] | None = None, spread: float = 16.0) -> list[tuple[float, float]]:
    """``count`` non-overlapping dot centres (y, x) inside the image, near ``center`` (x, y) if given."""
    lo, hi = radius, size - radius
    centers: list[tuple[float, float]] = []
    for _ in range(tries):
        if len(centers) == count:
            break
        if center is None:
            c = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        else:
            d = spread * np.sqrt(rng.uniform()) if count > 1 else 0.0
            a = rng.uniform(0, 2 * np.pi)
            c = (float(np.clip(center[1] + d * np.sin(a), lo, hi)), float(np.clip(center[0] + d * np.cos(a), lo, hi)))
        if all((c[0] - a) ** 2 + (c[1] - b) ** 2 >= (2 * radius + 1) ** 2 for a, b in centers):
            centers.append(c)
    if len(centers) < count:
        where = "" if center is None else f" within {spread:g} px of {center}"
        raise InvalidRequest(f"cannot place {count} dots of radius {radius} in a {size}-pixel image{where}")
    return centers


def dot_stimuli(radii: Sequence[float] = (3, 6, 12), counts: Sequence[int] = (1, 2, 4, 8),
                per_condition: int = 4, seed: int = 0, size: int = 112,
                background: Sequence[int] = (128, 128, 128), color: Sequence[int] = (255, 255, 255),
                model: ResponseModel | None = None, neurons: Sequence[int] | None = None,
                device: torch.device | str = "cpu", should_stop: StopCheck | None = None,
                centers: Sequence[tuple[float, float]] | None = None, spread: float = 16.0) -> Generated:
    """Dot images for every (radius, count[, centre]) condition; with ``model``, scored for ``neurons``.

    Order: radius, then count, then centre, then the ``per_condition`` draws."""
    if per_condition < 1 or not radii or not counts or min(counts) < 1 or min(radii) <= 0:
        raise InvalidRequest("need positive radii, counts >= 1 and per_condition >= 1")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    images, meta = [], []
    places: list[tuple[float, float] | None] = list(centers) if centers else [None]
    for r in radii:
        for c in counts:
            for where, _ in ((w, k) for w in places for k in range(per_condition)):
                stop_point(should_stop, "gen.dots")
                centers_yx = _place(rng, int(c), float(r), size, center=where, spread=spread)
                mask = np.zeros((size, size), dtype=bool)
                for cy, cx in centers_yx:
                    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                img = np.empty((size, size, 3), dtype=np.uint8)
                img[:] = np.asarray(background, dtype=np.uint8)
                img[mask] = np.asarray(color, dtype=np.uint8)
                images.append(img)
                cy, cx = np.mean(centers_yx, axis=0)
                meta.append({"radius": float(r), "count": float(c), "center_y": float(cy), "center_x": float(cx)})
    stack = np.stack(images)
    name = "none"
    best_n: list[int | None] = [None] * len(stack)
    best_s = [float("nan")] * len(stack)
    if model is not None:
        cols = check_neurons(neurons if neurons is not None else range(model.n_neurons), model.n_neurons)
        with torch.no_grad():
            out = torch.cat([model(preprocess(stack[s: s + 128], device=device))[:, cols].cpu()
                             for s in range(0, len(stack), 128)])
        arg = out.argmax(1)
        best_n = [cols[int(a)] for a in arg]
        best_s = [float(out[i, a]) for i, a in enumerate(arg)]
        name = model_name(model)
    picks = [Pick("dots", name, best_n[i], best_s[i], f"dots:seed{seed}:{i}", meta[i]) for i in range(len(stack))]
    return Generated(stack, picks)
