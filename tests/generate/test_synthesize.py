"""The synthesis objective's terms: ensemble agreement, jitter robustness, starting images, wire knobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelserver.compact.model import preprocess
from modelserver.generate.handlers import LocalGenerationContext, generation_handlers
from modelserver.generate.models import CompactStack, perturbed_ensemble
from modelserver.generate.pool import build_pool
from modelserver.generate.synthesize import SynthesisConfig, objective, random_view, synthesize
from tests.generate.conftest import random_images, random_stack
from wire.errors import InvalidRequest
from wire.generate import GenImages, GenMaximize, GenSynthesize
from wire.transport import RpcClient, RpcServer

PLAIN = {"jitter": 0, "scale_jitter": 0.0, "diversity": 0.0}


def test_random_view_shifts_and_scales_deterministically() -> None:
    x = torch.arange(16.0).repeat(16, 1).expand(2, 3, 16, 16).contiguous()  # a horizontal ramp
    assert random_view(x, 0, 0.0, torch.Generator().manual_seed(0)) is x
    a = random_view(x, 2, 0.0, torch.Generator().manual_seed(1))
    b = random_view(x, 2, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    shift = (a - x)[:, 0, 8, 4:12].mean(1)  # a pure shift moves the ramp by a constant inside the image
    assert bool((shift.abs() > 0.05).all() and (shift.abs() <= 2.01).all())
    z = random_view(x, 0, 0.2, torch.Generator().manual_seed(2))
    slope = (z[:, 0, 8, 10] - z[:, 0, 8, 5]) / 5  # zoom by s changes the ramp's slope to 1/s
    assert bool(((slope - 1).abs() > 0.01).all() and ((slope - 1).abs() < 0.26).all())


def test_objective_subtracts_the_members_spread() -> None:
    out = torch.tensor([[[1.0, 5.0]], [[3.0, 5.0]]])  # (members 2, images 1, neurons 2)
    obj, sd = objective(out, torch.tensor([0]), 2.0)
    assert torch.allclose(sd, torch.tensor([1.0])) and torch.allclose(obj, torch.tensor([0.0]))
    obj, sd = objective(out, torch.tensor([1]), 2.0)
    assert torch.allclose(sd, torch.tensor([0.0])) and torch.allclose(obj, torch.tensor([5.0]))
    plain, sd0 = objective(out[0], torch.tensor([0]), 2.0)  # a response model: no spread
    assert float(plain) == 1.0 and float(sd0) == 0.0


def test_agreement_term_lowers_the_members_spread() -> None:
    ens = perturbed_ensemble(random_stack(2, seed=4), members=4, rel_noise=0.4, seed=3)

    def spread(weight: float) -> float:
        g = synthesize(ens, [0, 1], per_neuron=2, seed=1,
                       config=SynthesisConfig(steps=20, spread_weight=weight, **PLAIN))  # type: ignore[arg-type]
        return float(np.mean([p.details["spread"] for p in g.picks]))

    assert spread(3.0) < 0.8 * spread(0.0)


class ContrastEnergy(torch.nn.Module):
    """Neuron 0: mean squared deviation of the image from its own mean (rises with contrast);
    neuron 1: the same, negated (falls with contrast)."""

    n_neurons = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = (x - x.mean(dim=(1, 2, 3), keepdim=True)).pow(2).mean(dim=(1, 2, 3))
        return torch.stack([e, -e], dim=1)


def _contrast(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(float).std(1)


def test_contrast_phase_follows_the_models_gradient_within_its_bound() -> None:
    start = (128 + (random_images(4, seed=3).astype(float) - 128) * 0.3).astype(np.uint8)  # low contrast: no clipping
    cfg = SynthesisConfig(steps=0, init_std=0.0, max_contrast=1.6, **PLAIN)  # type: ignore[arg-type]
    g = synthesize(ContrastEnergy(), [0, 1], per_neuron=2, config=cfg, init_images=start)
    gains = np.array([p.details["contrast"] for p in g.picks])
    np.testing.assert_allclose(gains, [1.6, 1.6, 1.0, 1.0], rtol=1e-6)  # neuron 0 up to the bound, 1 not at all
    np.testing.assert_allclose(_contrast(g.images) / _contrast(start), gains, rtol=0.02)
    np.testing.assert_array_equal(g.images[2:], start[2:])
    off = synthesize(ContrastEnergy(), [0], per_neuron=2, config=SynthesisConfig(steps=0, init_std=0.0),
                     init_images=start[:2])  # max_contrast 1 (the default): no phase, the start returned
    np.testing.assert_array_equal(off.images, start[:2])
    assert [p.details["contrast"] for p in off.picks] == [1.0, 1.0]
    with pytest.raises(InvalidRequest, match="bad synthesis settings"):
        synthesize(ContrastEnergy(), [0], config=SynthesisConfig(max_contrast=0.5))


def test_contrast_phase_raises_a_compact_models_response() -> None:
    stack = random_stack(2, seed=5)
    start = (128 + (random_images(4, seed=8).astype(float) - 128) * 0.5).astype(np.uint8)
    which = torch.tensor([0, 0, 1, 1])

    def response(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return stack.paired(preprocess(images), which).numpy()
    cfg = SynthesisConfig(steps=0, init_std=0.0, max_contrast=2.0, jitter=0, scale_jitter=0.0, diversity=0.0)
    g = synthesize(stack, [0, 1], per_neuron=2, config=cfg, init_images=start)
    gains = np.array([p.details["contrast"] for p in g.picks])
    assert ((gains >= 1.0) & (gains <= 2.0 + 1e-6)).all() and (gains > 1.0).any()
    assert (response(g.images) >= response(start) - 1e-3).all()  # never lower than the start
    assert response(g.images).sum() > response(start).sum()


def _shifted_response(stack: CompactStack, images: np.ndarray, neurons: list[int]) -> float:
    """Mean response of each image's neuron over shifts of -3..3 pixels, relative to the unshifted one."""
    x = preprocess(images)
    idx = torch.tensor(neurons)
    with torch.no_grad():
        base = stack.paired(x, idx)
        moved = [stack.paired(torch.roll(x, (dy, dx), (2, 3)), idx) for dy in (-3, 0, 3) for dx in (-3, 3)]
    return float((torch.stack(moved).mean(0) / base).mean())


