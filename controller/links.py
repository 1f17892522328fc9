"""The controller's side of the stimulus server: one RPC client and the event subscription (trials,
and with an awake animal its rewards and the trial state machine's transitions)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import zmq.asyncio

from wire.behavior import (
    STIM_BEHAVIOR_TOPIC,
    STIM_GAZE_TOPIC,
    STIM_REWARD_TOPIC,
    BehaviorEvent,
    FixationRule,
    GazeChunk,
    GiveReward,
    RewardEvent,
)
from wire.errors import CortexloopError
from wire.messages import Pong
from wire.security import CurveClient
from wire.stim import (
    STIM_TRIAL_TOPIC,
    AbortBlock,
    BlockResult,
    FixationSpot,
    GetStimStatus,
    ImagesLoaded,
    LoadImages,
    PauseBlock,
    PresentBlock,
    ResumeBlock,
    StimStatus,
    TrialEvent,
    TrialSpec,
)
from wire.transport import EventSubscriber, RpcClient

log = logging.getLogger(__name__)


#: what :meth:`StimLink.events` yields
StimEvent = TrialEvent | RewardEvent | BehaviorEvent | GazeChunk


class StimLink:
    """Commands to a stimserver and its events. ``async with StimLink(rpc, events):``."""

    def __init__(self, rpc_endpoint: str, events_endpoint: str, *, timeout: float = 10.0,
                 context: zmq.asyncio.Context | None = None, curve: CurveClient | None = None) -> None:
        self.client = RpcClient(rpc_endpoint, timeout=timeout, context=context, curve=curve)
        self._events = EventSubscriber(events_endpoint, [TrialEvent, RewardEvent, BehaviorEvent, GazeChunk],
                                       topics=[STIM_TRIAL_TOPIC, STIM_REWARD_TOPIC, STIM_BEHAVIOR_TOPIC,
                                               STIM_GAZE_TOPIC],
                                       context=context, curve=curve)

    async def __aenter__(self) -> StimLink:
        self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        self._events.close()

    async def ping(self, timeout: float | None = None) -> Pong:
        return await self.client.ping(timeout=timeout)

    async def load(self, ids: Sequence[str], pixels: Sequence[np.ndarray], chunk: int = 256) -> int:
        """Send images in chunks (the server skips those it has); returns how many were new."""
        added = 0
        for i in range(0, len(ids), chunk):
            reply = await self.client.request(
                LoadImages(image_ids=list(ids[i:i + chunk]), images=[np.asarray(p) for p in pixels[i:i + chunk]]),
                ImagesLoaded, timeout=max(self.client.timeout, 30.0))
            added += reply.added
        return added

    async def present(self, block_id: str, trials: list[TrialSpec], timeout: float, *,
                      behavior: FixationRule | None = None, fixation: FixationSpot | None = None) -> BlockResult:
        cmd = PresentBlock(block_id=block_id, trials=trials, behavior=behavior, fixation=fixation)
        return await self.client.request(cmd, BlockResult, timeout=timeout)

    async def pause(self) -> None:
        await self.client.request(PauseBlock(), StimStatus)

    async def resume(self) -> None:
        await self.client.request(ResumeBlock(), StimStatus)

    async def abort(self) -> None:
        try:
            await self.client.request(AbortBlock(), StimStatus, timeout=2.0)
        except CortexloopError as exc:  # nothing running, or the server is gone: nothing is shown either way
            log.info("abort: stimserver answered %s", exc)

    async def status(self, timeout: float | None = None) -> StimStatus:
        return await self.client.request(GetStimStatus(), StimStatus, timeout=timeout)

    async def give_reward(self, duration_ms: float | None = None, operator: str = "") -> StimStatus:
        """One manual reward pulse (the server publishes its ``stim.reward`` event before it answers);
        a server without a reward line answers with an error."""
        return await self.client.request(GiveReward(duration_ms=duration_ms, operator=operator[:128]), StimStatus)

    async def events(self) -> AsyncIterator[StimEvent]:
        """Trial events, and (awake animals) reward, behaviour and gaze events, in the order published."""
        async for ev in self._events:
            yield ev


class RigLink:
    """The controller's side of a virtual rig (``python -m virtualrig``): it is sent the pixels of
    every image loaded into the stimserver, as a monkey would see them on the screen. ``rates`` asks
    for the rig's ground truth and is only for scoring (the demo), never for the engine."""

    def __init__(self, rpc_endpoint: str, *, timeout: float = 120.0, curve: CurveClient | None = None) -> None:
        self.client = RpcClient(rpc_endpoint, timeout=timeout, curve=curve)
        self._sent: set[str] = set()

    async def __aenter__(self) -> RigLink:
        self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def load(self, ids: Sequence[str], pixels: Sequence[np.ndarray], chunk: int = 128) -> None:
        """Send the images the rig has not been sent yet (it computes their rates before the block)."""
        from wire.acq import RigImagesLoaded, RigLoadImages

        new = [(i, p) for i, p in zip(ids, pixels, strict=True) if i not in self._sent]
        for k in range(0, len(new), chunk):
            part = new[k:k + chunk]
            await self.client.request(RigLoadImages(images=np.stack([p for _, p in part])), RigImagesLoaded)
            self._sent.update(i for i, _ in part)

    async def status(self) -> Any:
        from wire.acq import RigStatus, RigStatusReply

        return await self.client.request(RigStatus(), RigStatusReply, timeout=10.0)

    async def rates(self, images: np.ndarray, chunk: int = 200) -> np.ndarray:
        """The rig's firing rates (images, units) for uint8 images (N, H, W, 3): ground truth, for scoring."""
        from wire.acq import RigRates, RigRatesReply

        parts = [np.asarray((await self.client.request(RigRates(images=images[k:k + chunk]), RigRatesReply)).rates)
                 for k in range(0, len(images), chunk)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
