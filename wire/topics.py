"""MQTT topic names and the payloads of every bus message (status, events, operator commands).

The MQTT bus is cortexloop's *human-facing* channel: dashboards and operators watch a rig's
session and may pause, resume or abort it. All topics of one rig live under
``cortexloop/<rig>/``::

    cortexloop/<rig>/session/status    SessionStatus  (retained: the last one is the rig's state)
    cortexloop/<rig>/session/block     BlockStatus    (a block started, progressed, finished)
    cortexloop/<rig>/session/trial     TrialStatus    (one per shown trial)
    cortexloop/<rig>/session/event     SessionEvent   (notes: command accepted/rejected, errors)
    cortexloop/<rig>/session/behavior  BehaviorStatus (retained: an awake animal's running counters and gaze)
    cortexloop/<rig>/model/progress    ModelProgress  (retained: the latest retraining, synthesis, ... progress)
    cortexloop/<rig>/cmd/pause         PauseCommand   (operator -> controller)
    cortexloop/<rig>/cmd/resume        ResumeCommand  (operator -> controller)
    cortexloop/<rig>/cmd/abort         AbortCommand   (operator -> controller)
    cortexloop/<rig>/cmd/reward        RewardCommand  (operator -> controller: a manual reward)

Payloads are UTF-8 JSON of the pydantic models below (``kind`` names the model). Commands are
accepted only from authenticated clients: the broker refuses anonymous connections and its
ACL lets only operator accounts publish under ``cmd/`` (see ``docs/mqtt.md``).
"""

from __future__ import annotations

import json
import re
import time
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from wire.base import Message, new_uid
from wire.errors import DecodeError

ROOT = "cortexloop"
#: A rig name is one topic level: letters, digits, ``-``, ``_`` and ``.`` only.
RIG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

COMMAND_NAMES: tuple[str, ...] = ("pause", "resume", "abort", "reward")


def check_rig(rig: str) -> str:
    """``rig`` if it is a valid single topic level, else :class:`DecodeError`."""
    if not RIG_PATTERN.match(rig):
        raise DecodeError(f"invalid rig name {rig!r}: use letters, digits, '-', '_', '.' (max 64)")
    return rig


# --- payloads: controller -> world ---------------------------------------------------------
class BusMessage(Message):
    """A message on the MQTT bus; ``time`` is wall-clock seconds since the epoch."""

    time: float = Field(default_factory=time.time, description="wall-clock time when sent (s since epoch)")


class SessionStatus(BusMessage):
    """The rig's state; published retained, so a late subscriber sees the current one at once."""

    kind: Literal["bus.status"] = "bus.status"
    rig: str = Field(description="rig name")
    state: str = Field(description="session state (idle, running, paused, aborting, finished, failed)")
    session_id: str | None = Field(default=None, description="uid of the session, if one is open")
    protocol: str | None = Field(default=None, description="name of the protocol being run")
    step_index: int | None = Field(default=None, ge=0, description="index of the current protocol step")
    step_kind: str | None = Field(default=None, description="kind of the current protocol step")
    block_id: str | None = Field(default=None, description="block being presented, if any")
    message: str = Field(default="", description="free text for the operator")


class BlockStatus(BusMessage):
    kind: Literal["bus.block"] = "bus.block"
    block_id: str
    state: Literal["queued", "running", "completed", "aborted", "failed"]
    n_trials: int = Field(ge=0, description="trials in the block")
    done_trials: int = Field(default=0, ge=0, description="trials shown so far")
    image_source: str | None = Field(default=None, description="where the block's images came from")
    fallback_used: bool = Field(default=False, description="True when the fallback image source was used")


class TrialStatus(BusMessage):
    kind: Literal["bus.trial"] = "bus.trial"
    block_id: str
    index: int = Field(ge=0)
    image_id: str
    dropped_frames: int = Field(default=0, ge=0)
    condition: str | None = None


class SessionEvent(BusMessage):
    """A note worth an operator's attention (command accepted or rejected, error, warning)."""

    kind: Literal["bus.event"] = "bus.event"
    level: Literal["info", "warning", "error"] = "info"
    event: str = Field(description="short machine-readable name, e.g. 'command.rejected'")
    message: str = ""


