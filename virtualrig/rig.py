"""The virtual rig: watches the stimserver's trial events and spikes through LSL like a real rig.

Data flow::

    controller --rig.load_images (RPC, pixels)--> rig: rates[image_id] = model(pixels)
    stimserver --stim.trial (TrialEvent, PUB)-->   rig: schedule the driven response
    rig --LSL "cortexloop-spikes" (int32 unit, timestamp = spike time)--> controller
    rig --LSL "cortexloop-sync"   ("photodiode 1" at each onset, "photodiode 0" at offset)-->
    stimserver --stim.reward (RewardEvent, PUB)--> rig: monkey.reward (with a ``monkey``)
    rig --LSL "cortexloop-gaze"   (x, y in deg, at the monkey's rate, in real time)--> stimserver

Images reach the rig by its own small RPC (``wire.acq.RigLoadImages``): the controller
sends the pixels it loads into the stimserver, the rig computes each image's rates once and
keys them by the content hash that TrialEvents carry. The models (the ground truth) never
leave the process; for scoring, ``wire.acq.RigRates`` asks the rates of given images (read
only: it loads nothing) and ``RigStatus`` describes the population.

A TrialEvent is published at the trial's *offset*, after the driven response began, so the
rig streams with a fixed ``delay``: it emits the spikes of ``[.., now - delay)`` every
``tick``. ``delay`` must exceed the longest ON time minus the latency (default 0.3 s), like
the buffering latency of a real acquisition system; a trial that comes later is counted in
``trials_too_late``. ``clock`` simulates a rig clock different from the stimulus clock
(offset and drift); LSL's time correction cannot see it, a photodiode sync can.

With a ``monkey`` (``virtualrig.monkey.VirtualMonkey``) the rig is also the eye tracker: every
``gaze_tick`` it pushes the monkey's samples of ``[last push, now)`` stamped with their times on
``pylsl.local_clock`` (real time, no delay, no simulated rig clock), and each RewardEvent makes
the monkey less bored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import numpy as np
import pylsl

from controller.acquisition.clock import ClockMap
from virtualrig.monkey import VirtualMonkey
from virtualrig.rates import RateModel
from virtualrig.spikes import ResponseParams, SpikeSynth
from wire.acq import (
    LSL_GAZE_NAME,
    LSL_GAZE_TYPE,
    LSL_MARKER_NAME,
    LSL_MARKER_TYPE,
    LSL_SPIKE_NAME,
    LSL_SPIKE_TYPE,
    RIG_MAX_IMAGES,
    RIG_MAX_SIDE,
    RigImagesLoaded,
    RigLoadImages,
    RigRates,
    RigRatesReply,
    RigStatus,
    RigStatusReply,
)
from wire.base import image_id
from wire.behavior import STIM_REWARD_TOPIC, RewardEvent
from wire.errors import InvalidRequest, RequestTimeout
from wire.security import CurveClient, CurveServer, check_bind
from wire.stim import STIM_TRIAL_TOPIC, TrialEvent
from wire.transport import EventSubscriber, RpcServer

log = logging.getLogger(__name__)

__all__ = ["GAZE_SOURCE_ID", "VirtualRig", "check_images", "gaze_outlet"]

GAZE_SOURCE_ID = "cortexloop-virtualrig-gaze"


def check_images(imgs: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) images of a rig request (one (H, W, 3) image becomes N = 1), bounded in size."""
    if imgs.ndim == 3:
        imgs = imgs[None]
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or imgs.dtype != np.uint8:
        raise InvalidRequest(f"images must be uint8 (N, H, W, 3), got {imgs.dtype} {imgs.shape}")
    if imgs.shape[0] > RIG_MAX_IMAGES:
        raise InvalidRequest(f"{imgs.shape[0]} images in one request; at most {RIG_MAX_IMAGES} (send several)")
    if max(imgs.shape[1:3]) > RIG_MAX_SIDE or min(imgs.shape[1:3]) < 1:
        raise InvalidRequest(f"images of {imgs.shape[1]} x {imgs.shape[2]} pixels; sides must be 1..{RIG_MAX_SIDE}")
    return imgs


def gaze_outlet(name: str, rate_hz: float) -> pylsl.StreamOutlet:
    """The gaze outlet: 2 float32 channels x, y (deg, ScreenX/ScreenY) at ``rate_hz``."""
    info = pylsl.StreamInfo(name, LSL_GAZE_TYPE, 2, rate_hz, "float32", GAZE_SOURCE_ID)
    channels = info.desc().append_child("channels")
    for label, kind in (("x", "ScreenX"), ("y", "ScreenY")):
        ch = channels.append_child("channel")
        ch.append_child_value("label", label)
        ch.append_child_value("unit", "deg")
        ch.append_child_value("type", kind)
    return pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)


