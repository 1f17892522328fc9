"""Compact models from a saved ensemble version: the library call and ``modelserver distill``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelserver.cli import app
from modelserver.compact.compress import CompressConfig, compress, write_compact_models
from modelserver.compact.distill import make_pool, predict_students
from modelserver.compact.model import find_compact_models, load_compact_model, preprocess
from modelserver.serving.versions import read_version, save_version
from modelserver.training.dataset import TrainingSet
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig
from modelserver.training.metrics import pearson_r
from wire.base import image_id
from wire.errors import NotFound

TINY = EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2, max_epochs=8,
                      batch_size=16, patience=8, lr=1e-2, frontend="pixels")
FAST = dict(pool=96, heldout=32, filters=(4, 4, 3, 3, 3), shared=4, batch_size=16, train_minutes=0.05,
            prune_minutes=0.03, finetune_minutes=0.02)
NEURONS = 3


def _images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """Square images of one random colour each, plus pixel noise."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(20, 235, (n, 1, 1, 3))
    return np.clip(colour + rng.normal(0, 12, (n, size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server data folder: sessions "a" (neurons driven by red) and "b" (driven by its absence),
    and one version of an ensemble fitted to them, saved exactly as the server saves versions."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ms")
    imgs = _images(200, 0)
    red = imgs[..., 0].mean((1, 2)) / 255.0
    gain = np.arange(1, NEURONS + 1)
    rng = np.random.default_rng(1)
    rates = {"a": 0.5 + 4 * red[:, None] * gain, "b": 0.5 + 4 * (1 - red[:, None]) * gain}
    data = {}
    with TrainingSet(d / "training_set.h5") as ts:
        for s, rate in rates.items():
            ts.ingest(s, [image_id(im) for im in imgs], rng.poisson(rate).astype(np.float64), imgs)
            sd = ts.session(s)
            data[s] = (ts.images(sd.image_rows), sd.mean)
    torch.manual_seed(0)
    ens = DeepEnsemble(TINY)
    report = ens.fit(data)
    (d / "versions").mkdir()
    save_version(d / "versions", ens, report)
    return d


def test_read_version_latest_and_errors(data_dir: Path, tmp_path: Path) -> None:
    ens, version = read_version(data_dir, None)
    again, same = read_version(data_dir, version)
    assert same == version and set(ens.session_neurons) == {"a", "b"}
    x = _images(5, 3)
    np.testing.assert_allclose(again.predict(x, "a"), ens.predict(x, "a"))
    with pytest.raises(NotFound, match="unknown model version"):
        read_version(data_dir, "20000101-000000-abcdef")
    with pytest.raises(NotFound, match="no model versions"):
        read_version(tmp_path, None)


def test_compress_writes_loadable_students_equal_to_the_stack(data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ens, _ = read_version(data_dir, None)
    calls: list[int] = []

    def teacher(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return ens.predict(images, "a")

    events: list[str] = []
    cfg = CompressConfig(**FAST, label_batch=50)  # type: ignore[arg-type]
    model, report = compress(teacher, _images(40, 5), cfg, progress=lambda s, _i: events.append(s))
    assert calls == [50, 50, 28]  # the whole pool (96 + 32), in chunks
    assert {"pool", "labels", "distill", "prune", "test", "finetune"} <= set(events)
    assert report.neurons == NEURONS and report.filters_before.shape == (NEURONS, 5)
    assert (report.filters_after == model.kept_filters()).all()
    assert (report.filters_after <= report.filters_before).all()
    assert set(report.r) == {"distilled", "pruned", "finetuned"}
    assert report.steps["distill"] > 0 and report.seconds["distill"] > 0

    paths = write_compact_models(model, tmp_path / "out", "a", report)
    assert paths == find_compact_models(tmp_path / "out", "a")
    assert [p.name for p in paths] == [f"compact_model_a_neuron{k}.pt" for k in range(NEURONS)]
    x = make_pool(_images(10, 7), 12, seed=3)
    stacked = predict_students(model, x)
    for k, p in enumerate(paths):
        compact = load_compact_model(p)
        assert list(compact.filters) == report.filters_after[k].tolist()
        with torch.no_grad():
            out = compact(preprocess(x)).numpy()
        np.testing.assert_allclose(out, stacked[k], rtol=1e-4, atol=1e-4 * np.abs(stacked[k]).max())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["sessions"]["a"]
    assert summary["config"]["pool"] == 96 and summary["neurons"] == NEURONS
    assert np.allclose(summary["r"]["finetuned"], report.r["finetuned"])
    assert summary["filters_after"] == report.filters_after.tolist()
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporary files left

    with pytest.raises(FileExistsError, match="already holds 3 compact models"):
        write_compact_models(model, tmp_path / "out", "a", report)
    # overwriting with fewer students removes the earlier run's extra models
    two = model.select([0, 1])
    report.filters_before, report.filters_after = report.filters_before[:2], two.kept_filters()
    write_compact_models(two, tmp_path / "out", "a", report, overwrite=True)
    assert [p.name for p in find_compact_models(tmp_path / "out", "a")] == [
        "compact_model_a_neuron0.pt", "compact_model_a_neuron1.pt"]
    assert not (tmp_path / "out" / "compact_model_a_neuron2.filters.npy").exists()


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="filters"):
        CompressConfig(filters=(4, 4, 3, 3))
    with pytest.raises(ValueError, match="heldout"):
        CompressConfig(heldout=4)
    with pytest.raises(ValueError, match="shared"):
        CompressConfig(shared=9)
    with pytest.raises(ValueError, match="pool"):
        CompressConfig(pool=10, batch_size=32)
    with pytest.raises(ValueError, match="train_minutes"):
        CompressConfig(train_minutes=0)


def _cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["distill", *[str(a) for a in args]])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_cli_distils_the_sessions_own_neurons(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "compact"
    # bounded by epochs, not minutes, so a loaded machine trains exactly as much as an idle one
    fast = ["--pool", "256", "--heldout", "64", "--filters", "4,4,3,3,3", "--epochs", "12", "--train-minutes", "10",
            "--prune-minutes", "0.03", "--finetune-minutes", "10", "--threads", "1"]
    code, text = _cli("--data-dir", data_dir, "--session", "a", "--out", out, *fast)
    assert code == 0, text
    assert "labels: 320/320" in text and "distill epoch 1" in text
    for stage in ("distilled", "pruned", "finetuned"):
        assert stage in text
    assert "median filters 17 ->" in text
    paths = find_compact_models(out, "a")
    assert len(paths) == NEURONS
    summary = json.loads((out / "summary.json").read_text())["sessions"]["a"]
    ens, version = read_version(data_dir, None)
    assert summary["version"] == version and summary["session"] == "a"
    assert set(summary["r"]) == {"distilled", "pruned", "finetuned"} and len(summary["r"]["pruned"]) == NEURONS

    # the labels came from session a's readout: the students follow it, not session b's (anti-correlated)
    x112 = _images(60, 11, size=112)
    with torch.no_grad():
        students = np.stack([load_compact_model(p)(preprocess(x112)).numpy() for p in paths])
    r_a = pearson_r(students, ens.predict(x112, "a"))
    r_b = pearson_r(students, ens.predict(x112, "b"))
    assert np.median(r_a) > 0.5 and np.median(r_a) > np.median(r_b) + 0.5, (r_a, r_b)

    # errors: exit code 1 with a message, no traceback
    code, text = _cli("--data-dir", data_dir, "--session", "a", "--out", out, *fast)
    assert code == 1 and "already holds 3 compact models" in text
    code, text = _cli("--data-dir", tmp_path / "empty", "--session", "a", "--out", tmp_path / "o1")
    assert code == 1 and "no training set" in text
    with TrainingSet(tmp_path / "noversions" / "training_set.h5") as ts:
        ts.ingest("a", [image_id(x112[0])], np.ones((1, 2)), x112[:1])
    code, text = _cli("--data-dir", tmp_path / "noversions", "--session", "a", "--out", tmp_path / "o2")
    assert code == 1 and "no model versions" in text
    code, text = _cli("--data-dir", data_dir, "--version", "20000101-000000-abcdef", "--session", "a",
                      "--out", tmp_path / "o3")
    assert code == 1 and "unknown model version" in text
    code, text = _cli("--data-dir", data_dir, "--session", "zz", "--out", tmp_path / "o4")
    assert code == 1 and "no session 'zz'" in text and "a, b" in text
    code, text = _cli("--data-dir", data_dir, "--session", "a", "--out", tmp_path / "o5", "--filters", "4,4")
    assert code == 1 and "filters must be 5 numbers" in text
    assert "Traceback" not in text
