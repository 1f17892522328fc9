"""Damaged session files: real files written with SessionWriter, then truncated, overwritten,
edited through h5py or stripped of a dataset. Opening never hangs (it fails with StoreError at
once or opens), damaged records are named by position and cause, every intact record before and
after them is read, reads are repeatable, and the tools say what they skipped and exit non-zero."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.replay import Recording
from controller.store import DamagedSession, SessionReader, SessionWriter
from tests.store.test_store import WRITER
from wire.base import image_id
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import StoreError

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
#: a generous hang guard: opening and reading these files takes milliseconds
HANG_S = 5.0
N_TRIALS = 12
TRIAL_17 = 17  # the trial of k = 6: documents are start, 3 images, block, (trial, response) x 12, ...


def write_session(path: Path) -> list[str]:
    """A real session: 0 start, 1-3 images, 4 block, 5 + 2k trial k, 6 + 2k its response,
    29 model version, 30 pick, 31 event, 32 stop. Returns each document's JSON."""
    rng = np.random.default_rng(11)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    ids = [image_id(a) for a in imgs]
    plan = [[f"b0/{k}", ids[k % 3], "normal"] for k in range(N_TRIALS)]
    docs: list = [StartDoc(session_id="dmg", protocol={"protocol": "sysid"}, code_version="test", rig="rig1"),
                  *[ImageDoc(image_id=i, pixels=a) for i, a in zip(ids, imgs, strict=True)],
                  BlockDoc(block_id="b0", index=0, source="normal", n_trials=N_TRIALS, params={"trials": plan})]
    for k, (tid, img, _) in enumerate(plan):
        docs += [TrialDoc(trial_id=tid, block_id="b0", index=k, image_id=img, onset=100.0 + 0.2 * k,
                          offset=100.1 + 0.2 * k, on_frames=6, dropped_frames=0),
                 ResponseDoc(trial_id=tid, units=[f"u{j}" for j in range(5)], counts=rng.poisson(4, 5).astype(np.uint16),
                             window=(0.05, 0.15), onset_acq=200.0 + k)]
    docs += [ModelVersionDoc(version="v1", n_images=3, metrics={"val_r": 0.4}),
             PickDoc(image_id=ids[0], block_id="b1", generator="active", model_version="v1"),
             EventDoc(what="paused", message="test"), StopDoc(exit_status="success", n_trials=N_TRIALS)]
    with SessionWriter.create(path) as w:
        for d in docs:
            w.write(d)
    assert docs[TRIAL_17].kind == "trial"
    return [d.model_dump_json() for d in docs]


