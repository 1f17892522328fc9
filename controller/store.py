"""The session store: one HDF5 file per session, written as documents, read back in order.

Layout (``docs/store.md`` has the full description)::

    /                  attrs: format="cortexloop-session", format_version=1
    /log/bytes         uint8[*]     JSON of every document, concatenated
    /log/index         int64[N, 4]  one row per document: json offset, json length, crc32, 1
    /arrays/bytes      uint8[*]     raw bytes of every array field (images, counts)

A document's arrays are written first, then its JSON (arrays replaced by references holding
offset, dtype, shape and a crc32 of their bytes), then its index row; then the file is
flushed. A document is acknowledged (``write`` returns) only after that flush, so a killed
writer leaves every acknowledged document readable. Readers check each record's length and
checksums, so a half-written last record is reported, never silently used.

Damaged files: a reader opens a file or fails with StoreError within a second (HDF5's SWMR
metadata retries are bounded, see :data:`SWMR_READ_ATTEMPTS`); a damaged record is skipped and
described by position and cause (:class:`Damage`, ``reader.problems``), and every intact record
before and after it is still read. :meth:`Damage.matters` says whether a replay or an export may
go on without it (:data:`ESSENTIAL_KINDS`).

Files are written in HDF5's SWMR mode: a reader (another process) can follow a session
while it is being recorded. A file left by a killed writer stays marked as open for writing
(HDF5's consistency flag); :meth:`SessionWriter.resume` reads its acknowledged documents
with a SWMR reader, writes them to a fresh file, keeps the crashed file beside it as
``<name>.crashed-<time>.h5`` and continues there. Nothing acknowledged is lost or doubled.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import struct
import time
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5f, h5p

from wire.base import WIRE_DTYPES, Document
from wire.documents import DOCUMENT_ADAPTER, ImageDoc, ResponseDoc, StartDoc, StopDoc, TrialDoc
from wire.errors import CorruptRecord, StoreError

log = logging.getLogger(__name__)

FORMAT = "cortexloop-session"
FORMAT_VERSION = 1
_CHUNK = 1 << 16


def _crc(buf: memoryview | bytes) -> int:
    return zlib.crc32(buf) & 0xFFFFFFFF


class _Heap:
    """An append-only uint8 dataset that grows in amortised steps; ``size`` bytes are used."""

    def __init__(self, ds: h5py.Dataset, size: int) -> None:
        self.ds = ds
        self.size = size

    def append(self, data: memoryview) -> int:
        n = data.nbytes
        start = self.size
        if start + n > self.ds.shape[0]:
            self.ds.resize((max(start + n, 2 * self.ds.shape[0], _CHUNK),))
        if n:
            self.ds[start:start + n] = np.frombuffer(data, dtype=np.uint8)
        self.size = start + n
        return start


class SessionWriter:
    """Appends documents to a session file. Use :meth:`create` or :meth:`resume`."""

    def __init__(self, path: Path, f: h5py.File, *, docs: Iterable[Document] = ()) -> None:
        self.path = path
        self._f = f
        self._index = f["log/index"]
        # a file opened here is new or was closed trimmed, so every byte of each heap is in use
        self._log = _Heap(f["log/bytes"], f["log/bytes"].shape[0])
        self._arrays = _Heap(f["arrays/bytes"], f["arrays/bytes"].shape[0])
        self.image_ids: set[str] = set()
        self.trial_ids: set[str] = set()
        self.responded: set[str] = set()
        self.n_documents = len(self._index)
        self.stopped = False
        for doc in docs:
            self._note(doc)

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, overwrite: bool = False) -> SessionWriter:
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"session file {path} exists; resume it or choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        f = h5py.File(path, "w", libver="latest")
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.create_dataset("log/bytes", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(_CHUNK,))
        f.create_dataset("log/index", shape=(0, 4), maxshape=(None, 4), dtype=np.int64, chunks=(1024, 4))
        f.create_dataset("arrays/bytes", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(_CHUNK,))
        f.swmr_mode = True
        f.flush()
        return cls(path, f)

    @classmethod
    def resume(cls, path: str | Path) -> SessionWriter:
        """Continue a session file, whether it was closed cleanly or its writer was killed."""
        path = Path(path)
        with SessionReader(path) as reader:
            docs = list(reader.documents())
            problems = list(reader.problems)
        if any(isinstance(d, StopDoc) for d in docs):
            raise StoreError(f"session {path} has a stop document; it is finished")
        try:  # closed cleanly: append in place
            f = h5py.File(path, "a", libver="latest")
        except OSError:  # still flagged open by a killed writer: rebuild from acknowledged documents
            f = cls._rebuild(path, docs, problems)
        f.swmr_mode = True
        return cls(path, f, docs=docs)

    @classmethod
    def _rebuild(cls, path: Path, docs: list[Any], problems: list[str]) -> h5py.File:
        for p in problems:
            log.warning("resume %s: %s (not carried over)", path, p)
        crashed = path.with_name(f"{path.stem}.crashed-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
        tmp = path.with_name(path.name + ".resume-tmp")
        with cls.create(tmp, overwrite=True) as writer:
            writer.write_many(docs)
        path.rename(crashed)
        tmp.rename(path)
        log.warning("%s was left open by a killed writer: %d acknowledged documents carried over; "
                    "the original is kept as %s", path, len(docs), crashed.name)
        return h5py.File(path, "a", libver="latest")

    # -- writing ---------------------------------------------------------------------------
    def _note(self, doc: Document) -> None:
        if isinstance(doc, ImageDoc):
            self.image_ids.add(doc.image_id)
        elif isinstance(doc, TrialDoc):
            self.trial_ids.add(doc.trial_id)
        elif isinstance(doc, ResponseDoc):
            self.responded.add(doc.trial_id)
        elif isinstance(doc, StopDoc):
            self.stopped = True

    def _strip(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            a = np.ascontiguousarray(obj)
            if a.dtype.str not in WIRE_DTYPES:
                raise StoreError(f"arrays of dtype {a.dtype} cannot be stored")
            buf = a.data.cast("B") if a.size else memoryview(b"")
            off = self._arrays.append(buf)
            return {"__nd__": {"offset": off, "nbytes": buf.nbytes, "dtype": a.dtype.str,
                               "shape": list(a.shape), "crc": _crc(buf)}}
        if isinstance(obj, dict):
            return {k: self._strip(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._strip(v) for v in obj]
        return obj

    def _append(self, doc: Document) -> bool:
        if self.stopped:
            raise StoreError(f"session {self.path} is stopped; no more documents")
        if isinstance(doc, ImageDoc) and doc.image_id in self.image_ids:
            return False  # images are stored once
        if isinstance(doc, ResponseDoc) and (why := _bad_counts(doc)):
            raise StoreError(f"response of trial {doc.trial_id}: {why}; not stored")
        body = json.dumps(self._strip(doc.model_dump(mode="python")), separators=(",", ":")).encode()
        off = self._log.append(memoryview(body))
        n = self.n_documents
        self._index.resize((n + 1, 4))
        self._index[n] = (off, len(body), _crc(body), 1)
        self.n_documents = n + 1
        self._note(doc)
        return True

    def write(self, doc: Document) -> bool:
        """Write one document and flush; returns False for an image already stored."""
        written = self._append(doc)
        self._f.flush()
        return written

    def write_many(self, docs: Iterable[Document]) -> int:
        """Write several documents with one flush (acknowledged together); returns how many were new."""
        n = sum(self._append(d) for d in docs)
        self._f.flush()
        return n

    def close(self, *, trim: bool = True) -> None:
        if self._f.id.valid:
            if trim:
                self._log.ds.resize((self._log.size,))
                self._arrays.ds.resize((self._arrays.size,))
            self._f.flush()
            self._f.close()

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- reading ----------------------------------------------------------------------------------------
#: every document kind (wire.documents)
KINDS: frozenset[str] = frozenset({"start", "block", "image", "trial", "response", "reward", "gaze",
                                   "model_version", "pick", "step", "event", "stop"})
#: kinds without which a session cannot be replayed or exported as it was recorded: damage to one of
#: them, to a record whose kind cannot be told, or to the file itself "matters" (see Damage.matters)
ESSENTIAL_KINDS: frozenset[str] = frozenset({"start", "block", "image", "trial", "response"})
#: In SWMR mode HDF5 retries a metadata read that fails its checksum (a writer may be half-way through
#: a flush), sleeping 1 ns, 2 ns, 4 ns, ... between tries. Its default, 100 tries, doubles the wait up
#: to an hour: a damaged file then never fails. 24 tries wait at most ~17 ms for one metadata block.
#: A file whose writer closed it (no writer can be half-way through anything) gets one try.
SWMR_READ_ATTEMPTS = 24
#: In a file still flagged open for writing each failing read costs up to ~17 ms of retries: one
#: reading gives up the rest of the file after this many (a closed file's failures cost nothing)
MAX_FAILED_READS = 30
#: the most records a killed writer's last flush can leave half-written (see SessionReader.damage)
MAX_TORN = 16
_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_KIND_RE = re.compile(rb'"kind":"(' + b"|".join(k.encode() for k in sorted(KINDS)) + rb')"')
_IMAGE_RE = re.compile(rb'"image_id":"([0-9A-Za-z_.:/-]{1,80})"')


@dataclass(frozen=True)
class Damage:
    """What a reader skipped: one record (``index``), a run of them (``index`` to ``last``), or the
    file itself (``index`` None). ``kind`` is the document kind where it could be told."""

    file: str
    index: int | None
    cause: str
    kind: str | None = None
    image_id: str | None = None
    last: int | None = None
    #: a damaged tail of a file whose writer never closed it (killed): never acknowledged, nothing lost
    torn: bool = False

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.file}: {self.cause}"
        where = (f"documents {self.index}-{self.last}" if self.last is not None and self.last != self.index
                 else f"document {self.index}")
        what = [f"kind {self.kind}" if self.kind else "kind unknown"]
        if self.image_id:
            what.append(f"image {self.image_id}")
        if self.torn:
            what.append("half-written when its writer was killed; never acknowledged")
        return f"{self.file} {where} ({', '.join(what)}): {self.cause}"

    def matters(self, kinds: Collection[str] = ESSENTIAL_KINDS) -> bool:
        """True unless it is a torn tail or one record of a kind outside ``kinds``."""
        if self.torn:
            return False
        return self.index is None or self.kind is None or self.kind in kinds


class DamagedSession(StoreError):
    """A session file with damage that matters for what was asked of it (replay, export)."""

    def __init__(self, path: Path, damage: Sequence[Damage], purpose: str) -> None:
        self.path = path
        self.damage = list(damage)
        shown = "; ".join(str(d) for d in self.damage[:5])
        more = f"; and {len(self.damage) - 5} more" if len(self.damage) > 5 else ""
        super().__init__(f"{path}: {len(self.damage)} damaged part(s) that {purpose} needs: {shown}{more}")


def damage_that_matters(damage: Iterable[Damage], kinds: Collection[str] = ESSENTIAL_KINDS) -> list[Damage]:
    return [d for d in damage if d.matters(kinds)]


class _Bad(Exception):
    """One record that cannot be read (internal; becomes a Damage)."""

    def __init__(self, cause: str, kind: str | None = None, image_id: str | None = None) -> None:
        super().__init__(cause)
        self.cause, self.kind, self.image_id = cause, kind, image_id


def _cause(exc: BaseException) -> str:
    """An HDF5/h5py error in a few plain words (the library's own text in parentheses)."""
    text = " ".join(str(exc).split())[:300] or type(exc).__name__
    if "checksum" in text:
        return f"damaged HDF5 metadata ({text})"
    if "truncated" in text or "addr overflow" in text or "eof" in text.lower():
        return f"the file ends early ({text})"
    return text


def _short(what: object, limit: int = 240) -> str:
    text = " ".join(str(what).split())
    return text if len(text) <= limit else text[:limit] + " ..."


@functools.cache
def _h5_lib() -> Any:
    """The HDF5 library h5py runs on (ctypes), for the one setting h5py does not expose; None if not found."""
    import ctypes
    import glob
    import os

    here = os.path.dirname(h5py.__file__)
    candidates = sorted(glob.glob(os.path.join(here, "..", "h5py.libs", "libhdf5-*.so*")))
    candidates += sorted(glob.glob(os.path.join(here, ".dylibs", "libhdf5*.dylib")))
    candidates += sorted(glob.glob(os.path.join(here, "hdf5.dll")))
    try:
        with open("/proc/self/maps") as maps:
            candidates += sorted({line.split()[-1] for line in maps
                                  if "libhdf5" in line and "_hl" not in line and line.split()[-1].startswith("/")})
    except OSError:
        pass
    probe = h5p.create(h5p.FILE_ACCESS)
    for path in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(path)
            fn, get, valid = lib.H5Pset_metadata_read_attempts, lib.H5Pget_metadata_read_attempts, lib.H5Iis_valid
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int64, ctypes.c_uint], ctypes.c_int
        get.argtypes, get.restype = [ctypes.c_int64, ctypes.POINTER(ctypes.c_uint)], ctypes.c_int
        valid.argtypes, valid.restype = [ctypes.c_int64], ctypes.c_int
        out = ctypes.c_uint(0)
        # the same library instance as h5py's: it knows h5py's property list and the setting takes
        if valid(probe.id) > 0 and fn(probe.id, 7) >= 0 and get(probe.id, ctypes.byref(out)) >= 0 and out.value == 7:
            return lib
    log.warning("cannot bound HDF5's SWMR read retries (its library was not found); a damaged session file "
                "that is still flagged open for writing may take long to fail")
    return None


