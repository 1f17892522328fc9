"""Transport benchmark: 112x112x3 uint8 image batches over inproc, ipc and tcp.

Compares cortexloop's codec (JSON header + zero-copy raw frames, typed pydantic messages,
RpcClient/RpcServer round trips) with pickle over the same ZeroMQ sockets, in the same run.
Prints messages/s and GB/s (image payload per second, one direction) for each.

    .venv/bin/python bench/transport_bench.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import pickle
import tempfile
import time
from typing import Any, Literal

import numpy as np
import zmq
import zmq.asyncio

from wire.base import Array, Message
from wire.messages import Ok
from wire.transport import RpcClient, RpcServer


class Images(Message):
    kind: Literal["bench.images"] = "bench.images"
    ids: list[str]
    pixels: Array


async def _ok(cmd: Images) -> Ok:
    assert cmd.pixels.shape[1:] == (112, 112, 3)
    return Ok()


async def bench_wire(endpoint: str, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    ctx = zmq.asyncio.Context.instance()
    msg = Images(ids=[f"{i:032x}" for i in range(len(batch))], pixels=batch)
    async with RpcServer(endpoint, {Images: _ok}, context=ctx) as srv, RpcClient(srv.endpoint, context=ctx) as cli:
        await cli.request(msg)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            await cli.request(msg)
            n += 1
        dt = time.perf_counter() - t0
    return n / dt, n * batch.nbytes / dt / 1e9


class _ArraysOnly(pickle.Unpickler):
    """The baseline's unpickler: it resolves only what a dict of numpy arrays needs, so no byte
    string can make it import or call anything else (an unrestricted unpickler runs any callable)."""

    ALLOWED = frozenset({("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
                         ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy.core.multiarray", "_reconstruct")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


def _load(payload: bytes) -> Any:
    return _ArraysOnly(io.BytesIO(payload)).load()


async def bench_pickle(endpoint: str, batch: np.ndarray, seconds: float) -> tuple[float, float]:
    """Baseline only: pickle round trips (dumps, and loads through :class:`_ArraysOnly`)."""
    ctx = zmq.asyncio.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.linger = dealer.linger = 0
    router.bind(endpoint)
    dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
    stop = False

    async def serve() -> None:
        while not stop:
            ident, payload = await router.recv_multipart()
            obj = _load(payload)
            assert obj["pixels"].shape[1:] == (112, 112, 3)
            await router.send_multipart([ident, pickle.dumps({"kind": "ok"})])

    task = asyncio.create_task(serve())
    obj = {"kind": "bench.images", "ids": [f"{i:032x}" for i in range(len(batch))], "pixels": batch}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        await dealer.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        _load(await dealer.recv())
        n += 1
    dt = time.perf_counter() - t0
    task.cancel()
    router.close(0)
    dealer.close(0)
    return n / dt, n * batch.nbytes / dt / 1e9


async def main(seconds: float) -> None:
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp()
    print(f"{'transport':<9} {'batch':>5} {'codec':<7} {'msgs/s':>9} {'GB/s':>7}")
    for batch_size in (1, 64):
        batch = rng.integers(0, 256, (batch_size, 112, 112, 3), dtype=np.uint8)
        for name, ep in (("inproc", "inproc://bench-{}"), ("ipc", f"ipc://{tmp}/bench-{{}}"),
                         ("tcp", "tcp://127.0.0.1:0")):
            for codec, fn in (("wire", bench_wire), ("pickle", bench_pickle)):
                rate, gbs = await fn(ep.format(f"{codec}{batch_size}"), batch, seconds)
                print(f"{name:<9} {batch_size:>5} {codec:<7} {rate:>9.0f} {gbs:>7.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    asyncio.run(main(p.parse_args().seconds))
