"""Loading and validating protocol files (YAML or TOML) with errors that say where.

Every problem pydantic finds is reported (not just the first), each with the key path
(``steps[2].images[0].n_images``) and, for YAML, the line and column of the offending key
(found by walking the composed YAML node tree along pydantic's error location). TOML has no
node marks in the standard library; there the key path is given, plus the line when the
key's name occurs on exactly one line of the file.

Command-line overrides (``--set KEY=VALUE``: a dotted key path, list indices as numbers, and
a YAML value) are applied to the parsed data before validation, so they are validated
exactly like the file; a problem in an overridden value names the override, not a line.

Reading is bounded (protocol and rig files are tiny in practice): a file larger than
:data:`MAX_FILE_BYTES` is refused before it is read, text must be UTF-8, nesting deeper than
:data:`MAX_DEPTH` is refused while composing (YAML) or after parsing (TOML), and a YAML
document is refused once it would hold more than :data:`MAX_NODES` nodes with every alias
expanded (a "billion laughs" file stops after about that many nodes, in milliseconds). Each
of these is a :class:`ProtocolValidationError` naming the file, never a traceback.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from protocols.errors import Problem, ProtocolValidationError
from protocols.library import LIBRARY, PROTOCOL_ADAPTER, ProtocolBase
from protocols.library.schedule import ScheduleProtocol

Format = Literal["yaml", "toml"]

#: largest protocol or rig file read (protocol files are a few KiB)
MAX_FILE_BYTES = 1 << 20
#: deepest nesting of mappings and lists (a protocol needs about 6)
MAX_DEPTH = 100
#: most YAML nodes in one document, every alias expanded (a protocol has a few hundred)
MAX_NODES = 100_000


def load_protocol(path: str | Path, overrides: Sequence[str] = ()) -> ProtocolBase:
    """Read and validate a protocol file (``.yaml``/``.yml`` or ``.toml``), with ``overrides``
    (``KEY=VALUE`` strings, see :func:`apply_overrides`) applied before validation."""
    p = Path(path)
    fmt: Format = "toml" if p.suffix.lower() == ".toml" else "yaml"
    text = read_text_file(p)
    return parse_protocol(text, fmt, source=str(p), overrides=overrides)


def read_text_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of a protocol (or rig) file, at most ``max_bytes`` long; a file that cannot
    be read, is too large or is not UTF-8 is a :class:`ProtocolValidationError` naming it (a
    problem message starting with "cannot read")."""
    p = Path(path)
    source = str(p)

    def bad(message: str, line: int | None = None) -> ProtocolValidationError:
        return ProtocolValidationError([Problem("", f"cannot read: {message}", line=line, source=source)], source)

    try:
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise bad(str(exc)) from exc
    if len(raw) > max_bytes:
        raise bad(f"the file is larger than {max_bytes:,} bytes (protocol and rig files are a few KiB)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise bad(f"not UTF-8 text (byte {exc.start}: {exc.reason}); save the file as UTF-8", line) from exc


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses nesting deeper than :data:`MAX_DEPTH` and documents of more
    than :data:`MAX_NODES` nodes with aliases expanded, while composing (before anything large
    is built)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # refused while scanning: PyYAML's scanner looks ahead through nested flow collections
        # (each level may start a simple key) in time quadratic in the depth
        if self.flow_level >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[misc]

    def _count(self, n: int, mark: yaml.Mark | None) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES:,} values once aliases are expanded "
                     f"(a YAML alias bomb, or far more data than a protocol holds)", mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # type: ignore[misc]
            self._count(self._sizes.get(id(node), 1), event.start_mark)
            return node  # type: ignore[no-any-return]
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(self._sizes.get(id(c), 1) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
        self._sizes[id(node)] = size
        self._count(1, node.start_mark)
        return node  # type: ignore[no-any-return]


def _yaml_problem(exc: Exception, source: str | None) -> ProtocolValidationError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        return ProtocolValidationError([Problem(
            "", f"YAML syntax: {exc.problem or exc}", line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None, source=source)], source)
    if isinstance(exc, yaml.YAMLError):
        return ProtocolValidationError([Problem("", f"YAML: {exc}", source=source)], source)
    # a value PyYAML matched but Python refuses (an impossible date, an integer of > 4300 digits)
    return ProtocolValidationError([Problem("", f"YAML value: {exc}", source=source)], source)


def load_yaml(text: str, source: str | None = None) -> tuple[yaml.Node | None, Any]:
    """(composed node, data) of one YAML document, with the limits of :class:`_BoundedLoader`
    and :data:`MAX_FILE_BYTES`; any problem is a :class:`ProtocolValidationError`."""
    if len(text) > MAX_FILE_BYTES:
        raise ProtocolValidationError([Problem(
            "", f"the text is longer than {MAX_FILE_BYTES:,} characters", source=source)], source)
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses unprintable characters here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _yaml_problem(exc, source) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return node, data


def _too_deep(data: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        cur, depth = stack.pop()
        if isinstance(cur, dict | list):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in (cur.values() if isinstance(cur, dict) else cur))
    return False


def load_toml(text: str, source: str | None = None) -> Any:
    """The data of a TOML document, with the limits of :data:`MAX_FILE_BYTES` and :data:`MAX_DEPTH`;
    any problem is a :class:`ProtocolValidationError`."""
    def bad(message: str, line: int | None = None, column: int | None = None) -> ProtocolValidationError:
        return ProtocolValidationError([Problem("", message, line=line, column=column, source=source)], source)

    if len(text) > MAX_FILE_BYTES:
        raise bad(f"the text is longer than {MAX_FILE_BYTES:,} characters")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+), column (\d+)", str(exc))
        end = "end of document" in str(exc)
        line = int(m.group(1)) if m else (len(text.splitlines()) or 1) if end else None
        raise bad(f"TOML syntax: {exc}", line, int(m.group(2)) if m else None) from exc
    except RecursionError as exc:  # tomllib parses nested arrays and inline tables recursively
        raise bad(f"TOML: nested deeper than {MAX_DEPTH} levels") from exc
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. an integer of more than 4300 digits
        raise bad(f"TOML value: {exc}") from exc
    if _too_deep(data, MAX_DEPTH):
        raise bad(f"TOML: nested deeper than {MAX_DEPTH} levels")
    return data


