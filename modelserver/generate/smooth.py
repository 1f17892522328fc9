"""Smooth- images: greedily Gaussian-smooth the patches whose smoothing lowers the response most.

The image is cut into a ``grid`` x ``grid`` set of non-overlapping patches. At each greedy
step every still-sharp patch is tried (all candidates of all images in one batch) and the
one giving the lowest response is smoothed for good; it stops after ``max_patches`` or
once the response fell by ``target_drop`` (a fraction of the base response). With
``shortlist`` = k, a step first ranks the still-sharp patches of each image by the
first-order estimate of the change (the response's gradient at the current image times the
change smoothing makes, summed over the patch: one backward pass) and tries only the k most
promising exactly: about grid^2 / k times fewer model calls. Controls smooth the same number
of patches (hence pixels) chosen at random.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from modelserver.generate.imageops import gaussian_blur
from modelserver.generate.limits import StopCheck, stop_point
from modelserver.generate.models import (
    Generated,
    Pick,
    ResponseModel,
    check_neurons,
    model_name,
    paired_responses,
    pixels_to_input,
    to_uint8,
)
from wire.base import image_id
from wire.errors import InvalidRequest


def _patch_masks(size: int, grid: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    masks = torch.zeros((grid * grid, 1, size, size), device=device, dtype=dtype)
    for a in range(grid):
        for b in range(grid):
            masks[a * grid + b, :, edges[a]: edges[a + 1], edges[b]: edges[b + 1]] = 1
    return masks


def smooth_images(model: ResponseModel, base_images: np.ndarray, neurons: Sequence[int], grid: int = 8,
                  sigma: float = 4.0, max_patches: int = 16, target_drop: float | None = None,
                  seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, should_stop: StopCheck | None = None,
                  shortlist: int | None = None) -> tuple[Generated, Generated]:
    """(smooth- images, random-smoothed controls), one of each per (base image, neuron) pair.

    ``should_stop`` is tested before every model batch (a true answer raises ``Cancelled``)."""
    base_u8 = np.asarray(base_images)
    if base_u8.dtype != np.uint8 or base_u8.ndim != 4 or base_u8.shape[-1] != 3:
        raise InvalidRequest(f"base images must be uint8 (N, H, W, 3), got {base_u8.dtype} {base_u8.shape}")
    neurons = check_neurons(neurons, model.n_neurons)
    if len(neurons) != len(base_u8):
        raise InvalidRequest(f"one neuron per base image: {len(neurons)} neurons, {len(base_u8)} images")
    n_patch = grid * grid
    if not 1 <= max_patches <= n_patch or grid < 1:
        raise InvalidRequest(f"max_patches must be in 1..{n_patch}")
    if shortlist is not None and shortlist < 1:
        raise InvalidRequest("shortlist must be >= 1")
    which = torch.tensor(neurons, device=device)
    base = torch.as_tensor(base_u8, device=device).permute(0, 3, 1, 2).to(dtype)
    blurred = gaussian_blur(base, sigma)
    masks = _patch_masks(base.shape[-1], grid, device, dtype)  # (P, 1, H, W)
    n = len(base)
    chosen = torch.zeros((n, n_patch), dtype=torch.bool)
    active = torch.ones(n, dtype=torch.bool)

    def compose(mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # mask (m, 1, H, W) for images idx
        return base[idx] * (1 - mask) + blurred[idx] * mask

    def respond(x: torch.Tensor, who: torch.Tensor) -> torch.Tensor:
        outs = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                stop_point(should_stop, "gen.smooth")
                outs.append(paired_responses(model, pixels_to_input(x[s: s + batch_size]), who[s: s + batch_size]))
        return torch.cat(outs)

    def estimates(rows: torch.Tensor, cur_mask: torch.Tensor) -> torch.Tensor:
        """(len(rows), P) first-order change of each image's response from smoothing each patch."""
        outs = []
        for s in range(0, len(rows), batch_size):
            stop_point(should_stop, "gen.smooth")
            idx = rows[s: s + batch_size].to(device)
            x = compose(cur_mask[idx], idx).requires_grad_(True)
            g, = torch.autograd.grad(paired_responses(model, pixels_to_input(x), which[idx]).sum(), x)
            change = (g * (blurred[idx] - base[idx])).sum(1).flatten(1)  # (rows, H*W)
            outs.append((change @ masks[:, 0].flatten(1).T).detach().cpu())
        return torch.cat(outs)

    r0 = respond(base, which).cpu()
    current = r0.clone()
    for _ in range(max_patches):
        rows = active.nonzero()[:, 0]
        if len(rows) == 0:
            break
        cur_mask = (chosen.to(dtype).to(device) @ masks.flatten(1)).view(n, 1, *masks.shape[-2:]).clamp(max=1)
        est = estimates(rows, cur_mask) if shortlist is not None else None
        cand_img, cand_patch = [], []
        for k, i in enumerate(rows.tolist()):
            sharp = (~chosen[i]).nonzero()[:, 0]
            if est is not None and shortlist is not None and len(sharp) > shortlist:  # the most promising by the estimate
                sharp = sharp[torch.argsort(est[k, sharp], stable=True)[:shortlist]]
            for p in sharp.tolist():
                cand_img.append(i)
                cand_patch.append(p)
        ci, cp = torch.tensor(cand_img), torch.tensor(cand_patch)
        cmask = (cur_mask[ci.to(device)] + masks[cp.to(device)]).clamp(max=1)
        resp = respond(compose(cmask, ci.to(device)), which[ci.to(device)]).cpu()
        for i in rows.tolist():
            sel = ci == i
            best = int(torch.argmin(resp[sel]))
            chosen[i, int(cp[sel][best])] = True
            current[i] = resp[sel][best]
            if target_drop is not None and current[i] <= r0[i] - target_drop * abs(float(r0[i])):
                active[i] = False
    counts = chosen.sum(1)
    gen = torch.Generator().manual_seed(int(seed))
    ctrl = torch.zeros_like(chosen)
    for i in range(n):
        ctrl[i, torch.randperm(n_patch, generator=gen)[: int(counts[i])]] = True

    def finish(sel: torch.Tensor, method: str) -> Generated:
        m = (sel.to(dtype).to(device) @ masks.flatten(1)).view(n, 1, *masks.shape[-2:]).clamp(max=1)
        images = to_uint8(compose(m, torch.arange(n, device=device)))
        r = respond(torch.as_tensor(images, device=device).permute(0, 3, 1, 2).to(dtype), which).cpu()
        name = model_name(model)
        picks = [Pick(method, name, neurons[i], float(r[i]), f"base:{image_id(base_u8[i])}",
                      {"base_response": float(r0[i]), "patches": float(counts[i]),
                       "smoothed_pixels": float(m[i].sum()),
                       "percent_change": 100.0 * float(r[i] - r0[i]) / abs(float(r0[i])) if r0[i] else float("nan")})
                 for i in range(n)]
        return Generated(np.ascontiguousarray(images), picks)

    return finish(chosen, "smooth-"), finish(ctrl, "smooth-control")
