"""bench/distill_bench.py end to end at tiny sizes, with both kinds of teacher."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from modelserver.compact.model import find_compact_models, load_compact_model
from modelserver.training.ensemble import DeepEnsemble, EnsembleConfig

REPO = Path(__file__).resolve().parents[2]
TINY = ["--pool", "64", "--heldout", "16", "--filters", "4,4,3,3,3", "--batch-size", "16", "--train-minutes",
        "0.05", "--prune-minutes", "0.02", "--finetune-minutes", "0.02", "--threads", "1"]


def _bench(name: str = "distill_bench") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check_written(out: Path, neurons: int) -> dict:
    paths = find_compact_models(out, "190923")
    assert [p.name for p in paths] == [f"compact_model_190923_neuron{k}.pt" for k in range(neurons)]
    summary = json.loads((out / "summary.json").read_text())["sessions"]["190923"]
    assert summary["neurons"] == neurons and summary["config"]["pool"] == 64
    for stage in ("distilled", "pruned", "finetuned"):
        assert len(summary["r"][stage]) == neurons
    for k, p in enumerate(paths):
        assert list(load_compact_model(p).filters) == summary["filters_after"][k]
    return summary


@pytest.mark.v4
@pytest.mark.slow
def test_bench_with_published_teachers(v4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bench().main(["--data", str(v4_dir), "--neurons", "3", "--speed-neurons", "2", "--speed-steps", "1",
                   "--out", str(tmp_path / "c"), *TINY])
    printed = capsys.readouterr().out
    for text in ("speed (shared=0", "speed (shared=4", "3 published compact models of 190923",
                 "bfloat16 vs float32 labels", "distilled", "pruned", "finetuned", "median filters 17 ->"):
        assert text in printed, printed
    _check_written(tmp_path / "c", 3)


@pytest.mark.v4
@pytest.mark.slow
def test_bench_with_a_saved_ensemble(v4_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 112, 112, 3), dtype=np.uint8)
    ens = DeepEnsemble(EnsembleConfig(members=2, channels=4, input_size=16, strides=(1,), first_stride=2,
                                      max_epochs=1, batch_size=16, frontend="pixels"))
    ens.fit({"190923": (images, rng.poisson(2.0, (48, 2)).astype(np.float64))})
    saved = tmp_path / "ens.pt"
    torch.save(ens.export_state(), saved)
    bench = _bench()
    bench.main(["--data", str(v4_dir), "--teacher", "ensemble", "--ensemble", str(saved), "--speed-neurons", "0",
                "--out", str(tmp_path / "e"), *TINY])
    printed = capsys.readouterr().out
    assert "deep ensemble ens.pt (2 members), session 190923, 2 neurons" in printed
    assert "speed (" not in printed
    _check_written(tmp_path / "e", 2)
    _bench("compact_check").main(["--data", str(v4_dir), "--ensemble", str(saved), "--models", str(tmp_path / "e"),
                                  "--images", "32", "--threads", "1"])
    assert "2 students vs the ensemble on 32 pool images made from 190923: median r" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="needs --ensemble"):
        bench.main(["--data", str(v4_dir), "--teacher", "ensemble", *TINY])
    with pytest.raises(SystemExit, match="no session 190925"):
        bench.main(["--data", str(v4_dir), "--teacher", "ensemble", "--ensemble", str(saved), "--session", "190925",
                    *TINY])
