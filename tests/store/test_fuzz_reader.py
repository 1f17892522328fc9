"""Property-based fuzzing of the session reader: random truncations and byte corruptions of a real
session file. The reader opens and returns documents and problems, or raises StoreError, never
anything else and never slowly; what it returns is what was written, at the same position; every
record is either returned or named in its problems; a second read gives the same answer.

The fuzz target for ``bench/fuzz.py`` is :func:`fuzz_session_bytes` (seeds: :func:`session_seeds`).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.store import SessionReader, SessionWriter
from wire.base import image_id
from wire.documents import (
    BlockDoc,
    EventDoc,
    ImageDoc,
    ModelVersionDoc,
    ResponseDoc,
    StartDoc,
    StopDoc,
    TrialDoc,
)
from wire.errors import StoreError

#: the suite's hang guard per example (bench/fuzz.py uses 2 s with a timer); opening and reading
#: a damaged file takes milliseconds (an open fails within ~20 ms, see controller.store)
SUITE_HANG_S = 5.0


def small_session(path: Path) -> list[str]:
    """A small real session file (start, images, a block, trials with counts, a model version, an
    event, stop); returns the JSON of each document, in order."""
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    ids = [image_id(a) for a in imgs]
    plan = [[f"b0/{k}", ids[k % 3], "normal"] for k in range(6)]
    docs: list = [StartDoc(session_id="fuzz", protocol={"protocol": "sysid"}, code_version="test", rig="r"),
                  *[ImageDoc(image_id=i, pixels=a) for i, a in zip(ids, imgs, strict=True)],
                  BlockDoc(block_id="b0", index=0, source="normal", n_trials=6, params={"trials": plan})]
    for k, (tid, img, _) in enumerate(plan):
        docs += [TrialDoc(trial_id=tid, block_id="b0", index=k, image_id=img, onset=10.0 + k, offset=10.1 + k,
                          on_frames=6, dropped_frames=0),
                 ResponseDoc(trial_id=tid, units=["u0", "u1", "u2"], counts=rng.poisson(4, 3).astype(np.uint16),
                             window=(0.05, 0.15), onset_acq=20.0 + k)]
    docs += [ModelVersionDoc(version="v1", n_images=3, metrics={"val_r": 0.5}),
             EventDoc(what="paused", message="fuzz"), StopDoc(exit_status="success", n_trials=6)]
    with SessionWriter.create(path) as w:
        for d in docs:
            w.write(d)
    return [d.model_dump_json() for d in docs]


@functools.cache
def _seed() -> tuple[bytes, tuple[str, ...], tuple[range, ...]]:
    """The seed file's bytes, its documents' JSON, and the byte ranges of the file worth damaging
    (HDF5 metadata, the index rows, the JSON and the array bytes in use; not unused chunk space)."""
    folder = Path(tempfile.mkdtemp(prefix="cortexloop-fuzz-seed-"))
    path = folder / "seed.h5"
    docs = small_session(path)
    data = path.read_bytes()
    regions = []
    with h5py.File(path, "r") as f:
        starts = []
        for name, used in (("log/index", f["log/index"].size * 8), ("log/bytes", f["log/bytes"].size),
                           ("arrays/bytes", f["arrays/bytes"].size)):
            info = f[name].id.get_chunk_info(0)
            regions.append(range(info.byte_offset, info.byte_offset + used))
            starts.append(info.byte_offset)
    regions.append(range(0, min(starts)))  # superblock, object headers, heaps, chunk indexes
    regions.append(range(max(r.stop for r in regions), len(data)))  # metadata written at close
    shutil.rmtree(folder, ignore_errors=True)
    return data, tuple(docs), tuple(r for r in regions if len(r))


def session_seeds() -> list[bytes]:
    """The fuzz seeds: one small real session file."""
    return [_seed()[0]]


_counter = itertools.count()
_dir: list[Path] = []


def _case_path() -> Path:
    if not _dir:
        shm = Path("/dev/shm")
        _dir.append(Path(tempfile.mkdtemp(prefix="cortexloop-fuzz-", dir=shm if shm.is_dir() else None)))
        atexit.register(shutil.rmtree, _dir[0], True)
    return _dir[0] / f"case-{os.getpid()}-{next(_counter)}.h5"


def read_case(data: bytes) -> tuple[list[tuple[int, str]], list[str], int] | None:
    """Read ``data`` as a session file: ((position, JSON) of each document, problems, index rows), or
    None when it cannot be opened (StoreError). Checks that a second read, by the same reader and
    by a fresh one, gives the same answer and that every record is returned or named as damaged."""
    path = _case_path()
    path.write_bytes(data)
    try:
        try:
            with SessionReader(path) as r:
                got = [(i, d.model_dump_json()) for i, d in r.indexed_documents()]
                problems, damage, n = r.problems, r.damage, len(r)
                again = [(i, d.model_dump_json()) for i, d in r.indexed_documents()]
                assert (again, r.problems) == (got, problems), "a second read by the same reader differs"
        except StoreError as first:
            try:
                SessionReader(path).close()
            except StoreError as second:
                assert str(second) == str(first), "a second open fails differently"
            else:
                raise AssertionError("a file that failed to open opened the second time") from first
            return None
        with SessionReader(path) as r:
            assert [(i, d.model_dump_json()) for i, d in r.indexed_documents()] == got, "a second reader differs"
            assert r.problems == problems, "a second reader reports other problems"
        covered = {i for i, _ in got}
        for d in damage:
            if d.index is not None:
                covered.update(range(d.index, (d.last if d.last is not None else d.index) + 1))
        assert covered >= set(range(n)), f"records neither read nor reported: {sorted(set(range(n)) - covered)[:5]}"
        return got, problems, n
    finally:
        path.unlink(missing_ok=True)


def fuzz_session_bytes(data: bytes) -> None:
    """Fuzz target: ``data`` as a session file opens, and every document read from it is one the seed
    file holds (the same on a second read), every record read or reported; or StoreError. Nothing else."""
    got = read_case(data)
    if got is not None:
        written = set(_seed()[1])
        for i, doc in got[0]:
            assert doc in written, f"document {i} was never written: {doc[:200]}"


def _guarded_in_place(data: bytes) -> None:
    """``data`` is the seed damaged in place (no byte moved): each document read is the one written
    at that position."""
    t0 = time.perf_counter()
    got = read_case(data)
    assert time.perf_counter() - t0 < SUITE_HANG_S, f"hang: reading took > {SUITE_HANG_S} s"
    if got is not None:
        original = _seed()[1]
        for i, doc in got[0]:
            assert i < len(original) and doc == original[i], f"document {i} differs from what was written"


FUZZ = settings(max_examples=60, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """(position, length, value): mostly inside the parts of the seed that matter."""
    data, _, regions = _seed()
    region = draw(st.sampled_from([*regions, range(0, len(data))]))
    pos = draw(st.integers(region.start, region.stop - 1))
    length = draw(st.sampled_from([1, 2, 4, 8, 32, 200, 4096]))
    value = draw(st.one_of(st.integers(0, 255).map(lambda v: bytes([v])), st.binary(min_size=1, max_size=16)))
    return pos, length, value


def damaged(data: bytes, hits: list[tuple[int, int, bytes]]) -> bytes:
    b = bytearray(data)
    for pos, length, value in hits:
        n = min(length, len(b) - pos)
        b[pos:pos + n] = (value * (n // len(value) + 1))[:n]
    return bytes(b)


@FUZZ
@given(cut=st.integers(0, 1 << 20))
def test_truncated_anywhere(cut: int) -> None:
    data = _seed()[0]
    _guarded_in_place(data[: cut % (len(data) + 1)])


@FUZZ
@given(hits=st.lists(corruptions(), min_size=1, max_size=4))
def test_corrupted_anywhere(hits: list[tuple[int, int, bytes]]) -> None:
    _guarded_in_place(damaged(_seed()[0], hits))


@FUZZ
@given(hits=st.lists(corruptions(), min_size=1, max_size=3), cut=st.integers(0, 1 << 20))
def test_corrupted_and_truncated(hits: list[tuple[int, int, bytes]], cut: int) -> None:
    data = damaged(_seed()[0], hits)
    _guarded_in_place(data[: len(data) - cut % (len(data) // 4)])


@FUZZ
@given(st.binary(max_size=2048))
def test_the_fuzz_target_on_random_bytes(data: bytes) -> None:
    fuzz_session_bytes(data)
    fuzz_session_bytes(_seed()[0][:64] + data)  # a real superblock, then garbage


def test_the_fuzz_target_on_its_seed() -> None:
    (seed,) = session_seeds()
    got = read_case(seed)
    assert got is not None and got[1] == [] and [d for _, d in got[0]] == list(_seed()[1])
    fuzz_session_bytes(seed)
