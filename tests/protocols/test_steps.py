"""The step vocabulary (the engine's contract) and the plan driver."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from protocols.errors import ProtocolValidationError
from protocols.plan import adrive, call, check_result, drive
from protocols.steps import (
    RESULT_TYPES,
    STEP_TYPES,
    AdversarialParams,
    Analyse,
    AnyResult,
    AnyStep,
    BlockResult,
    CountsResult,
    DotsParams,
    GenerateImages,
    ImageSet,
    Ingest,
    MatchModels,
    OperatorResult,
    PauseForOperator,
    Plan,
    PresentBlock,
    Result,
    Retrain,
    Step,
    WaitForCounts,
)
from wire.errors import CortexloopError, ModelError

STEPS: list[Step] = [
    PresentBlock(block_id="b0", images=[ImageSet(source="normal", n_images=10),
                                        ImageSet(source="active", request="r1", fallback="pool_random",
                                                 n_images=5)]),
    WaitForCounts(block_id="b0"),
    Ingest(block_ids=["b0"]),
    Retrain(scope="session"),
    GenerateImages(request_id="r1", n_images=2, params=AdversarialParams(neurons=[1, 2], direction="-")),
    MatchModels(heldout_blocks=["b0"]),
    Analyse(analysis="percent_change", name="a", blocks=["b0"], conditions=["active"], baseline="normal"),
    PauseForOperator(message="check"),
]


def test_every_step_type_has_a_result_type_and_round_trips() -> None:
    assert set(RESULT_TYPES) == set(STEP_TYPES)
    assert {type(s) for s in STEPS} == set(STEP_TYPES)
    adapter: TypeAdapter[Step] = TypeAdapter(AnyStep)
    for step in STEPS:
        assert adapter.validate_json(step.model_dump_json()) == step
    results: TypeAdapter[Result] = TypeAdapter(AnyResult)
    r = OperatorResult(action="abort", reason="x")
    assert results.validate_json(r.model_dump_json()) == r


def test_steps_are_frozen_and_strict() -> None:
    with pytest.raises(ValidationError):
        STEPS[1].note = "other"
    with pytest.raises(ValidationError, match="extra"):
        WaitForCounts(block_id="b", colour="red")  # type: ignore[call-arg]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"source": "normal", "image_ids": ["a"]}, "exactly one"),
    ({"n_images": 3}, "exactly one"),
    ({"source": "normal"}, "n_images"),
    ({"source": "active", "request": "r", "fallback": "maximize_synth"}, "needs the modelserver"),
    ({"source": "normal", "n_images": 2, "condition": "a/b"}, "pattern"),
])
def test_image_set_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ImageSet(**kwargs)  # type: ignore[arg-type]


def test_block_conditions_must_differ_and_analyse_needs_baseline() -> None:
    with pytest.raises(ValidationError, match="share condition"):
        PresentBlock(block_id="b", images=[ImageSet(source="normal", n_images=2),
                                           ImageSet(source="normal", n_images=3)])
    with pytest.raises(ValidationError, match="baseline"):
        Analyse(analysis="percent_change", name="a", blocks=["b"], conditions=["x"])
    with pytest.raises(ValidationError, match="also listed"):
        Analyse(analysis="percent_change", name="a", blocks=["b"], conditions=["x"], baseline="x")


def test_generate_counts() -> None:
    dots = DotsParams(sizes=[1, 2], locations=[(0, 0)], numbers=[1, 2, 3])
    assert GenerateImages(request_id="d", params=dots).total_images == 6
    with pytest.raises(ValidationError, match="full factorial"):
        GenerateImages(request_id="d", params=dots, n_images=5)
    with pytest.raises(ValidationError, match="required"):
        GenerateImages(request_id="a", params=AdversarialParams(neurons=[0], direction="+"))
    g = GenerateImages(request_id="a", n_images=4, params=AdversarialParams(neurons=[0, 3, 5], direction="+"))
    assert g.total_images == 12 and g.generator == "adversarial"


def _plan() -> Plan:
    block = yield from call(WaitForCounts(block_id="b"), CountsResult)
    assert block.block_id == "b"
    try:
        yield Retrain(scope="block")
    except ModelError:
        yield PauseForOperator(message="retrain failed")


def test_drive_sends_results_and_throws_errors_into_the_plan() -> None:
    seen: list[str] = []

    def execute(step: Step) -> Result:
        seen.append(step.kind)
        if isinstance(step, WaitForCounts):
            return CountsResult(block_id=step.block_id, n_trials=1, n_neurons=1, mean_count=1.0)
        if isinstance(step, Retrain):
            raise ModelError("GPU on fire")
        return OperatorResult(action="resume")

    done = drive(_plan(), execute)
    assert seen == ["wait_for_counts", "retrain", "pause_for_operator"]
    assert [s.kind for s, _ in done] == ["wait_for_counts", "pause_for_operator"]


def test_wrong_result_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolValidationError, match="expects a CountsResult"):
        check_result(WaitForCounts(block_id="b"), OperatorResult(action="resume"))
    with pytest.raises(ProtocolValidationError):
        drive(_plan(), lambda step: BlockResult(block_id="b", n_trials=0, image_ids=[], conditions={}))


async def test_adrive_unhandled_error_propagates() -> None:
    async def execute(step: Step) -> Result:
        if isinstance(step, WaitForCounts):
            raise CortexloopError("no counts")
        raise AssertionError("not reached")

    with pytest.raises(CortexloopError, match="no counts"):
        await adrive(_plan(), execute)


def test_protocols_package_imports_no_io_libraries() -> None:
    import subprocess
    import sys

    code = ("import sys, protocols, protocols.simulate, protocols.analysis; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'zmq', 'psychopy', 'torch', 'aiomqtt', 'h5py'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
