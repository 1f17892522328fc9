"""Every library protocol simulated end to end, its branches, and its purity (no I/O)."""

from __future__ import annotations

import builtins
import socket
from pathlib import Path
from typing import Any

import pytest

from protocols.analysis import FALLBACK
from protocols.errors import ProtocolValidationError
from protocols.library import (
    AdversarialProtocol,
    DotsProtocol,
    MaximizeProtocol,
    ScriptProtocol,
    SmoothProtocol,
    SysidProtocol,
)
from protocols.library.common import HeldoutConfig, MatchConfig
from protocols.library.maximize import SynthConfig
from protocols.loader import load_protocol
from protocols.simulate import SimConfig, main, simulate, simulate_file, simulate_session
from protocols.steps import (
    BlockResult,
    Comparison,
    GenerateImages,
    ImageSet,
    MatchModels,
    MaximizeSynthParams,
    PauseForOperator,
    PresentBlock,
    Retrain,
    WaitForCounts,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "protocols" / "examples"


def kinds(report: Any) -> list[str]:
    return [s.kind for s in report.steps]


def med(c: Comparison) -> float:
    assert c.median_percent_change is not None
    return c.median_percent_change


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.*ml")), ids=lambda p: p.name)
def test_every_example_simulates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (report,) = simulate_file(path)
    assert report.records and report.trials.counts.shape[0] > 0
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"protocol {report.protocol}:") and "present_block" in out


def test_protocols_do_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    protos = [SysidProtocol(n_blocks=2), MaximizeProtocol(), AdversarialProtocol(), SmoothProtocol(),
              DotsProtocol(), load_protocol(EXAMPLES / "script.yaml")]

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a protocol touched a file or a socket")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(socket, "socket", forbidden)
    for proto in protos:
        assert simulate(proto).records


def test_sysid_prefetches_the_next_blocks_picks_and_retrains_as_configured() -> None:
    report = simulate(SysidProtocol(n_blocks=4, normal=20, gaudy=10, retrain="both"))
    steps = report.steps
    presents = [i for i, s in enumerate(steps) if isinstance(s, PresentBlock)]
    requests = {s.request_id: i for i, s in enumerate(steps) if isinstance(s, GenerateImages)}
    assert set(requests) == {"active-1", "active-2", "active-3"}
    assert all(s.prefetch for s in steps if isinstance(s, GenerateImages))
    # picks for block i+1 are requested before block i is shown (block 1's after the first refit)
    assert requests["active-2"] < presents[1] and requests["active-3"] < presents[2]
    first_retrain = next(i for i, s in enumerate(steps) if isinstance(s, Retrain))
    assert first_retrain < requests["active-1"] < presents[1]
    scopes = [s.scope for s in steps if isinstance(s, Retrain)]
    assert scopes == ["block", "block", "block", "session"]
    blocks = [r.result for r in report.records if isinstance(r.result, BlockResult)]
    assert [b.n_trials for b in blocks] == [30, 130, 130, 130]
    assert set(blocks[1].conditions.values()) == {"normal", "gaudy", "active"}


@pytest.mark.parametrize(("retrain", "expected"), [("session", ["session"]), ("none", []),
                                                    ("block", ["block", "block", "block"])])
def test_sysid_retrain_scope(retrain: Any, expected: list[str]) -> None:
    report = simulate(SysidProtocol(n_blocks=3, normal=10, gaudy=0, retrain=retrain, prefetch=False))
    assert [s.scope for s in report.steps if isinstance(s, Retrain)] == expected
    gens = [s for s in report.steps if isinstance(s, GenerateImages)]
    assert len(gens) == 2 and not any(g.prefetch for g in gens)


def test_sysid_falls_back_when_the_modelserver_is_down() -> None:
    report = simulate(SysidProtocol(n_blocks=2, normal=10, gaudy=5),
                      SimConfig(fail_generators=frozenset({"active"})))
    last = [r.result for r in report.records if isinstance(r.result, BlockResult)][-1]
    assert last.fallbacks == ["active"] and last.n_trials == 115
    assert sum(c == f"active/{FALLBACK}" for c in report.trials.conditions) == 100


