"""NWB metadata from the rig file, photodiode-timed onsets, and the DANDI folder checked as `dandi validate` does."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.config import RunConfig, load_config
from controller.store import SessionWriter
from tests.conftest import require_module
from wire.base import image_id
from wire.documents import ImageDoc, ResponseDoc, StartDoc, StopDoc, TrialDoc
from wire.errors import ProtocolError, StoreError

require_module("pynwb")
require_module("nwbinspector")
require_module("dandi")
require_module("ndx_binned_spikes")
from pynwb import NWBHDF5IO  # noqa: E402

from controller.nwb import build_nwbfile, check_dandiset, export_dandi  # noqa: E402

runner = CliRunner()
RIG = {"rig": "rig2", "subject": {"subject_id": "M7", "species": "Macaca mulatta", "sex": "F", "age": "P6Y3M",
                                  "description": "adult rhesus, V4 array"},
       "lab": "V4 lab", "institution": "Somewhere University", "experimenter": ["Doe, Jane", "Roe, Rick"],
       "acquisition": {"kind": "openephys", "sync": {"channel": "photodiode", "tolerance": 0.01}}}
UNITS = ["u0", "u1", "u2"]


def photodiode_session(path: Path, *, config: dict | None = None, windows: tuple = ((0.05, 0.15),)) -> dict:
    """Trials whose acquisition-clock onsets come from a photodiode clock fit (offset 50 s, 20 ppm drift).
    Trial k is counted in window ``windows[k % len(windows)]``; trial 4 is never counted."""
    cfg = RunConfig.model_validate(RIG if config is None else config).model_dump(mode="json")
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    ids = [image_id(a) for a in imgs]
    docs: list = [StartDoc(session_id="2026-12-02_rig2_M7", config=cfg, code_version="t", rig="rig2",
                           subject=cfg["subject"], time=time.time() - 600, protocol={"protocol": "sysid"})]
    docs += [ImageDoc(image_id=i, pixels=a) for i, a in zip(ids, imgs, strict=True)]
    counts: dict[int, np.ndarray] = {}
    acq: dict[int, float] = {}
    for k in range(9):
        onset = 100.0 + 0.3 * k + 0.002 * rng.random()
        docs.append(TrialDoc(trial_id=f"b0/{k}", block_id="b0", index=k, image_id=ids[k % 3], onset=onset,
                             offset=onset + 0.1, on_frames=6, dropped_frames=0))
        if k != 4:
            counts[k] = rng.poisson(4, len(UNITS)).astype(np.uint32)
            acq[k] = 50.0 + (1 + 2e-5) * onset
            docs.append(ResponseDoc(trial_id=f"b0/{k}", units=UNITS, counts=counts[k], onset_acq=acq[k],
                                    window=windows[k % len(windows)]))
    docs.append(StopDoc(exit_status="success", n_trials=9))
    with SessionWriter.create(path) as w:
        w.write_many(docs)
    return {"counts": counts, "acq": acq, "images": ids}


def test_dandi_folder_metadata_and_counts(tmp_path: Path) -> None:
    """export --dandi: dandi's layout, `dandi validate` (its own CLI) finds no error, metadata from the rig file,
    and the counts read back with pynwb are the session's, trial by trial and unit by unit."""
    session = tmp_path / "s.h5"
    ex = photodiode_session(session)
    folder = tmp_path / "dandiset"
    result = runner.invoke(app, ["export", str(session), "--dandi", str(folder)])
    assert result.exit_code == 0, result.output
    assert "dandi validate: no errors" in result.output
    files = sorted(folder.rglob("*.nwb"))
    assert [f.relative_to(folder).as_posix() for f in files] == ["sub-M7/sub-M7_ses-2026-12-02-rig2-M7_image.nwb"]
    assert (folder / "dandiset.yaml").is_file()

    from click.testing import CliRunner as ClickRunner
    from dandi.cli.command import main as dandi_main

    res = ClickRunner().invoke(dandi_main, ["validate", str(folder)], env={"DANDI_NO_ET": "1"})
    assert res.exit_code == 0 and "No errors found" in res.output, res.output

    with NWBHDF5IO(files[0], "r") as io:
        nwb = io.read()
        assert (nwb.subject.subject_id, nwb.subject.sex, nwb.subject.age) == ("M7", "F", "P6Y3M")
        assert nwb.subject.species == "Macaca mulatta" and "V4 array" in nwb.subject.description
        assert nwb.lab == "V4 lab" and nwb.institution == "Somewhere University"
        assert list(nwb.experimenter) == ["Doe, Jane", "Roe, Rick"]
        assert "photodiode" in nwb.devices["sync_line"].description
        assert "Open Ephys" in nwb.devices["acquisition_system"].description
        data = nwb.processing["ecephys"]["spike_counts"].data[:]
        for k in range(9):
            if k in ex["counts"]:
                assert np.array_equal(data[:, k, 0], ex["counts"][k])
            else:
                assert np.isnan(data[:, k, 0]).all()
    again = runner.invoke(app, ["export", str(session), "--dandi", str(folder)])
    assert again.exit_code != 0 and "exists" in str(again.exception)  # never overwrites unasked
    assert runner.invoke(app, ["export", str(session), "--dandi", str(folder), "--overwrite"]).exit_code == 0