class VirtualRig:
    """``async with VirtualRig(model, stim_events=...) as rig:`` serves until the context exits.

    ``description`` (default: the model's own ``description``) is the ground truth in words for
    ``RigStatus``; unit names and session likewise come from the model where it has them.

    ``curve`` makes the rig's RPC a CURVE server (without it, an endpoint other machines can reach
    is refused unless ``insecure``: :func:`wire.security.check_bind`); ``stim_curve`` is the rig's
    client configuration for its subscription to the stimserver's trial events.

    ``monkey`` streams its gaze as LSL ``gaze_name`` every ``gaze_tick`` s and is rewarded by the
    stimserver's RewardEvents (``rewards_seen`` counts them).
    """

    def __init__(self, model: RateModel, *, stim_events: str, rpc: str = "tcp://127.0.0.1:0",
                 params: ResponseParams | None = None, delay: float = 0.3, tick: float = 0.01,
                 clock: ClockMap | None = None, seed: int | None = None, spike_name: str = LSL_SPIKE_NAME,
                 sync_name: str = LSL_MARKER_NAME, sync_channel: str = "photodiode",
                 description: str | None = None, curve: CurveServer | None = None, insecure: bool = False,
                 stim_curve: CurveClient | None = None, monkey: VirtualMonkey | None = None,
                 gaze_name: str = LSL_GAZE_NAME, gaze_tick: float = 0.005) -> None:
        if delay <= 0 or tick <= 0 or gaze_tick <= 0:
            raise InvalidRequest("delay, tick and gaze_tick must be > 0")
        self.model = model
        self.description = description or str(getattr(model, "description", f"{model.n_units} model units"))
        self.session: str | None = getattr(model, "session", None)
        names = getattr(model, "unit_names", None)
        self.unit_names: list[str] = (list(names) if names is not None and len(names) == model.n_units
                                      else [str(i) for i in range(model.n_units)])
        self._model_lock = asyncio.Lock()  # one model call at a time (torch uses every core anyway)
        self.stim_events = stim_events
        self.params = params or ResponseParams()
        self.delay = delay
        self.tick = tick
        self.clock = clock or ClockMap.identity()
        self.spike_name = spike_name
        self.sync_name = sync_name
        self.sync_channel = sync_channel
        self._rates: dict[str, np.ndarray] = {}
        self._synth = SpikeSynth(model.n_units, self.params, seed=seed, start=pylsl.local_clock() - delay)
        self._markers: list[tuple[float, str]] = []
        self.curve = curve
        self.insecure = insecure
        self.stim_curve = stim_curve
        self._rpc_endpoint = rpc
        self._server = RpcServer(rpc, {RigLoadImages: self._load, RigStatus: self._status, RigRates: self._oracle},
                                 name="virtualrig", curve=curve)
        self._sub: EventSubscriber | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._spike_out: pylsl.StreamOutlet | None = None
        self._sync_out: pylsl.StreamOutlet | None = None
        self.monkey, self.gaze_name, self.gaze_tick = monkey, gaze_name, gaze_tick
        self._gaze_out: pylsl.StreamOutlet | None = None
        self.rewards_seen = 0
        self.trials_seen = 0
        self.trials_unknown_image = 0
        self.trials_too_late = 0

    @property
    def endpoint(self) -> str:
        return self._server.endpoint

    # --- RPC ---------------------------------------------------------------------------------
    async def _model_rates(self, imgs: np.ndarray) -> np.ndarray:
        if imgs.shape[0] == 0:
            return np.empty((0, self.model.n_units))
        async with self._model_lock:
            return await asyncio.to_thread(self.model.rates, np.ascontiguousarray(imgs))

    async def _load(self, cmd: RigLoadImages) -> RigImagesLoaded:
        imgs = check_images(cmd.images)
        ids = [image_id(im) for im in imgs]
        new = [i for i, k in enumerate(ids) if k not in self._rates]
        if new:
            rates = await self._model_rates(imgs[new])
            for i, r in zip(new, rates, strict=True):
                self._rates[ids[i]] = r
        log.info("rig: %d image(s) loaded (%d new), %d known", len(ids), len(new), len(self._rates))
        return RigImagesLoaded(image_ids=ids, n_known=len(self._rates))

    async def _status(self, _cmd: RigStatus) -> RigStatusReply:
        return RigStatusReply(n_units=self.model.n_units, n_images=len(self._rates), trials_seen=self.trials_seen,
                              trials_unknown_image=self.trials_unknown_image, trials_too_late=self.trials_too_late,
                              spike_stream=self.spike_name, sync_stream=self.sync_name,
                              description=self.description, session=self.session, unit_names=self.unit_names)

    async def _oracle(self, cmd: RigRates) -> RigRatesReply:
        """The ground truth for scoring: the rates the rig uses (or would use) for these images. Read only."""
        imgs = check_images(cmd.images)
        rates = await self._model_rates(imgs)
        log.info("rig: rates of %d image(s) asked (ground truth for scoring)", imgs.shape[0])
        return RigRatesReply(rates=np.ascontiguousarray(rates, dtype=np.float32), unit_names=self.unit_names,
                             image_ids=[image_id(im) for im in imgs])

    # --- trial events ---------------------------------------------------------------------------
    def on_trial(self, ev: TrialEvent) -> None:
        """Schedule one trial's response (also usable without the event stream)."""
        self.trials_seen += 1
        rates = self._rates.get(ev.image_id)
        if rates is None:
            self.trials_unknown_image += 1
            log.warning("rig: trial %s shows image %s that was never loaded: baseline only", ev.trial_id,
                        ev.image_id)
        if not self._synth.add_trial(ev.onset, ev.offset, rates):
            self.trials_too_late += 1
            log.warning("rig: trial %s arrived after its response began streaming (delay %.3f s too short)",
                        ev.trial_id, self.delay)
        self._markers += [(ev.onset, f"{self.sync_channel} 1"), (ev.offset, f"{self.sync_channel} 0")]
        self._markers.sort()

    async def _listen(self) -> None:
        assert self._sub is not None
        async for ev in self._sub:
            if isinstance(ev, TrialEvent):
                self.on_trial(ev)
            elif isinstance(ev, RewardEvent):
                self.on_reward(ev)

    def on_reward(self, ev: RewardEvent) -> None:
        """The stimserver opened the reward line: the monkey's boredom starts again."""
        self.rewards_seen += 1
        if self.monkey is not None:
            self.monkey.reward(ev.time)

    # --- streaming ------------------------------------------------------------------------------
    def emit(self, until: float) -> int:
        """Push every spike and marker before local time ``until``; returns the number of spikes."""
        assert self._spike_out is not None and self._sync_out is not None
        units, times = self._synth.emit(until)
        k = 0
        while k < len(self._markers) and self._markers[k][0] < until:
            t, label = self._markers[k]
            self._sync_out.push_sample([label], float(self.clock.to_acq(t)))
            k += 1
        del self._markers[:k]
        if units.size:
            stamps = np.asarray(self.clock.to_acq(times), dtype=np.float64)
            for i in range(0, units.size, 4096):
                self._spike_out.push_chunk(units[i:i + 4096, None], stamps[i:i + 4096].tolist())
        return int(units.size)

    async def _stream(self) -> None:
        while True:
            self.emit(pylsl.local_clock() - self.delay)
            await asyncio.sleep(self.tick)

    async def _gaze(self) -> None:
        assert self.monkey is not None and self._gaze_out is not None
        last = pylsl.local_clock()
        while True:
            await asyncio.sleep(self.gaze_tick)
            now = pylsl.local_clock()
            times, xy = self.monkey.samples(last, now)
            if times.size:
                self._gaze_out.push_chunk(xy, times.tolist())
            last = now

    async def __aenter__(self) -> VirtualRig:
        check_bind(self._rpc_endpoint, self.curve, self.insecure, server="virtualrig")  # before anything opens
        info = pylsl.StreamInfo(self.spike_name, LSL_SPIKE_TYPE, 1, pylsl.IRREGULAR_RATE, "int32",
                                f"{self.spike_name}@virtualrig")
        info.desc().append_child_value("n_units", str(self.model.n_units))
        self._spike_out = pylsl.StreamOutlet(info, chunk_size=0, max_buffered=60)
        self._sync_out = pylsl.StreamOutlet(pylsl.StreamInfo(self.sync_name, LSL_MARKER_TYPE, 1,
                                                             pylsl.IRREGULAR_RATE, "string",
                                                             f"{self.sync_name}@virtualrig"))
        if self.monkey is not None:
            self._gaze_out = gaze_outlet(self.gaze_name, self.monkey.rate_hz)
        await self._server.start()
        topics = [STIM_TRIAL_TOPIC] + ([STIM_REWARD_TOPIC] if self.monkey is not None else [])
        self._sub = EventSubscriber(self.stim_events, [TrialEvent, RewardEvent], topics=topics, curve=self.stim_curve)
        self._tasks = [asyncio.create_task(self._listen(), name="rig-listen"),
                       asyncio.create_task(self._stream(), name="rig-stream")]
        if self.monkey is not None:
            self._tasks.append(asyncio.create_task(self._gaze(), name="rig-gaze"))
        log.info("virtual rig: %d units, rpc %s%s, trials from %s%s, LSL %r/%r%s", self.model.n_units, self.endpoint,
                 " (CURVE)" if self.curve else "", self.stim_events, " (CURVE)" if self.stim_curve else "",
                 self.spike_name, self.sync_name, f", gaze {self.gaze_name!r}" if self.monkey is not None else "")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, RequestTimeout):
                await t
        self._tasks = []
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        await self._server.stop()
        self._spike_out = self._sync_out = self._gaze_out = None  # outlets close when released

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._tasks)