def parse_protocol(text: str, fmt: Format = "yaml", source: str | None = None,
                   overrides: Sequence[str] = ()) -> ProtocolBase:
    """Validate protocol ``text`` with ``overrides`` applied (see :func:`apply_overrides`);
    raises :class:`ProtocolValidationError` listing every problem."""
    node: yaml.Node | None = None
    if fmt == "yaml":
        node, data = load_yaml(text, source)
    else:
        data = load_toml(text, source)
    return validate_protocol(data, node=node, text=text if fmt == "toml" else None, source=source,
                             overrides=overrides)


def validate_protocol(data: Any, *, node: yaml.Node | None = None, text: str | None = None,
                      source: str | None = None, overrides: Sequence[str | Override] = ()) -> ProtocolBase:
    """Validate already-parsed protocol data with ``overrides`` applied; ``node``/``text``
    locate problems in the file, problems in overridden values name their override. A schedule's
    stage files are read relative to ``source`` (see :func:`stage_loader`)."""
    if not isinstance(data, dict):
        raise ProtocolValidationError([Problem(
            "", f"a protocol is a mapping with a 'protocol' key, got {type(data).__name__}",
            line=1, source=source)], source)
    applied = _apply(data, _parse_all(overrides, source), source)
    file_data, data = data, applied[0]
    origin = _Origin(file_data, applied[1])
    if not isinstance(data.get("protocol"), str) or data["protocol"] not in LIBRARY:
        problem = Problem("protocol", f"must be one of {sorted(LIBRARY)}, got {data.get('protocol')!r}",
                          source=source)
        raise ProtocolValidationError([origin.locate(problem, ["protocol"], ("protocol",), node, text)],
                                      source)
    try:
        if data["protocol"] == "schedule":
            return ScheduleProtocol.model_validate(data, context={"load_stage": stage_loader(source)})
        return PROTOCOL_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = [problem_from_error(err, data, node=node, text=text, source=source, origin=origin)
                    for err in exc.errors(include_url=False)]
        raise ProtocolValidationError(problems, source) from exc