def test_photodiode_onsets_and_two_windows(tmp_path: Path) -> None:
    """Onsets are an EventsTable with the photodiode-fitted acquisition time; each window is its own container."""
    session = tmp_path / "s.h5"
    ex = photodiode_session(session, windows=((0.05, 0.15), (0.0, 0.2)))
    nwb = build_nwbfile(session)
    ev = nwb.events["stimulus_onsets"].to_dataframe()
    assert "photodiode" in nwb.events["stimulus_onsets"]["onset_acq"].description
    for k in range(9):
        if k in ex["acq"]:
            assert ev["onset_acq"][k] == ex["acq"][k] == nwb.trials["onset_acq"][k]
        else:
            assert np.isnan(ev["onset_acq"][k])
    main, other = nwb.processing["ecephys"]["spike_counts"], nwb.processing["ecephys"]["spike_counts_0_200ms"]
    assert (main.event_to_bin_offset_in_ms, main.bin_width_in_ms) == (50.0, 100.0)
    assert (other.event_to_bin_offset_in_ms, other.bin_width_in_ms) == (0.0, 200.0)
    for k in range(9):  # each count is in the container of its own window, NaN in the other
        have, lack = (main, other) if k % 2 == 0 else (other, main)
        if k in ex["counts"]:
            assert np.array_equal(have.data[:, k, 0], ex["counts"][k]) and np.isnan(lack.data[:, k, 0]).all()


def test_metadata_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "rig.yaml"
    bad.write_text("subject: {subject_id: M7, age: 6 years, sex: female}\n")
    with pytest.raises(ProtocolError) as err:
        load_config(bad)
    assert "subject_info.age" in str(err.value) and "ISO 8601" in str(err.value) and "subject_info.sex" in str(err.value)
    with pytest.raises(ProtocolError, match="species 'rhesus'"):
        load_config(None, {"subject": {"species": "rhesus"}})
    cfg = load_config(None, {"subject": {"subject_id": "M7", "age": "P0D/"}, "experimenter": "Doe, Jane"})
    assert cfg.subject == "M7" and cfg.subject_info is not None and cfg.experimenter == ["Doe, Jane"]
    session = tmp_path / "s.h5"
    photodiode_session(session)
    with pytest.raises(StoreError, match="age: Value error, age '7 years'"):
        build_nwbfile(session, age="7 years")
    result = runner.invoke(app, ["export", str(session), "--nwb", "--sex", "X"])
    assert result.exit_code != 0 and "sex" in str(result.exception) and not session.with_suffix(".nwb").exists()
    for args in (["--nwb", "--dandi", str(tmp_path / "d")], [], ["--dandi", str(tmp_path / "d"), "--out", "x.nwb"],
                 [str(session), "--nwb", "--out", "x.nwb"]):
        result = runner.invoke(app, ["export", str(session), *args])
        assert result.exit_code == 2 and ("choose one format" in result.output or "--out names" in result.output)


def test_dandi_validation_reports_errors(tmp_path: Path) -> None:
    """check_dandiset is not vacuous: a file outside dandi's layout and a dandiset.yaml without name are errors."""
    session = tmp_path / "s.h5"
    photodiode_session(session, config={"subject": "M8"})
    folder = tmp_path / "ds"
    (nwb,) = export_dandi([session], folder)
    assert check_dandiset(folder) == ([], [])  # defaults (no subject section) validate too
    nwb.rename(folder / "session.nwb")
    (folder / "dandiset.yaml").write_text("identifier: DANDI:000000\ndescription: x\n")
    errors, _ = check_dandiset(folder)
    assert any("session.nwb" in e for e in errors) and any("name" in e for e in errors), errors
    result = runner.invoke(app, ["export", str(session), "--dandi", str(folder)])
    assert result.exit_code == 1 and "error(s)" in result.output
