"""The one assembly (controller.assembly) and its rig configuration (controller.config).

Configuration checks, the images held back from every session, what a failed or repeated start
leaves on disk, and the embedded default assembly (a stimserver child, a virtual rig process
streaming over LSL, the embedded broker, no modelserver) running a shrunk example protocol.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from controller.assembly import assemble, build_images, run_protocol
from controller.config import (
    AcquisitionConfig,
    ImagesConfig,
    ModelConfig,
    RunConfig,
    StimConfig,
    load_config,
)
from controller.engine import NoModelServer
from controller.store import SessionReader, SessionWriter
from protocols.loader import load_protocol
from wire.base import image_id
from wire.documents import ResponseDoc, StartDoc, StepDoc, StopDoc, TrialDoc
from wire.errors import ProtocolError, ServerUnavailable, StoreError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "protocols" / "examples"
#: protocols/examples/script.yaml shrunk: 6 normal + 6 gaudy images once; the pause times out and resumes
SCRIPT_SHRINK = ["steps.0.repeats=1", "steps.0.images.0.n_images=6", "steps.0.images.1.n_images=6",
                 "steps.3.timeout_s=1", "steps.3.on_timeout=resume"]


def rig_file(tmp_path: Path, text: str | bytes, name: str = "rig.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# --- the rig configuration ---------------------------------------------------------------------------
def test_the_embedded_defaults_are_a_valid_configuration() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.stim.rpc is None and cfg.stim.presenter == "fake"  # a display-free stimserver child
    assert cfg.acquisition.kind == "virtual" and cfg.acquisition.sync is not None  # photodiode markers
    assert cfg.acquisition.sync.channel == "photodiode"
    assert cfg.model.kind == "start" and cfg.model_dir() == Path("out") / "modelserver"
    assert cfg.bus.broker == "embedded"
    assert load_config(None, {"rig": "rig7"}).rig == "rig7"


def test_open_ephys_without_a_sync_channel_is_an_error_naming_it(tmp_path: Path) -> None:
    path = rig_file(tmp_path, "acquisition: {kind: openephys}\n")
    with pytest.raises(ProtocolError, match="sync channel") as err:
        load_config(path)
    assert str(path) in str(err.value) and "acquisition" in str(err.value)
    cfg = load_config(rig_file(tmp_path, "acquisition: {kind: openephys, sync: {channel: ttl1}}\n", "ok.yaml"))
    assert cfg.acquisition.sync is not None and cfg.acquisition.sync.channel == "ttl1"
    # the sync channel is what maps stimulus onsets onto a sample clock: lsl alone may go without one
    assert AcquisitionConfig(kind="lsl").sync is None


def test_a_running_modelserver_needs_both_endpoints(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="both rpc and events") as err:
        load_config(rig_file(tmp_path, "model: {rpc: 'tcp://gpu-box:5570'}\n"))
    assert "model" in str(err.value)
    cfg = load_config(rig_file(tmp_path, "model: {rpc: 'tcp://gpu-box:5570', events: 'tcp://gpu-box:5571'}\n",
                               "ok.yaml"))
    assert cfg.model.kind == "connect"
    assert (cfg.model.rpc, cfg.model.events) == ("tcp://gpu-box:5570", "tcp://gpu-box:5571")
    with pytest.raises(ProtocolError, match="both rpc and events"):
        load_config(None, {"model": {"kind": "connect", "events": "tcp://gpu-box:5571"}})
    assert ModelConfig(kind="none").kind == "none"


def test_a_running_stimserver_needs_both_endpoints(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="both rpc and events") as err:
        load_config(rig_file(tmp_path, "stim: {rpc: 'tcp://127.0.0.1:5560'}\n"))
    assert "stim" in str(err.value)
    with pytest.raises(ProtocolError, match="both rpc and events"):
        load_config(None, {"stim": {"events": "tcp://127.0.0.1:5561"}})
    cfg = load_config(rig_file(tmp_path, "stim: {rpc: 'tcp://127.0.0.1:5560', events: 'tcp://127.0.0.1:5561'}\n",
                               "ok.yaml"))
    assert cfg.stim == StimConfig(rpc="tcp://127.0.0.1:5560", events="tcp://127.0.0.1:5561")


@pytest.mark.parametrize(("content", "what"), [
    ("- rig: rig1\n- subject: m1\n", "mapping"),
    (b"rig: \xff\xfe caf\xe9\n", "cannot read"),
    ("rig: [rig1\nsubject: m1\n", "not YAML"),
    ("rig: rig1\nno_such_section: {}\n", "no_such_section"),
], ids=["a-list", "not-utf8", "invalid-yaml", "unknown-key"])
def test_a_bad_rig_file_is_a_protocol_error_naming_the_file(tmp_path: Path, content: str | bytes, what: str) -> None:
    path = rig_file(tmp_path, content)
    with pytest.raises(ProtocolError, match=what) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_a_missing_rig_file_is_a_protocol_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="cannot read") as err:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(err.value)


# --- images kept back from every session ----------------------------------------------------------
def write_pool(path: Path, n: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["ids"] = np.array([image_id(p) for p in images], dtype="S32")
    return images


def test_held_out_images_are_disjoint_from_the_library_and_fixed_by_their_seed() -> None:
    cfg = RunConfig(images=ImagesConfig(synthetic=30, holdout=8), seed=5)
    lib, held = build_images(cfg)
    assert len(lib) == 30 and held.shape == (8, *lib.images.shape[1:]) and held.dtype == np.uint8
    held_ids = {image_id(p) for p in held}
    assert len(held_ids) == 8 and not held_ids & set(lib.ids)
    assert lib.ids == [image_id(p) for p in lib.images]
    again_lib, again_held = build_images(cfg)
    assert again_lib.ids == lib.ids and np.array_equal(again_held, held)
    other_lib, other_held = build_images(cfg.model_copy(update={"images": ImagesConfig(
        synthetic=30, holdout=8, holdout_seed=1)}))
    assert {image_id(p) for p in other_held} != held_ids  # another seed holds back other images
    assert set(other_lib.ids) | {image_id(p) for p in other_held} == set(lib.ids) | held_ids
    # no hold-out: an empty array of the library's image shape
    lib0, held0 = build_images(RunConfig(images=ImagesConfig(synthetic=12)))
    assert len(lib0) == 12 and held0.shape == (0, *lib0.images.shape[1:])


def test_held_out_images_from_a_pool_file(tmp_path: Path) -> None:
    images = write_pool(tmp_path / "pool.h5", 10)
    lib, held = build_images(RunConfig(images=ImagesConfig(pool=tmp_path / "pool.h5", holdout=3)))
    assert len(lib) == 7 and len(held) == 3
    assert sorted([*lib.ids, *(image_id(p) for p in held)]) == sorted(image_id(p) for p in images)
    assert lib.ids == sorted(lib.ids, key=[image_id(p) for p in images].index)  # the rest keep their order
    for n in (10, 11):
        with pytest.raises(StoreError, match=f"holdout {n} leaves nothing of the 10 images"):
            build_images(RunConfig(images=ImagesConfig(pool=tmp_path / "pool.h5", holdout=n)))


# --- what a start leaves on disk -------------------------------------------------------------------
def quiet(out: Path, **update: object) -> RunConfig:
    """The embedded defaults without a modelserver or broker, writing to ``out``."""
    return RunConfig(out_dir=out, session_id="s1", model=ModelConfig(kind="none"),
                     images=ImagesConfig(synthetic=40)).model_copy(update=update)


async def test_a_failed_start_leaves_no_session_file(tmp_path: Path) -> None:
    proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
    cfg = quiet(tmp_path, stim=StimConfig(extra_args=["--no-such-option"]))
    with pytest.raises(ServerUnavailable, match="stimserver exited"):
        await run_protocol(proto, cfg)
    assert not (tmp_path / "s1.h5").exists()
    assert list(tmp_path.glob("*.h5")) == []


def _processes_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return pids


async def test_a_part_that_fails_to_start_stops_the_ones_starting_beside_it(tmp_path: Path) -> None:
    """The children start side by side: the stimserver's failure is raised as itself (not an
    exception group), and the modelserver that was starting meanwhile is stopped, not left running."""
    proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
    cfg = quiet(tmp_path, stim=StimConfig(extra_args=["--no-such-option"]),
                model=ModelConfig(members=1, max_epochs=1, session_epochs=1, block_epochs=1, threads=1))
    with pytest.raises(ServerUnavailable, match="stimserver exited"):
        await run_protocol(proto, cfg)
    assert cfg.model_dir().is_dir()  # the modelserver had been started beside the stimserver
    assert _processes_naming(str(cfg.model_dir())) == []
    assert list(tmp_path.glob("*.h5")) == []


async def test_an_existing_session_file_is_refused_without_resume(tmp_path: Path) -> None:
    proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
    path = tmp_path / "s1.h5"
    with SessionWriter.create(path) as w:
        w.write(StartDoc(session_id="s1", code_version="test"))
    with pytest.raises(StoreError, match="pass --resume"):
        async with assemble(quiet(tmp_path), proto):
            pytest.fail("a session must not start on an existing file")
    with SessionReader(path) as r:  # untouched
        assert [d.kind for d in r.documents()] == ["start"]


async def test_a_file_without_a_start_document_is_replaced_and_a_failed_start_removes_it(tmp_path: Path) -> None:
    proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
    path = tmp_path / "s1.h5"
    SessionWriter.create(path).close()  # what a start that failed before its start document could leave
    with pytest.raises(ServerUnavailable):
        await run_protocol(proto, quiet(tmp_path, stim=StimConfig(extra_args=["--no-such-option"])))
    assert not path.exists()


# --- the embedded default assembly, end to end -----------------------------------------------------
async def test_embedded_assembly_without_a_modelserver_runs_the_script_example(tmp_path: Path) -> None:
    proto = load_protocol(EXAMPLES / "script.yaml", overrides=SCRIPT_SHRINK)
    cfg = RunConfig(out_dir=tmp_path, session_id="check", rig="rig3", model=ModelConfig(kind="none"),
                    images=ImagesConfig(synthetic=60))
    statuses: list[str] = []
    async with assemble(cfg, proto, record={"note": "test"}, on_status=lambda t, p: statuses.append(t)) as s:
        assert isinstance(s.engine.models, NoModelServer)  # the no-modelserver seam
        assert s.model_endpoints is None and "modelserver" not in s.children
        assert set(s.children) == {"stimserver", "virtualrig"}
        assert s.rig is not None and s.path == tmp_path / "check.h5"
        stop = await s.run()
        status = await s.rig.status()
        children = dict(s.children)
    assert stop.exit_status == "success", stop.reason
    assert stop.n_trials == 12
    # the rig was sent every image the stimserver showed: none of its trials fell back to baseline
    assert status.trials_seen == 12 and status.trials_unknown_image == 0
    assert status.n_units == 24 and status.n_images >= 12
    assert all(not c.alive for c in children.values()), "children stop with the session"
    assert (tmp_path / "bus-operator.json").is_file(), "the embedded broker wrote the operator's credentials"
    assert statuses
    with SessionReader(s.path) as r:
        docs = list(r.documents())
    start, last = docs[0], docs[-1]
    assert isinstance(start, StartDoc) and start.config["note"] == "test"
    assert start.config["model"]["kind"] == "none" and start.protocol["protocol"] == "script"
    assert isinstance(last, StopDoc) and last.exit_status == "success"
    trials = {d.trial_id for d in docs if isinstance(d, TrialDoc)}
    counted = [d for d in docs if isinstance(d, ResponseDoc)]
    assert len(trials) == 12 and {d.trial_id for d in counted} == trials
    assert all(len(d.units) == 24 for d in counted)
    assert sum(float(np.sum(d.counts)) for d in counted) > 0
    kinds = [d.step["kind"] for d in docs if isinstance(d, StepDoc)]
    assert kinds == ["present_block", "wait_for_counts", "analyse", "pause_for_operator"]
