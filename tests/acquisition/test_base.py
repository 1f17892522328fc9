"""The source interface: the one-event view and the silence watchdog (heartbeats are not data)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from controller.acquisition.base import (
    AcquisitionSource,
    Heartbeat,
    Item,
    SourceSilent,
    SpikeBatch,
    SpikeEvent,
    SyncEvent,
)
from wire.errors import AcquisitionError


class ListSource(AcquisitionSource):
    name = "list"

    def __init__(self, items: Sequence[Item], then_block: bool = False, heartbeat_every: float | None = None,
                 silence_timeout: float | None = 5.0) -> None:
        super().__init__(silence_timeout=silence_timeout)
        self.items = list(items)
        self.then_block = then_block
        self.heartbeat_every = heartbeat_every

    async def _items(self) -> AsyncIterator[Item]:
        for it in self.items:
            yield it
        while self.then_block:
            if self.heartbeat_every is None:
                await asyncio.Event().wait()
            else:
                await asyncio.sleep(self.heartbeat_every)
                yield Heartbeat(0.0)


async def test_events_view_flattens_batches_and_drops_heartbeats() -> None:
    src = ListSource([SpikeBatch.of([1, 2], [0.1, 0.2]), Heartbeat(0.3), SyncEvent("pd", 0.4, 1),
                      SpikeBatch.from_events([SpikeEvent("a", 0.5)])])
    async with src:
        got = [e async for e in src.events()]
    assert got == [SpikeEvent(1, 0.1), SpikeEvent(2, 0.2), SyncEvent("pd", 0.4, 1), SpikeEvent("a", 0.5)]


@pytest.mark.parametrize("heartbeat_every", [None, 0.01])
async def test_silence_raises_even_with_heartbeats(heartbeat_every: float | None) -> None:
    src = ListSource([SpikeBatch.of([1], [0.1])], then_block=True, heartbeat_every=heartbeat_every,
                     silence_timeout=0.2)
    seen: list[Item] = []
    with pytest.raises(SourceSilent) as info:
        async for item in src:
            seen.append(item)
    assert isinstance(info.value, AcquisitionError) and "list: no data received for 0.2 s" in str(info.value)
    assert isinstance(seen[0], SpikeBatch)


def test_batch_shape_check() -> None:
    import numpy as np

    with pytest.raises(ValueError):
        SpikeBatch(np.zeros(2, np.int64), np.zeros(3))
