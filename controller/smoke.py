"""A smoke run of the foundation: servers, typed messages, events and the session store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
from rich.console import Console

from controller import __version__
from controller.store import SessionReader, SessionWriter
from wire.base import Array, Message, image_id
from wire.documents import ImageDoc, StartDoc, StopDoc
from wire.messages import Ok
from wire.transport import EventPublisher, EventSubscriber, RpcClient, RpcServer


class StoreImages(Message):
    kind: Literal["smoke.store_images"] = "smoke.store_images"
    pixels: Array


class Stored(Message):
    kind: Literal["smoke.stored"] = "smoke.stored"
    ids: list[str]


async def run_smoke(out: Path, console: Console) -> Path:
    path = out / f"smoke-{time.strftime('%Y%m%dT%H%M%S')}.h5"
    writer = SessionWriter.create(path)
    writer.write(StartDoc(session_id=path.stem, code_version=__version__, rig="smoke"))
    events = EventPublisher("tcp://127.0.0.1:0")

    async def store(cmd: StoreImages) -> Stored:
        ids = []
        for img in cmd.pixels:
            doc = ImageDoc(image_id=image_id(img), pixels=np.array(img), source="smoke")
            writer.write(doc)
            ids.append(doc.image_id)
            await events.publish(Ok())
        return Stored(ids=ids)

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    async with RpcServer("tcp://127.0.0.1:0", {StoreImages: store}, name="smoke") as server:
        sub = EventSubscriber(events.endpoint, [Ok])
        await events.wait_for_subscribers(1)
        async with RpcClient(server.endpoint) as client:
            pong = await client.ping()
            console.print(f"server {pong.server} {pong.version} answers on {server.endpoint}")
            t0 = time.perf_counter()
            reply = await client.request(StoreImages(pixels=batch), Stored)
            dt = time.perf_counter() - t0
            for _ in reply.ids:
                await sub.recv(timeout=5)
            console.print(f"sent {len(batch)} images (112x112x3) and stored them in {dt * 1e3:.1f} ms; "
                          f"{len(reply.ids)} events received")
        sub.close()
    events.close()
    writer.write(StopDoc(exit_status="success"))
    writer.close()
    with SessionReader(path) as reader:
        n = len(reader.images())
    console.print(f"session file {path}: {n} images read back")
    return path
