"""Protocol and rig files a careless user (or an attacker) hands in: non-UTF-8, absurdly large,
nested 10,000 deep, YAML alias bombs. Each is a clear error naming the file, fast and small,
never a traceback; and the loaders fuzzed (only ProtocolValidationError / ProtocolError)."""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import load_config
from protocols.errors import ProtocolValidationError
from protocols.loader import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_protocol, parse_protocol
from wire.errors import ProtocolError

EXAMPLES = Path(__file__).resolve().parents[2] / "protocols" / "examples"
#: the suite's hang guard per example (bench/fuzz.py uses 2 s with a timer)
SUITE_HANG_S = 5.0


def billion_laughs(levels: int = 9) -> str:
    """A script protocol whose first image set's ``params`` expands to 10**levels strings."""
    lines = ["protocol: script", "steps:", "  - kind: present_block", "    block_id: b0", "    images:",
             "      - source: normal", "        n_images: 2", "        params:",
             "          l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"          l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def refused(call: Any, match: str, max_s: float = 1.0, max_mib: float = 32.0) -> ProtocolError:
    """Run ``call``: it must raise a ProtocolError matching ``match`` within ``max_s`` seconds,
    allocating at most ``max_mib`` MiB (tracemalloc peak)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ProtocolError, match=match) as err:
            call()
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()
    assert elapsed < max_s, f"took {elapsed:.2f} s"
    assert peak < max_mib, f"allocated {peak:.1f} MiB"
    return err.value


# --- protocol files ------------------------------------------------------------------------------------
def test_the_billion_laughs_in_params_is_refused_fast_and_small(tmp_path: Path) -> None:
    f = tmp_path / "laughs.yaml"
    f.write_text(billion_laughs())
    err = refused(lambda: load_protocol(f), "aliases are expanded")
    assert str(f) in str(err)
    assert isinstance(err, ProtocolValidationError) and err.problems[0].line is not None


def test_aliases_within_the_limit_are_fine(tmp_path: Path) -> None:
    text = billion_laughs(levels=2)          # 100 values: a legitimate use of anchors
    proto = parse_protocol(text, source="ok.yaml")
    params = proto.steps[0].images[0].params  # type: ignore[attr-defined]
    assert len(params["l2"]) == 10 and params["l2"][0][0] == ["lol"] * 10
    assert MAX_NODES >= 10_000


@pytest.mark.parametrize(("name", "text"), [
    ("flow-lists.yaml", "protocol: script\nsteps: " + "[" * 10_000 + "]" * 10_000 + "\n"),
    ("flow-maps.yaml", "protocol: script\nsteps: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"),
    ("dashes.yaml", "protocol: script\nsteps:\n" + "- " * 10_000 + "x\n"),
    ("block-maps.yaml", "protocol: script\nx:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(1_200))),
    ("lists.toml", "protocol = 'script'\nsteps = " + "[" * 10_000 + "]" * 10_000 + "\n"),
    ("tables.toml", "protocol = 'script'\nx = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n"),
    ("dotted.toml", "protocol = 'script'\n" + ".".join(["a"] * 2_000) + " = 1\n"),
])
def test_deep_nesting_is_refused(tmp_path: Path, name: str, text: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    err = refused(lambda: load_protocol(f), f"nested deeper than {MAX_DEPTH} levels")
    assert str(f) in str(err)


def test_non_utf8_is_refused_with_the_line(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("protocol: script\ntitle: caf\u00e9\n".encode("latin-1"))
    err = refused(lambda: load_protocol(f), "not UTF-8")
    assert isinstance(err, ProtocolValidationError)
    assert err.problems[0].line == 2 and str(f) in str(err)
    (tmp_path / "utf16.toml").write_text("protocol = 'dots'\n", encoding="utf-16")
    refused(lambda: load_protocol(tmp_path / "utf16.toml"), "not UTF-8")
    bom = tmp_path / "bom.yaml"                           # a UTF-8 byte-order mark is fine
    bom.write_bytes(b"\xef\xbb\xbf" + (EXAMPLES / "script.yaml").read_bytes())
    assert load_protocol(bom).protocol == "script"


def test_absurd_file_sizes_are_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "huge.yaml"
    with f.open("wb") as fh:                              # 4 GiB, sparse: refused without reading it
        fh.truncate(4 << 30)
    err = refused(lambda: load_protocol(f), "larger than")
    assert str(f) in str(err)
    just = tmp_path / "just-over.yaml"
    just.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    refused(lambda: load_protocol(just), "larger than")
    with pytest.raises(ProtocolValidationError, match="longer than"):
        parse_protocol("#" * (MAX_FILE_BYTES + 1), "toml", source="text")


@pytest.mark.parametrize(("text", "fmt", "match"), [
    ("protocol: " + "1" * 5000, "yaml", "4300 digits"),
    ("protocol: 2001-02-30", "yaml", "out of range"),
    ("protocol: [a]", "yaml", "must be one of"),
    ("protocol: {a: 1}", "yaml", "must be one of"),
    ("? [a]\n: 1", "yaml", "unhashable"),
    ("protocol: !!python/object:os.system x", "yaml", "YAML"),
    ("a: *nowhere", "yaml", "undefined alias"),
    ("protocol = " + "1" * 5000, "toml", "4300 digits"),
    ("protocol = 1979-02-30", "toml", "TOML"),
    ("protocol: \x00", "yaml", "YAML"),
])
def test_odd_values_are_validation_errors(text: str, fmt: str, match: str) -> None:
    with pytest.raises(ProtocolValidationError, match=match):
        parse_protocol(text, fmt, source="odd")  # type: ignore[arg-type]


def test_a_missing_file_and_a_folder_name_the_file(tmp_path: Path) -> None:
    for p in (tmp_path / "missing.yaml", tmp_path):
        with pytest.raises(ProtocolValidationError, match="cannot read") as err:
            load_protocol(p)
        assert str(p) in str(err.value)


def test_override_values_are_bounded_too() -> None:
    text = (EXAMPLES / "script.yaml").read_text()
    with pytest.raises(ProtocolValidationError, match="VALUE is not valid YAML"):
        parse_protocol(text, overrides=["title=" + "[" * 5000])


# --- rig files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "what"), [
    (b"rig: caf\xe9\n", "cannot read rig configuration .*not UTF-8"),
    (b"rig: " + b"[" * 10_000, "not YAML .*nested deeper"),
    (b"rig: " + b"{a: " * 10_000, "not YAML .*nested deeper"),
    (b"rig: " + b"1" * 5000, "not YAML.*4300 digits"),
    (billion_laughs().replace("protocol: script\n", "").encode(), "not YAML .*aliases are expanded"),
    (b"a: *x", "not YAML.*undefined alias"),
], ids=["not-utf8", "deep-lists", "deep-maps", "huge-int", "billion-laughs", "bad-alias"])
def test_bad_rig_files_are_protocol_errors_naming_the_file(tmp_path: Path, content: bytes, what: str) -> None:
    f = tmp_path / "rig.yaml"
    f.write_bytes(content)
    err = refused(lambda: load_config(f), what)
    assert str(f) in str(err)


def test_a_huge_rig_file_is_refused_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "rig.yaml"
    with f.open("wb") as fh:
        fh.truncate(4 << 30)
    err = refused(lambda: load_config(f), "cannot read rig configuration .*larger than")
    assert str(f) in str(err)


# --- fuzzing ---------------------------------------------------------------------------------------------
_FUZZ_DIR: list[Path] = []


def _scratch(name: str, data: bytes) -> Path:
    if not _FUZZ_DIR:
        _FUZZ_DIR.append(Path(tempfile.mkdtemp(prefix="cortexloop-fuzz-")))
    p = _FUZZ_DIR[0] / name
    p.write_bytes(data)
    return p


SCHEDULES = ("lab_day.yaml", "demo_day.yaml")


def protocol_seeds() -> list[bytes]:
    """The example protocols as fuzz cases (first byte: 0 YAML, 1 TOML)."""
    out = []
    for f in sorted(EXAMPLES.iterdir()):
        if f.suffix in (".yaml", ".toml") and f.name not in SCHEDULES:  # a schedule: its stage files
            out.append(bytes([f.suffix == ".toml"]) + f.read_bytes())            # are not in the scratch folder
    return [*out, b"\x00" + billion_laughs(3).encode()]


def fuzz_protocol_file(data: bytes) -> None:
    """Fuzz target: the first byte picks YAML (even) or TOML (odd), the rest is the file; loading
    it may only raise ProtocolValidationError."""
    suffix = ".toml" if data[:1] and data[0] % 2 else ".yaml"
    try:
        load_protocol(_scratch("p" + suffix, data[1:]))
    except ProtocolValidationError:
        pass


def rig_seeds() -> list[bytes]:
    return [b"rig: rig1\nsubject: m1\n", b"acquisition: {kind: openephys, sync: {channel: ttl1}}\n",
            b"model: {rpc: 'tcp://gpu-box:5570', events: 'tcp://gpu-box:5571'}\n",
            b"stim: {rpc: 'tcp://127.0.0.1:5560', events: 'tcp://127.0.0.1:5561'}\n",
            b"images: {synthetic: 30, holdout: 8}\nseed: 5\n", b"- a\n- b\n"]


def fuzz_rig_file(data: bytes) -> None:
    """Fuzz target: ``data`` as a rig file; loading it may only raise ProtocolError."""
    try:
        load_config(_scratch("rig.yaml", data))
    except ProtocolError:
        pass


def _guarded(target: Any, data: bytes) -> None:
    t0 = time.perf_counter()
    target(data)
    assert time.perf_counter() - t0 < SUITE_HANG_S, f"hang: {len(data)} bytes took > {SUITE_HANG_S} s"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=15),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=25)
step_like = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["present_block", "wait_for_counts", "retrain", "analyse", "x"]) | json_values,
    "block_id": st.text(max_size=10) | json_values, "repeats": st.integers(-5, 10 ** 6) | json_values,
    "images": st.lists(st.fixed_dictionaries({}, optional={
        "source": st.sampled_from(["normal", "gaudy", "dots", "?"]), "n_images": st.integers(-2, 10 ** 6),
        "params": st.dictionaries(st.text(max_size=6), json_values, max_size=3)}), max_size=3),
})
protocol_like = st.fixed_dictionaries({"protocol": st.sampled_from(["script", "dots", "maximize", "sysid", "??"])
                                       | json_values},
                                      optional={"title": json_values, "steps": st.lists(step_like, max_size=4),
                                                "extra": json_values})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_protocol_loader_on_random_bytes(data: bytes) -> None:
    _guarded(fuzz_protocol_file, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=500), st.booleans())
def test_protocol_loader_on_random_text(text: str, toml: bool) -> None:
    _guarded(fuzz_protocol_file, bytes([toml]) + text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol_like, st.sampled_from(["yaml", "yaml-flow", "json"]))
def test_protocol_loader_on_protocol_like_yaml(data: dict[str, Any], style: str) -> None:
    if style == "json":
        text = json.dumps(data)
    else:
        text = yaml.safe_dump(data, default_flow_style=style == "yaml-flow", allow_unicode=True)
    _guarded(fuzz_protocol_file, b"\x00" + text.encode())


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '""'
    if isinstance(v, int | float):
        return repr(v) if v == v and abs(v) != float("inf") else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol_like)
def test_protocol_loader_on_protocol_like_toml(data: dict[str, Any]) -> None:
    text = "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items())
    _guarded(fuzz_protocol_file, b"\x01" + text.encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=1024),
                 st.dictionaries(st.sampled_from(["rig", "subject", "seed", "images", "stim", "model", "bus",
                                                  "acquisition", "virtual_rig", "keys", "out_dir", "x"]),
                                 json_values, max_size=5).map(lambda d: yaml.safe_dump(d).encode())))
def test_rig_loader_on_random_input(data: bytes) -> None:
    _guarded(fuzz_rig_file, data)


def test_fuzz_seeds_are_valid_inputs() -> None:
    """The seeds bench/fuzz.py mutates load (so mutations start from inputs that get far)."""
    assert len(protocol_seeds()) >= 7
    for seed in protocol_seeds()[:-1]:
        suffix = ".toml" if seed[0] else ".yaml"
        load_protocol(_scratch("seed" + suffix, seed[1:]))
    for seed in rig_seeds()[:-1]:
        load_config(_scratch("rig.yaml", seed))
