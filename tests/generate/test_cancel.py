"""Long generation jobs stop when their client cancels or times out; costly requests are refused up front.

A real RpcServer serving the gen.* handlers over small random compact models; clients are
RpcClients and raw DEALER sockets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.asyncio

from modelserver.generate.handlers import LocalGenerationContext, generation_handlers
from modelserver.generate.limits import RequestLimits
from modelserver.generate.models import perturbed_ensemble
from modelserver.generate.pool import build_pool
from tests.generate.conftest import random_images, random_stack
from wire.codec import encode
from wire.errors import LimitExceeded, RequestTimeout
from wire.generate import (
    GenActive,
    GenAdversarial,
    GenDots,
    GenImages,
    GenMaximize,
    GenSmooth,
    GenSynthesize,
)
from wire.messages import Ok
from wire.transport import CancelRequest, RpcClient, RpcServer

LONG = GenSynthesize(model="m", neurons=[0, 1], steps=100_000)  # minutes of work if nobody stops it


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RpcServer]:
    stack = random_stack(2, seed=3)
    ctx = LocalGenerationContext(pool_dir=tmp_path, models={"m": stack},
                                 ensembles={"e": perturbed_ensemble(stack, 2, seed=1)})
    build_pool(tmp_path / "p.h5", [random_images(30, seed=2)])
    async with RpcServer("tcp://127.0.0.1:0", generation_handlers(ctx), name="gen") as srv:
        yield srv


async def _until(cond, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``cond()`` holds (polled every 10 ms); fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_timeout_cancels_a_long_synthesis(server: RpcServer) -> None:
    async with RpcClient(server.endpoint) as client:
        with pytest.raises(RequestTimeout):
            await client.request(LONG, GenImages, timeout=1.0)
        stopped_in = await _until(lambda: server.in_flight == 0, timeout=2.0)  # the worker thread ended
        assert stopped_in < 2.0 and server.stats["cancelled"] == 1
        dots = await client.request(GenDots(counts=[1], radii=[5.0], per_condition=2), GenImages, timeout=10)
        assert dots.images.shape == (2, 112, 112, 3)


async def test_cancelling_the_callers_task_cancels_the_work(server: RpcServer) -> None:
    async with RpcClient(server.endpoint, timeout=600) as client:
        for cmd in (LONG, GenAdversarial(model="m", neurons=[0], base_images=random_images(1), steps=100_000)):
            task = asyncio.create_task(client.request(cmd, GenImages))
            await _until(lambda: server.in_flight == 1, timeout=5.0)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _until(lambda: server.in_flight == 0, timeout=2.0)
            assert time.monotonic() - t0 < 2.0
        assert server.stats["cancelled"] == 2
        rep = await client.request(GenMaximize(model="m", pool="p", neurons=[0], k=2), GenImages)
        assert len(rep.image_ids) == 2


async def test_job_cancel_answers_and_the_job_replies_cancelled(server: RpcServer) -> None:
    ctx = zmq.asyncio.Context.instance()
    owner, stranger = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (owner, stranger):
        s.linger = 0
        s.connect(server.endpoint)
    try:
        await owner.send_multipart(encode(LONG, "job-1"))
        await _until(lambda: server.in_flight == 1, timeout=5.0)
        # another client cannot cancel it: the id is looked up among the requests of the same connection
        await stranger.send_multipart(encode(CancelRequest(request_id="job-1"), "c-0"))
        async with asyncio.timeout(5):
            other = json.loads((await stranger.recv_multipart())[0])
        assert other["id"] == "c-0" and other["msg"]["code"] == "not_found"
        assert server.in_flight == 1
        t0 = time.monotonic()
        await owner.send_multipart(encode(CancelRequest(request_id="job-1"), "c-1"))
        replies = {}
        async with asyncio.timeout(5):
            while len(replies) < 2:
                r = json.loads((await owner.recv_multipart())[0])
                replies[r["id"]] = r["msg"]
        assert time.monotonic() - t0 < 2.0
        assert replies["c-1"]["kind"] == Ok().kind
        assert replies["job-1"]["kind"] == "error" and replies["job-1"]["code"] == "cancelled"
        assert replies["job-1"]["command"] == "gen.synthesize"
    finally:
        owner.close(0)
        stranger.close(0)


async def test_costly_requests_are_refused_up_front_with_the_limit(server: RpcServer) -> None:
    async with RpcClient(server.endpoint, timeout=10) as client:
        cases = [
            (GenSynthesize(model="m", neurons=list(range(10)), per_neuron=500), "max_images"),
            (GenSynthesize(model="m", neurons=list(range(100)), steps=100_000), "max_image_steps"),
            (GenSynthesize(model="m", neurons=list(range(40)), per_neuron=100, steps=1), "max_memory_bytes"),
            (GenMaximize(model="m", pool="p", neurons=list(range(1000)), k=10), "max_images"),
            (GenActive(ensemble="e", pool="p", k=10, candidates=10_000_000), "max_pool_images"),
            (GenDots(radii=[1.0] * 100, counts=[1] * 100, per_condition=10), "max_images"),
            (GenSmooth(model="m", neurons=[0] * 40, base_images=np.zeros((40, 112, 112, 3), np.uint8), grid=56,
                       max_patches=3136), "max_image_steps"),
        ]
        for cmd, limit in cases:
            t0 = time.monotonic()
            with pytest.raises(LimitExceeded, match=limit):
                await client.request(cmd, GenImages)
            assert time.monotonic() - t0 < 1.0, cmd.kind  # refused before any work
        assert server.in_flight == 0


async def test_limits_are_configurable(tmp_path: Path) -> None:
    ctx = LocalGenerationContext(pool_dir=tmp_path, models={"m": random_stack(1, seed=0)})
    lim = RequestLimits(max_images=2, max_image_steps=50)
    async with RpcServer("tcp://127.0.0.1:0", generation_handlers(ctx, limits=lim), name="gen") as srv, \
            RpcClient(srv.endpoint, timeout=30) as client:
        with pytest.raises(LimitExceeded, match=r"limit of 2 images \(RequestLimits.max_images\)"):
            await client.request(GenSynthesize(model="m", neurons=[0], per_neuron=3, steps=1), GenImages)
        with pytest.raises(LimitExceeded, match=r"limit of 50 image-steps"):
            await client.request(GenSynthesize(model="m", neurons=[0], per_neuron=2, steps=26), GenImages)
        ok = await client.request(GenSynthesize(model="m", neurons=[0], per_neuron=2, steps=25), GenImages)
        assert ok.images.shape == (2, 112, 112, 3)