class ModelProgress(BusMessage):
    """Progress of the modelserver job a session waits on (e.g. one per training epoch, then one
    with the new ``model_version``); published retained, so a late subscriber sees the latest."""

    kind: Literal["bus.model_progress"] = "bus.model_progress"
    task: str = Field(description="what the modelserver is doing: retrain, generate, match, ...")
    scope: Literal["block", "session"] | None = Field(default=None, description="retrain scope, if retraining")
    fraction: float = Field(ge=0.0, le=1.0, description="0..1 (1 once the job is done)")
    epoch: int | None = Field(default=None, ge=0, description="epochs finished so far")
    max_epochs: int | None = Field(default=None, ge=1, description="epochs at most (None: the modelserver's default)")
    val_r: float | None = Field(default=None, description="validation r of the latest epoch (done: the new version's)")
    loss: float | None = Field(default=None, description="training loss of the latest epoch")
    model_version: str | None = Field(default=None, description="the new model version; None until the job is done")
    session_id: str | None = Field(default=None, description="uid of the session waiting on the job")
    message: str = ""


class BehaviorCounters(BaseModel):
    """An awake animal's running counts over a session or one block (``controller.engine.behavior``)."""

    model_config = ConfigDict(extra="forbid")

    started: int = Field(default=0, ge=0, description="fixations acquired (sequences started)")
    completed: int = Field(default=0, ge=0, description="sequences completed (each earns a reward)")
    share_completed: float | None = Field(default=None, ge=0.0, le=1.0, description="completed / started "
                                          "(None before the first start)")
    breaks: int = Field(default=0, ge=0, description="breaks of fixation")
    no_fixation: int = Field(default=0, ge=0, description="failed acquisitions")
    rewards: int = Field(default=0, ge=0, description="rewards given (earned and manual)")
    manual_rewards: int = Field(default=0, ge=0, description="of which manual (the operator's)")
    invalid: int = Field(default=0, ge=0, description="trials that did not count")


class BehaviorStatus(BusMessage):
    """An awake session's behaviour: counters for the session and the current block, the last gaze
    sample the stimulus server judged, and the "not working" warning. Retained: a late dashboard sees
    the current counts at once."""

    kind: Literal["bus.behavior"] = "bus.behavior"
    session_id: str | None = Field(default=None, description="uid of the session")
    block_id: str | None = Field(default=None, description="the block the block counters are of")
    session: BehaviorCounters = Field(default_factory=BehaviorCounters, description="counts of the whole session")
    block: BehaviorCounters = Field(default_factory=BehaviorCounters, description="counts of the current block")
    gaze: tuple[float, float] | None = Field(default=None, description="last gaze sample that decided a "
                                             "transition (deg from the screen centre, x right, y up); None: no eye")
    gaze_time: float | None = Field(default=None, description="that sample's time (stim clock, s)")
    gaze_wall: float | None = Field(default=None, description="when the controller heard of it (s since the epoch)")
    last: str | None = Field(default=None, description="the last transition: acquired, break, no_fixation, completed")
    window_deg: float | None = Field(default=None, description="radius of the fixation window (deg)")
    centre: tuple[float, float] = Field(default=(0.0, 0.0), description="the fixation spot's position (deg)")
    idle: bool = Field(default=False, description="no sequence completed for idle_warn_s during a block")
    idle_s: float | None = Field(default=None, description="seconds without a completed sequence, when idle")
    warning: str = Field(default="", description="the not-working warning, when idle")


# --- payloads: operator -> controller --------------------------------------------------------
class Command(BusMessage):
    """Base of operator commands. ``command_id`` lets the operator match the controller's ack."""

    command_id: str = Field(default_factory=new_uid, description="unique id of this command")
    issued_by: str | None = Field(default=None, description="operator name (informational; auth is the broker's)")
    reason: str = Field(default="", max_length=1000, description="why (logged in the session)")


class PauseCommand(Command):
    kind: Literal["cmd.pause"] = "cmd.pause"
    when: Literal["after_trial", "after_block"] = Field(
        default="after_block", description="pause at the next trial boundary or at the end of the block")


