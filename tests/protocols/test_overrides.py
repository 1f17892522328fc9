"""Command-line overrides (``--set KEY=VALUE``) of a protocol file, validated like the file."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocols.errors import Problem, ProtocolValidationError
from protocols.library import (
    AdversarialProtocol,
    DotsProtocol,
    MaximizeProtocol,
    ProtocolBase,
    ScriptProtocol,
    SmoothProtocol,
    SysidProtocol,
)
from protocols.loader import apply_overrides, load_protocol, parse_override, parse_protocol
from protocols.simulate import simulate
from protocols.steps import Analyse, PauseForOperator, PresentBlock

EXAMPLES = Path(__file__).resolve().parents[2] / "protocols" / "examples"


def _sysid(p: ProtocolBase) -> None:
    assert isinstance(p, SysidProtocol) and p.active is not None and p.heldout is not None
    assert (p.n_blocks, p.normal, p.gaudy, p.active.n_images) == (2, 30, 10, 10)
    assert (p.heldout.n_images, p.heldout.repeats, p.timing.on_frames, p.retrain) == (10, 2, 3, "session")
    assert p.timing.off_frames == 6 and p.active.strategy == "ensemble_variance"  # untouched: from the file


def _maximize(p: ProtocolBase) -> None:
    assert isinstance(p, MaximizeProtocol)
    assert (p.heldout.n_images, p.heldout.repeats, p.n_random, p.repeats) == (10, 2, 10, 2)
    assert (p.synth.steps, p.synth.lr, p.analysis.n_permutations, p.match.max_neurons) == (20, 0.05, 100, 5)


def _adversarial(p: ProtocolBase) -> None:
    assert isinstance(p, AdversarialProtocol)
    assert (p.heldout.n_images, p.n_per_neuron, p.steps, p.repeats, p.epsilon) == (10, 2, 10, 2, 1.0)


def _smooth(p: ProtocolBase) -> None:
    assert isinstance(p, SmoothProtocol)
    assert (p.heldout.n_images, p.heldout.repeats, p.n_per_neuron, p.repeats, p.sigma) == (10, 2, 2, 2, 1.5)


def _dots(p: ProtocolBase) -> None:
    assert isinstance(p, DotsProtocol)
    assert (p.sizes, p.locations, p.numbers, p.repeats, p.n_blocks) == ([0.5, 1.0], [(0.0, 0.0)], [1, 2], 2, 1)
    assert p.analysis.n_permutations == 100 and p.timing.on_frames == 3


def _script(p: ProtocolBase) -> None:
    assert isinstance(p, ScriptProtocol)
    block, pause = p.steps[0], p.steps[3]
    assert isinstance(block, PresentBlock) and isinstance(pause, PauseForOperator)
    assert (block.repeats, [s.n_images for s in block.images]) == (1, [5, 5])
    assert block.images[0].seed == 11 and pause.message == "quick check: look at the responses"


DOTS = ["sizes=[0.5, 1.0]", "locations=[[0, 0]]", "numbers=[1, 2]", "repeats=2", "n_blocks=1", "analysis.n_permutations=100",
        "timing.on_frames=3"]

#: each example with overrides that shrink it to a quick run, and what the model must then hold
SHRINK: dict[str, tuple[list[str], Callable[[ProtocolBase], None]]] = {
    "sysid.yaml": (["n_blocks=2", "normal=30", "gaudy=10", "active.n_images=10", "heldout.n_images=10",
                    "heldout.repeats=2", "timing.on_frames=3", "retrain=session"], _sysid),
    "maximize.yaml": (["heldout.n_images=10", "heldout.repeats=2", "n_random=10", "repeats=2",
                       "synth.steps=20", "analysis.n_permutations=100", "match.max_neurons=5"], _maximize),
    "adversarial.yaml": (["heldout.n_images=10", "n_per_neuron=2", "steps=10", "repeats=2", "epsilon=1.0"],
                         _adversarial),
    "smooth.yaml": (["heldout.n_images=10", "heldout.repeats=2", "n_per_neuron=2", "repeats=2", "sigma=1.5"],
                    _smooth),
    "dots.yaml": (DOTS, _dots),     # no timing in this file: the override creates it
    "dots.toml": (DOTS, _dots),     # YAML values for a TOML file
    "script.yaml": (["steps.0.repeats=1", "steps.0.images.0.n_images=5", "steps.0.images.1.n_images=5",
                     "steps.3.message='quick check: look at the responses'"], _script),
}


def test_every_example_has_a_shrinking_override_set() -> None:
    # the schedules run the others: their overrides are tested in tests/protocols/test_schedule.py
    assert {f.name for f in EXAMPLES.iterdir() if f.suffix in (".yaml", ".toml")} - {"lab_day.yaml", "demo_day.yaml"} == set(SHRINK)


@pytest.mark.parametrize("name", sorted(SHRINK))
def test_examples_load_with_shrinking_overrides(name: str) -> None:
    overrides, check = SHRINK[name]
    proto = load_protocol(EXAMPLES / name, overrides)
    check(proto)
    assert proto == load_protocol(EXAMPLES / name, tuple(overrides))  # any sequence
    assert proto != load_protocol(EXAMPLES / name)
    assert simulate(proto).records  # and it still runs


def test_sysid_runs_with_the_values_changed() -> None:
    proto = load_protocol(EXAMPLES / "sysid.yaml", ["n_blocks=2", "normal=30", "active.n_images=10"])
    blocks = [s for s in simulate(proto).steps if isinstance(s, PresentBlock)]
    assert [b.block_id for b in blocks] == ["heldout", "sysid-0", "sysid-1"]
    assert [(s.source, s.n_images) for s in blocks[2].images] == [("pool_random", 30), ("gaudy", 100),
                                                                  ("active", 10)]


def test_values_are_yaml() -> None:
    ov = {o: parse_override(o).value for o in [
        "a=30", "a=0.5", "a=true", "a=null", "a=", "a=[1, 2]", "a={on_frames: 4}", "a='30'", 'a="x y"',
        "a=plain text", "a=x=y", "a= 7 "]}
    assert list(ov.values()) == [30, 0.5, True, None, None, [1, 2], {"on_frames": 4}, "30", "x y",
                                 "plain text", "x=y", 7]
    o = parse_override(" steps.-1.images.0.n_images =3")
    assert o.keys == ("steps", -1, "images", 0, "n_images") and o.value == 3


def test_nested_keys_replace_and_create() -> None:
    proto = load_protocol(EXAMPLES / "sysid.yaml", ["timing={on_frames: 4}", "active={strategy: random}",
                                                    "heldout.seed=9"])
    assert isinstance(proto, SysidProtocol) and proto.active is not None and proto.heldout is not None
    assert (proto.timing.on_frames, proto.timing.off_frames) == (4, 6)         # replaced: defaults again
    assert (proto.active.strategy, proto.active.n_images) == ("random", 100)
    assert (proto.heldout.seed, proto.heldout.n_images) == (9, 50)             # the rest from the file
    proto = load_protocol(EXAMPLES / "sysid.yaml", ["active=null", "heldout=null"])
    assert isinstance(proto, SysidProtocol) and proto.active is None and proto.heldout is None
    # a new mapping on the way (dots.yaml has no timing) and a null one
    proto = parse_protocol("protocol: sysid\nheldout: null\n", overrides=["heldout.n_images=12"])
    assert isinstance(proto, SysidProtocol) and proto.heldout is not None and proto.heldout.n_images == 12
    # later overrides win
    proto = load_protocol(EXAMPLES / "sysid.yaml", ["n_blocks=2", "n_blocks=3"])
    assert isinstance(proto, SysidProtocol) and proto.n_blocks == 3


def test_list_index() -> None:
    proto = load_protocol(EXAMPLES / "script.yaml", ["steps.2.name=g_vs_n", "steps.-1.timeout_s=5"])
    assert isinstance(proto, ScriptProtocol)
    analyse, pause = proto.steps[2], proto.steps[3]
    assert isinstance(analyse, Analyse) and isinstance(pause, PauseForOperator)
    assert analyse.name == "g_vs_n" and analyse.conditions == ["gaudy"] and pause.timeout_s == 5
    proto = load_protocol(EXAMPLES / "dots.yaml", ["sizes.1=0.75", "locations.2.0=3"])
    assert isinstance(proto, DotsProtocol)
    assert proto.sizes == [0.25, 0.75, 1.0, 2.0] and proto.locations[2] == (3.0, 2.0)


def _one(exc: pytest.ExceptionInfo[ProtocolValidationError]) -> Problem:
    (problem,) = exc.value.problems
    return problem


def test_type_errors_name_the_override() -> None:
    f = EXAMPLES / "sysid.yaml"
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(f, ["n_blocks=two"])
    p = _one(info)
    assert (p.override, p.path, p.line, p.source) == ("n_blocks=two", "n_blocks", None, str(f))
    assert str(p).startswith("--set n_blocks=two: n_blocks: Input should be a valid integer")
    assert f"1 problem(s) in {f}" in str(info.value)
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(f, ["n_blocks=2", "active.n_images=0", "timing={on_frames: x}", "retrain=sometimes",
                          "heldout.repeats=1.5", "title=no"])
    got = {p.path: p.override for p in info.value.problems}
    assert got == {"active.n_images": "active.n_images=0", "timing.on_frames": "timing={on_frames: x}",
                   "retrain": "retrain=sometimes", "heldout.repeats": "heldout.repeats=1.5",
                   "title": "title=no"}  # YAML 1.1: no is false, quote it for the string
    assert all(p.line is None for p in info.value.problems)
    text = str(info.value)
    assert "--set active.n_images=0: active.n_images: Input should be greater than or equal to 1 (got 0)" in text
    assert "--set title=no: title: Input should be a valid string (got False)" in text


def test_a_check_of_a_mapping_the_overrides_changed_keeps_the_file_line_and_names_them() -> None:
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "sysid.yaml", ["normal=0", "gaudy=0", "active=null", "title=t"])
    p = _one(info)
    assert (p.path, p.line, p.override) == ("", 3, None) and "block 0 would be empty" in p.message
    assert p.message.endswith("(with --set normal=0, --set gaudy=0, --set active=null, --set title=t)")
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "maximize.yaml", ["heldout.present=false"])
    p = _one(info)
    assert (p.path, p.override, p.line) == ("heldout", None, 5)
    assert "list the earlier held-out 'blocks' (with --set heldout.present=false)" in p.message
    # the same check of a mapping an override replaced names the override
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "maximize.yaml", ["heldout={present: false}"])
    p = _one(info)
    assert (p.path, p.override, p.line) == ("heldout", "heldout={present: false}", None)
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "script.yaml", ["steps.1.kind=teleport"])
    p = _one(info)
    assert (p.path, p.line) == ("steps[1]", 13) and "teleport" in p.message
    assert p.message.endswith("(with --set steps.1.kind=teleport)")


def test_unknown_keys_are_rejected() -> None:
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "sysid.yaml", ["n_blokcs=2", "active.n_image=5", "timing.on_frames=4"])
    assert {(p.path, p.override, p.message) for p in info.value.problems} == {
        ("n_blokcs", "n_blokcs=2", "unknown field (not allowed here)"),
        ("active.n_image", "active.n_image=5", "unknown field (not allowed here)"),
    }
    # a new mapping the protocol does not have: the override that created it is named
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "dots.toml", ["heldout.n_images=10", "heldout.repeats=2"])
    p = _one(info)
    assert (p.path, p.override, p.line) == ("heldout", "heldout.n_images=10", None)
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "script.yaml", ["steps.0.images.0.colour=red"])
    p = _one(info)
    assert (p.path, p.override) == ("steps[0].images[0].colour", "steps.0.images.0.colour=red")
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "dots.yaml", ["protocol=sysidd"])
    p = _one(info)
    assert (p.path, p.override) == ("protocol", "protocol=sysidd") and "'sysidd'" in p.message


@pytest.mark.parametrize(("override", "path", "message"), [
    ("n_blocks", "", "no '=' found"),
    ("=3", "", "empty KEY"),
    ("  =3", "", "empty KEY"),
    ("active..n_images=3", "", "empty key in 'active..n_images'"),
    ("active.n_images.=3", "", "empty key"),
    (".n_blocks=3", "", "empty key"),
    ("n_blocks=[1, 2", "n_blocks", "VALUE is not valid YAML"),
    ("title={a: 1", "title", "VALUE is not valid YAML"),
    ("n_blocks.x=1", "n_blocks", "n_blocks is 8 (an integer), not a mapping or a list: cannot set n_blocks.x"),
    ("title.a.b=1", "title", "is 'V4 system identification, day 1' (a string), not a mapping or a list"),
    ("active.0=1", "active", "active is a mapping, not a list: no index 0"),
    ("0=1", "", "the protocol is a mapping, not a list: no index 0"),
])
def test_malformed_overrides(override: str, path: str, message: str) -> None:
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "sysid.yaml", [override])
    p = _one(info)
    assert (p.path, p.override, p.line) == (path, override, None)
    assert message in p.message and str(p).startswith(f"--set {override}: ")


@pytest.mark.parametrize(("override", "path", "message"), [
    ("steps.9.message=x", "steps", "index 9 out of range (steps has 4 item(s))"),
    ("steps.-5.message=x", "steps", "index -5 out of range"),
    ("steps.first.message=x", "steps", "steps is a list: 'first' is not an index"),
    ("steps.0.images.x=1", "steps[0].images", "steps[0].images is a list: 'x' is not an index"),
    ("steps.0.block_id.0=x", "steps[0].block_id", "is 'check-0' (a string), not a mapping or a list"),
])
def test_malformed_list_overrides(override: str, path: str, message: str) -> None:
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "script.yaml", [override])
    p = _one(info)
    assert (p.path, p.override) == (path, override) and message in p.message


def test_every_malformed_override_is_reported_before_validation() -> None:
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "sysid.yaml", ["n_blocks=two", "nope", "normal.x=1", "=1"])
    assert [p.override for p in info.value.problems] == ["nope", "=1"]  # syntax first
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(EXAMPLES / "sysid.yaml", ["n_blocks=two", "normal.x=1", "gaudy.y=2"])
    assert [p.override for p in info.value.problems] == ["normal.x=1", "gaudy.y=2"]  # then the keys
    with pytest.raises(TypeError):
        load_protocol(EXAMPLES / "sysid.yaml", "n_blocks=2")


BAD_FILE = """\
protocol: sysid
n_blocks: 0
normal: lots
active:
  n_images: 10
  strategy: guess
