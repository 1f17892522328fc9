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

Files are written in HDF5's SWMR mode: a reader (another process) can follow a session
while it is being recorded. A file left by a killed writer stays marked as open for writing
(HDF5's consistency flag); :meth:`SessionWriter.resume` reads its acknowledged documents
with a SWMR reader, writes them to a fresh file, keeps the crashed file beside it as
``<name>.crashed-<time>.h5`` and continues there. Nothing acknowledged is lost or doubled.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

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


class SessionReader:
    """Reads a session file's documents in order; works while another process still writes it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"no session file at {self.path}")
        try:
            self._f = h5py.File(self.path, "r", libver="latest", swmr=True)
        except OSError as exc:
            raise StoreError(f"cannot open session file {self.path}: {exc}") from exc
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise StoreError(f"{self.path} is not a cortexloop session file")
        self.problems: list[str] = []

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refresh(self) -> tuple[h5py.Dataset, h5py.Dataset, h5py.Dataset]:
        idx, logb, arr = self._f["log/index"], self._f["log/bytes"], self._f["arrays/bytes"]
        for ds in (idx, logb, arr):
            ds.refresh()
        return idx, logb, arr

    def _restore(self, obj: Any, arr: h5py.Dataset, where: str) -> Any:
        if isinstance(obj, dict):
            ref = obj.get("__nd__")
            if isinstance(ref, dict) and len(obj) == 1:
                off, nbytes = int(ref["offset"]), int(ref["nbytes"])
                if off + nbytes > arr.shape[0]:
                    raise CorruptRecord(f"{where}: array bytes beyond the end of the file")
                raw = arr[off:off + nbytes] if nbytes else np.empty(0, np.uint8)
                if _crc(raw.tobytes()) != ref["crc"]:
                    raise CorruptRecord(f"{where}: array checksum mismatch")
                return raw.view(np.dtype(ref["dtype"])).reshape(ref["shape"])
            return {k: self._restore(v, arr, where) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._restore(v, arr, where) for v in obj]
        return obj

    def documents(self, start: int = 0, *, strict: bool = False) -> Iterator[Any]:
        """Documents ``start``, ``start+1``, ... as written so far. A damaged record ends the
        iteration and is noted in :attr:`problems` (raised as CorruptRecord with ``strict``)."""
        idx, logb, arr = self._refresh()
        rows = idx[start:]
        for i, (off, length, crc, ok) in enumerate(rows, start):
            where = f"{self.path.name} document {i}"
            try:
                if ok != 1 or length <= 0 or off + length > logb.shape[0]:
                    raise CorruptRecord(f"{where}: incomplete index record")
                body = logb[off:off + length].tobytes()
                if _crc(body) != crc:
                    raise CorruptRecord(f"{where}: checksum mismatch (half-written record)")
                data = self._restore(json.loads(body), arr, where)
                yield DOCUMENT_ADAPTER.validate_python(data)
            except (CorruptRecord, ValueError, KeyError) as exc:
                err = exc if isinstance(exc, CorruptRecord) else CorruptRecord(f"{where}: {exc}")
                self.problems.append(str(err))
                log.warning("%s", err)
                if strict:
                    raise err from exc
                return

    def __len__(self) -> int:
        idx, _, _ = self._refresh()
        return int(idx.shape[0])

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
        """(trials with counts, unit ids, counts (trials x units)) with NaN where a unit was not recorded."""
        trials: dict[str, TrialDoc] = {}
        responses: dict[str, ResponseDoc] = {}
        for d in self.documents():
            if isinstance(d, TrialDoc):
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