def problem_from_error(err: Any, data: Any, *, node: yaml.Node | None = None, text: str | None = None,
                       source: str | None = None, origin: _Origin | None = None) -> Problem:
    """A pydantic error dict as a :class:`Problem` located in ``data`` (and its YAML ``node``),
    or attributed to the override it comes from (``origin``)."""
    loc: tuple[Any, ...] = tuple(err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") not in ("missing", "extra_forbidden") and "input" in err and not isinstance(
            err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    if err.get("type") == "extra_forbidden":
        msg = "unknown field (not allowed here)"
    data_path = _data_path(loc, data, missing=err.get("type") == "missing")
    problem = Problem(format_path(data_path), msg, source=source)
    if origin is None:
        return _locate(problem, loc, data, node, text, data_path)
    return origin.locate(problem, data_path, loc, node, text)


def stage_loader(source: str | None) -> Callable[[Any, list[tuple[str, Any]], str], ProtocolBase]:
    """Validates a schedule's stage protocol: a file relative to (and inside) the folder of the
    schedule file ``source``, or an inline mapping; with the stage's ``set`` pairs as overrides."""
    base = Path(source).resolve().parent if source else None

    def load(raw: Any, pairs: list[tuple[str, Any]], name: str) -> ProtocolBase:
        overrides = [Override(f"{k}={v} (stage {name!r})", tuple(int(p) if _INDEX.fullmatch(p) else p
                                                                  for p in k.split(".")), v) for k, v in pairs]
        if isinstance(raw, str):
            if base is None:
                raise ValueError("a stage file is read relative to the schedule file: load the schedule from a file")
            path = (base / raw).resolve()
            if not path.is_relative_to(base):
                raise ValueError(f"stage file {raw!r} is outside the schedule's folder {base}")
            text = read_text_file(path)
            fmt: Format = "toml" if path.suffix.lower() == ".toml" else "yaml"
            node, data = load_yaml(text, str(path)) if fmt == "yaml" else (None, load_toml(text, str(path)))
            proto = validate_protocol(data, node=node, text=text if fmt == "toml" else None, source=str(path),
                                      overrides=overrides)
        else:
            try:
                proto = validate_protocol(raw, source=source, overrides=overrides)
            except ProtocolValidationError as exc:
                raise ProtocolValidationError([Problem(
                    f"stages.{name}.protocol" + (f".{p.path}" if p.path else ""), p.message, source=p.source,
                    override=p.override) for p in exc.problems], source) from exc
        if isinstance(proto, ScheduleProtocol):
            raise ValueError("a stage's protocol is a session protocol, not a schedule")
        return proto

    return load


# --- command-line overrides -------------------------------------------------------------------

Key = tuple[str | int, ...]


@dataclass(frozen=True)
class Override:
    """One parsed ``KEY=VALUE`` override: ``keys`` (list indices as ints) and the YAML ``value``."""

    text: str
    keys: Key
    value: Any


_INDEX = re.compile(r"-?\d+")


def parse_override(text: str, source: str | None = None) -> Override:
    """Parse ``KEY=VALUE``: ``KEY`` a dotted path (``active.n_images``, ``steps.2.repeats``),
    ``VALUE`` a YAML scalar or flow value (safe loader: ``30``, ``0.5``, ``true``, ``null``,
    ``[1, 2]``, ``{on_frames: 4}``, ``'quoted'``; an empty value is null)."""
    def bad(path: str, message: str) -> ProtocolValidationError:
        return ProtocolValidationError([Problem(path, message, source=source, override=text)], source)

    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq:
        raise bad("", "an override is KEY=VALUE (no '=' found)")
    if not key:
        raise bad("", "an override is KEY=VALUE (empty KEY)")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise bad("", f"empty key in {key!r} (keys are separated by single dots)")
    keys: Key = tuple(int(p) if _INDEX.fullmatch(p) else p.strip() for p in parts)
    try:
        value = load_yaml(raw, source)[1]
    except ProtocolValidationError as exc:
        message = exc.problems[0].message.removeprefix("YAML syntax: ").removeprefix("YAML: ")
        raise bad(format_path(keys), f"VALUE is not valid YAML: {message}") from exc
    return Override(text, keys, value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str | None = None) -> dict[str, Any]:
    """A copy of ``data`` with each ``KEY=VALUE`` override set, in order (``data`` is untouched).

    A key may go through existing mappings and lists (a number indexes a list, within its
    length) and may create new keys (missing mappings along the way are created, as is one
    where the data has null); whether a key is allowed is left to validation. Raises
    :class:`ProtocolValidationError` listing every malformed override (no ``=``, an empty
    key, a VALUE that is not YAML, an index into a non-list or out of range, a key through
    a scalar).
    """
    return _apply(data, _parse_all(overrides, source), source)[0]


def _parse_all(overrides: Sequence[str | Override], source: str | None) -> list[Override]:
    if isinstance(overrides, str):
        raise TypeError("overrides is a sequence of 'KEY=VALUE' strings, not one string")
    problems: list[Problem] = []
    parsed: list[Override] = []
    for text in overrides:
        if isinstance(text, Override):
            parsed.append(text)
            continue
        try:
            parsed.append(parse_override(text, source=source))
        except ProtocolValidationError as exc:
            problems += exc.problems
    if problems:
        raise ProtocolValidationError(problems, source)
    return parsed


def _apply(data: dict[str, Any], overrides: Sequence[Override],
           source: str | None) -> tuple[dict[str, Any], list[tuple[Override, Key]]]:
    """``data`` with the overrides set, and each override with its resolved key path."""
    out = copy.deepcopy(data)
    resolved: list[tuple[Override, Key]] = []
    problems: list[Problem] = []
    for o in overrides:
        try:
            resolved.append((o, _set(out, o)))
        except _OverrideError as exc:
            problems.append(Problem(exc.path, exc.message, source=source, override=o.text))
    if problems:
        raise ProtocolValidationError(problems, source)
    return out, resolved


class _OverrideError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message


def _set(root: dict[str, Any], o: Override) -> Key:
    """Set ``o.value`` at ``o.keys`` in ``root`` (in place); the key path with indices resolved."""
    cur: Any = root
    done: list[str | int] = []
    for i, k in enumerate(o.keys):
        last = i == len(o.keys) - 1
        where = format_path(done) or "the protocol"
        if isinstance(cur, list):
            if not isinstance(k, int):
                raise _OverrideError(format_path(done), f"{where} is a list: {k!r} is not an index")
            if not -len(cur) <= k < len(cur):
                raise _OverrideError(format_path(done),
                                     f"index {k} out of range ({where} has {len(cur)} item(s))")
            k %= len(cur)
        elif isinstance(cur, dict):
            if isinstance(k, int):
                if k in cur or str(k) in cur:
                    k = k if k in cur else str(k)
                else:
                    raise _OverrideError(format_path(done), f"{where} is a mapping, not a list: no index {k}")
        else:
            raise _OverrideError(format_path(done), f"{where} is {cur!r} ({_kind(cur)}), not a mapping or a list: "
                                                    f"cannot set {format_path(o.keys)}")
        done.append(k)
        if last:
            cur[k] = copy.deepcopy(o.value)
        else:
            if isinstance(cur, dict) and cur.get(k) is None:
                cur[k] = {}  # a new (or null) mapping on the way: created
            cur = cur[k]
    return tuple(done)


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), f"a {type(value).__name__}")


