"""The model link's paired requests (adversarial, smooth): base images, and one greedy search for smooth-."""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.modellink import BASE_CANDIDATES, ZmqModelLink
from protocols.library.paired import AdversarialProtocol
from protocols.steps import GenerateImages, MaximizeSynthParams, SmoothParams
from wire.base import image_id
from wire.generate import (
    POOL_START_SYNTHESIS,
    GenAdversarial,
    GenBuildPool,
    GenImages,
    GenPoolInfo,
    GenProvenance,
    GenSmooth,
    GenSynthesize,
)
from wire.model import Predict, Prediction


class CountingClient:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def ping(self, timeout: float | None = None) -> None:
        return None

    async def request(self, cmd: Any, reply_type: type, timeout: float | None = None) -> GenImages:
        self.sent.append(cmd)
        images = np.asarray(cmd.base_images)
        prov = [GenProvenance(method="x", model=cmd.model, neuron=n, score=0.0, source="base:x")
                for n in cmd.neurons]
        return GenImages(images=images, image_ids=[image_id(i) for i in images], provenance=prov)


async def test_smooth_controls_reuse_the_greedy_search() -> None:
    link = ZmqModelLink("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", session_id="s", pixels=lambda i: None,
                        base_images=lambda n, s: [])
    client = CountingClient()
    link.client = client  # type: ignore[assignment]
    step = GenerateImages(request_id="smooth_minus", n_images=1,
                          params=SmoothParams(neurons=[0], mode="minus"), timeout_s=10)
    bases = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)

    def smooth(seed: int, sigma: float = 2.0) -> GenSmooth:
        return GenSmooth(model="m", neurons=[0, 1], base_images=bases, sigma=sigma, seed=seed, shortlist=8)
    first = await link._paired_reply(smooth(seed=1), step)
    again = await link._paired_reply(smooth(seed=2), step)  # the random-controls request: another seed
    assert again is first and len(client.sent) == 1
    await link._paired_reply(smooth(seed=2, sigma=3.0), step)  # other inputs: a new search
    assert len(client.sent) == 2
    adv = GenAdversarial(model="m", neurons=[0, 1], base_images=bases, max_l2=100.0)
    await link._paired_reply(adv, step)
    await link._paired_reply(adv, step)  # adversarial requests are never reused
    assert len(client.sent) == 4


class PredictingClient:
    """Predicts neuron m's response to an image as its mean pixel value times (m + 1)."""

    def __init__(self) -> None:
        self.sent: list[Predict] = []

    async def request(self, cmd: Any, reply_type: type, timeout: float | None = None) -> Prediction:
        assert isinstance(cmd, Predict)
        self.sent.append(cmd)
        means = np.asarray(cmd.images, dtype=float).mean(axis=(1, 2, 3))
        return Prediction(session=cmd.session, version=cmd.version or "v", responses=np.stack(
            [means * (m + 1) for m in range(4)]).astype(np.float32))


async def test_driving_bases_are_the_upper_quartile_of_the_models_predictions() -> None:
    library = [np.full((8, 8, 3), v, np.uint8) for v in range(0, 250)]  # image k has mean pixel k

    def draw(n: int, seed: int) -> list[np.ndarray]:
        idx = np.random.default_rng(seed).choice(len(library), n, replace=False)
        return [library[i] for i in idx]
    link = ZmqModelLink("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", session_id="s", pixels=lambda i: None,
                        base_images=draw)
    client = PredictingClient()
    link.client = client  # type: ignore[assignment]
    link.version = "v1"
    link.matched = {0: ("day1", 2), 1: ("day1", 3), 2: (link.session, 0)}  # neuron 2: this session's readout
    n = 3
    bases = await link._driving_bases([0, 1, 2], n, seed=5)
    assert len(bases) == 3 * n
    per = BASE_CANDIDATES * n
    drawn = draw(per * 3, 5)
    for k in range(3):
        values = sorted((int(im[0, 0, 0]) for im in drawn[k * per:(k + 1) * per]), reverse=True)
        got = [int(b[0, 0, 0]) for b in bases[k * n:(k + 1) * n]]
        assert got == values[2 * n:3 * n]  # ranks 2n .. 3n-1 of the neuron's own candidates
    # one prediction per model: the matched day-1 models at the matched version, this session's at the current
    assert sorted((c.session, c.version) for c in client.sent) == [("day1", "v1"), ("s", None)]
    assert all(image_id(b) in link._base_pixels for b in bases)  # the paired request finds them by id