class ResumeCommand(Command):
    kind: Literal["cmd.resume"] = "cmd.resume"


class AbortCommand(Command):
    kind: Literal["cmd.abort"] = "cmd.abort"
    when: Literal["now", "after_block"] = Field(
        default="now", description="stop at once (block marked aborted) or after the running block")


class RewardCommand(Command):
    """A manual reward: the controller asks the stimulus server for one pulse (``stim.give_reward``) and
    records it (a manual ``reward`` document and an ``operator`` event naming ``issued_by``)."""

    kind: Literal["cmd.reward"] = "cmd.reward"
    duration_ms: float | None = Field(default=None, gt=0, le=5000, description="pulse length (ms); None: the "
                                      "reward schedule's base length")


AnyCommandType = PauseCommand | ResumeCommand | AbortCommand | RewardCommand
AnyCommand = Annotated[AnyCommandType, Field(discriminator="kind")]
_COMMAND_ADAPTER: TypeAdapter[AnyCommandType] = TypeAdapter(AnyCommand)
COMMAND_CLASSES: dict[str, type[Command]] = {
    "pause": PauseCommand, "resume": ResumeCommand, "abort": AbortCommand, "reward": RewardCommand,
}


# --- topic names -------------------------------------------------------------------------------
class Topics:
    """Every topic of one rig. ``Topics("rig1").status == "cortexloop/rig1/session/status"``."""

    def __init__(self, rig: str) -> None:
        self.rig = check_rig(rig)
        base = f"{ROOT}/{rig}"
        self.base = base
        self.status = f"{base}/session/status"
        self.block = f"{base}/session/block"
        self.trial = f"{base}/session/trial"
        self.event = f"{base}/session/event"
        self.behavior = f"{base}/session/behavior"
        self.model_progress = f"{base}/model/progress"
        self.cmd_prefix = f"{base}/cmd"
        #: subscription filter for every command of this rig
        self.commands = f"{base}/cmd/+"
        #: subscription filter for everything the controller publishes
        self.all_status = f"{base}/session/#"

    def command(self, name: str) -> str:
        if name not in COMMAND_NAMES:
            raise DecodeError(f"unknown command {name!r}; known: {', '.join(COMMAND_NAMES)}")
        return f"{self.cmd_prefix}/{name}"

    def for_message(self, msg: BusMessage) -> str:
        """The topic a payload is published on."""
        if isinstance(msg, SessionStatus):
            return self.status
        if isinstance(msg, BlockStatus):
            return self.block
        if isinstance(msg, TrialStatus):
            return self.trial
        if isinstance(msg, SessionEvent):
            return self.event
        if isinstance(msg, BehaviorStatus):
            return self.behavior
        if isinstance(msg, ModelProgress):
            return self.model_progress
        if isinstance(msg, PauseCommand):
            return self.command("pause")
        if isinstance(msg, ResumeCommand):
            return self.command("resume")
        if isinstance(msg, AbortCommand):
            return self.command("abort")
        if isinstance(msg, RewardCommand):
            return self.command("reward")
        raise DecodeError(f"no topic for {type(msg).__name__}")

    def retained(self, msg: BusMessage) -> bool:
        """Whether a payload is published with the retain flag: the status, the model progress and the
        behaviour counters, whose latest message is the current state (a block, trial or event is one
        occurrence)."""
        return isinstance(msg, SessionStatus | ModelProgress | BehaviorStatus)


_STATUS_CLASSES: dict[str, type[BusMessage]] = {
    "session/status": SessionStatus,
    "session/block": BlockStatus,
    "session/trial": TrialStatus,
    "session/event": SessionEvent,
    "session/behavior": BehaviorStatus,
    "model/progress": ModelProgress,
}


def encode_payload(msg: BusMessage) -> bytes:
    return msg.model_dump_json().encode()


