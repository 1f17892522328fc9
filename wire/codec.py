"""The ZeroMQ multipart codec: one JSON header frame, then one raw frame per numpy array.

Header: ``{"v": 1, "id": <request id or null>, "msg": <the message as JSON>}`` where every
array inside ``msg`` is replaced by ``{"__nd__": i, "dtype": "<f4", "shape": [...]}`` and its
bytes travel as frame ``1 + i``. Sending never copies a C-contiguous array (the frame wraps
its buffer); receiving wraps the frame's buffer with ``np.frombuffer`` (read-only arrays).
Nothing is ever pickled: a frame can only ever become JSON or a numeric array.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import zmq
from pydantic import TypeAdapter, ValidationError

from wire.base import WIRE_DTYPES, Message
from wire.errors import DecodeError, MessageTooLarge, UnknownCommand

VERSION = 1
#: Default cap on one message (all frames together): 1 GiB.
DEFAULT_MAX_BYTES = 1 << 30

M = TypeVar("M", bound=Message)
Frame = bytes | memoryview | zmq.Frame


def _strip(obj: Any, buffers: list[memoryview]) -> Any:
    if isinstance(obj, np.ndarray):
        a = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)
        buffers.append(a.data.cast("B") if a.size else memoryview(b""))
        return {"__nd__": len(buffers) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(obj, dict):
        return {k: _strip(v, buffers) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strip(v, buffers) for v in obj]
    return obj


def encode(msg: Message, request_id: str | None = None) -> list[bytes | memoryview]:
    """Frames for ``msg``: the JSON header, then the arrays' buffers (zero-copy)."""
    buffers: list[memoryview] = []
    body = _strip(msg.model_dump(mode="python"), buffers)
    header = json.dumps({"v": VERSION, "id": request_id, "msg": body}, separators=(",", ":"),
                        default=_json_default).encode()
    return [header, *buffers]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        raise TypeError("bytes fields cannot travel in the JSON header; use an Array")
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _buffer(frame: Frame) -> memoryview:
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return memoryview(frame)


def _restore(obj: Any, buffers: Sequence[memoryview], used: set[int]) -> Any:
    if isinstance(obj, dict):
        if "__nd__" in obj:
            return _array(obj, buffers, used)
        return {k: _restore(v, buffers, used) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, buffers, used) for v in obj]
    return obj


def _array(ref: dict[str, Any], buffers: Sequence[memoryview], used: set[int]) -> np.ndarray:
    if set(ref) != {"__nd__", "dtype", "shape"}:
        raise DecodeError(f"bad array reference {sorted(ref)}")
    i, dtype, shape = ref["__nd__"], ref["dtype"], ref["shape"]
    if not isinstance(i, int) or not 0 <= i < len(buffers) or i in used:
        raise DecodeError(f"array reference {i!r} names no unused frame ({len(buffers)} array frames)")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise DecodeError(f"dtype {dtype!r} is not allowed on the wire; allowed: {sorted(WIRE_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DecodeError(f"bad array shape {shape!r}")
    dt = np.dtype(dtype)
    buf = buffers[i]
    expected = math.prod(shape) * dt.itemsize
    if buf.nbytes != expected:
        raise DecodeError(f"array frame {i} holds {buf.nbytes} bytes; shape {shape} of {dtype} needs {expected}")
    used.add(i)
    if expected == 0:
        return np.empty(shape, dtype=dt)
    return np.frombuffer(buf, dtype=dt).reshape(shape)


def decode_header(frames: Sequence[Frame], max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, Any]:
    """(request id, message as plain data with arrays restored), validating the framing only."""
    if not frames:
        raise DecodeError("empty message")
    buffers = [_buffer(f) for f in frames]
    total = sum(b.nbytes for b in buffers)
    if total > max_bytes:
        raise MessageTooLarge(f"message of {total} bytes exceeds the limit of {max_bytes}")
    try:
        header = json.loads(bytes(buffers[0]))
    except ValueError as exc:  # not UTF-8, not JSON, or a number of more digits than Python converts
        raise DecodeError(f"header frame is not JSON: {_short(str(exc))}") from exc
    except RecursionError as exc:
        raise DecodeError("header frame is nested too deeply") from exc
    if not isinstance(header, dict) or header.get("v") != VERSION or "msg" not in header:
        raise DecodeError(f"header is not a cortexloop v{VERSION} envelope")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, str) or len(rid) > MAX_ID_CHARS):
        raise DecodeError(f"request id must be a string of at most {MAX_ID_CHARS} characters")
    used: set[int] = set()
    try:
        body = _restore(header["msg"], buffers[1:], used)
    except RecursionError as exc:
        raise DecodeError("message is nested too deeply") from exc
    if len(used) != len(buffers) - 1:
        raise DecodeError(f"{len(buffers) - 1 - len(used)} array frame(s) not referenced by the header")
    return rid, body


def validate(body: Any, adapter: TypeAdapter[Any]) -> Any:
    """Validate decoded data against a message type or union; unknown kinds raise UnknownCommand."""
    try:
        return adapter.validate_python(body)
    except RecursionError as exc:
        raise DecodeError("message is nested too deeply") from exc
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] in ("union_tag_invalid", "union_tag_not_found") for e in errors):
            kind = body.get("kind") if isinstance(body, dict) else None
            raise UnknownCommand(f"unknown message kind {_short(repr(kind))}") from exc
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:10])
        raise DecodeError(f"invalid message: {_short(detail, 2000)}") from exc


#: longest request id a reply echoes (longer ids are not echoed: the error goes out without one)
MAX_ID_CHARS = 256
_ID_PATTERN = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.){1,%d})"' % MAX_ID_CHARS)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def peek_request_id(header: Frame) -> str | None:
    """The request id of a header frame, read leniently so that an error reply finds its caller
    even when the rest of the message is malformed: the ``id`` of a JSON object, else the first
    ``"id": "..."`` among the frame's first 4 KiB (truncated, non-UTF-8 or deeply nested JSON).
    None when no string id of at most :data:`MAX_ID_CHARS` characters can be read."""
    raw = bytes(_buffer(header))
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
        m = _ID_PATTERN.search(raw[:4096])
        if m is not None:
            try:
                obj = {"id": json.loads(b'"' + m.group(1) + b'"')}
            except ValueError:
                return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS else None


def decode(frames: Sequence[Frame], adapter: TypeAdapter[Any],
           max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, Any]:
    """(request id, validated message) from frames."""
    rid, body = decode_header(frames, max_bytes)
    return rid, validate(body, adapter)
