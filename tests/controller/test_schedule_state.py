"""``--resume`` reads the schedule state file like any input from a user: crafted files give one typed
error and never move a session file outside ``--out``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.schedule_state import check_id, load_state
from wire.errors import StoreError

SCHEDULE = {"protocol": "schedule", "stages": [{"name": "sysid"}]}


def good(out: Path) -> dict[str, Any]:
    return {"schedule_id": "day1", "schedule": SCHEDULE, "status": "fail", "reason": "", "qualified": None,
            "stages": {"sysid": {"pause": None, "done": False, "met": None, "qualified": None, "sessions": [
                {"stage": "sysid", "k": 1, "session_id": "day1-sysid-1", "exit_status": None,
                 "file": str(out / "day1-sysid-1.h5"), "started": 1.0}]}}}


def write(tmp_path: Path, state: object) -> Path:
    path = tmp_path / "day1.schedule.json"
    path.write_text(state if isinstance(state, str) else json.dumps(state))
    return path


def test_a_state_written_by_the_runner_loads(tmp_path: Path) -> None:
    state = load_state(write(tmp_path, good(tmp_path)), SCHEDULE, "day1")
    assert state["stages"]["sysid"]["sessions"][0]["started"] == 1.0  # the runner's own extras are kept


@pytest.mark.parametrize("attack", [
    {"session_id": "../../x"},  # the finding: --resume wrote a session file outside --out
    {"session_id": "day1-sysid-2"},
    {"file": "/etc/passwd"},
    {"file": "../day1-sysid-1.h5"},
    {"k": 0},
    {"k": "1"},
    {"stage": "other"},
    {"exit_status": "pwned"},
])
def test_crafted_session_records_are_refused(tmp_path: Path, attack: dict[str, Any]) -> None:
    state = good(tmp_path)
    state["stages"]["sysid"]["sessions"][0].update(attack)
    with pytest.raises(StoreError, match=r"day1\.schedule\.json"):
        load_state(write(tmp_path, state), SCHEDULE, "day1")


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # RecursionError before
    '{"stages": 1}',  # TypeError before
    "{}",  # KeyError before
    "null",
    "not json",
    '{"schedule_id": "day1", "schedule": {}, "stages": {"sysid": {"sessions": [{"k": 1}]}}}',
])
def test_damaged_files_are_one_typed_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(StoreError):
        load_state(write(tmp_path, text), SCHEDULE, "day1")


def test_another_schedule_or_id_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, good(tmp_path))
    with pytest.raises(StoreError, match="different schedule"):
        load_state(path, {"protocol": "schedule", "stages": []}, "day1")
    with pytest.raises(StoreError, match="not 'day2'"):
        load_state(path, SCHEDULE, "day2")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "x..y", "", "a" * 201, "a b"])
def test_ids_that_could_leave_the_output_folder_are_refused(bad: str) -> None:
    with pytest.raises(StoreError):
        check_id(bad, "schedule id")
    assert check_id("2026-12-07_rig1_day.1", "schedule id")


# --- the fuzz target (bench/fuzz.py, "schedule.state") ----------------------------------------------------
_FUZZ_DIR: list[Path] = []


def schedule_state_seeds() -> list[bytes]:
    """A state file the runner writes (the fuzzer mutates it)."""
    return [json.dumps(good(Path("/tmp/fuzz-out"))).encode()]


def fuzz_schedule_state(data: bytes) -> None:
    """Fuzz target: ``data`` as a schedule state file; resuming from it may only raise StoreError."""
    import tempfile

    if not _FUZZ_DIR:
        _FUZZ_DIR.append(Path(tempfile.mkdtemp(prefix="fuzz-schedule-")))
    path = _FUZZ_DIR[0] / "day1.schedule.json"
    path.write_bytes(data)
    try:
        state = load_state(path, SCHEDULE, "day1")
    except StoreError:
        return
    for rec in state["stages"].get("sysid", {}).get("sessions", []):  # what loads never leaves the folder
        assert rec["file"] is None or Path(rec["file"]).resolve().parent == path.parent.resolve(), rec


def test_the_fuzz_target_takes_its_seed_and_refuses_mutations_typed() -> None:
    fuzz_schedule_state(schedule_state_seeds()[0])
    for k in range(0, len(schedule_state_seeds()[0]), 7):
        data = bytearray(schedule_state_seeds()[0])
        data[k:k + 3] = b'"/.'
        fuzz_schedule_state(bytes(data))
