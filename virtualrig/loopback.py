"""An in-process virtual rig: an acquisition source whose neurons watch the stimserver's trial events.

It is the same model neurons as the LSL virtual rig (a :class:`~virtualrig.rates.RateModel`,
Poisson spikes with a latency and a baseline), delivered through the
:class:`~controller.acquisition.base.AcquisitionSource` interface without a network hop, so
the engine can be tested and demonstrated in one process. Times are ``wire.clock.now()``
seconds, the clock the stimserver stamps its flips with, so the clock map is the identity.

The rig learns of a trial at its offset (when the stimserver publishes it) and from then on
releases that trial's spikes as the clock passes their times: spikes never arrive before their
time, and heartbeats keep the acquisition clock moving between spikes. Like a real acquisition
system the rig runs ``delay`` seconds behind the wall clock (0.3 s by default), which leaves
time for a trial's event to reach it before its counting window is closed.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncIterator, Callable

import numpy as np

from controller.acquisition.base import AcquisitionSource, Heartbeat, Item, SpikeBatch
from virtualrig.rates import RateModel
from wire import clock
from wire.errors import RequestTimeout
from wire.stim import STIM_TRIAL_TOPIC, TrialEvent
from wire.transport import EventSubscriber


class LoopbackRig(AcquisitionSource):
    """Spikes of ``model``'s units for every trial the stimserver at ``events_endpoint`` shows.

    ``pixels(image_id)`` returns an image's uint8 pixels (the controller's image store).
    """

    name = "loopback-rig"

    def __init__(self, events_endpoint: str, model: RateModel, pixels: Callable[[str], np.ndarray], *,
                 latency: float = 0.05, duration: float = 0.1, baseline: float = 2.0, seed: int = 0,
                 tick: float = 0.01, delay: float = 0.3, silence_timeout: float | None = 5.0) -> None:
        super().__init__(silence_timeout=silence_timeout)
        self.events_endpoint = events_endpoint
        self.model = model
        self.pixels = pixels
        self.latency, self.duration, self.baseline, self.tick = latency, duration, baseline, tick
        self.delay = delay
        self.rng = np.random.default_rng(seed)
        self._rates: dict[str, np.ndarray] = {}
        self._pending: list[tuple[float, int]] = []  # heap of (time, unit)
        self._sub: EventSubscriber | None = None
        self._last = clock.now() - delay
        self.trials_seen = 0

    async def open(self) -> None:
        if self._sub is not None:
            return  # already open (idempotent, so a test can open it before handing it over)
        self._sub = EventSubscriber(self.events_endpoint, [TrialEvent], topics=[STIM_TRIAL_TOPIC])
        self._last = clock.now() - self.delay

    async def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    async def prepare(self, ids: list[str], pixels: list[np.ndarray]) -> None:
        """Compute the rates of images about to be shown, batched, off the event loop."""
        new = [(i, p) for i, p in zip(ids, pixels, strict=True) if i not in self._rates]
        if new:
            rates = await asyncio.to_thread(self.model.rates, np.stack([p for _, p in new]))
            self._rates.update((i, r) for (i, _), r in zip(new, rates, strict=True))

    def rates_of(self, image_id: str) -> np.ndarray:
        if image_id not in self._rates:
            self._rates[image_id] = self.model.rates(self.pixels(image_id)[None])[0]
        return self._rates[image_id]

    def _schedule(self, ev: TrialEvent) -> None:
        self.trials_seen += 1
        rates = self.rates_of(ev.image_id)
        start = ev.onset + self.latency
        counts = self.rng.poisson(rates * self.duration)
        for unit, n in enumerate(counts):
            for t in self.rng.uniform(start, start + self.duration, n):
                heapq.heappush(self._pending, (float(t), unit))

    def _due(self, now: float) -> SpikeBatch | None:
        # baseline firing of every unit since the last tick, plus the scheduled evoked spikes
        n_units = self.model.n_units
        span = max(0.0, now - self._last)
        k = self.rng.poisson(self.baseline * span * n_units)
        units = list(self.rng.integers(0, n_units, k))
        times = list(self.rng.uniform(self._last, now, k))
        while self._pending and self._pending[0][0] <= now:
            t, u = heapq.heappop(self._pending)
            times.append(t)
            units.append(u)
        self._last = now
        if not times:
            return None
        order = np.argsort(times)
        return SpikeBatch.of(np.asarray(units, dtype=np.int64)[order], np.asarray(times)[order])

    async def _items(self) -> AsyncIterator[Item]:
        assert self._sub is not None, "open() first"
        while True:
            try:
                self._schedule(await self._sub.recv(timeout=self.tick))
            except RequestTimeout:
                pass  # no trial this tick
            now = clock.now() - self.delay
            batch = self._due(now)
            if batch is not None:
                yield batch
            yield Heartbeat(now)
            await asyncio.sleep(0)