class SynthClient:
    """Answers pool builds and synthesis requests (start images returned as they are)."""

    endpoint = "tcp://127.0.0.1:9"

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def ping(self, timeout: float | None = None) -> None:
        return None

    async def request(self, cmd: Any, reply_type: type, timeout: float | None = None) -> Any:
        self.sent.append(cmd)
        if isinstance(cmd, GenBuildPool):
            return GenPoolInfo(pool=cmd.pool, size=10, path="p.h5")
        assert isinstance(cmd, GenSynthesize)
        images = np.zeros((len(cmd.neurons) * cmd.per_neuron, 8, 8, 3), np.uint8)
        prov = [GenProvenance(method="synthesize", model=cmd.model, neuron=n, score=0.0, source="init")
                for n in cmd.neurons for _ in range(cmd.per_neuron)]
        return GenImages(images=images, image_ids=[f"im{i}" for i in range(len(images))], provenance=prov)


async def test_synthesis_from_the_pool_sends_the_pool_start_settings() -> None:
    link = ZmqModelLink("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", session_id="s", pixels=lambda i: None,
                        base_images=lambda n, s: [])
    client = SynthClient()
    link.client = client  # type: ignore[assignment]
    link.matched = {0: ("day1", 2)}

    async def sent(**params: Any) -> GenSynthesize:
        step = GenerateImages(request_id="max_synth", n_images=2, timeout_s=10,
                              params=MaximizeSynthParams(neurons=[0], steps=5, **params))
        await link.generate(step, seed=3)
        cmd = client.sent[-1]
        assert isinstance(cmd, GenSynthesize) and cmd.model == "day1" and cmd.neurons == [2]
        return cmd
    pool = await sent(init="pool")
    assert pool.pool is not None and pool.max_contrast == POOL_START_SYNTHESIS["max_contrast"] == 2.0
    assert pool.step_size == POOL_START_SYNTHESIS["step_size"] and pool.init_std == 0.0
    assert (await sent(init="pool", max_contrast=1.0)).max_contrast == 1.0  # the protocol's field wins
    noise = await sent(init="noise")
    assert noise.pool is None and noise.max_contrast == 1.0 and noise.init_std > 0  # the wire defaults
    assert (await sent(init="noise", max_contrast=1.5)).max_contrast == 1.5


async def test_adversarial_protocol_jitter_reaches_the_modelserver() -> None:
    """The protocol's jitter settings and the step's seed travel in the request (the defaults jitter)."""
    bases = [np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30)]
    link = ZmqModelLink("tcp://127.0.0.1:9", "tcp://127.0.0.1:9", session_id="s", pixels=lambda i: None,
                        base_images=lambda n, s: bases[:n])
    client = CountingClient()
    link.client = client  # type: ignore[assignment]
    link.matched = {0: ("day1", 2)}
    for proto, want in ((AdversarialProtocol(bases="random"), (8, 0.15)),
                        (AdversarialProtocol(bases="random", jitter=0, scale_jitter=0.0), (0, 0.0))):
        params = proto._kinds([0])[0][1]
        step = GenerateImages(request_id="adv+", n_images=3, params=params, timeout_s=10)
        await link.generate(step, seed=7)
        cmd = client.sent[-1]
        assert isinstance(cmd, GenAdversarial) and cmd.model == "day1" and cmd.neurons == [2, 2, 2]
        assert (cmd.jitter, cmd.scale_jitter, cmd.seed) == (*want, 7)
