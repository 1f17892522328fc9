"""The stimulus server: the ``wire.stim`` commands over ``wire.transport``, trial events on a PUB stream.

The presenter (and with it the GL context) lives on ONE dedicated display thread (a one-worker
executor): opening the window, uploading textures and the blocking frame loop all run there. The
asyncio loop only validates commands, keeps the state machine and relays control to the frame loop
through :class:`~stimserver.frameloop.BlockControl`, which the loop reads before every flip, so
pause and abort act at the next refresh while the RPC socket keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stimserver.cache import ImageCache, images_of
from stimserver.fixation import FixationBlock
from stimserver.frameloop import BlockControl, run_block
from stimserver.gaze import GazeSource
from stimserver.markers import MarkerOutlet
from stimserver.presenter import Presenter
from stimserver.reward import RewardLine
from wire.base import Message
from wire.behavior import GiveReward, RewardEvent
from wire.errors import Busy, DisplayError, InvalidRequest, LimitExceeded, NotFound, StateError, StimError
from wire.security import CurveServer, check_bind
from wire.stim import (
    AbortBlock,
    BlockResult,
    CheckImages,
    GetStimStatus,
    ImagesLoaded,
    ImagesMissing,
    LoadImages,
    PauseBlock,
    PresentBlock,
    ResumeBlock,
    SetFixation,
    StimState,
    StimStatus,
    TrialEvent,
)
from wire.transport import EventPublisher, RpcServer

log = logging.getLogger(__name__)

#: the explicit state machine: (state, action) -> next state
TRANSITIONS: dict[tuple[StimState, str], StimState] = {
    (StimState.IDLE, "present"): StimState.RUNNING,
    (StimState.RUNNING, "pause"): StimState.PAUSED,
    (StimState.PAUSED, "resume"): StimState.RUNNING,
    (StimState.RUNNING, "abort"): StimState.RUNNING,
    (StimState.PAUSED, "abort"): StimState.PAUSED,
    (StimState.RUNNING, "end"): StimState.IDLE,
    (StimState.PAUSED, "end"): StimState.IDLE,
}


class StimServer:
    """``async with StimServer(presenter, rpc_endpoint, events_endpoint) as srv:`` serves until exit.

    ``curve`` makes both sockets CURVE servers (only the allowed clients get replies or events);
    without it, endpoints other machines can reach are refused unless ``insecure`` (see
    :func:`wire.security.check_bind`)."""

    def __init__(self, presenter: Presenter, rpc_endpoint: str = "tcp://127.0.0.1:0",
                 events_endpoint: str = "tcp://127.0.0.1:0", *, name: str = "stimserver",
                 max_images: int | None = None, curve: CurveServer | None = None, insecure: bool = False,
                 markers: MarkerOutlet | None = None, gaze: GazeSource | None = None,
                 reward: RewardLine | None = None) -> None:
        self.presenter = presenter
        self.curve = curve
        self.insecure = insecure
        self.cache = ImageCache(max_images)
        self.state = StimState.IDLE
        self.display_error: str | None = None
        self._rpc_endpoint = rpc_endpoint
        self._events_endpoint = events_endpoint
        self._name = name
        self._gl = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stim-display")
        self._rpc: RpcServer | None = None
        self._pub: EventPublisher | None = None
        self._events: asyncio.Queue[Message] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        self._control: BlockControl | None = None
        self._block_id: str | None = None
        self._block_done: asyncio.Future[Any] | None = None
        self._block_images: set[str] = set()
        self._fixating = False
        #: LSL Markers outlet of trial onsets (stimserver.markers), pushed by the publisher task
        self.markers = markers
        #: the eye tracker (awake blocks: PresentBlock.behavior) and the reward output
        self.gaze = gaze
        self.reward = reward
        self.rewards_given = 0
        self._gaze_open = False

    # --- lifecycle ---------------------------------------------------------------------
    @property
    def rpc_endpoint(self) -> str:
        return self._rpc.endpoint if self._rpc is not None else self._rpc_endpoint

    @property
    def events_endpoint(self) -> str:
        return self._pub.endpoint if self._pub is not None else self._events_endpoint

    async def start(self) -> None:
        for endpoint in (self._rpc_endpoint, self._events_endpoint):  # before anything is bound
            check_bind(endpoint, self.curve, self.insecure, server=self._name)
        self._pub = EventPublisher(self._events_endpoint, name=f"{self._name}-events", curve=self.curve)
        self._publisher = asyncio.create_task(self._publish_loop(), name=f"{self._name}-publisher")
        if self.reward is not None:  # a reward line that cannot open stops the start
            await asyncio.to_thread(self.reward.open)
        with contextlib.suppress(DisplayError):  # keep serving: status tells why, present retries
            await self._open_display()
        handlers: dict[type[Message], Any] = {
            LoadImages: self.load, CheckImages: self.check, PresentBlock: self.present, PauseBlock: self.pause,
            ResumeBlock: self.resume, AbortBlock: self.abort, SetFixation: self.set_fixation,
            GetStimStatus: self.status, GiveReward: self.give_reward,
        }
        self._rpc = RpcServer(self._rpc_endpoint, handlers, name=self._name, curve=self.curve)
        await self._rpc.start()

    async def stop(self) -> None:
        if self._control is not None:
            self._control.request_abort()
        if self._rpc is not None:
            await self._rpc.stop()
        if self._block_done is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._block_done)
        with contextlib.suppress(Exception):
            await self._on_display(self.presenter.close)
        self._gl.shutdown(wait=True)
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        if self._pub is not None:
            self._pub.close()
        if self.markers is not None:
            self.markers.close()
        for part in (self.gaze, self.reward):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.close()

    async def __aenter__(self) -> StimServer:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> None:
        """Return once ``n`` subscribers are connected to the event stream."""
        assert self._pub is not None, "server not started"
        await self._pub.wait_for_subscribers(n, timeout)

    async def _on_display(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._gl, fn, *args)

    async def _open_display(self) -> None:
        """Open the presenter if it is not; remember (and raise) a DisplayError."""
        if self.presenter.is_open:
            return
        try:
            await self._on_display(self.presenter.open)
        except DisplayError as exc:
            self.display_error = str(exc)
            log.error("%s", exc)
            raise
        self.display_error = None

    async def _publish_loop(self) -> None:
        assert self._pub is not None
        while True:
            event = await self._events.get()
            try:
                if self.markers is not None and isinstance(event, TrialEvent):  # off the display thread
                    try:
                        self.markers.push(event)
                    except Exception:
                        log.exception("could not push the LSL marker of %s", event.trial_id)
                if isinstance(event, RewardEvent):
                    self.rewards_given += 1
                await self._pub.publish(event)
            except Exception:
                log.exception("could not publish %s", getattr(event, "kind", event))
            finally:
                self._events.task_done()

    def _transition(self, action: str) -> None:
        nxt = TRANSITIONS.get((self.state, action))
        if nxt is None:
            raise StateError(f"cannot {action} while {self.state.value}")
        self.state = nxt

    # --- handlers ----------------------------------------------------------------------
    async def load(self, cmd: LoadImages) -> ImagesLoaded:
        images = images_of(cmd)
        bound = self.cache.max_images
        if bound is not None and len(set(cmd.image_ids)) > bound:
            raise InvalidRequest(f"{len(set(cmd.image_ids))} images exceed the cache bound of {bound}")
        already = sum(1 for i in dict.fromkeys(cmd.image_ids) if i in self.cache)
        new = await asyncio.to_thread(self.cache.verify_new, cmd.image_ids, images)
        added = self.cache.add(new)
        self.cache.touch(cmd.image_ids)
        self.cache.evict(protect=self._block_images)
        if self.state is StimState.IDLE and self.presenter.is_open:
            await self._on_display(self._prepare, [k for k in new if k in self.cache])
        return ImagesLoaded(added=added, already_cached=already, cached_total=len(self.cache))

    async def check(self, cmd: CheckImages) -> ImagesMissing:
        return ImagesMissing(missing=self.cache.missing(cmd.image_ids), cached_total=len(self.cache))

    def _prepare(self, ids: list[str]) -> None:
        """On the display thread: free textures of evicted images, make those of ``ids``."""
        cached = self.cache.ids()
        for key in self.presenter.prepared() - cached:
            self.presenter.release(key)
        for key in ids:
            if not self.presenter.is_prepared(key):
                self.presenter.prepare(key, self.cache.get(key))

    #: most trials one block may show (repeats expanded): its reply lists every one of them
    max_block_trials: int = 100_000
    #: longest block, estimated from its frames at the measured refresh rate (60 Hz until measured)
    max_block_seconds: float = 4 * 3600.0

    def _check_block_size(self, cmd: PresentBlock) -> None:
        """Refuse a block whose size or duration estimate exceeds the limits (LimitExceeded)."""
        trials = sum(t.repeats for t in cmd.trials)
        if trials > self.max_block_trials:
            raise LimitExceeded(f"block {cmd.block_id!r} has {trials:,} trials (repeats expanded), more than this "
                                f"server's limit of {self.max_block_trials:,} (StimServer.max_block_trials)")
        frames = sum((t.on_frames + t.off_frames) * t.repeats for t in cmd.trials)
        period = self.presenter.refresh_period or 1 / 60
        if frames * period > self.max_block_seconds:
            raise LimitExceeded(f"block {cmd.block_id!r} lasts {frames:,} frames (about {frames * period:,.0f} s), "
                                f"longer than this server's limit of {self.max_block_seconds:,.0f} s "
                                f"(StimServer.max_block_seconds)")

    async def present(self, cmd: PresentBlock) -> BlockResult:
        if self.state is not StimState.IDLE:
            raise Busy(f"block {self._block_id!r} is {self.state.value}; abort it or wait for its end")
        self._check_block_size(cmd)
        missing = self.cache.missing([t.image_id for t in cmd.trials])
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise NotFound(f"unknown image id(s) {missing[:3]}{more}: send them with stim.load first")
        self._transition("present")
        loop = asyncio.get_running_loop()
        control = BlockControl()
        control.fixating = self._fixating
        self._control, self._block_id = control, cmd.block_id
        self._block_done = loop.create_future()
        self._block_images = {t.image_id for t in cmd.trials}
        self.cache.touch(self._block_images)
        try:
            await self._open_display()
            await self._on_display(self._prepare, [t.image_id for t in cmd.trials])

            def emit(event: Message) -> None:
                loop.call_soon_threadsafe(self._events.put_nowait, event)

            try:
                if cmd.behavior is not None:
                    if self.gaze is None:
                        raise InvalidRequest(f"block {cmd.block_id!r} has a fixation rule, but this stimserver "
                                             "reads no gaze: start it with --gaze (lsl, iohub, ...)")
                    if not self._gaze_open:  # opened at the first awake block: the tracker may start after us
                        await self._on_display(self.gaze.open)
                        self._gaze_open = True
                    fixation = FixationBlock(self.presenter, cmd, control, emit, self.gaze, self.reward)
                    result: BlockResult = await self._on_display(fixation.run_block)
                else:
                    result = await self._on_display(run_block, self.presenter, cmd, control, emit)
            except (DisplayError, InvalidRequest):
                raise
            except Exception as exc:
                raise StimError(f"block {cmd.block_id!r} failed: {type(exc).__name__}: {exc}") from exc
            await self._events.join()  # every TrialEvent is out before the reply
            return result
        finally:
            self._transition("end")
            self._control, self._block_id = None, None
            self._block_images = set()
            self._block_done.set_result(None)

    async def pause(self, _cmd: PauseBlock) -> StimStatus:
        """Pause at the next frame; answer once the frame loop is blank and waiting (or the block ended)."""
        self._transition("pause")
        assert self._control is not None and self._block_done is not None
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not waiting.done():
                waiting.set_result(None)

        def paused() -> None:
            loop.call_soon_threadsafe(settle)

        self._control.on_paused = paused
        self._control.request_pause()
        await asyncio.wait([waiting, self._block_done], return_when=asyncio.FIRST_COMPLETED)
        return self._status()

    async def resume(self, _cmd: ResumeBlock) -> StimStatus:
        self._transition("resume")
        assert self._control is not None
        self._control.request_resume()
        return self._status()

    async def abort(self, _cmd: AbortBlock) -> StimStatus:
        """Stop the block at the next frame; answer once it has stopped (the block's reply lists its trials)."""
        self._transition("abort")
        assert self._control is not None and self._block_done is not None
        self._control.request_abort()
        await asyncio.shield(self._block_done)
        return self._status()

    async def set_fixation(self, cmd: SetFixation) -> StimStatus:
        self._fixating = cmd.fixating
        if self._control is not None:
            self._control.set_fixation(cmd.fixating)
        return self._status()

    async def status(self, _cmd: GetStimStatus) -> StimStatus:
        return self._status()

    async def give_reward(self, cmd: GiveReward) -> StimStatus:
        """A manual reward from the operator: one pulse now, published like an earned one."""
        if self.reward is None:
            raise InvalidRequest("this stimserver has no reward line (start it with --reward)")
        duration = (cmd.duration_ms or 100.0) / 1000.0
        start = await asyncio.to_thread(self.reward.pulse, duration)
        self._events.put_nowait(RewardEvent(block_id=self._block_id, time=start, duration_s=duration, manual=True,
                                            line=self.reward.name))
        log.info("manual reward of %.0f ms%s", 1000 * duration, f" from {cmd.operator}" if cmd.operator else "")
        await self._events.join()
        return self._status()

    def _status(self) -> StimStatus:
        c = self._control
        return StimStatus(
            state=self.state, block_id=self._block_id, trials_done=c.trials_done if c else 0,
            trials_total=c.trials_total if c else 0, fixating=self._fixating, images_cached=len(self.cache),
            presenter=self.presenter.name, max_images=self.cache.max_images, display_open=self.presenter.is_open, display_error=self.display_error,
            refresh_period=self.presenter.refresh_period, gaze=self.gaze.name if self.gaze is not None else None,
            reward_line=self.reward.name if self.reward is not None else None, rewards=self.rewards_given,
        )

    async def serve_forever(self) -> None:
        assert self._rpc is not None
        await self._rpc.serve_forever()

