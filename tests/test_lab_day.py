"""``cortexloop run`` is the closed loop: a lab day on embedded defaults, every example protocol.

Each session is a real ``cortexloop run`` process, which starts a stimserver, a virtual rig
process streaming spikes over LSL, a modelserver process (data folder under ``--out``, kept from
one session to the next) and the embedded MQTT broker. Protocols are shrunk by ``--set``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.store import SessionReader
from wire.documents import BlockDoc, PickDoc, StartDoc, StepDoc, StopDoc

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "protocols" / "examples"

RIG = """\
rig: lab1
subject: virtual
acquisition: {kind: virtual, virtual: {n_units: 12, seed: 3}}
model: {members: 2, block_epochs: 3, session_epochs: 4, max_epochs: 4, pool_crops: 400, device: cpu}
images: {synthetic: 500}
"""

HELDOUT = ["heldout.n_images=16", "heldout.repeats=3", "match.min_score=0.1", "match.max_neurons=3"]
SHRINK: dict[str, list[str]] = {
    "sysid.yaml": ["n_blocks=2", "normal=24", "gaudy=6", "active.n_images=8", "active.timeout_s=300",
                   "heldout.n_images=16", "heldout.repeats=3", "timing.on_frames=3", "timing.off_frames=3"],
    "maximize.yaml": [*HELDOUT, "n_per_neuron=2", "n_random=8", "repeats=2", "synth.steps=10",
                      "synth.timeout_s=300", "analysis.n_permutations=100"],
    "adversarial.yaml": [*HELDOUT, "n_per_neuron=2", "steps=5", "repeats=2", "timeout_s=300"],
    "smooth.yaml": [*HELDOUT, "n_per_neuron=2", "repeats=2", "timeout_s=300"],
    "script.yaml": ["steps.0.repeats=1", "steps.0.images.0.n_images=6", "steps.0.images.1.n_images=6",
                    "steps.3.timeout_s=1", "steps.3.on_timeout=resume"],
    "dots.yaml": ["sizes=[0.5, 1.0]", "locations=[[0, 0], [2, 0]]", "repeats=2", "n_blocks=1",
                  "analysis.n_permutations=100"],
    "dots.toml": ["sizes=[0.5, 1.0]", "locations=[[0, 0]]", "repeats=2"],
}


def run(protocol: str, out: Path, rig: Path, session: str, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-c", "from controller.cli import entry; entry()", "run", str(EXAMPLES / protocol), "--config", str(rig),
            "--out", str(out), "--session-id", session]
    for o in overrides:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    return subprocess.run(args, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


def docs_of(path: Path) -> list[object]:
    with SessionReader(path) as r:
        return list(r.documents())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_lab_day_every_example_protocol_under_cortexloop_run(tmp_path: Path) -> None:
    rig = tmp_path / "rig.yaml"
    rig.write_text(RIG)
    out = tmp_path / "out"
    order = ["sysid.yaml", "maximize.yaml", "adversarial.yaml", "smooth.yaml", "script.yaml", "dots.yaml",
             "dots.toml"]
    # lab_day.yaml and demo_day.yaml are schedules of the other files (several sessions, operator pauses):
    # they run under `cortexloop run` in tests/controller/test_schedule.py and in the demo (test_closed_loop.py)
    schedules = {"lab_day.yaml", "demo_day.yaml"}
    assert set(order) == {f.name for f in EXAMPLES.iterdir() if f.suffix in (".yaml", ".toml")} - schedules
    for protocol in order:
        session = protocol.replace(".", "-")
        done = run(protocol, out, rig, session, SHRINK[protocol])
        assert done.returncode == 0, f"{protocol}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        docs = docs_of(out / f"{session}.h5")
        stop = docs[-1]
        assert isinstance(stop, StopDoc) and stop.exit_status == "success", (protocol, stop)
        start = docs[0]
        assert isinstance(start, StartDoc)
        assert start.config["overrides"] == SHRINK[protocol], "overrides are recorded in the start document"

        if protocol == "sysid.yaml":
            # the active blocks hold picks the model made: no fallback anywhere
            picks = [d for d in docs if isinstance(d, PickDoc)]
            active = [p for p in picks if p.generator == "active"]
            assert len(active) == 8 and all(p.model_version for p in active), picks[:3]
            assert not [p for p in picks if p.generator.startswith("fallback")]
            blocks = [d for d in docs if isinstance(d, BlockDoc)]
            assert [b.fallback for b in blocks] == [False] * len(blocks)
            retrains = [d for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "retrain"]
            assert retrains and all(r.result["status"] == "done" for r in retrains)
        if protocol == "maximize.yaml":
            steps = {d.step["kind"]: d for d in docs if isinstance(d, StepDoc)}
            matches = steps["match_models"].result["matches"]
            assert matches, "neurons matched to the models of the sysid session"
            assert all("sysid-yaml" in m["model_id"] for m in matches), matches
            assert steps["analyse"].result["comparisons"], "the causal analysis is recorded"
            made = {p.generator for p in docs if isinstance(p, PickDoc)}
            assert {"maximize", "synthesize"} <= made, made
        if protocol in ("adversarial.yaml", "smooth.yaml"):
            made = {p.generator for p in docs if isinstance(p, PickDoc)}
            want = {"adversarial+", "adversarial-"} if protocol == "adversarial.yaml" else {"smooth-", "smooth-control"}
            assert want <= made, made
            analyses = [d for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "analyse"]
            assert len(analyses) >= 2, "each generated kind is tested against its base images"
        if protocol == "dots.yaml":
            analyses = {d.result["name"] for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "analyse"}
            assert analyses == {"dots_size", "dots_loc", "dots_n"}, analyses
    # the modelserver's data folder persisted under --out across the day
    assert (out / "modelserver" / "versions").is_dir()


def test_the_demo_is_a_rig_file(tmp_path: Path) -> None:
    """The demo's configuration written as a rig file reads back as the same configuration."""
    from controller.config import load_config
    from controller.demo import DemoSettings, demo_config, write_rig_file

    for data in (None, tmp_path / "v4"):
        if data is not None:
            (data / "compact_models").mkdir(parents=True)
            (data / "images").mkdir()
        cfg = demo_config(tmp_path / "out", DemoSettings(neurons=5), data, "190923" if data else None)
        path = write_rig_file(cfg, tmp_path / "rig.yaml")
        assert load_config(path) == cfg
        assert cfg.model.kind == "start" and cfg.acquisition.kind == "virtual"
        assert (cfg.acquisition.virtual.data is None) == (data is None)
