"""What the dashboard shows, kept as named sections built from bus messages and session documents.

Each section is plain JSON data. A change marks its section for every watcher (one per open
page); the page is sent only the sections that changed since it last heard (``controller.dashboard.app``).
Everything here runs on the event loop: the followers hand their messages and documents in.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from controller.dashboard.views import BlockTrack, ImageBook
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)
from wire.topics import (
    BehaviorStatus,
    BlockStatus,
    BusMessage,
    ModelProgress,
    SessionEvent,
    SessionStatus,
    TrialStatus,
)

SECTIONS = ("session", "block", "trials", "counts", "model", "events", "images", "analyses", "behavior")
#: events shown at most (the newest)
MAX_EVENTS = 60
_STOP_STATES = {"success": "done", "abort": "aborted", "fail": "failed"}


class Watcher:
    """One page's view of the state: which sections changed since it was last sent."""

    def __init__(self) -> None:
        self.pending: set[str] = set(SECTIONS)
        self.wake = asyncio.Event()
        self.wake.set()

    def touch(self, section: str) -> None:
        self.pending.add(section)
        self.wake.set()

    def take(self) -> set[str]:
        out, self.pending = self.pending, set()
        self.wake.clear()
        return out


class DashboardState:
    """The dashboard's data. ``controls``: whether the page offers pause/resume/abort."""

    def __init__(self, *, controls: bool, heat_trials: int = 40, quiet_after: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.quiet_after = quiet_after
        self.watchers: set[Watcher] = set()
        self.session: dict[str, Any] = {"state": "unknown", "rig": None, "session_id": None, "protocol": None,
                                        "step_index": None, "step_kind": None, "message": "", "exit": None,
                                        "reason": "", "bus": "none", "file": None, "live": False,
                                        "controls": controls}
        self.track = BlockTrack(heat_trials)
        self.book = ImageBook()
        self.model: dict[str, Any] = {"progress": None, "epochs": [], "versions": []}
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.analyses: list[dict[str, Any]] = []
        #: an awake animal's counters and last gaze (``behavior`` status on the bus); inactive until one comes
        self.behavior: dict[str, Any] = {"active": False}
        self._bus_status = False
        self._steps_done = 0

    # -- watchers --------------------------------------------------------------------------------
    def watch(self) -> Watcher:
        w = Watcher()
        self.watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        self.watchers.discard(w)

    def touch(self, *sections: str) -> None:
        for w in self.watchers:
            for s in sections:
                w.touch(s)

    def section(self, name: str) -> Any:
        """The JSON data of one section."""
        now = self.clock()
        if name == "session":
            return self.session
        if name == "block":
            return self.track.block_view(now)
        if name == "trials":
            return self.track.trials_view(now, self.quiet_after, self.session["state"])
        if name == "counts":
            return self.track.counts_view()
        if name == "model":
            return self.model
        if name == "events":
            return list(self.events)
        if name == "images":
            return self.book.view(self.track.current_block)
        if name == "analyses":
            return self.analyses
        if name == "behavior":
            return self.behavior
        raise KeyError(name)

    def snapshot(self, names: set[str] | None = None) -> dict[str, Any]:
        return {n: self.section(n) for n in SECTIONS if names is None or n in names}

    def set_link(self, **fields: Any) -> None:
        """Note how the dashboard is connected (``bus``: none, connecting, connected, lost; ``file``, ``live``)."""
        self.session.update(fields)
        self.touch("session")

    # -- the bus -----------------------------------------------------------------------------------
    def on_bus(self, msg: BusMessage) -> None:
        if isinstance(msg, SessionStatus):
            self._bus_status = True
            self.session.update(state=msg.state, rig=msg.rig, session_id=msg.session_id, protocol=msg.protocol,
                                step_index=msg.step_index, step_kind=msg.step_kind, message=msg.message,
                                status_time=msg.time)
            self.touch("session", "trials")
        elif isinstance(msg, BlockStatus):
            self.track.on_block_status(msg)
            self.touch("block", "images", "trials")
        elif isinstance(msg, TrialStatus):
            self.track.on_trial(msg.block_id, msg.index, msg.time, bus_time=msg.time)
            self.touch("block", "trials", "images")
        elif isinstance(msg, SessionEvent):
            self._event(msg.time, msg.level, msg.event, msg.message)
        elif isinstance(msg, ModelProgress):
            self._progress(msg)
        elif isinstance(msg, BehaviorStatus):
            self.behavior = {"active": True, **msg.model_dump(mode="json", exclude={"kind"})}
            self.touch("behavior")

    def _progress(self, msg: ModelProgress) -> None:
        data = msg.model_dump(mode="json", exclude={"kind"})
        previous = self.model["progress"]
        if previous is None or previous.get("model_version") or (
                msg.epoch is not None and (previous.get("epoch") or 0) > msg.epoch):
            self.model["epochs"] = []  # a new job
        self.model["progress"] = data
        if msg.epoch is not None and msg.model_version is None:
            self.model["epochs"].append({"epoch": msg.epoch, "val_r": msg.val_r, "loss": msg.loss})
        if msg.model_version:
            self._version(msg.model_version, msg.time, msg.val_r, msg.scope, msg.session_id)
        self.touch("model")

    def _version(self, version: str, when: float, val_r: float | None, scope: str | None,
                 session_id: str | None) -> None:
        for v in self.model["versions"]:
            if v["version"] == version:
                v["val_r"] = v["val_r"] if v["val_r"] is not None else val_r
                return
        self.model["versions"].append({"version": version, "time": when, "val_r": val_r, "scope": scope,
                                       "session_id": session_id})

    def _event(self, when: float, level: str, event: str, message: str) -> None:
        """Add an event unless it is one already shown (the bus and the file both report each one)."""
        for e in self.events:
            if e["event"] == event and e["message"] == message and abs(e["time"] - when) < 10.0:
                return
        self.events.append({"time": when, "level": level, "event": event, "message": message})
        self.touch("events")

    # -- the session file --------------------------------------------------------------------------
    def on_document(self, pos: int, doc: Any) -> None:
        """Take one document of the session file (``pos``: its position in the file)."""
        if isinstance(doc, StartDoc):
            self.session.update(session_id=doc.session_id, rig=doc.rig,
                                protocol=self.session["protocol"] or doc.protocol.get("protocol"))
            if not self._bus_status:
                self.session["state"] = "running"
            self.touch("session")
        elif isinstance(doc, BlockDoc):
            self.track.on_block_doc(doc)
            self.book.on_block(doc)
            self.touch("block", "images")
        elif isinstance(doc, ImageDoc):
            self.book.on_image(doc.image_id, pos)
        elif isinstance(doc, PickDoc):
            self.book.on_pick(doc)
        elif isinstance(doc, TrialDoc):
            self.track.on_trial(doc.block_id, doc.index, doc.time, trial_id=doc.trial_id)
            self.touch("block", "trials", "images")
        elif isinstance(doc, ResponseDoc):
            self.track.on_response(doc)
            self.touch("counts", "trials")
        elif isinstance(doc, ModelVersionDoc):
            self._version(doc.version, doc.time, doc.metrics.get("val_r"), doc.details.get("scope"), None)
            self.touch("model")
        elif isinstance(doc, StepDoc):
            self._step(doc)
        elif isinstance(doc, EventDoc):
            self._file_event(doc)
        elif isinstance(doc, StopDoc):
            self.session.update(state=_STOP_STATES[doc.exit_status], exit=doc.exit_status, reason=doc.reason)
            self.touch("session", "trials")

    def _step(self, doc: StepDoc) -> None:
        self._steps_done = max(self._steps_done, doc.index + 1)
        if not self._bus_status:
            self.session.update(step_index=doc.index, step_kind=doc.step.get("kind"))
            self.touch("session")
        if doc.step.get("kind") == "analyse" and doc.result.get("kind") == "analysis_result":
            r = doc.result
            self.analyses.append({"name": r.get("name"), "analysis": r.get("analysis"), "summary": r.get("summary"),
                                  "time": doc.time, "comparisons": [
                                      {k: c.get(k) for k in ("condition", "baseline", "n_significant", "neurons",
                                                             "median_percent_change", "n_trials")}
                                      | {"percent_change": c.get("percent_change"), "p_values": c.get("p_values")}
                                      for c in r.get("comparisons", [])]})
            self.touch("analyses")

    def _file_event(self, doc: EventDoc) -> None:
        if not self._bus_status and doc.what in ("paused", "resumed"):
            self.session["state"] = "paused" if doc.what == "paused" else "running"
            self.touch("session")
        warn = doc.what in ("fallback", "stim_unreachable", "acquisition_failed", "generate_failed",
                            "retrain_skipped", "model_unreachable", "match_failed", "ingest_deferred",
                            "animal_idle", "reward_unconfirmed")
        self._event(doc.time, "warning" if warn else "info", doc.what, doc.message)