def test_jitter_makes_images_robust_to_shifts() -> None:
    stack = random_stack(3, seed=7)
    neurons = [0, 1, 2]
    still = synthesize(stack, neurons, seed=2, config=SynthesisConfig(steps=25, **PLAIN))  # type: ignore[arg-type]
    moving = synthesize(stack, neurons, seed=2, config=SynthesisConfig(
        steps=25, jitter=4, scale_jitter=0.1, diversity=0.0))
    assert _shifted_response(stack, moving.images, neurons) > _shifted_response(stack, still.images, neurons)


def test_init_images_are_the_start() -> None:
    stack = random_stack(1, seed=1)
    init = random_images(2, seed=9)
    g = synthesize(stack, [0], per_neuron=2, config=SynthesisConfig(steps=0, init_std=0.0), init_images=init)
    np.testing.assert_array_equal(g.images, init)
    assert all(p.source.startswith("init:") for p in g.picks)
    with pytest.raises(InvalidRequest, match="init_images"):
        synthesize(stack, [0], per_neuron=3, config=SynthesisConfig(steps=0), init_images=init)
    with pytest.raises(InvalidRequest, match="bad synthesis settings"):
        synthesize(stack, [0], config=SynthesisConfig(jitter=-1))


async def test_synthesis_knobs_over_the_wire(tmp_path: Path) -> None:
    stack = random_stack(2, seed=2)
    ctx = LocalGenerationContext(pool_dir=tmp_path, models={"m": stack},
                                 ensembles={"m": perturbed_ensemble(stack, 3, seed=1)})
    build_pool(tmp_path / "p.h5", [random_images(12, seed=1)])
    async with RpcServer("tcp://127.0.0.1:0", generation_handlers(ctx), name="gen") as server, \
            RpcClient(server.endpoint, timeout=60) as client:
        top = await client.request(GenMaximize(model="m", pool="p", neurons=[1, 0], k=2), GenImages)
        start = await client.request(GenSynthesize(model="m", neurons=[1, 0], per_neuron=2, steps=0, pool="p"),
                                     GenImages)
        diff = np.abs(start.images.astype(int) - top.images.astype(int)).mean(axis=(1, 2, 3))
        assert (diff < 10).all()  # the top pool images plus the start noise (sd 10, clipped)
        rep = await client.request(GenSynthesize(model="m", neurons=[0], steps=2, spread_weight=2.0, jitter=1,
                                                 scale_jitter=0.05), GenImages)
        assert rep.provenance[0].details["spread"] > 0  # scored by the ensemble of that id
        plain = await client.request(GenSynthesize(model="m", neurons=[0], steps=2, spread_weight=0.0), GenImages)
        assert plain.provenance[0].details["spread"] == 0.0
        assert plain.provenance[0].details["contrast"] == 1.0  # no contrast phase unless asked
        gained = await client.request(GenSynthesize(model="m", neurons=[1, 0], per_neuron=2, steps=0, pool="p",
                                                    init_std=0.0, max_contrast=1.5), GenImages)
        gains = [p.details["contrast"] for p in gained.provenance]
        assert all(1.0 <= g <= 1.5 + 1e-6 for g in gains)
    with pytest.raises(ValueError, match="max_contrast"):
        GenSynthesize(model="m", neurons=[0], max_contrast=0.9)