def test_maximize_finds_the_simulated_effects() -> None:
    report = simulate(MaximizeProtocol(n_random=60, repeats=4), SimConfig(n_neurons=15, seed=3))
    assert kinds(report) == ["present_block", "wait_for_counts", "ingest", "match_models", "generate_images",
                             "generate_images", "present_block", "wait_for_counts", "ingest", "analyse"]
    (analysis,) = report.analyses
    by = {c.condition: c for c in analysis.comparisons}
    n_matched = len(by["max_synth"].neurons)
    assert n_matched == 9                                           # 60% of 15
    assert by["max_synth"].median_percent_change == pytest.approx(100.0, abs=25.0)   # simulated gain 2.0
    assert by["max_normal"].median_percent_change == pytest.approx(50.0, abs=20.0)   # simulated gain 1.5
    assert by["max_synth"].n_significant >= n_matched - 1
    assert "max_synth vs random_normal" in analysis.summary


def test_maximize_sends_its_synthesis_settings() -> None:
    report = simulate(MaximizeProtocol(synth=SynthConfig(steps=30, init="pool", max_contrast=1.5)))
    (synth,) = [r.step.params for r in report.records
                if isinstance(r.step, GenerateImages) and r.step.request_id == "max_synth"]
    assert isinstance(synth, MaximizeSynthParams)
    assert (synth.steps, synth.init, synth.max_contrast) == (30, "pool", 1.5)
    assert MaximizeProtocol().synth.max_contrast is None  # the init's default (the modelserver's)


def test_causal_protocols_send_their_match_settings() -> None:
    match = MatchConfig(metric="r2_er", min_score=0.2, max_neurons=3, assignment="one_to_one")
    for proto in (MaximizeProtocol(match=match), AdversarialProtocol(match=match), SmoothProtocol(match=match)):
        (step,) = [r.step for r in simulate(proto).records if isinstance(r.step, MatchModels)]
        assert (step.metric, step.min_score, step.max_neurons, step.assignment) == ("r2_er", 0.2, 3, "one_to_one")
    assert MatchModels(heldout_blocks=["h"]).assignment == "best"
    with pytest.raises(ValueError, match="assignment"):
        MatchConfig(assignment="hungarian")  # type: ignore[arg-type]


def test_maximize_on_earlier_heldout_block_in_one_session() -> None:
    sysid = SysidProtocol(n_blocks=1, normal=10, gaudy=0, active=None, heldout=HeldoutConfig(n_images=20, repeats=3))
    maximize = MaximizeProtocol(heldout=HeldoutConfig(present=False, blocks=["heldout"]))
    reports = simulate_session([sysid, maximize])
    assert kinds(reports[1])[0] == "match_models"
    with pytest.raises(ProtocolValidationError, match="'heldout' has not been presented"):
        simulate(maximize)


def test_maximize_with_synthesis_down_shows_fallback_images_and_reports_no_effect() -> None:
    report = simulate(MaximizeProtocol(), SimConfig(fail_generators=frozenset({"maximize_synth"})))
    by = {c.condition: c for c in report.analyses[0].comparisons}
    assert by["max_synth"].n_trials == 0 and by["max_synth"].n_significant == 0
    assert by["max_normal"].n_significant > 0


def test_no_matched_neuron_asks_the_operator_and_ends() -> None:
    report = simulate(MaximizeProtocol(), SimConfig(match_fraction=0.0))
    assert kinds(report)[-1] == "pause_for_operator"
    assert sum(isinstance(s, PresentBlock) for s in report.steps) == 1   # only the held-out block


