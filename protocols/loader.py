"""Loading and validating protocol files (YAML or TOML) with errors that say where.

Every problem pydantic finds is reported (not just the first), each with the key path
(``steps[2].images[0].n_images``) and, for YAML, the line and column of the offending key
(found by walking the composed YAML node tree along pydantic's error location). TOML has no
node marks in the standard library; there the key path is given, plus the line when the
key's name occurs on exactly one line of the file.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from protocols.errors import Problem, ProtocolValidationError
from protocols.library import LIBRARY, PROTOCOL_ADAPTER, ProtocolBase

Format = Literal["yaml", "toml"]


def load_protocol(path: str | Path) -> ProtocolBase:
    """Read and validate a protocol file (``.yaml``/``.yml`` or ``.toml``)."""
    p = Path(path)
    fmt: Format = "toml" if p.suffix.lower() == ".toml" else "yaml"
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProtocolValidationError([Problem("", f"cannot read: {exc}", source=str(p))], str(p)) from exc
    return parse_protocol(text, fmt, source=str(p))


def parse_protocol(text: str, fmt: Format = "yaml", source: str | None = None) -> ProtocolBase:
    """Validate protocol ``text``; raises :class:`ProtocolValidationError` listing every problem."""
    node: yaml.Node | None = None
    if fmt == "yaml":
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise ProtocolValidationError([Problem(
                "", f"YAML syntax: {exc.problem or exc}", line=mark.line + 1 if mark else None,
                column=mark.column + 1 if mark else None, source=source)], source) from exc
        except yaml.YAMLError as exc:
            raise ProtocolValidationError([Problem("", f"YAML: {exc}", source=source)], source) from exc
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"line (\d+), column (\d+)", str(exc))
            end = "end of document" in str(exc)
            line = int(m.group(1)) if m else (len(text.splitlines()) or 1) if end else None
            raise ProtocolValidationError([Problem(
                "", f"TOML syntax: {exc}", line=line, column=int(m.group(2)) if m else None,
                source=source)], source) from exc
    return validate_protocol(data, node=node, text=text if fmt == "toml" else None, source=source)


def validate_protocol(data: Any, *, node: yaml.Node | None = None, text: str | None = None,
                      source: str | None = None) -> ProtocolBase:
    """Validate already-parsed protocol data; ``node``/``text`` locate problems in the file."""
    if not isinstance(data, dict):
        raise ProtocolValidationError([Problem(
            "", f"a protocol is a mapping with a 'protocol' key, got {type(data).__name__}",
            line=1, source=source)], source)
    if "protocol" not in data or data["protocol"] not in LIBRARY:
        problem = Problem("protocol", f"must be one of {sorted(LIBRARY)}, got {data.get('protocol')!r}",
                          source=source)
        raise ProtocolValidationError([_locate(problem, ("protocol",), data, node, text)], source)
    try:
        return PROTOCOL_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = [problem_from_error(err, data, node=node, text=text, source=source)
                    for err in exc.errors(include_url=False)]
        raise ProtocolValidationError(problems, source) from exc


def problem_from_error(err: Any, data: Any, *, node: yaml.Node | None = None, text: str | None = None,
                       source: str | None = None) -> Problem:
    """A pydantic error dict as a :class:`Problem` located in ``data`` (and its YAML ``node``)."""
    loc: tuple[Any, ...] = tuple(err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") not in ("missing", "extra_forbidden") and "input" in err and not isinstance(
            err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not allowed here)"
    path = format_path(_data_path(loc, data))
    return _locate(Problem(path, msg, source=source), loc, data, node, text)


def _data_path(loc: Sequence[Any], data: Any) -> list[str | int]:
    """``loc`` without pydantic's union-tag elements: only keys/indices that exist in ``data``,
    plus a final missing or unknown key."""
    out: list[str | int] = []
    cur = data
    for i, elem in enumerate(loc):
        if isinstance(cur, dict) and elem in cur:
            out.append(elem)
            cur = cur[elem]
        elif isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur):
            out.append(elem)
            cur = cur[elem]
        elif i == len(loc) - 1 and isinstance(cur, dict) and isinstance(elem, str):
            out.append(elem)  # a missing field
    return out


def format_path(path: Sequence[str | int]) -> str:
    s = ""
    for elem in path:
        s += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if s else str(elem))
    return s


def _locate(problem: Problem, loc: Sequence[Any], data: Any, node: yaml.Node | None,
            text: str | None) -> Problem:
    line: int | None = None
    column: int | None = None
    if node is not None:
        mark = _yaml_mark(node, loc)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
    elif text is not None:
        keys = [e for e in _data_path(loc, data) if isinstance(e, str)]
        if keys:
            pat = re.compile(rf"^\s*(\"?){re.escape(keys[-1])}\1\s*=|^\s*\[+\s*([\w.]*\.)?{re.escape(keys[-1])}\s*\]+")
            hits = [i for i, ln in enumerate(text.splitlines()) if pat.search(ln)]
            if len(hits) == 1:
                line = hits[0] + 1
    return Problem(problem.path, problem.message, line=line, column=column, source=problem.source)


def _yaml_mark(node: yaml.Node, loc: Sequence[Any]) -> yaml.Mark | None:
    """The mark of the deepest node along ``loc`` (the key's mark for a mapping entry)."""
    mark: yaml.Mark | None = node.start_mark
    cur: yaml.Node | None = node
    for elem in loc:
        if isinstance(cur, yaml.MappingNode):
            for key, value in cur.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(elem):
                    mark, cur = key.start_mark, value
                    break
            # not a key: a union tag (skip) or a missing field (stay at the mapping)
        elif isinstance(cur, yaml.SequenceNode) and isinstance(elem, int) and 0 <= elem < len(cur.value):
            cur = cur.value[elem]
            mark = cur.start_mark
    return mark