#: largest command payload decoded (a command is well under 2 KiB; its reason is at most 1000 characters)
MAX_COMMAND_BYTES = 16 * 1024
#: longest command_id / issued_by accepted (both are echoed into the session's events)
MAX_COMMAND_ID_CHARS = 200


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _validation_summary(exc: ValidationError) -> str:
    """The first few problems as ``loc: message`` (never the input, which may be huge or deep)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(str(x) for x in e.get('loc', ())) or '<payload>'}: {e.get('msg', 'invalid')}"
             for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def decode_command(topic: str, payload: bytes | bytearray | memoryview | str | None,
                   rig: str) -> AnyCommandType:
    """Validate a command: the topic must be this rig's ``cmd/<name>`` and the payload that command.

    An empty payload is the command with default fields. Any other payload must be at most
    :data:`MAX_COMMAND_BYTES` of UTF-8 encoded, standard JSON (no NaN/Infinity) holding one
    object. Raises :class:`DecodeError` naming the problem (bad topic, too large, not UTF-8, bad
    JSON, nested too deeply, wrong kind, invalid field) for any input at all, and nothing else.
    """
    prefix = f"{ROOT}/{check_rig(rig)}/cmd/"
    if not isinstance(topic, str) or not topic.startswith(prefix):
        shown = topic[:200] if isinstance(topic, str) else type(topic).__name__
        raise DecodeError(f"{shown!r} is not a command topic of rig {rig!r}")
    name = topic[len(prefix):]
    cls = COMMAND_CLASSES.get(name)
    if cls is None:
        raise DecodeError(f"unknown command {name[:100]!r} on {topic[:200]!r}; known: {', '.join(COMMAND_NAMES)}")
    if payload is None:
        raw = b""
    elif isinstance(payload, str):
        try:
            raw = payload.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DecodeError(f"invalid {name} command: not UTF-8 text ({exc.reason})") from exc
    elif isinstance(payload, bytes | bytearray | memoryview):
        raw = bytes(payload)
    else:
        raise DecodeError(f"invalid {name} command: a payload is bytes, not {type(payload).__name__}")
    if len(raw) > MAX_COMMAND_BYTES:
        raise DecodeError(f"invalid {name} command: {len(raw):,} bytes is more than the limit of "
                          f"{MAX_COMMAND_BYTES:,}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"invalid {name} command: not UTF-8 (byte {exc.start}: {exc.reason})") from exc
    try:
        data = json.loads(text, parse_constant=_reject_constant) if text.strip() else {}
    except RecursionError as exc:
        raise DecodeError(f"invalid {name} command: JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of more than 4300 digits
        raise DecodeError(f"invalid {name} command: not JSON ({str(exc)[:200]})") from exc
    if not isinstance(data, dict):
        raise DecodeError(f"invalid {name} command: expected a JSON object, got {type(data).__name__}")
    try:
        cmd = _COMMAND_ADAPTER.validate_python(data) if "kind" in data else cls.model_validate(data)
    except ValidationError as exc:
        raise DecodeError(f"invalid {name} command: {_validation_summary(exc)}") from exc
    except RecursionError as exc:  # pragma: no cover - pydantic guards its own recursion
        raise DecodeError(f"invalid {name} command: nested too deeply") from exc
    if not isinstance(cmd, cls):
        raise DecodeError(f"payload {type(cmd).__name__} does not match topic {topic!r}")
    for field in ("command_id", "issued_by"):
        value = getattr(cmd, field)
        if value is not None and len(value) > MAX_COMMAND_ID_CHARS:
            raise DecodeError(f"invalid {name} command: {field} is longer than {MAX_COMMAND_ID_CHARS} characters")
    assert isinstance(cmd, PauseCommand | ResumeCommand | AbortCommand | RewardCommand)
    return cmd


def decode_status(topic: str, payload: bytes | str, rig: str) -> BusMessage:
    """Validate a status/event payload published by the controller of ``rig``."""
    prefix = f"{ROOT}/{check_rig(rig)}/"
    cls = _STATUS_CLASSES.get(topic[len(prefix):]) if topic.startswith(prefix) else None
    if cls is None:
        raise DecodeError(f"{topic!r} is not a status topic of rig {rig!r}")
    try:
        return cls.model_validate_json(payload)
    except ValidationError as exc:
        raise DecodeError(f"invalid payload on {topic!r}: {exc.errors(include_url=False)}") from exc
