"""Protocol files: validation lists every problem with its field path and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.errors import ProtocolValidationError
from protocols.library import DotsProtocol, MaximizeProtocol, ScriptProtocol
from protocols.loader import load_protocol, parse_protocol
from wire.errors import ProtocolError

EXAMPLES = Path(__file__).resolve().parents[2] / "protocols" / "examples"

BAD_YAML = """\
protocol: script
title: several problems
steps:
  - kind: present_block
    block_id: b0
    images:
      - source: normal
        n_images: -3
    repeats: 0
  - kind: wait_for_counts
  - kind: retrain
    scope: forever
  - kind: teleport
  - kind: analyse
    analysis: percent_change
    name: a
    blocks: [b0]
    conditions: [normal]
    bogus: 1
"""


def _problems(exc: ProtocolValidationError) -> dict[str, int | None]:
    return {p.path: p.line for p in exc.problems}


def test_yaml_errors_name_every_field_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD_YAML)
    with pytest.raises(ProtocolValidationError) as info:
        load_protocol(f)
    assert isinstance(info.value, ProtocolError)
    assert _problems(info.value) == {
        "steps[0].images[0].n_images": 8,
        "steps[0].repeats": 9,
        "steps[1].block_id": 10,       # missing: the line of the step that lacks it
        "steps[2].scope": 12,
        "steps[3]": 13,                # unknown step kind
        "steps[4].bogus": 19,          # unknown field
    }
    text = str(info.value)
    assert "6 problem(s)" in text and f"{f}:12:5: steps[2].scope" in text and "'forever'" in text
    assert "teleport" in text


def test_yaml_library_protocol_errors(tmp_path: Path) -> None:
    text = "protocol: maximize\nn_random: 1\nmatch:\n  min_score: 3\n  metric: r3\nrepeats: lots\n"
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol(text, "yaml", source="m.yaml")
    assert _problems(info.value) == {"n_random": 2, "match.min_score": 4, "match.metric": 5, "repeats": 6}


def test_model_validator_problem_points_at_its_mapping() -> None:
    text = "protocol: script\nsteps:\n  - kind: present_block\n    block_id: b\n    images:\n      - {n_images: 3}\n"
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol(text)
    (p,) = info.value.problems
    assert p.path == "steps[0].images[0]" and p.line == 6 and "exactly one of 'source' and 'image_ids'" in p.message


def test_unknown_protocol_and_syntax_errors() -> None:
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol("title: x\nprotocol: sysidd\n")
    assert info.value.problems[0].path == "protocol" and info.value.problems[0].line == 2
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol("protocol: sysid\nn_blocks: [1, 2\n")
    assert info.value.problems[0].line is not None and "YAML syntax" in info.value.problems[0].message
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol("- just\n- a list\n")
    assert "mapping" in info.value.problems[0].message


def test_toml_errors_give_key_paths_and_unique_lines() -> None:
    text = 'protocol = "dots"\nsizes = [1.0, -2.0]\nrepeats = 0\n\n[timing]\non_frames = 0\n\n[analysis]\nalpha = 2\n'
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol(text, "toml", source="d.toml")
    assert _problems(info.value) == {"sizes[1]": 2, "repeats": 3, "timing.on_frames": 6, "analysis.alpha": 9}
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol('protocol = "dots"\nsizes = = 1\nrepeats = 2\n', "toml")
    assert "TOML syntax" in info.value.problems[0].message and info.value.problems[0].line == 2
    with pytest.raises(ProtocolValidationError) as info:
        parse_protocol('protocol = "dots"\nsizes = [1.0,\n', "toml")
    assert info.value.problems[0].line == 2


def test_examples_load() -> None:
    files = sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.toml"))
    assert {f.stem for f in files} >= {"sysid", "maximize", "adversarial", "smooth", "dots", "script"}
    for f in files:
        proto = load_protocol(f)
        assert proto.protocol in f.stem or (f.stem in ("lab_day", "demo_day") and proto.protocol == "schedule")
    assert isinstance(load_protocol(EXAMPLES / "dots.toml"), DotsProtocol)
    assert isinstance(load_protocol(EXAMPLES / "maximize.yaml"), MaximizeProtocol)


def test_script_protocol_round_trips_through_json() -> None:
    proto = load_protocol(EXAMPLES / "script.yaml")
    assert isinstance(proto, ScriptProtocol)
    again = ScriptProtocol.model_validate_json(proto.model_dump_json())
    assert again == proto


def test_the_shipped_causal_protocols_match_one_to_one_and_synthesize_from_the_pool() -> None:
    """With 'best' matching two recorded neurons shared one model neuron and one of them got no images;
    the shipped files match one to one, and maximize starts synthesis from its strongest start."""
    for name in ("maximize.yaml", "adversarial.yaml", "smooth.yaml"):
        proto = load_protocol(EXAMPLES / name)
        assert proto.match.assignment == "one_to_one", name  # type: ignore[attr-defined]
    maximize = load_protocol(EXAMPLES / "maximize.yaml")
    assert isinstance(maximize, MaximizeProtocol) and maximize.synth.init == "pool"