def _under(path: Sequence[str | int], prefix: Sequence[str | int]) -> bool:
    return len(prefix) <= len(path) and tuple(path[:len(prefix)]) == tuple(prefix)


def _exists(data: Any, path: Sequence[str | int]) -> bool:
    cur = data
    for k in path:
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        elif isinstance(cur, list) and isinstance(k, int) and 0 <= k < len(cur):
            cur = cur[k]
        else:
            return False
    return True


class _Origin:
    """Where a problem comes from: the file (located by line) or an override (named).

    A problem at or under an override's key comes from the last such override; one at a key
    the file does not have, above some overrides, from the first of them (it created the key);
    one above overrides at a key the file has (a model check of a mapping the overrides
    changed) is located in the file and lists the overrides.
    """

    def __init__(self, file_data: Any, overrides: Sequence[tuple[Override, Key]]) -> None:
        self.file_data = file_data
        self.overrides = list(overrides)

    def locate(self, problem: Problem, data_path: Sequence[str | int], loc: Sequence[Any],
               node: yaml.Node | None, text: str | None) -> Problem:
        above = [o for o, keys in self.overrides if _under(data_path, keys)]
        if above:
            return Problem(problem.path, problem.message, source=problem.source, override=above[-1].text)
        below = [o for o, keys in self.overrides if _under(keys, data_path)]
        if below and not _exists(self.file_data, data_path):
            return Problem(problem.path, problem.message, source=problem.source, override=below[0].text)
        located = _locate(problem, loc, self.file_data, node, text, data_path)
        if below:
            note = ", ".join(f"--set {o.text}" for o in below)
            located = Problem(located.path, f"{located.message} (with {note})", line=located.line,
                              column=located.column, source=located.source)
        return located


def _data_path(loc: Sequence[Any], data: Any, missing: bool = True) -> list[str | int]:
    """``loc`` without pydantic's union-tag elements: only keys/indices that exist in ``data``,
    plus a final missing key (when ``missing``: not for an error of the mapping itself, whose
    ``loc`` may end with a union tag)."""
    out: list[str | int] = []
    cur = data
    for i, elem in enumerate(loc):
        if isinstance(cur, dict) and elem in cur:
            out.append(elem)
            cur = cur[elem]
        elif isinstance(cur, list) and isinstance(elem, int) and 0 <= elem < len(cur):
            out.append(elem)
            cur = cur[elem]
        elif missing and i == len(loc) - 1 and isinstance(cur, dict) and isinstance(elem, str):
            out.append(elem)  # a missing field
    return out


def format_path(path: Sequence[str | int]) -> str:
    s = ""
    for elem in path:
        s += f"[{elem}]" if isinstance(elem, int) else (f".{elem}" if s else str(elem))
    return s


def _locate(problem: Problem, loc: Sequence[Any], data: Any, node: yaml.Node | None,
            text: str | None, data_path: Sequence[str | int] | None = None) -> Problem:
    line: int | None = None
    column: int | None = None
    if node is not None:
        mark = _yaml_mark(node, loc)
        if mark is not None:
            line, column = mark.line + 1, mark.column + 1
    elif text is not None:
        path = _data_path(loc, data) if data_path is None else data_path
        keys = [e for e in path if isinstance(e, str)]
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
