"""Base of every message that crosses a process boundary, and the numpy field type.

A message is a pydantic model with ``extra="forbid"`` and a literal ``kind`` that names it
on the wire. A field typed :data:`Array` holds a numpy array; the codec (``wire.codec``)
moves its bytes as a raw frame, never through JSON and never through pickle.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SerializationInfo,
    WithJsonSchema,
)

#: dtypes allowed on the wire (little-endian, fixed size). Anything else is a DecodeError.
WIRE_DTYPES: frozenset[str] = frozenset(
    np.dtype(t).str
    for t in ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
              "float16", "float32", "float64")
)


def _validate_array(value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(value).__name__}")
    if value.dtype.str not in WIRE_DTYPES:
        raise ValueError(f"dtype {value.dtype.str!r} cannot travel; allowed: {sorted(WIRE_DTYPES)}")
    return value


def _serialize_array(value: np.ndarray, info: SerializationInfo) -> Any:
    return value.tolist() if info.mode == "json" else value


#: A numpy array field. Validation accepts only ndarrays of a wire dtype; JSON dumps of a
#: message outside the codec show the array as a nested list (for logs and debugging).
Array = Annotated[
    np.ndarray,
    PlainValidator(_validate_array),
    PlainSerializer(_serialize_array, return_type=Any),
    WithJsonSchema({"type": "array", "description": "numpy array, sent as a raw buffer frame"}),
]


def new_uid() -> str:
    return uuid.uuid4().hex


class Message(BaseModel):
    """A typed message. Subclasses declare ``kind: Literal["..."] = "..."``."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=False)


class Document(Message):
    """A record of the session store: every document has a uid and a wall-clock time."""

    uid: str = Field(default_factory=new_uid, description="unique id of this document")
    time: float = Field(default_factory=time.time, description="seconds since the epoch when made")


def image_id(pixels: np.ndarray) -> str:
    """Content hash of an image: blake2b over shape, dtype and bytes (hex, 32 chars)."""
    import hashlib

    a = np.ascontiguousarray(pixels)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.data.cast("B") if a.size else b"")
    return h.hexdigest()
