"""The schedule's state file, validated like every input before ``--resume`` trusts it.

The file (``<out>/<schedule id>.schedule.json``) is written by the schedule runner, but a resume reads
whatever is there: a crafted or damaged file must give one typed error (:class:`~wire.errors.StoreError`)
naming the file and the field, never a traceback, and nothing in it may steer a path outside ``--out``.
So the file is bounded in size and depth, each record has a type, every session id must be the one the
runner itself would give (``<schedule id>-<stage>-<k>``) and every session file must be that id's file
in the output folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wire.errors import StoreError

#: what a schedule, stage or session id may be: it names files in the output folder
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
#: the largest state file read back (a real one is a few kB per session)
MAX_STATE_BYTES = 8 * 1024 * 1024


def check_id(value: str, what: str) -> str:
    """``value`` when it can name a file in the output folder (no separators, no '..'); else StoreError."""
    if not ID_PATTERN.fullmatch(value) or ".." in value:
        raise StoreError(f"{what} {value!r}: use letters, digits and _.+- (at most 200, not starting with "
                         "a dot and without '..'): it names files in the output folder")
    return value


class _Rec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # extras: notes, after_session's dict


class SessionRecord(_Rec):
    stage: str
    k: int = Field(ge=1, le=100_000)
    session_id: str
    exit_status: Literal["success", "abort", "fail"] | None = None
    file: str | None = None
    reason: str = ""


class PauseRecord(_Rec):
    action: Literal["waiting", "resume", "abort"]


class StageState(_Rec):
    pause: PauseRecord | None = None
    sessions: list[SessionRecord] = Field(default_factory=list, max_length=100_000)
    done: bool = False
    met: bool | None = None
    qualified: list[int] | None = None


class ScheduleState(_Rec):
    schedule_id: str
    schedule: dict[str, Any]
    status: str = "running"
    reason: str = ""
    qualified: list[int] | None = None
    stages: dict[str, StageState]


def load_state(path: Path, schedule_dump: dict[str, Any], schedule_id: str) -> dict[str, Any]:
    """The state of ``path`` as the runner's dict, checked against the schedule and the output folder."""
    try:
        raw = path.read_bytes()[: MAX_STATE_BYTES + 1]
    except OSError as exc:
        raise StoreError(f"cannot read the schedule state {path}: {exc}") from exc
    if len(raw) > MAX_STATE_BYTES:
        raise StoreError(f"{path}: larger than {MAX_STATE_BYTES // 2**20} MiB; not a schedule state file")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than any real state
        raise StoreError(f"{path}: not a schedule state file (JSON: {type(exc).__name__}: {str(exc)[:120]})") from None
    try:
        state = ScheduleState.model_validate(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        where = ".".join(map(str, e["loc"])) or "(top)"
        raise StoreError(f"{path}: not a valid schedule state: {where}: {e['msg']}") from None
    except RecursionError:
        raise StoreError(f"{path}: not a schedule state file (nested too deeply)") from None
    if state.schedule_id != schedule_id:
        raise StoreError(f"{path} is the state of schedule {state.schedule_id!r}, not {schedule_id!r}")
    if state.schedule != schedule_dump:
        raise StoreError(f"{path} records a different schedule: resume needs the same file and --set values")
    out = path.parent.resolve()
    for name, st in state.stages.items():
        for n, rec in enumerate(st.sessions, start=1):
            expected = f"{schedule_id}-{name}-{n}"
            if rec.stage != name or rec.k != n or rec.session_id != expected:
                raise StoreError(f"{path}: stage {name!r} session {n} is recorded as {rec.session_id!r} "
                                 f"(stage {rec.stage!r}, k {rec.k}); the runner names it {expected!r}")
            if rec.file is not None and Path(rec.file).resolve() != out / f"{expected}.h5":
                raise StoreError(f"{path}: session {expected} points at {rec.file!r}, outside its own file "
                                 f"{out / (expected + '.h5')}")
    return state.model_dump(mode="json", exclude_unset=False)