def _open_h5(path: Path, unfinished: bool) -> h5py.File:
    """Open ``path`` for SWMR reading with bounded metadata retries (none for a file closed by its
    writer, ``SWMR_READ_ATTEMPTS`` for an ``unfinished`` one); StoreError within a second."""
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_LATEST, h5f.LIBVER_LATEST)
    lib = _h5_lib()
    flags = h5f.ACC_RDONLY | h5f.ACC_SWMR_READ
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(fapl.id, SWMR_READ_ATTEMPTS if unfinished else 1)
    elif not unfinished:  # closed cleanly: a plain read has no retry loop at all
        flags = h5f.ACC_RDONLY
    try:
        return h5py.File(h5f.open(str(path).encode(), flags, fapl=fapl))
    except Exception as exc:
        raise StoreError(f"cannot open session file {path}: {_cause(exc)}") from exc


class _Failures:
    """Failed HDF5 reads during one reading of a file, and when to stop trying (``limit``; None: never)."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.n = limit, 0

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.n >= self.limit


class _Bytes:
    """A uint8 heap dataset read in byte ranges; a chunk that cannot be read is remembered (and named
    by every record that needs it), never read again. Only bytes of written records are ever read:
    in SWMR mode a chunk read before the writer fills it may be served stale afterwards."""

    def __init__(self, ds: h5py.Dataset, name: str, failures: _Failures) -> None:
        self.ds, self.name = ds, name
        self.size = int(ds.shape[0])
        self.step = int(ds.chunks[0]) if ds.chunks else _CHUNK
        self._bad: dict[int, str] = {}
        self._failures = failures

    def read(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise _Bad(f"bytes {off}..{off + n} of /{self.name} lie beyond its end ({self.size} bytes)")
        if n == 0:
            return b""
        chunks = range(off // self.step, (off + n - 1) // self.step + 1)
        for c in chunks:
            if c in self._bad:
                raise _Bad(self._bad[c])
        if self._failures.exhausted:
            raise _Bad(f"bytes {off}..{off + n} of /{self.name} not read: too much of the file is unreadable")
        try:
            return self._get(off, off + n)
        except Exception as exc:
            first = _cause(exc)
        for c in chunks:  # find the chunks that fail, so that their neighbours stay readable
            lo, hi = max(off, c * self.step), min(off + n, (c + 1) * self.step)
            try:
                if len(chunks) > 1 and not self._failures.exhausted:
                    self._get(lo, hi)
                    continue
                cause = first
            except Exception as exc:
                cause = _cause(exc)
            self._bad[c] = f"bytes {c * self.step}..{(c + 1) * self.step} of /{self.name} unreadable: {cause}"
        bad = [self._bad[c] for c in chunks if c in self._bad]
        raise _Bad(bad[0] if bad else f"bytes {off}..{off + n} of /{self.name} unreadable: {first}")

    def _get(self, a: int, b: int) -> bytes:
        try:
            return np.asarray(self.ds[a:b], dtype=np.uint8).tobytes()
        except Exception:
            self._failures.n += 1
            raise


class SessionReader:
    """Reads a session file's documents in order; works while another process still writes it.

    Damage never stops the reading: each record that cannot be read is skipped and described in
    :attr:`damage` / :attr:`problems` (by position and cause), every intact record before and after
    it is returned. Opening a file whose HDF5 structure is damaged raises StoreError at once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no session file at {self.path}")
        self._file_damage: dict[str, Damage] = {}
        self._record_damage: dict[int, Damage] = {}
        self._rows_seen = 0
        flags, eof = self._superblock()
        #: the file is still flagged as open for writing: a live session, or one whose writer was killed
        self.unfinished = bool(flags & 0x1)
        self._f = _open_h5(self.path, self.unfinished)
        # Identified by its attributes' names, types and format_version, never by the text of
        # ``format``: a variable-length string lives in HDF5's global heap, the one structure of the
        # file without a checksum, and HDF5 can loop forever parsing a damaged one.
        try:
            names = set(self._f.attrs)
            is_session = ("format" in names and "format_version" in names
                          and self._f.attrs.get_id("format").dtype.kind in "OSU")
            version = self._f.attrs["format_version"] if is_session else None
        except Exception as exc:
            self._f.close()
            raise StoreError(f"cannot open session file {self.path}: its root group is unreadable: "
                             f"{_cause(exc)}") from exc
        if not is_session or not isinstance(version, np.integer | int):
            self._f.close()
            raise StoreError(f"{self.path} is not a cortexloop session file")
        if int(version) != FORMAT_VERSION:
            self._f.close()
            raise StoreError(f"{self.path} is a cortexloop session file of format version {int(version)}; "
                             f"this cortexloop reads version {FORMAT_VERSION}")
        size = self.path.stat().st_size
        if size < eof:
            self._file_note(f"the file is truncated: {size} of {eof} bytes; whatever was stored past the cut "
                            f"is lost")
        # opened again for each reading (see _refresh); here only checked
        try:
            self._dataset("log/index", np.int64, 2)
            self._dataset("log/bytes", np.uint8, 1)
        except StoreError:
            self._f.close()
            raise
        try:
            self._dataset("arrays/bytes", np.uint8, 1)
        except StoreError as exc:
            self._file_note(f"{str(exc).removeprefix(f'{self.path}: ')}; documents with arrays (images, counts) "
                            "cannot be read")
            self._has_arrays = False
        else:
            self._has_arrays = True

    def _superblock(self) -> tuple[int, int]:
        """(consistency flags, end-of-file address) from the HDF5 superblock, checked enough
        that HDF5 only ever parses checksummed metadata (session files are written with version 3)."""
        try:
            with self.path.open("rb") as fh:
                head = fh.read(48)
        except OSError as exc:
            raise StoreError(f"cannot open session file {self.path}: {exc}") from exc
        if head[:8] != _SIGNATURE:
            what = "it is empty" if not head else "no HDF5 signature at its start"
            raise StoreError(f"cannot open session file {self.path}: not an HDF5 file ({what})")
        if len(head) < 12:
            raise StoreError(f"cannot open session file {self.path}: truncated to {len(head)} bytes")
        version = head[8]
        if version not in (2, 3):
            raise StoreError(f"{self.path} is not a cortexloop session file (HDF5 superblock version {version}; "
                             "session files have version 3), or its first bytes are damaged")
        if len(head) < 48:
            raise StoreError(f"cannot open session file {self.path}: truncated to {len(head)} bytes")
        if head[9] != 8 or head[10] != 8:
            raise StoreError(f"cannot open session file {self.path}: damaged HDF5 superblock "
                             f"(address sizes {head[9]}, {head[10]})")
        base, _, eof, _ = struct.unpack_from("<4Q", head, 12)
        return head[11], min(base + eof, 1 << 62)

    def _dataset(self, name: str, dtype: type, ndim: int) -> h5py.Dataset:
        try:
            ds = self._f[name]
            ok = isinstance(ds, h5py.Dataset) and ds.dtype == dtype and ds.ndim == ndim
            ok = ok and (ndim == 1 or ds.shape[1] == 4)
        except Exception as exc:
            cause = "missing" if isinstance(exc, KeyError) and "doesn't exist" in str(exc) else _cause(exc)
            raise StoreError(f"{self.path}: /{name} cannot be opened: {cause}") from exc
        if not ok:
            raise StoreError(f"{self.path}: /{name} is not what a session file holds there")
        return ds

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what was skipped -------------------------------------------------------------------------------
    @property
    def damage(self) -> list[Damage]:
        """Everything skipped so far: the file's own damage first, then records by position. The same
        file read twice gives the same list. In a file still flagged open for writing and otherwise
        sound, up to ``MAX_TORN`` damaged records that run to the end of its index are the last
        flush of a killed writer, never acknowledged: they are marked ``torn``."""
        records = sorted(self._record_damage.items())
        if self.unfinished and records and not self._file_damage:
            tail = self._rows_seen
            for i, d in reversed(records):  # damaged records that run to the end of the index
                end = d.last if d.last is not None else i
                if end != tail - 1 or d.cause.startswith("bytes "):  # not an unreadable chunk either
                    break
                tail = i
            if self._rows_seen - tail <= MAX_TORN:
                records = [(i, replace(d, torn=True) if i >= tail else d) for i, d in records]
        return list(self._file_damage.values()) + [d for _, d in records]

    @property
    def problems(self) -> list[str]:
        """:attr:`damage` as text: one line per damaged part, naming its position and cause."""
        return [str(d) for d in self.damage]

    def _file_note(self, cause: str) -> None:
        if cause not in self._file_damage:
            self._file_damage[cause] = d = Damage(self.path.name, None, cause)
            log.warning("%s", d)

    def _note(self, d: Damage, strict: bool) -> None:
        assert d.index is not None
        if self._record_damage.get(d.index) != d:
            self._record_damage[d.index] = d
            log.warning("%s", d)
        if strict:
            raise CorruptRecord(str(d))

    # -- reading ---------------------------------------------------------------------------------------
    def _refresh(self, failures: _Failures) -> tuple[h5py.Dataset, _Bytes, _Bytes | None] | None:
        """The datasets, opened afresh with their current sizes (None: they cannot be opened now).

        Opened for each reading and closed after it, never held: HDF5 shares an open dataset between
        the readers of one process, and a second reader opening a live file's dataset that another
        reader holds open can be served chunks the writer has changed since."""
        try:
            idx = self._dataset("log/index", np.int64, 2)
            logb = self._dataset("log/bytes", np.uint8, 1)
            arr = self._dataset("arrays/bytes", np.uint8, 1) if self._has_arrays else None
        except StoreError as exc:
            self._file_note(str(exc).removeprefix(f"{self.path}: "))
            return None
        for name, ds in (("log/index", idx), ("log/bytes", logb), ("arrays/bytes", arr)):
            try:
                if ds is not None:
                    ds.refresh()
            except Exception as exc:  # keeps the size it had; a plain (non-SWMR) read has nothing to refresh
                if self._f.swmr_mode:
                    self._file_note(f"/{name}: its size could not be re-read: {_cause(exc)}")
        return (idx, _Bytes(logb, "log/bytes", failures),
                _Bytes(arr, "arrays/bytes", failures) if arr is not None else None)

    def _rows(self, idx: h5py.Dataset, start: int, failures: _Failures) -> Iterator[tuple[int, np.ndarray | Damage]]:
        """Index rows from ``start``, read a chunk (1024 rows) at a time: an unreadable chunk of the
        index is one Damage naming its rows, the rows after it are read."""
        n = int(idx.shape[0])
        step = int(idx.chunks[0]) if idx.chunks else 1024
        a = max(start, 0)
        while a < n:
            b = min(n, (a // step + 1) * step)
            if failures.exhausted:
                yield a, Damage(self.path.name, a, "index rows not read: too much of the file is unreadable",
                                last=n - 1)
                return
            try:
                rows = np.asarray(idx[a:b], dtype=np.int64)
            except Exception as exc:
                failures.n += 1
                yield a, Damage(self.path.name, a, f"index rows unreadable: {_cause(exc)}", last=b - 1)
            else:
                for k in range(b - a):
                    yield a + k, rows[k]
            a = b

    def indexed_documents(self, start: int = 0, *, strict: bool = False) -> Iterator[tuple[int, Any]]:
        """(position, document) for every intact document from ``start`` on, as written so far."""
        failures = _Failures(MAX_FAILED_READS if self.unfinished else None)
        got = self._refresh(failures)
        if got is None:
            return
        idx, logb, arr = got
        self._rows_seen = max(self._rows_seen, int(idx.shape[0]))
        for i, item in self._rows(idx, start, failures):
            if isinstance(item, Damage):
                self._note(item, strict)
                continue
            try:
                doc = self._record(item, logb, arr)
            except _Bad as bad:
                self._note(Damage(self.path.name, i, bad.cause, bad.kind, bad.image_id), strict)
                continue
            self._record_damage.pop(i, None)  # read now (a live file that was caught mid-write)
            yield i, doc

    def documents(self, start: int = 0, *, strict: bool = False) -> Iterator[Any]:
        """Documents ``start``, ``start+1``, ... as written so far. A damaged record is skipped and
        described in :attr:`problems` (raised as CorruptRecord with ``strict``); reading goes on."""
        for _, doc in self.indexed_documents(start, strict=strict):
            yield doc

    def _record(self, row: np.ndarray, logb: _Bytes, arr: _Bytes | None) -> Any:
        off, length, crc, ok = (int(v) for v in row)
        if ok != 1 or length <= 0 or off < 0 or not 0 <= crc <= 0xFFFFFFFF:
            raise _Bad("incomplete index record")
        if off + length > logb.size:
            raise _Bad(f"incomplete index record: its JSON (bytes {off}..{off + length}) lies beyond the end "
                       f"of /log/bytes ({logb.size} bytes)")
        body = logb.read(off, length)
        m, im = _KIND_RE.search(body), _IMAGE_RE.search(body)
        kind = m.group(1).decode() if m else None
        image = im.group(1).decode() if im and kind == "image" else None
        if _crc(body) != crc:
            raise _Bad("checksum mismatch (half-written or damaged record)", kind, image)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise _Bad(f"invalid JSON: {_short(exc)}", kind, image) from exc
        if not isinstance(data, dict):
            raise _Bad(f"not a JSON object but {type(data).__name__}", kind, image)
        kind = data["kind"] if data.get("kind") in KINDS else None
        image = data.get("image_id") if kind == "image" and isinstance(data.get("image_id"), str) else image
        try:
            doc = DOCUMENT_ADAPTER.validate_python(self._restore(data, arr, 0))
        except _Bad as bad:
            raise _Bad(bad.cause, kind, image) from None
        except (ValueError, RecursionError) as exc:
            raise _Bad(f"not a valid {kind or 'document'}: {_short(exc)}", kind, image) from exc
        _check(doc)
        return doc

    def _restore(self, obj: Any, arr: _Bytes | None, depth: int) -> Any:
        if depth > 200:
            raise _Bad("nested too deeply")
        if isinstance(obj, dict):
            ref = obj.get("__nd__")
            if isinstance(ref, dict) and len(obj) == 1:
                return self._array(ref, arr)
            return {k: self._restore(v, arr, depth + 1) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._restore(v, arr, depth + 1) for v in obj]
        return obj

    @staticmethod
    def _array(ref: dict[str, Any], arr: _Bytes | None) -> np.ndarray:
        def count(key: str) -> int:
            v = ref.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise _Bad(f"malformed array reference: {key} {_short(v, 40)}")
            return v

        off, nbytes, crc = count("offset"), count("nbytes"), count("crc")
        dtype, shape = ref.get("dtype"), ref.get("shape")
        if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
            raise _Bad(f"malformed array reference: dtype {_short(dtype, 40)}")
        if (not isinstance(shape, list) or len(shape) > 32
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise _Bad(f"malformed array reference: shape {_short(shape, 60)}")
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize != nbytes:
            raise _Bad(f"array reference of shape {shape} and dtype {dtype} does not hold {nbytes} bytes")
        if arr is None:
            raise _Bad("its array bytes are lost with /arrays/bytes")
        raw = arr.read(off, nbytes)
        if _crc(raw) != crc:
            raise _Bad("array checksum mismatch (damaged array bytes)")
        return np.frombuffer(bytearray(raw), dtype=dt).reshape(shape)

    def __len__(self) -> int:
        got = self._refresh(_Failures(None))
        return int(got[0].shape[0]) if got is not None else 0

    # -- conveniences ------------------------------------------------------------------------
    def start_doc(self) -> StartDoc | None:
        for d in self.documents():
            return d if isinstance(d, StartDoc) else None
        return None

    def of_kind(self, kind: type[Document]) -> list[Any]:
        return [d for d in self.documents() if isinstance(d, kind)]

    def images(self) -> dict[str, np.ndarray]:
        return {d.image_id: d.pixels for d in self.of_kind(ImageDoc)}

    def counts(self) -> tuple[list[TrialDoc], list[str], np.ndarray]:
        """(valid trials with counts, unit ids, counts (trials x units)) with NaN where a unit was not
        recorded. Trials that did not count (the animal did not look: ``valid`` false) are left out."""
        trials: dict[str, TrialDoc] = {}
        responses: dict[str, ResponseDoc] = {}
        for d in self.documents():
            if isinstance(d, TrialDoc) and d.valid:
                trials[d.trial_id] = d
            elif isinstance(d, ResponseDoc):
                responses[d.trial_id] = d
        order = [t for t in trials.values() if t.trial_id in responses]
        units = list(dict.fromkeys(u for r in responses.values() for u in r.units))
        col = {u: j for j, u in enumerate(units)}
        out = np.full((len(order), len(units)), np.nan)
        for i, t in enumerate(order):
            r = responses[t.trial_id]
            out[i, [col[u] for u in r.units]] = r.counts
        return order, units, out


def _check(doc: Any) -> None:
    """What the document types cannot say: an image is (H, W[, 1|3|4]) uint8, counts match their units."""
    if isinstance(doc, ImageDoc):
        px = doc.pixels
        if not (px.dtype == np.uint8 and (px.ndim == 2 or (px.ndim == 3 and px.shape[2] in (1, 3, 4)))
                and px.size > 0):
            raise _Bad(f"wrong shape {tuple(px.shape)} or dtype {px.dtype} for an image "
                       "(expected uint8 (H, W, 3))", "image", doc.image_id)
    elif isinstance(doc, ResponseDoc) and (why := _bad_counts(doc)):
        raise _Bad(why, "response")


def _bad_counts(doc: ResponseDoc) -> str | None:
    """Why ``doc``'s counts cannot be spike counts (None when they can): one per unit, finite, >= 0
    (integers from a rig; imported repeat-averaged counts may be fractional)."""
    c = np.asarray(doc.counts)
    if c.size != len(doc.units):
        return f"{c.size} counts for {len(doc.units)} units"
    if c.dtype.kind not in "iuf":
        return f"counts of dtype {c.dtype} are not numbers"
    if c.dtype.kind == "f" and not np.isfinite(c).all():
        return "NaN or infinite counts cannot be spike counts"
    if c.size and c.min() < 0:
        return "negative counts cannot be spike counts"
    return None
