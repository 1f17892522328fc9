"""Shared helpers of the stimserver tests: images, blocks, a server with a fake presenter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import numpy as np

from stimserver.fake_presenter import FakePresenter
from stimserver.server import StimServer
from wire.base import image_id
from wire.stim import PresentBlock, TrialEvent, TrialSpec
from wire.transport import EventSubscriber, RpcClient


def random_images(n: int, size: int = 16, seed: int = 0) -> tuple[list[str], np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return [image_id(a) for a in pixels], pixels


def block(ids: list[str], on: int = 2, off: int = 2, repeats: int = 1, block_id: str = "b") -> PresentBlock:
    return PresentBlock(block_id=block_id,
                        trials=[TrialSpec(image_id=i, on_frames=on, off_frames=off, repeats=repeats) for i in ids])


class Rig:
    """A running server on ipc endpoints, a client and a subscribed event stream."""

    def __init__(self, server: StimServer, client: RpcClient, events: EventSubscriber) -> None:
        self.server = server
        self.client = client
        self.events = events

    async def next_events(self, n: int, timeout: float = 10.0) -> list[TrialEvent]:
        return [await self.events.recv(timeout) for _ in range(n)]


@contextlib.asynccontextmanager
async def running(presenter: FakePresenter, tmp: str) -> AsyncIterator[Rig]:
    async with StimServer(presenter, f"ipc://{tmp}/rpc", f"ipc://{tmp}/events") as srv:
        sub = EventSubscriber(srv.events_endpoint, [TrialEvent])
        await srv.wait_for_subscribers(1)
        try:
            async with RpcClient(srv.rpc_endpoint, timeout=10.0) as client:
                yield Rig(srv, client, sub)
        finally:
            sub.close()
