"""Build an example instance of any wire message from its field annotations (for round-trip tests)."""

from __future__ import annotations

import enum
import importlib
import pkgutil
import types
import typing
from typing import Any, Literal, get_args, get_origin

import annotated_types
import numpy as np
from pydantic import BaseModel

import wire
from wire.base import Message


def all_message_classes() -> list[type[Message]]:
    """Every concrete message class defined in the wire package (those with a literal ``kind``)."""
    for mod in pkgutil.iter_modules(wire.__path__):
        importlib.import_module(f"wire.{mod.name}")
    out: list[type[Message]] = []
    todo: list[type[Message]] = [Message]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("wire.") and "kind" in cls.model_fields:
            out.append(cls)
    return sorted(set(out), key=lambda c: (c.__module__, c.__name__))


def _number(lo: float | None, kind: type) -> Any:
    v = 1 if lo is None else lo + 1
    return kind(v)


def example_value(ann: Any, metadata: list[Any], rng: np.random.Generator, depth: int = 0) -> Any:
    origin = get_origin(ann)
    if origin is typing.Annotated:
        base, *meta = get_args(ann)
        if base is np.ndarray:
            return rng.integers(0, 255, size=(2, 3, 3), dtype=np.uint8)
        return example_value(base, [*metadata, *meta], rng, depth)
    if ann is np.ndarray:
        return rng.standard_normal((4, 5)).astype(np.float32)
    if origin is Literal:
        return get_args(ann)[0]
    if origin in (typing.Union, types.UnionType):
        if type(None) in get_args(ann) and depth > 0:
            return None  # optional fields of nested messages stay empty (recursive messages end)
        args = [a for a in get_args(ann) if a is not type(None)]
        return example_value(args[0], metadata, rng, depth)
    lo = None
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            lo = m.gt
        elif isinstance(m, annotated_types.Ge):
            lo = m.ge - 1
    if ann is bool:
        return True
    if ann is int:
        return _number(lo, int)
    if ann is float:
        return _number(lo, float) + 0.5
    if ann is str:
        return "x1"
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return next(iter(ann))
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return example(ann, rng, depth + 1)
    if origin in (list, typing.List, collections_abc_sequence()):  # noqa: UP006
        (item,) = get_args(ann) or (str,)
        return [example_value(item, [], rng, depth) for _ in range(2)]
    if origin is tuple:
        args = get_args(ann)
        if len(args) == 2 and args[1] is Ellipsis:
            return (example_value(args[0], [], rng),) * 2
        return tuple(example_value(a, [], rng) for a in args)
    if origin is dict or ann is dict:
        return {"a": 1}
    if ann is Any:
        return {"any": [1, 2]}
    raise TypeError(f"no example for annotation {ann!r}")


def collections_abc_sequence() -> Any:
    import collections.abc

    return collections.abc.Sequence


def _gaze(rng: np.random.Generator) -> dict[str, Any]:
    return {"t": np.cumsum(rng.random(3)) + 10.0, "xy": rng.standard_normal((3, 2)).astype(np.float32)}


#: arrays whose shapes a message's validator checks: (class name) -> field values
SHAPED: dict[str, Any] = {"GazeChunk": _gaze, "GazeDoc": _gaze}


def example(cls: type[BaseModel], rng: np.random.Generator | None = None, depth: int = 0) -> Any:
    """An instance of ``cls``: every field filled; failing that (cross-field validators), the
    required fields plus as many optional ones as validate."""
    from pydantic import ValidationError

    rng = rng or np.random.default_rng(0)
    # a document's uid and time have their own defaults; a message's required 'time' is filled like any field
    fields = {n: f for n, f in cls.model_fields.items() if n not in ("uid", "time") or f.is_required()}
    values = {n: example_value(f.annotation, list(f.metadata), rng, depth) for n, f in fields.items()}
    if cls.__name__ in SHAPED:
        values.update(SHAPED[cls.__name__](rng))
    try:
        return cls(**values)
    except ValidationError:
        pass
    chosen = {n: v for n, v in values.items() if fields[n].is_required()}
    for n, v in values.items():
        if n not in chosen:
            try:
                cls(**chosen, **{n: v})
                chosen[n] = v
            except ValidationError:
                continue
    return cls(**chosen)
