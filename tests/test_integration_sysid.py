"""A lab day through the one assembly, with every real part in its own process.

A lab's rig file names a running PsychoPy stimserver (under Xvfb), a virtual rig process streaming
spikes and photodiode markers over LSL (``acquisition.kind: lsl``, reached at its RPC), a real
mosquitto with username/password, and a modelserver the assembly starts (its data folder persists
under the output folder). A sysid session runs through ``controller.assembly.run_protocol``: every
trial must have counts, the rig must have been given every image it was shown (none of its trials
fell back to baseline), the counts must follow the images, and an operator on the broker must
see the session's status, blocks and trials. A maximize session then runs on the same out folder
and must match neurons to the models the sysid session trained.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.assembly import run_protocol
from controller.bus.access import BusUser, new_password
from controller.bus.broker import MosquittoBroker, mosquitto_binary
from controller.bus.mqtt import MqttOperator
from controller.config import load_config
from controller.links import RigLink, StimLink
from controller.store import SessionReader
from protocols.loader import load_protocol
from stimserver.process import StimServerProcess
from tests.conftest import require
from wire.documents import BlockDoc, ModelVersionDoc, ResponseDoc, StepDoc, StopDoc, TrialDoc
from wire.topics import BlockStatus, BusMessage, SessionStatus, TrialStatus

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "protocols" / "examples"
N_UNITS = 8

#: protocols/examples/sysid.yaml shrunk: a 10 x 2 held-out block, then 2 blocks of 20 normal + 5 gaudy
#: images, with 5 active-learning picks in block 1; a block retrain after block 0, a session retrain
SYSID = ["n_blocks=2", "normal=20", "gaudy=5", "active.n_images=5", "active.timeout_s=300",
         "heldout.n_images=10", "heldout.repeats=2"]
SYSID_TRIALS = 10 * 2 + 25 + 30
#: protocols/examples/maximize.yaml shrunk: matched on its own 10 x 2 held-out block
MAXIMIZE = ["heldout.n_images=10", "heldout.repeats=2", "match.min_score=0.1", "match.max_neurons=3",
            "n_per_neuron=2", "n_random=6", "repeats=2", "synth.steps=5", "synth.timeout_s=300",
            "analysis.n_permutations=100"]


async def timing(stim: StimServerProcess, seconds: float = 0.1) -> list[str]:
    """``timing`` overrides that show each image for ``seconds`` on the server's display, then as long
    a blank. Xvfb has no vertical blank: PsychoPy flips there as fast as it can draw (well under a
    millisecond), so 6 frames would be a few ms, every trial would fall in its neighbours' counting
    windows and the photodiode pulses would be closer than the sync tolerance. Frames are counted from
    the refresh period the server measured (16.7 ms on a 60 Hz monitor: 6 frames, as in the examples)."""
    async with StimLink(stim.rpc, stim.events) as link:
        period = (await link.status()).refresh_period
    assert period is not None and period > 0
    frames = max(1, math.ceil(seconds / period))
    return [f"timing.on_frames={frames}", f"timing.off_frames={frames}"]


@contextlib.contextmanager
def virtual_rig(stim_events: str) -> Iterator[tuple[str, str, str]]:
    """``python -m virtualrig`` with a synthetic population on private LSL stream names, as a lab
    would run it next to the stimulus computer: yields (its RPC, spike stream, sync stream)."""
    tag = uuid.uuid4().hex[:8]
    spikes, sync = f"it-spikes-{tag}", f"it-sync-{tag}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtualrig", "--stim-events", stim_events, "--n-units", str(N_UNITS),
         "--seed", "2", "--spike-stream", spikes, "--sync-stream", sync, "--parent-pid", str(os.getpid())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        rpc = None
        for line in proc.stdout:
            if line.startswith("virtualrig rpc="):
                rpc = line.split("=", 1)[1].strip()
                break
        if rpc is None:
            raise RuntimeError(f"virtualrig exited with {proc.wait()}")
        yield rpc, spikes, sync
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def docs_of(path: Path) -> list[object]:
    with SessionReader(path) as r:
        return list(r.documents())


async def counts_follow_the_images(docs: list[object], path: Path, rig: RigLink) -> tuple[float, dict[str, float]]:
    """(Pearson r between each (trial, unit) count and the rig's ground-truth rate for the image shown,
    mean count per condition): with no images given to the rig every trial is baseline, r ~ 0."""
    with SessionReader(path) as r:
        images = r.images()
    shown_as = {tid: (img, cond.split("/")[0]) for b in docs if isinstance(b, BlockDoc)
                for tid, img, cond in b.params["trials"]}
    responses = [d for d in docs if isinstance(d, ResponseDoc)]
    shown = sorted({shown_as[d.trial_id][0] for d in responses})
    rates = await rig.rates(np.stack([images[i] for i in shown]))
    row = {i: k for k, i in enumerate(shown)}
    counts, truth = [], []
    by_condition: dict[str, list[float]] = {}
    for d in responses:
        image, condition = shown_as[d.trial_id]
        for u, c in zip(d.units, np.asarray(d.counts, float), strict=True):
            counts.append(c)
            truth.append(rates[row[image], int(u)])
        by_condition.setdefault(condition, []).append(float(np.mean(d.counts)))
    return float(np.corrcoef(counts, truth)[0, 1]), {k: float(np.mean(v)) for k, v in by_condition.items()}


@pytest.mark.slow
@pytest.mark.display
@pytest.mark.timeout(480)
async def test_sysid_then_maximize_through_the_assembly_with_every_real_part(tmp_path: Path, xdisplay: str) -> None:
    require(mosquitto_binary() is not None,
            "mosquitto is not installed (apt-get install mosquitto; scripts/bootstrap.sh does)")
    ctl = BusUser("controller", new_password(), "controller", "rig1")
    op = BusUser("operator", new_password(), "operator", "rig1")
    out = tmp_path / "out"
    stim = StimServerProcess(["--presenter", "psychopy", "--rpc", "tcp://127.0.0.1:0", "--events",
                              "tcp://127.0.0.1:0", "--size", "400x400", "--monitor-resolution", "400x400"])
    seen: list[BusMessage] = []
    try:
        assert stim.display_error is None, stim.display_error
        with MosquittoBroker(tmp_path / "mqtt", [ctl, op]) as broker, \
                virtual_rig(stim.events) as (rig_rpc, spikes, sync):
            rig_file = tmp_path / "rig.yaml"
            rig_file.write_text(yaml.safe_dump({
                "rig": "rig1", "subject": "virtual", "out_dir": str(out),
                "stim": {"rpc": stim.rpc, "events": stim.events},
                "acquisition": {"kind": "lsl", "lsl_spike_name": spikes, "lsl_marker_name": sync,
                                "sync": {"channel": "photodiode"}, "silence_timeout": 20,
                                "virtual": {"rpc": rig_rpc}},
                "model": {"members": 2, "max_epochs": 3, "block_epochs": 2, "session_epochs": 3,
                          "pool_crops": 300, "device": "cpu"},
                "images": {"synthetic": 300},
                "bus": {"broker": f"{broker.host}:{broker.port}", "username": ctl.name, "password": ctl.password},
            }, sort_keys=False))
            async with MqttOperator("rig1", broker.host, broker.port, username=op.name,
                                    password=op.password) as viewer, RigLink(rig_rpc) as rig:
                finished = asyncio.Event()

                async def watch() -> None:
                    async for msg in viewer.statuses():
                        seen.append(msg)
                        if isinstance(msg, SessionStatus) and msg.session_id == "sysid" \
                                and msg.state in ("done", "failed"):
                            finished.set()
                watcher = asyncio.create_task(watch())

                # --- sysid ------------------------------------------------------------------------
                frames = await timing(stim)
                proto = load_protocol(EXAMPLES / "sysid.yaml", overrides=[*SYSID, *frames])
                stop, path = await asyncio.wait_for(
                    run_protocol(proto, load_config(rig_file, {"session_id": "sysid"})), timeout=200)
                assert stop.exit_status == "success", stop.reason
                await asyncio.wait_for(finished.wait(), 10)  # the operator saw the session end
                watcher.cancel()
                status = await rig.status()
                # the rig was given every image it was shown: no trial fell back to its baseline
                assert status.trials_unknown_image == 0, status
                assert status.trials_seen == SYSID_TRIALS and status.n_units == N_UNITS
                docs = docs_of(path)
                r, mean_count = await counts_follow_the_images(docs, path, rig)

                # --- maximize, on the same out folder (the modelserver's data folder persists) ---------
                proto = load_protocol(EXAMPLES / "maximize.yaml", overrides=[*MAXIMIZE, *frames])
                max_stop, max_path = await asyncio.wait_for(
                    run_protocol(proto, load_config(rig_file, {"session_id": "maximize"})), timeout=200)
                max_status = await rig.status()
    finally:
        stim.stop()

    # sysid: every trial has counts, and the counts carry stimulus information
    trials = {d.trial_id for d in docs if isinstance(d, TrialDoc)}
    counted = {d.trial_id for d in docs if isinstance(d, ResponseDoc)}
    assert len(trials) == SYSID_TRIALS and counted == trials
    assert stop.n_trials == SYSID_TRIALS
    kinds = [d.step["kind"] for d in docs if isinstance(d, StepDoc)]
    assert kinds.count("retrain") == 2 and "generate_images" in kinds
    assert r > 0.3, f"counts vs the rig's rates for the images shown: r = {r:.3f}"
    assert {"heldout", "normal", "gaudy", "active"} <= set(mean_count), mean_count
    # gaudy (high-contrast, saturated) images drive the Gabor-energy units far more than natural ones
    assert mean_count["gaudy"] > 1.5 * mean_count["normal"], mean_count
    versions = [d.metrics for d in docs if isinstance(d, ModelVersionDoc)]
    assert len(versions) == 2 and all("val_r" in m for m in versions), versions
    # the operator on the broker saw the session
    assert any(isinstance(m, SessionStatus) and m.state == "running" for m in seen)
    assert any(isinstance(m, BlockStatus) for m in seen)
    assert sum(isinstance(m, TrialStatus) for m in seen) >= SYSID_TRIALS - 5

    # maximize: neurons matched to the sysid session's models, the causal block shown and analysed
    assert max_stop.exit_status == "success", max_stop.reason
    mdocs = docs_of(max_path)
    assert isinstance(mdocs[-1], StopDoc)
    steps = {d.step["kind"]: d for d in mdocs if isinstance(d, StepDoc)}
    matches = steps["match_models"].result["matches"]
    assert matches and all("sysid" in m["model_id"] for m in matches), matches
    assert any(isinstance(d, BlockDoc) and d.block_id == "maximize" for d in mdocs)
    assert steps["analyse"].result["comparisons"]
    assert max_status.trials_unknown_image == 0, max_status
    assert max_status.trials_seen == SYSID_TRIALS + max_stop.n_trials
    assert (out / "modelserver").is_dir() and (out / "sysid.h5").is_file() and (out / "maximize.h5").is_file()