"""


def test_file_problems_keep_their_lines(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD_FILE)
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(f, ["gaudy=x", "active.n_images=20", "title=run 2"])
    got = {p.path: (p.line, p.override) for p in info.value.problems}
    assert got == {"n_blocks": (2, None), "normal": (3, None), "active.strategy": (6, None),
                   "gaudy": (None, "gaudy=x")}
    text = str(info.value)
    assert f"{f}:2:1: n_blocks: Input should be greater than or equal to 1 (got 0)" in text
    assert f"{f}:6:3: active.strategy:" in text and "--set gaudy=x: gaudy:" in text
    # fixing the file's problems by overrides
    proto = load_protocol(f, ["n_blocks=1", "normal=5", "active.strategy=random"])
    assert isinstance(proto, SysidProtocol) and proto.active is not None and proto.active.strategy == "random"


def test_toml_file_and_overrides() -> None:
    text = 'protocol = "dots"\nrepeats = 0\nsizes = [1.0]\n\n[timing]\non_frames = 9\n'
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol(text, "toml", source="d.toml", overrides=["timing.off_frames=-1", "analysis.alpha=2"])
    got = {p.path: (p.line, p.override) for p in info.value.problems}
    assert got == {"repeats": (2, None), "timing.off_frames": (None, "timing.off_frames=-1"),
                   "analysis.alpha": (None, "analysis.alpha=2")}
    proto = parse_protocol(text, "toml", overrides=["repeats=3", "numbers=[1, 2, 3]", "color=[255, 0, 0]"])
    assert isinstance(proto, DotsProtocol)
    assert (proto.repeats, proto.numbers, proto.color, proto.timing.on_frames) == (3, [1, 2, 3], (255, 0, 0), 9)


def test_syntax_errors_of_the_file_come_first() -> None:
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol("protocol: sysid\nn_blocks: [1, 2\n", overrides=["n_blocks=2"])
    assert "YAML syntax" in _one(info).message
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol("- a list\n", overrides=["n_blocks=2"])
    assert "mapping" in _one(info).message


def test_apply_overrides_returns_a_new_dict() -> None:
    data: dict[str, Any] = {"protocol": "sysid", "active": {"n_images": 5}, "steps": [{"a": 1}, {"b": [1, 2]}]}
    before = copy.deepcopy(data)
    out = apply_overrides(data, ["active.n_images=7", "active.strategy=random", "steps.1.b.0=9",
                                 "timing.on_frames=3", "new={x: [1]}"])
    assert data == before
    assert out == {"protocol": "sysid", "active": {"n_images": 7, "strategy": "random"},
                   "steps": [{"a": 1}, {"b": [9, 2]}], "timing": {"on_frames": 3}, "new": {"x": [1]}}
    assert out["steps"][0] is not data["steps"][0]
    assert apply_overrides(data, []) == data and apply_overrides(data, []) is not data
    with pytest.raises(ProtocolValidationError) as info:
        apply_overrides(data, ["steps.5.a=1", "x"], source="rig.yaml")
    (p,) = info.value.problems
    assert (p.override, p.source) == ("x", "rig.yaml") and "rig.yaml" in str(info.value)
    with pytest.raises(ProtocolValidationError) as info:
        apply_overrides(data, ["steps.5.a=1"])
    assert "index 5 out of range (steps has 2 item(s))" in _one(info).message
