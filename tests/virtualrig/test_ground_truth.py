"""The rig's ground truth is configuration (``--ground-truth``, ``--neurons``), answered by ``RigRates``,
and the rig process ends with the process that started it (``--parent-pid``)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_module
from virtualrig.__main__ import ground_truth, neuron_spec, parse_args
from virtualrig.rates import GaborEnergyRates, compact_model_sessions, evenly_spaced, reference_images
from virtualrig.rig import VirtualRig
from virtualrig.watchdog import pid_alive
from wire.acq import (
    RIG_MAX_IMAGES,
    RigImagesLoaded,
    RigLoadImages,
    RigRates,
    RigRatesReply,
    RigStatus,
    RigStatusReply,
)
from wire.base import image_id
from wire.errors import InvalidRequest, ModelError
from wire.transport import EventPublisher, RpcClient

REPO = Path(__file__).resolve().parents[2]


def _fake_models(folder: Path, sessions: dict[str, int]) -> Path:
    """Empty files named like published compact models (enough to list sessions; nothing loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for session, n in sessions.items():
        for k in range(n):
            (folder / f"compact_model_{session}_neuron{k}.pt").touch()
    return folder


@asynccontextmanager
async def rig_process(*args: str, log: Path, timeout: float = 120) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``python -m virtualrig ARGS`` with private LSL stream names: (its RPC endpoint, the process)."""
    tag = uuid.uuid4().hex[:10]
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "virtualrig", "--spike-stream", f"sp-{tag}", "--sync-stream", f"sy-{tag}", *args,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        if not line.startswith("virtualrig rpc="):
            await asyncio.wait_for(proc.wait(), 10)
            pytest.fail(f"virtualrig exited ({proc.returncode}) before serving:\n{log.read_text()[-3000:]}")
        yield line.strip().split("=", 1)[1], proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- options ------------------------------------------------------------------------------
def test_neuron_spec() -> None:
    assert neuron_spec("4") == [0, 1, 2, 3]
    assert neuron_spec("0,3,5-7") == [0, 3, 5, 6, 7]
    assert neuron_spec("5,") == [5]
    for bad in ("0", "", "a", "1,1", "-1", "3-"):
        with pytest.raises(argparse.ArgumentTypeError):
            neuron_spec(bad)


def test_ground_truth_options_resolve_without_loading(tmp_path: Path) -> None:
    v4 = tmp_path / "v4"
    _fake_models(v4 / "compact_models", {"200101": 3, "190101": 5})
    (v4 / "images").mkdir()
    (v4 / "images" / "images_200101.zip").touch()
    assert compact_model_sessions(v4 / "compact_models") == ["190101", "200101"]
    base = ["--stim-events", "tcp://127.0.0.1:1"]

    t = ground_truth(parse_args([*base, "--v4-dir", str(v4)]))  # default: the first session, sorted
    assert t.session == "190101" and t.neurons is None and t.reference is None  # no image zip: noise
    t = ground_truth(parse_args([*base, "--v4-dir", str(v4), "--ground-truth", "200101", "--neurons", "0,2"]))
    assert t.session == "200101" and t.neurons == [0, 2]
    assert t.reference == v4 / "images" / "images_200101.zip"  # calibrated on the session's own images
    with pytest.raises(ModelError, match=r"'999'.*sessions there: 190101, 200101"):
        ground_truth(parse_args([*base, "--v4-dir", str(v4), "--ground-truth", "999"]))
    with pytest.raises(InvalidRequest, match="has 3 neurons"):
        ground_truth(parse_args([*base, "--v4-dir", str(v4), "--ground-truth", "200101", "--neurons", "4"]))
    with pytest.raises(InvalidRequest, match="compact models"):
        ground_truth(parse_args([*base, "--neurons", "4"]))
    with pytest.raises(ModelError, match="no compact models"):
        ground_truth(parse_args([*base, "--compact-models", str(tmp_path)]))
    t = ground_truth(parse_args(base))
    assert t.folder is None and t.session is None


def test_bad_session_is_one_line_and_lists_the_sessions(tmp_path: Path) -> None:
    folder = _fake_models(tmp_path / "compact_models", {"200101": 1, "190101": 2})
    res = subprocess.run([sys.executable, "-m", "virtualrig", "--stim-events", "tcp://127.0.0.1:1",
                          "--compact-models", str(folder), "--ground-truth", "999999"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res
    assert res.stdout == "" and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("virtualrig: error:"), res.stderr
    assert "999999" in lines[0] and "190101, 200101" in lines[0]


# --- the oracle ---------------------------------------------------------------------------
async def test_rig_rates_oracle_in_process() -> None:
    model = GaborEnergyRates(5, seed=2)
    images = reference_images(6, seed=4)
    async with EventPublisher("tcp://127.0.0.1:0") as pub, \
            VirtualRig(model, stim_events=pub.endpoint, spike_name=f"sp-{uuid.uuid4().hex[:8]}",
                       sync_name=f"sy-{uuid.uuid4().hex[:8]}") as rig, \
            RpcClient(rig.endpoint, timeout=30) as client:
        reply = await client.request(RigRates(images=images), RigRatesReply)
        assert reply.rates.dtype == np.float32 and reply.rates.shape == (6, 5)
        np.testing.assert_allclose(reply.rates, model.rates(images), rtol=1e-6, atol=1e-4)
        assert reply.unit_names == [f"gabor{i}" for i in range(5)]
        assert reply.image_ids == [image_id(im) for im in images]
        one = await client.request(RigRates(images=images[2]), RigRatesReply)  # one (H, W, 3) image
        np.testing.assert_allclose(one.rates, reply.rates[2:3], rtol=1e-5)
        status = await client.request(RigStatus(), RigStatusReply)
        assert status.n_images == 0  # read only: nothing was loaded
        assert status.description == "5 synthetic Gabor-energy units (seed 2)" and status.session is None
        assert status.unit_names == reply.unit_names
        await client.request(RigLoadImages(images=images[:2]), RigImagesLoaded)
        assert (await client.request(RigStatus(), RigStatusReply)).n_images == 2
        with pytest.raises(InvalidRequest, match="at most"):
            await client.request(RigRates(images=np.zeros((RIG_MAX_IMAGES + 1, 1, 1, 3), np.uint8)), RigRatesReply)
        with pytest.raises(InvalidRequest, match="at most"):
            await client.request(RigLoadImages(images=np.zeros((RIG_MAX_IMAGES + 1, 1, 1, 3), np.uint8)),
                                 RigImagesLoaded)
        with pytest.raises(InvalidRequest, match="uint8"):
            await client.request(RigRates(images=images.astype(np.float32)), RigRatesReply)
        empty = await client.request(RigRates(images=images[:0]), RigRatesReply)
        assert empty.rates.shape == (0, 5)


@pytest.mark.v4
async def test_ground_truth_session_real_v4(v4_data: Path, tmp_path: Path) -> None:
    """``--ground-truth 190923 --neurons 0,2,5``: the process's rates are those of the same models in-process."""
    require_module("torch", "the compact models need torch (cortexloop[model])")
    from virtualrig.rates import CompactModelRates, load_image_zip

    session, neurons, count = "190923", [0, 2, 5], 40
    session_images = load_image_zip(v4_data / "images" / f"images_{session}.zip")
    images = np.concatenate([session_images[7:12], reference_images(3, seed=11)])
    async with EventPublisher("tcp://127.0.0.1:0") as pub, rig_process(
            "--stim-events", pub.endpoint, "--v4-dir", str(v4_data), "--ground-truth", session,
            "--neurons", ",".join(map(str, neurons)), "--reference-count", str(count),
            log=tmp_path / "rig.log") as (endpoint, _):
        truth = await asyncio.to_thread(
            lambda: CompactModelRates(v4_data / "compact_models", session=session, neurons=neurons,
                                      reference=evenly_spaced(session_images, count)).rates(images))
        async with RpcClient(endpoint, timeout=120) as rig:
            status = await rig.request(RigStatus(), RigStatusReply)
            reply = await rig.request(RigRates(images=images), RigRatesReply)
            after = await rig.request(RigStatus(), RigStatusReply)
    assert status.n_units == 3 and status.session == session
    assert status.description == f"3 real V4 compact models of session {session} (Cowley et al. 2023)"
    assert status.unit_names == [f"{session}/neuron{k}" for k in neurons] == reply.unit_names
    assert reply.rates.shape == (images.shape[0], 3) and reply.rates.dtype == np.float32
    np.testing.assert_allclose(reply.rates, truth, rtol=1e-4, atol=1e-3)
    assert truth.std(axis=0).min() > 1  # the images drive the units differently (not a constant)
    assert after.n_images == 0 and after.trials_seen == 0  # the oracle changed nothing


@pytest.mark.v4
def test_default_session_is_the_first_sorted(v4_data: Path) -> None:
    require_module("torch", "the compact models need torch (cortexloop[model])")
    from virtualrig.rates import CompactModelRates

    folder = v4_data / "compact_models"
    first = compact_model_sessions(folder)[0]
    model = CompactModelRates(folder, neurons=[1], reference=reference_images(8))
    assert model.session == first and model.unit_names == [f"{first}/neuron1"]


# --- process hygiene ----------------------------------------------------------------------
async def test_parent_pid_ends_the_rig(tmp_path: Path) -> None:
    parent = await asyncio.create_subprocess_exec("sleep", "5")
    async with EventPublisher("tcp://127.0.0.1:0") as pub, rig_process(
            "--stim-events", pub.endpoint, "--n-units", "4", "--parent-pid", str(parent.pid),
            log=tmp_path / "rig.log", timeout=30) as (_, rig):
        assert rig.returncode is None
        await asyncio.wait_for(parent.wait(), 30)
        ended = time.monotonic()
        await asyncio.wait_for(rig.wait(), 10)
        assert time.monotonic() - ended < 4
        assert rig.returncode == 0, (tmp_path / "rig.log").read_text()[-2000:]
    assert "has ended: exiting" in (tmp_path / "rig.log").read_text()


async def test_parent_pid_already_gone(tmp_path: Path) -> None:
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    assert not pid_alive(gone.pid)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "virtualrig", "--stim-events", "tcp://127.0.0.1:1", "--n-units", "2",
        "--parent-pid", str(gone.pid), cwd=REPO, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_pid_alive_sees_zombies() -> None:
    import os

    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert pid_alive(os.getpid())
