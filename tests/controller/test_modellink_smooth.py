"""The smooth- protocol asks for smoothed images, then for their random controls: one greedy search."""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.modellink import ZmqModelLink
from protocols.steps import GenerateImages, SmoothParams
from wire.base import image_id
from wire.generate import GenAdversarial, GenImages, GenProvenance, GenSmooth


class CountingClient:
    def __init__(self) -> None:
        self.sent: list[Any] = []

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
