"""Codec round-trips of every message type and of arrays; malformed input raises typed errors."""

from __future__ import annotations

import json
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import TypeAdapter

from tests.wire.examples import all_message_classes, example
from wire.base import WIRE_DTYPES, Array, Message
from wire.codec import decode, decode_header, encode
from wire.errors import DecodeError, MessageTooLarge, UnknownCommand
from wire.transport import union_adapter


class Holder(Message):
    kind: Literal["test.holder"] = "test.holder"
    a: Array
    more: list[Array] = []
    note: str = ""


HOLDER = TypeAdapter(Holder)


def _equal(x: object, y: object) -> bool:
    if isinstance(x, np.ndarray):
        return isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple):
        return isinstance(y, list | tuple) and len(x) == len(y) and all(map(_equal, x, y))
    return x == y


@pytest.mark.parametrize("cls", all_message_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_message_type_round_trips(cls: type[Message]) -> None:
    msg = example(cls)
    frames = encode(msg, "rid-1")
    rid, back = decode([bytes(f) for f in frames], TypeAdapter(cls))
    assert rid == "rid-1"
    assert type(back) is cls
    assert _equal(msg.model_dump(), back.model_dump())


def test_union_of_all_messages_dispatches_on_kind() -> None:
    classes = all_message_classes()
    kinds = [c.model_fields["kind"].default for c in classes]
    assert len(kinds) == len(set(kinds)), "two message classes share a kind"
    adapter = union_adapter(classes)
    for cls in classes:
        _, back = decode([bytes(f) for f in encode(example(cls))], adapter)
        assert type(back) is cls


dtypes = st.sampled_from(sorted(WIRE_DTYPES)).map(np.dtype)


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
       st.booleans())
def test_arrays_of_all_dtypes_and_shapes_round_trip(a: np.ndarray, transpose: bool) -> None:
    if transpose and a.ndim >= 2:
        a = a.T  # non-contiguous view
    frames = encode(Holder(a=a, more=[a[..., ::2] if a.ndim else a]))
    _, back = decode([bytes(f) for f in frames], HOLDER)
    assert back.a.dtype == a.dtype and back.a.shape == a.shape
    assert np.array_equal(back.a, a, equal_nan=a.dtype.kind == "f")


def test_contiguous_send_is_zero_copy_and_receive_wraps_the_frame() -> None:
    a = np.arange(112 * 112 * 3 * 4, dtype=np.uint8).reshape(4, 112, 112, 3)
    frames = encode(Holder(a=a))
    assert isinstance(frames[1], memoryview) and np.shares_memory(np.frombuffer(frames[1], np.uint8), a)
    buf = bytearray(frames[1])
    _, back = decode([frames[0], buf], HOLDER)
    assert np.shares_memory(back.a, np.frombuffer(buf, np.uint8))


def test_empty_and_noncontiguous_arrays() -> None:
    for a in (np.zeros((0, 112, 112, 3), np.uint8), np.arange(20.0).reshape(4, 5)[:, 1::2], np.full((), 3.5, np.float32)):
        _, back = decode([bytes(f) for f in encode(Holder(a=a))], HOLDER)
        assert back.a.shape == a.shape and np.array_equal(back.a, a)


def _header(frames: list) -> dict:
    return json.loads(bytes(frames[0]))


def _with_header(header: dict, rest: list) -> list:
    return [json.dumps(header).encode(), *rest]


def test_wrong_dtype_string_is_a_decode_error() -> None:
    frames = encode(Holder(a=np.zeros(3, np.float32)))
    for bad in ("<O", "object", "|V8", "<M8[ns]", 7):
        h = _header(frames)
        h["msg"]["a"]["dtype"] = bad
        with pytest.raises(DecodeError, match="dtype"):
            decode(_with_header(h, [bytes(frames[1])]), HOLDER)


def test_shape_size_mismatch_is_a_decode_error() -> None:
    frames = encode(Holder(a=np.zeros((2, 3), np.float64)))
    h = _header(frames)
    h["msg"]["a"]["shape"] = [3, 3]
    with pytest.raises(DecodeError, match="needs"):
        decode(_with_header(h, [bytes(frames[1])]), HOLDER)
    h["msg"]["a"]["shape"] = [-1, 6]
    with pytest.raises(DecodeError, match="shape"):
        decode(_with_header(h, [bytes(frames[1])]), HOLDER)


@pytest.mark.parametrize("frames", [
    [],
    [b"\xff\xfe not json"],
    [b"[1,2]"],
    [b'{"v": 99, "msg": {}}'],
    [b'{"v": 1, "id": 5, "msg": {}}'],
    [b'{"v": 1, "msg": {"kind": "test.holder", "a": {"__nd__": 0, "dtype": "<f8", "shape": [1]}}}'],  # missing frame
    [b'{"v": 1, "msg": {"kind": "test.holder", "a": {"__nd__": 0, "dtype": "<f8", "shape": [0]}}}', b"", b"x"],  # extra frame
    [b'{"v": 1, "msg": {"kind": "test.holder", "a": {"__nd__": 0, "dtype": "<f8", "shape": [0], "x": 1}}}', b""],
    [b'{"v": 1, "msg": {"kind": "test.holder", "a": [1, 2]}}'],  # a list is not an array
    [b'{"v": 1, "msg": {"kind": "test.holder", "a": {"__nd__": 0, "dtype": "<f8", "shape": [0]}, "bogus": 1}}', b""],
])
def test_malformed_messages_raise_decode_error(frames: list) -> None:
    with pytest.raises(DecodeError):
        decode(frames, HOLDER)


def test_unknown_kind_is_unknown_command() -> None:
    adapter = union_adapter([Holder, *all_message_classes()[:3]])
    with pytest.raises(UnknownCommand, match=r"no\.such"):
        decode([b'{"v": 1, "msg": {"kind": "no.such"}}'], adapter)


def test_oversized_message_is_refused_before_parsing() -> None:
    frames = encode(Holder(a=np.zeros(1000, np.uint8)))
    with pytest.raises(MessageTooLarge):
        decode_header([bytes(f) for f in frames], max_bytes=500)


def test_nothing_but_json_and_numbers_comes_out_of_a_frame() -> None:
    import pickle

    evil = pickle.dumps(object())
    with pytest.raises(DecodeError):
        decode([evil], HOLDER)
