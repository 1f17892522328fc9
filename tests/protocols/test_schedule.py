"""Schedule files: stage resolution, overrides, validation problems, simulation, the `neurons` option."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.errors import ProtocolValidationError
from protocols.library import MaximizeProtocol, SmoothProtocol, SysidProtocol
from protocols.library.schedule import ScheduleProtocol, simulate_schedule
from protocols.loader import load_protocol
from protocols.simulate import SimConfig, main, simulate
from protocols.steps import Analyse, GenerateImages, OperatorResult

EXAMPLES = Path(__file__).resolve().parents[2] / "protocols" / "examples"


def write(folder: Path, text: str, name: str = "day.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_lab_day_example_resolves_its_files_and_simulates(capsys: pytest.CaptureFixture[str]) -> None:
    day = load_protocol(EXAMPLES / "lab_day.yaml")
    assert isinstance(day, ScheduleProtocol)
    sysid, maxi, _adv, smooth = day.stages
    assert isinstance(sysid.protocol, SysidProtocol) and sysid.protocol.n_blocks == 4  # set: applied
    assert sysid.file == "sysid.yaml" and sysid.repeat_until is not None
    assert (sysid.repeat_until.metric, sysid.repeat_until.threshold, sysid.repeat_until.min_neurons,
            sysid.repeat_until.max_sessions) == ("r", 0.4, 4, 3)
    assert [s.neurons for s in day.stages] == ["all", "qualified", "qualified", "qualified"]
    assert [s.pause_before for s in day.stages] == [False, True, True, True]
    assert isinstance(maxi.protocol, MaximizeProtocol) and isinstance(smooth.protocol, SmoothProtocol)
    assert main([str(EXAMPLES / "lab_day.yaml")]) == 0
    out = capsys.readouterr().out
    assert "12/20 neurons r >= 0.4 (need 4): met" in out and "pause before 'maximize': operator resume" in out


def test_overrides_reach_stages_and_inline_protocols(tmp_path: Path) -> None:
    write(tmp_path, "protocol: sysid\nn_blocks: 5\nheldout: {n_images: 10, repeats: 2}\n", "s.yaml")
    path = write(tmp_path, """
protocol: schedule
stages:
  - name: id
    protocol: s.yaml
    set: {normal: 7, heldout: {repeats: 3}}
    repeat_until: {metric: r2_er, threshold: 0.2, min_neurons: 2, max_sessions: 2}
  - name: max
    protocol: {protocol: maximize, n_random: 9}
    set: {match.max_neurons: 2}
    neurons: qualified
""")
    day = load_protocol(path, overrides=["stages.0.set.n_blocks=1"])
    assert isinstance(day, ScheduleProtocol)
    sysid = day.stages[0].protocol
    assert (sysid.n_blocks, sysid.normal, sysid.heldout.repeats, sysid.heldout.n_images) == (1, 7, 3, 10)
    maxi = day.stages[1].protocol
    assert (maxi.n_random, maxi.match.max_neurons, maxi.neurons) == (9, 2, None)


@pytest.mark.parametrize(("stages", "want"), [
    ("  - {name: a, protocol: nothere.yaml}\n", "cannot read"),
    ("  - {name: a, protocol: ../out.yaml}\n", "outside the schedule's folder"),
    ("  - {name: a, protocol: {protocol: maximize}, neurons: qualified}\n", "needs an earlier stage"),
    ("  - {name: a, protocol: {protocol: maximize}, repeat_until: {threshold: 0.5}}\n", "needs a sysid"),
    ("  - {name: a, protocol: {protocol: sysid, n_blocks: 1}, repeat_until: {threshold: 0.5}}\n", "heldout"),
    ("  - {name: a, protocol: {protocol: dots}}\n  - {name: a, protocol: {protocol: dots}}\n", "unique"),
    ("  - {name: a, protocol: {protocol: sysid, n_blocks: 0}}\n", "stages.a.protocol.n_blocks"),
    ("  - {name: a, protocol: {protocol: dots}, set: {bogus: 1}}\n", "stage 'a'"),
    ("  - {name: a, protocol: {protocol: schedule, stages: [{name: b, protocol: {protocol: dots}}]}}\n", "not a schedule"),
])
def test_problems_are_named(tmp_path: Path, stages: str, want: str) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path, "protocol: dots\n", "out.yaml")
    path = write(tmp_path / "sub", "protocol: schedule\nstages:\n" + stages)
    with pytest.raises(ProtocolValidationError) as err:
        load_protocol(path)
    assert want in str(err.value), str(err.value)


def test_a_stage_file_problem_names_that_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "protocol: sysid\nn_blocks: -1\n", "s.yaml")
    with pytest.raises(ProtocolValidationError) as err:
        load_protocol(write(tmp_path, "protocol: schedule\nstages: [{name: a, protocol: s.yaml}]\n"))
    assert f"{tmp_path / 's.yaml'}:2:1: n_blocks" in str(err.value)


def test_unmet_condition_stops_the_day_and_abort_at_a_pause(tmp_path: Path) -> None:
    day = load_protocol(EXAMPLES / "lab_day.yaml", overrides=["stages.0.repeat_until.min_neurons=19"])
    assert isinstance(day, ScheduleProtocol)
    sim = simulate_schedule(day)
    assert len(sim.sessions) == 3 and "day ends" in sim.lines[-1]
    sim = simulate_schedule(load_protocol(EXAMPLES / "lab_day.yaml"), SimConfig(operator=["resume", "abort"]))  # type: ignore[arg-type]
    assert len(sim.sessions) == 2 and sim.lines[-1] == "schedule aborted by the operator"


def test_neurons_option_restricts_the_causal_test() -> None:
    proto = MaximizeProtocol.model_validate({"protocol": "maximize", "neurons": [0, 1, 2, 3, 5, 7],
                                             "match": {"min_score": 0.3, "max_neurons": 2}})
    report = simulate(proto, SimConfig(n_neurons=10, match_fraction=0.5))
    match = report.records[3].result
    targeted = next(s for s in report.steps if isinstance(s, GenerateImages)).params.neurons  # type: ignore[union-attr]
    assert report.steps[3].max_neurons is None  # type: ignore[attr-defined]  # all matches, then restricted
    matched = [m.neuron for m in match.matches]  # type: ignore[attr-defined]
    assert targeted == [j for j in matched if j in {0, 1, 2, 3, 5, 7}][:2] and len(targeted) == 2
    assert all(a.neurons == targeted for a in report.steps if isinstance(a, Analyse))
    none = simulate(proto.model_copy(update={"neurons": [9_999]}), SimConfig(n_neurons=10))
    assert isinstance(none.records[-1].result, OperatorResult) and not any(
        isinstance(s, GenerateImages) for s in none.steps)