def test_adversarial_and_smooth_effects_have_the_right_sign() -> None:
    adv = simulate(AdversarialProtocol(), SimConfig(seed=4))
    comps = {c.condition: c for a in adv.analyses for c in a.comparisons}
    assert med(comps["adv+"]) > 20 and med(comps["adv-"]) < -20
    block = next(r.result for r in adv.records if isinstance(r.result, BlockResult) and r.result.block_id ==
                 "adversarial-test")
    labels = set(block.conditions.values())
    matched = {c.neurons[0] for c in comps.values()}
    assert "base" in labels and {f"adv+/neuron={k}" for k in comps["adv+"].neurons} <= labels and matched
    sm = simulate(SmoothProtocol(), SimConfig(seed=4))
    pairs = {(c.condition, c.baseline): c for a in sm.analyses for c in a.comparisons}
    assert med(pairs[("smooth_minus", "base")]) < -15
    assert abs(med(pairs[("smooth_random", "base")])) < 15
    assert med(pairs[("smooth_minus", "smooth_random")]) < -15


@pytest.mark.parametrize(("answers", "n_generate"), [(["abort"], 1), (["resume"], 2)])
def test_failed_generation_lets_the_operator_retry_or_skip(answers: list[str], n_generate: int) -> None:
    report = simulate(AdversarialProtocol(), SimConfig(fail_generators=frozenset({"adversarial"}),
                                                       operator=answers))
    gens = [s for s in report.steps if isinstance(s, GenerateImages)]
    assert len(gens) == n_generate
    assert [g.request_id for g in gens][-1] == ("adv+" if n_generate == 1 else "adv+.r1")
    assert any(isinstance(s, PauseForOperator) for s in report.steps)
    assert [s.block_id for s in report.steps if isinstance(s, PresentBlock)] == ["heldout"]


def test_dots_tuning_to_size() -> None:
    # image-level test (repeats averaged first): power comes from distinct images per size, here 4
    report = simulate(DotsProtocol(sizes=[0.5, 1, 2, 4], locations=[(0, 0), (1, 1), (-1, 1), (1, -1)], repeats=3))
    names = [a.name for a in report.analyses]
    assert names == ["dots_size", "dots_loc"]
    size = report.analyses[0].tuning
    assert size is not None and size.conditions == ["0.5", "1", "2", "4"]
    assert size.n_significant >= 15                     # every simulated neuron prefers big dots


def test_simulation_lists_every_reference_problem() -> None:
    proto = ScriptProtocol(steps=[
        WaitForCounts(block_id="nope"),
        PresentBlock(block_id="b", images=[{"source": "maximize_synth", "n_images": 3}]),  # type: ignore[list-item]
        PresentBlock(block_id="b", images=[{"source": "normal", "n_images": 3, "request": "r9"}]),  # type: ignore[list-item]
    ])
    with pytest.raises(ProtocolValidationError) as info:
        simulate(proto)
    messages = [p.message for p in info.value.problems]
    assert len(messages) == 4
    assert any("'nope' has not been presented" in m for m in messages)
    assert any("inline maximize_synth parameters: params.maximize_synth.neurons: Field required" in m for m in messages)
    assert any("request 'r9' was never made" in m for m in messages)
    assert any("used twice" in m for m in messages)


def test_generated_sets_without_request_are_generated_inline() -> None:
    proto = ScriptProtocol(steps=[PresentBlock(block_id="b", repeats=2, images=[
        ImageSet(source="active", n_images=4, params={"strategy": "random"}),
        ImageSet(source="maximize_synth", n_images=2, params={"neurons": [1, 3]}),
        ImageSet(source="dots", params={"sizes": [1, 2], "locations": [[0, 0]], "numbers": [1]}),
    ])])
    report = simulate(proto)
    (record,) = report.records
    block = record.result
    assert isinstance(block, BlockResult) and block.n_trials == 2 * (4 + 4 + 2)
    assert sorted(set(block.conditions.values())) == [
        "active", "dots/size=1,loc=0:0,n=1", "dots/size=2,loc=0:0,n=1",
        "maximize_synth/neuron=1", "maximize_synth/neuron=3"]
    req = proto.steps[0].images[1].inline_request("b")  # type: ignore[union-attr]
    assert req.request_id == "b.maximize_synth" and req.total_images == 4
