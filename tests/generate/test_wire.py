"""The gen.* commands over a real RpcServer/RpcClient pair: replies and typed errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from modelserver.generate.handlers import LocalGenerationContext, generation_handlers
from modelserver.generate.models import perturbed_ensemble
from modelserver.generate.pool import build_pool
from tests.generate.conftest import random_images, random_stack
from wire.base import image_id
from wire.errors import InvalidRequest, NotFound
from wire.generate import GenActive, GenBuildPool, GenDots, GenImages, GenMaximize, GenPoolInfo, GenSmooth
from wire.transport import RpcClient, RpcServer


async def test_generation_over_the_wire(tmp_path: Path) -> None:
    stack = random_stack(3, seed=2)
    ctx = LocalGenerationContext(pool_dir=tmp_path, image_roots=[tmp_path], models={"m": stack},
                                 ensembles={"e": perturbed_ensemble(stack, 2, seed=1)})
    build_pool(tmp_path / "p.h5", [random_images(20, seed=1)])
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["images"] = np.zeros((3, 112, 112, 3), np.float32)
        f["ids"] = np.array([b"0" * 32] * 3)
    folder = tmp_path / "mine"
    folder.mkdir()
    from PIL import Image

    for i, im in enumerate(random_images(3, seed=4)):
        Image.fromarray(im[:100]).save(folder / f"im{i}.png")
    async with RpcServer("tcp://127.0.0.1:0", generation_handlers(ctx), name="gen") as server, \
            RpcClient(server.endpoint, timeout=60) as client:
        rep = await client.request(GenMaximize(model="m", pool="p", neurons=[1, 2], k=2), GenImages)
        assert rep.images.shape == (4, 112, 112, 3) and rep.images.dtype == np.uint8
        assert rep.image_ids == [image_id(im) for im in rep.images]
        assert [p.neuron for p in rep.provenance] == [1, 1, 2, 2]
        assert all(p.model == "m" and p.method == "maximize" for p in rep.provenance)
        act = await client.request(GenActive(ensemble="e", pool="p", k=3), GenImages)
        assert len(act.provenance) == 3 and act.provenance[0].model == "e"
        sm = await client.request(GenSmooth(model="m", neurons=[0], base_images=random_images(1), grid=2,
                                            max_patches=1), GenImages)
        assert sm.controls is not None and sm.controls.images.shape == sm.images.shape
        dots = await client.request(GenDots(counts=[1], radii=[5.0], per_condition=2), GenImages)
        assert dots.images.shape == (2, 112, 112, 3)
        info = await client.request(GenBuildPool(pool="mine", folders=[str(folder)], gaudy=True), GenPoolInfo)
        assert info.size == 6
        with pytest.raises(InvalidRequest, match="larger than the pool"):
            await client.request(GenMaximize(model="m", pool="p", neurons=[0], k=21), GenImages)
        with pytest.raises(NotFound):
            await client.request(GenMaximize(model="m", pool="p", neurons=[3], k=1), GenImages)
        with pytest.raises(NotFound):
            await client.request(GenMaximize(model="nope", pool="p", neurons=[0], k=1), GenImages)
        with pytest.raises(InvalidRequest, match="uint8"):
            await client.request(GenMaximize(model="m", pool="bad", neurons=[0], k=1), GenImages)
        with pytest.raises(NotFound):
            await client.request(GenMaximize(model="m", pool="absent", neurons=[0], k=1), GenImages)
        # the server is still serving after the errors
        again = await client.request(GenMaximize(model="m", pool="p", neurons=[0], k=1), GenImages)
        assert again.images.shape == (1, 112, 112, 3)
