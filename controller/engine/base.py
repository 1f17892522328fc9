"""What every part of the engine shares: its configuration, its records of blocks and trials, the
replay seam, and :class:`EngineBase`, the state the parts read and write and the helpers they all
use (status to listeners, event documents, the abort check, derived seeds).

:class:`~controller.engine.core.Engine` sets every attribute declared here in its constructor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from controller.acquisition.base import AcquisitionSource
from controller.acquisition.binning import Binner, ClosedTrial
from controller.images import ImageLibrary
from controller.links import StimLink
from controller.state import BlockState, SessionState, StateMachine
from controller.store import SessionWriter
from protocols.steps import GenerateImages, OperatorResult, PresentBlock
from wire.behavior import FixationRule
from wire.documents import BlockDoc, EventDoc, ResponseDoc, StepDoc
from wire.errors import Aborted, AcquisitionError
from wire.stim import FixationSpot, TrialEvent

if TYPE_CHECKING:
    from controller.engine.behavior import BehaviorTracker
    from controller.engine.modelsteps import Generated, ModelLink

log = logging.getLogger(__name__)

StatusListener = Callable[[str, dict[str, Any]], Awaitable[None] | None]
#: called with the ids and pixels of a block's images before it is shown
ImageListener = Callable[[list[str], list[np.ndarray]], Awaitable[None]]


# --- configuration and records --------------------------------------------------------------
@dataclass
class EngineConfig:
    session_id: str
    rig: str = "rig"
    subject: str = "unknown"
    seed: int = 0
    refresh_hz: float = 60.0
    stim_ping_interval: float = 1.0
    stim_dead_after: int = 3
    block_slack_s: float = 30.0
    #: awake animals: the trial state machine's rule and the fixation spot sent with every block
    #: (None: every trial counts, as with an anaesthetised animal or a virtual rig without gaze)
    behavior: FixationRule | None = None
    fixation_spot: FixationSpot | None = None
    #: awake animals: the "not working" warning (an ``animal_idle`` event) after this long without a
    #: completed sequence during a block, and whether it also pauses the session
    idle_warn_s: float = 30.0
    idle_pause: bool = False


@dataclass
class TrialRecord:
    trial_id: str
    block_id: str
    index: int
    image_id: str
    condition: str
    shown: bool = False
    counts: ResponseDoc | None = None
    sent_to_model: bool = False
    #: False for a showing that did not count (awake animals); such records are not in their block's trials
    valid: bool = True
    #: showings of this trial's image that did not count so far, and whether it was given up on
    invalid_shown: int = 0
    missing: bool = False


@dataclass
class BlockRecord:
    block_id: str
    step: PresentBlock
    trials: list[TrialRecord]
    conditions: dict[str, str]
    fallbacks: list[str]
    state: StateMachine[BlockState]
    dropped_frames: int = 0


class Recording(Protocol):
    """A stored session the engine replays (:class:`controller.replay.Recording`): its blocks are
    shown as recorded and its counts answer in place of an acquisition source."""

    def block(self, block_id: str) -> BlockDoc | None: ...

    def image(self, image_id: str) -> np.ndarray: ...

    def closed_trial(self, trial_id: str, ev: TrialEvent) -> ClosedTrial: ...

    def operator_answer(self, n: int) -> dict[str, Any] | None: ...


# --- the shared state -----------------------------------------------------------------------
class EngineBase:
    """The engine's state and the helpers every part uses; the parts are mixins of this class."""

    config: EngineConfig
    store: SessionWriter
    stim: StimLink
    source: AcquisitionSource
    binner: Binner
    images: ImageLibrary
    models: ModelLink
    #: replay: blocks as recorded, recorded counts instead of the acquisition stream
    recording: Recording | None
    #: every image of the session by id (shared: the model link reads it too)
    pixels: dict[str, np.ndarray]
    session: StateMachine[SessionState]
    blocks: dict[str, BlockRecord]
    trials: dict[str, TrialRecord]
    #: generate requests in flight or done, by request id, and the requests themselves
    generated: dict[str, asyncio.Task[Generated]]
    requests: dict[str, GenerateImages]
    #: the trials of each segment of a block sent to the stimserver, by segment id
    _segments: dict[str, list[TrialRecord]]
    #: invalid showings already recorded: (segment id, spec index, onset)
    _invalid_seen: set[tuple[str, int, float]]
    #: replay: operator pauses answered from the recording so far
    _operator_pauses: int
    #: awake animals: the running behaviour counters (the ``behavior`` status)
    behavior: BehaviorTracker
    #: manual rewards already recorded: (onset, duration), and a flag set at each one recorded
    _manual_seen: set[tuple[float, float]]
    _manual_recorded: asyncio.Event
    #: loop time of the last completed sequence (the idle warning's reference; None: none yet)
    _last_completed: float | None
    _recorded_steps: list[StepDoc]
    _step_index: int
    _counts_changed: asyncio.Event
    _resumed: asyncio.Event
    _abort: bool
    _abort_reason: str
    _acq_error: AcquisitionError | None
    _listeners: list[StatusListener]
    _image_listeners: list[ImageListener]
    _operator: asyncio.Future[OperatorResult] | None
    #: blocks whose ingest the modelserver did not answer (sent with the next ingest or retrain)
    _deferred: list[str]
    _deferred_reported: bool

    def _status(self, topic: str, payload: dict[str, Any]) -> None:
        payload = {"session_id": self.config.session_id, **payload}
        for listener in self._listeners:
            out = listener(topic, payload)
            if asyncio.iscoroutine(out):
                task = asyncio.ensure_future(out)
                task.add_done_callback(_log_failure)

    def _event(self, what: str, message: str, **details: Any) -> None:
        self.store.write(EventDoc(what=what, message=message, details=details))
        self._status("event", {"what": what, "message": message, **details})

    def _check_abort(self) -> None:
        if self._abort:
            raise Aborted(f"session aborted: {self._abort_reason}")

    def _seed(self, *parts: object) -> int:
        """A seed derived from the session seed and names (stable across runs, unlike hash())."""
        return _stable_seed(self.config.seed, *parts)


def _natural_key(unit: str) -> tuple[int, str]:
    """Unit "2" before unit "10"; named units after numbered ones (the modelserver's neuron order)."""
    return (int(unit), "") if unit.isdigit() else (1 << 62, unit)


def _stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=4).digest(), "little")


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("status listener failed: %s", task.exception())