@pytest.fixture
def session(tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / "s.h5"
    return path, write_session(path)


def damaged_copy(path: Path, name: str) -> Path:
    out = path.with_name(name)
    shutil.copyfile(path, out)
    return out


def file_offset(path: Path, dataset: str, byte: int) -> int:
    """Where byte ``byte`` of a uint8 dataset lies in the file."""
    with h5py.File(path, "r", swmr=True) as f:
        ds = f[dataset]
        step = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((byte // step * step,))
        return int(info.byte_offset) + byte % step


def record_span(path: Path, i: int) -> tuple[int, int]:
    """(file offset, length) of document ``i``'s JSON."""
    with h5py.File(path, "r", swmr=True) as f:
        off, length = (int(v) for v in f["log/index"][i, :2])
    return file_offset(path, "log/bytes", off), length


def overwrite(path: Path, at: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(at)
        fh.write(data)


def read(path: Path) -> tuple[float, str | tuple[list[tuple[int, str]], list[str], list]]:
    """(seconds to open and read, the StoreError's text or (documents by position, problems, damage))."""
    t0 = time.perf_counter()
    try:
        with SessionReader(path) as r:
            docs = [(i, d.model_dump_json()) for i, d in r.indexed_documents()]
            out: str | tuple = (docs, r.problems, r.damage)
    except StoreError as exc:
        out = str(exc)
    dt = time.perf_counter() - t0
    assert dt < HANG_S, f"{path.name}: opening and reading took {dt:.1f} s"
    return dt, out


def check_intact(got: list[tuple[int, str]], original: list[str], damage: list, n: int) -> None:
    """Every document returned is the one written at its position; every position is returned or damaged."""
    for i, doc in got:
        assert doc == original[i], f"document {i} is not what was written"
    covered = {i for i, _ in got}
    for d in damage:
        if d.index is not None:
            covered.update(range(d.index, (d.last if d.last is not None else d.index) + 1))
    assert covered >= set(range(n))


# --- the reader ------------------------------------------------------------------------------------
def test_truncated_files_fail_at_once_or_keep_every_intact_record(session: tuple[Path, list[str]]) -> None:
    path, original = session
    size = path.stat().st_size
    with h5py.File(path, "r") as f:
        chunks = {n: (int(f[n].id.get_chunk_info(0).byte_offset), int(f[n].size) * f[n].dtype.itemsize)
                  for n in ("log/index", "log/bytes", "arrays/bytes")}
    cuts = {"empty": 0, "4 bytes": 4, "10 bytes": 10, "mid-superblock": 30, "after the superblock": 48,
            "mid-metadata": 2000}
    for name, (start, used) in chunks.items():
        cuts[f"mid-{name}"] = start + used // 2
        cuts[f"end of {name}"] = start + used
    cuts["last byte"] = size - 1
    print()
    for what, cut in sorted(cuts.items(), key=lambda kv: kv[1]):
        bad = damaged_copy(path, f"cut-{cut}.h5")
        os.truncate(bad, cut)
        dt, out = read(bad)
        print(f"  truncated at {cut:>6} ({what}): {dt * 1000:6.1f} ms: "
              + (f"StoreError: {out[:90]}" if isinstance(out, str) else
                 f"{len(out[0])} documents, {len(out[1])} problems"))
        if isinstance(out, str):
            assert bad.name in out and ("cannot open" in out or "not " in out)
            continue
        docs, problems, damage = out
        assert problems and "truncated" in problems[0] and f"{cut} of {size} bytes" in problems[0]
        with h5py.File(bad, "r", swmr=True) as f:
            n = len(f["log/index"])
        check_intact(docs, original, damage, n)
    # a file cut in its trailing metadata loses the arrays' chunk index, not the documents without arrays
    bad = damaged_copy(path, "cut-last.h5")
    os.truncate(bad, size - 1)
    _, out = read(bad)
    assert not isinstance(out, str)
    kinds = {json.loads(d)["kind"] for _, d in out[0]}
    assert {"start", "block", "trial", "stop"} <= kinds and max(i for i, _ in out[0]) == 32
    assert "document 1 (kind image, image " in out[1][1]


def test_a_damaged_record_is_named_and_every_other_record_is_read(session: tuple[Path, list[str]]) -> None:
    path, original = session
    bad = damaged_copy(path, "rec17.h5")
    at, length = record_span(bad, TRIAL_17)
    overwrite(bad, at + length - 6, b"\x00\xff\x00\xff\x00\xff")
    _, out = read(bad)
    assert not isinstance(out, str)
    docs, problems, damage = out
    assert problems == ["rec17.h5 document 17 (kind trial): checksum mismatch (half-written or damaged record)"]
    assert [i for i, _ in docs] == [i for i in range(len(original)) if i != TRIAL_17]
    check_intact(docs, original, damage, len(original))
    assert damage[0].index == TRIAL_17 and damage[0].kind == "trial" and damage[0].matters()

    # an image's pixels: the image is named, the trials that show it are still read
    bad = damaged_copy(path, "img.h5")
    with h5py.File(path, "r") as f:
        ref = json.loads(f["log/bytes"][slice(*(lambda o, n: (o, o + n))(*f["log/index"][2, :2]))].tobytes())
    overwrite(bad, file_offset(bad, "arrays/bytes", ref["pixels"]["__nd__"]["offset"] + 5), b"\x01\x02\x03")
    _, out = read(bad)
    assert not isinstance(out, str)
    assert out[1] == [f"img.h5 document 2 (kind image, image {ref['image_id']}): array checksum mismatch "
                      "(damaged array bytes)"]
    check_intact(out[0], original, out[2], len(original))
    assert sum(json.loads(d)["kind"] == "trial" for _, d in out[0]) == N_TRIALS


def test_random_byte_ranges_overwritten(session: tuple[Path, list[str]]) -> None:
    path, original = session
    with h5py.File(path, "r") as f:
        regions = [(int(f[n].id.get_chunk_info(0).byte_offset), int(f[n].size) * f[n].dtype.itemsize)
                   for n in ("log/index", "log/bytes", "arrays/bytes")]
    regions.append((0, regions[0][0]))  # the metadata before the first chunk
    rng = random.Random(15)
    outcomes = {"opened": 0, "StoreError": 0}
    worst = 0.0
    for case in range(40):
        bad = damaged_copy(path, f"rnd-{case}.h5")
        for _ in range(rng.randint(1, 3)):
            start, used = rng.choice(regions)
            overwrite(bad, start + rng.randrange(used), rng.randbytes(rng.randint(1, 64)))
        dt, out = read(bad)
        worst = max(worst, dt)
        if isinstance(out, str):
            outcomes["StoreError"] += 1
            continue
        outcomes["opened"] += 1
        with h5py.File(bad, "r", swmr=True) as f:
            n = len(f["log/index"])
        check_intact(out[0], original, out[2], n)
        assert read(bad)[1] == out  # the same again
    print(f"\n  40 files with random byte ranges overwritten: {outcomes}; slowest open and read {worst * 1000:.1f} ms")


def test_json_corrupted_in_place_through_h5py(session: tuple[Path, list[str]]) -> None:
    path, original = session

    def edit(name: str, change: bytes, fix_crc: bool) -> tuple[list, list[str]]:
        bad = damaged_copy(path, name)
        with h5py.File(bad, "r+") as f:
            off, length = (int(v) for v in f["log/index"][TRIAL_17, :2])
            body = f["log/bytes"][off:off + length].tobytes()
            new = change if len(change) == length else body.replace(b'"on_frames":6', change)
            assert len(new) == length
            f["log/bytes"][off:off + length] = np.frombuffer(new, np.uint8)
            if fix_crc:  # as a buggy writer would have stored it: the checksum matches the bad bytes
                f["log/index"][TRIAL_17, 2] = zlib.crc32(new)
        _, out = read(bad)
        assert not isinstance(out, str)
        check_intact(out[0], original, out[2], len(original))
        assert [i for i, _ in out[0]] == [i for i in range(len(original)) if i != TRIAL_17]  # 16 and 18 too
        return out[2], out[1]

    length = record_span(path, TRIAL_17)[1]
    _, problems = edit("flipped.h5", b"#" * length, fix_crc=False)
    assert problems == ["flipped.h5 document 17 (kind unknown): checksum mismatch (half-written or damaged record)"]
    _, problems = edit("badjson.h5", b'{"kind":"trial",' + b"x" * (length - 16), fix_crc=True)
    assert len(problems) == 1 and problems[0].startswith("badjson.h5 document 17 (kind trial): invalid JSON: ")
    damage, problems = edit("invalid.h5", b'"on_frames":0', fix_crc=True)
    assert len(problems) == 1 and problems[0].startswith("invalid.h5 document 17 (kind trial): not a valid trial: ")
    assert "on_frames" in problems[0] and damage[0].matters()


def test_a_wrong_image_and_mismatched_counts_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shape.h5"
    bad = np.zeros((4, 4, 5), np.uint8)
    with monkeypatch.context() as m, SessionWriter.create(path) as w:
        m.setattr("controller.store._bad_counts", lambda doc: None)  # a writer of old, or another program
        w.write(StartDoc(session_id="s", code_version="x"))
        w.write(ImageDoc(image_id=image_id(bad), pixels=bad))
        w.write(ResponseDoc(trial_id="t0", units=["a", "b"], counts=np.zeros(3, np.uint16), window=(0, 1),
                            onset_acq=0))
        w.write(StopDoc(exit_status="success"))
    _, out = read(path)
    assert not isinstance(out, str)
    assert [json.loads(d)["kind"] for _, d in out[0]] == ["start", "stop"]
    assert out[1][0].startswith(f"shape.h5 document 1 (kind image, image {image_id(bad)}): wrong shape (4, 4, 5)")
    assert out[1][1] == "shape.h5 document 2 (kind response): 3 counts for 2 units"


def test_deleted_datasets(session: tuple[Path, list[str]]) -> None:
    path, original = session
    bad = damaged_copy(path, "noarrays.h5")
    with h5py.File(bad, "r+") as f:
        del f["arrays/bytes"]
    _, out = read(bad)
    assert not isinstance(out, str)
    docs, problems, damage = out
    assert problems[0] == ("noarrays.h5: /arrays/bytes cannot be opened: missing; documents with arrays (images, "
                           "counts) cannot be read")
    assert "document 1 (kind image, image " in problems[1] and "lost with /arrays/bytes" in problems[1]
    assert [json.loads(d)["kind"] for _, d in docs].count("trial") == N_TRIALS  # trials have no arrays
    assert {d.kind for d in damage if d.index is not None} == {"image", "response"}
    check_intact(docs, original, damage, len(original))
    for name in ("log/index", "log/bytes"):
        bad = damaged_copy(path, f"no-{name.replace('/', '-')}.h5")
        with h5py.File(bad, "r+") as f:
            del f[name]
        _, out = read(bad)
        assert isinstance(out, str) and out == f"{bad}: /{name} cannot be opened: missing"


def test_reads_are_repeatable(session: tuple[Path, list[str]]) -> None:
    path, _ = session
    bad = damaged_copy(path, "rep.h5")
    at, _ = record_span(bad, TRIAL_17)
    overwrite(bad, at + 3, b"\x00" * 4)
    os.truncate(bad, bad.stat().st_size - 1)  # and the arrays' chunk index is gone
    first = read(bad)[1]
    assert not isinstance(first, str) and len(first[1]) > 2
    assert read(bad)[1] == first  # two readers in sequence
    a, b = SessionReader(bad), SessionReader(bad)  # two at once, interleaved
    try:
        pairs = list(zip(a.indexed_documents(), b.indexed_documents(), strict=True))
        assert [(i, d.model_dump_json()) for (i, d), _ in pairs] == first[0]
        assert [(i, d.model_dump_json()) for _, (i, d) in pairs] == first[0]
        assert a.problems == b.problems == first[1]
        assert [(i, d.model_dump_json()) for i, d in a.indexed_documents()] == first[0]  # the same reader again
        assert a.problems == first[1] and len(a) == len(b)
    finally:
        a.close()
        b.close()
    broken = damaged_copy(path, "broken.h5")
    os.truncate(broken, 300)
    messages = {read(broken)[1] for _ in range(3)}
    assert len(messages) == 1 and str(broken) in messages.pop()  # fails the same way every time
    assert read(bad)[1] == first  # and nothing was left behind


def test_a_killed_writers_damaged_tail_is_torn_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= 20:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    with SessionReader(path) as r:
        n = len(r)
        assert r.unfinished and r.problems == []
    tail = damaged_copy(path, "tail.h5")
    at, length = record_span(tail, n - 1)
    overwrite(tail, at + length - 4, b"????")
    with SessionReader(tail) as r:
        assert len(list(r.documents())) == n - 1
        (d,) = r.damage
    assert d.index == n - 1 and d.torn and not d.matters()
    assert "half-written when its writer was killed" in str(d)
    assert len(Recording(tail).docs) == n - 1  # a replay goes on without it
    middle = damaged_copy(path, "middle.h5")
    at, length = record_span(middle, 7)
    overwrite(middle, at + length - 4, b"????")
    with SessionReader(middle) as r:
        list(r.documents())
        (d,) = r.damage
    assert d.index == 7 and not d.torn and d.matters()
    with pytest.raises(DamagedSession, match="document 7"):
        Recording(middle)


# --- the tools -------------------------------------------------------------------------------------
@pytest.fixture
def damaged_17(session: tuple[Path, list[str]]) -> Path:
    path, _ = session
    bad = damaged_copy(path, "d17.h5")
    at, length = record_span(bad, TRIAL_17)
    overwrite(bad, at + length - 6, b"\x00" * 6)
    return bad


def test_inspect_names_what_it_skipped_and_exits_1(damaged_17: Path, session: tuple[Path, list[str]]) -> None:
    result = runner.invoke(app, ["inspect", str(session[0])])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(damaged_17)])
    assert result.exit_code == 1, result.output
    assert "d17.h5 document 17 (kind trial): checksum mismatch" in result.output
    assert "trial (damaged, skipped)" in result.output and "1 of them matter for replay and export" in result.output
    cut = damaged_copy(session[0], "cut.h5")
    os.truncate(cut, 300)
    result = runner.invoke(app, ["inspect", str(cut)])
    assert result.exit_code == 1 and isinstance(result.exception, StoreError)
    assert "cannot open session file" in str(result.exception)


def test_inspect_from_the_shell_returns_at_once_without_a_traceback(session: tuple[Path, list[str]]) -> None:
    cut = damaged_copy(session[0], "cut.h5")
    os.truncate(cut, 1000)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "from controller.cli import entry; entry()", "inspect", str(cut)],
                          capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    print(f"\n  cortexloop inspect on a file cut at 1000 bytes: {time.perf_counter() - t0:.2f} s (with start-up)")
    assert proc.returncode == 1
    assert "error:" in proc.stdout and "cannot open session file" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_report_writes_its_page_with_the_damage_and_exits_1(damaged_17: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    unreadable = tmp_path / "junk.h5"
    unreadable.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    result = runner.invoke(app, ["report", str(damaged_17), str(unreadable), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 1, result.output
    assert "d17.h5 document 17 (kind trial)" in result.output and "junk.h5" in result.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "damaged records" in page and "d17.h5 document 17 (kind trial)" in page and "junk.h5" in page
    assert "timing.png" in page  # the rest is drawn
    only_junk = runner.invoke(app, ["report", str(unreadable), "--out", str(tmp_path / "rep2")])
    assert only_junk.exit_code == 1
    page = (tmp_path / "rep2" / "index.html").read_text()
    assert "damaged records" in page and "no session file could be read" in page


def test_export_refuses_damage_that_matters_and_exits_1(damaged_17: Path) -> None:
    pytest.importorskip("pynwb")
    pytest.importorskip("nwbinspector")
    result = runner.invoke(app, ["export", str(damaged_17), "--nwb"])
    assert result.exit_code == 1, result.output
    assert "d17.h5 document 17 (kind trial)" in result.output and "not exported" in result.output
    assert not damaged_17.with_suffix(".nwb").exists()
    result = runner.invoke(app, ["export", str(damaged_17), "--nwb", "--allow-damaged"])
    assert result.exit_code == 1, result.output
    assert "1 of them matter" in result.output and damaged_17.with_suffix(".nwb").is_file()
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(damaged_17.with_suffix(".nwb"), "r") as io:
        nwb = io.read()
        assert len(nwb.trials) == N_TRIALS - 1 and "document 17" in nwb.notes


def test_export_goes_on_past_damage_that_does_not_matter(tmp_path: Path) -> None:
    pytest.importorskip("pynwb")
    pytest.importorskip("nwbinspector")
    from tests.controller.test_nwb import make_session

    path = tmp_path / "s.h5"
    docs = make_session(path)["docs"]
    event = next(i for i, d in enumerate(docs) if isinstance(d, EventDoc))
    at, length = record_span(path, event)
    overwrite(path, at + length - 3, b"\x00\x00\x00")
    result = runner.invoke(app, ["export", str(path), "--nwb"])
    assert result.exit_code == 0, result.output
    assert f"s.h5 document {event} (kind event)" in result.output and path.with_suffix(".nwb").is_file()


def test_replay_refuses_damage_that_matters(damaged_17: Path, tmp_path: Path) -> None:
    with pytest.raises(DamagedSession, match=r"d17.h5 document 17 \(kind trial\)"):
        Recording(damaged_17)
    assert len(Recording(damaged_17, allow_damaged=True).docs) == 32
    result = runner.invoke(app, ["replay", str(damaged_17), "--out", str(tmp_path / "rep"), "--modelserver", "none",
                                 "--device", "cpu"])
    assert result.exit_code == 1 and isinstance(result.exception, DamagedSession)
    assert "document 17 (kind trial)" in str(result.exception)
