"""bench/turnaround_bench.py: the window attribution, the timing proxies, and the whole bench at tiny sizes."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("turnaround_bench", REPO / "bench" / "turnaround_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_attribution_prefers_the_awaited_step_and_sums_to_the_window() -> None:
    bench = _bench()
    fg, bg = bench.FOREGROUND, bench.BACKGROUND
    segs = [("generate", 0.0, 7.0, bg),  # a prefetched request still running after the last count
            ("retrain", 2.0, 5.0, fg), ("load", 8.0, 8.5, fg), ("ingest", -3.0, -2.0, fg)]
    parts = bench.attribute(segs, 1.0, 9.0)
    assert parts["retrain"] == pytest.approx(3.0)
    assert parts["generate"] == pytest.approx(3.0)  # 1..2 and 5..7: only where nothing else ran
    assert parts["load"] == pytest.approx(0.5)
    assert parts["ingest"] == 0.0  # outside the window
    assert parts["other"] == pytest.approx(1.5)  # 7..8 and 8.5..9
    assert sum(parts.values()) == pytest.approx(8.0)


def test_proxies_time_the_assembled_parts_and_pass_progress_on(tmp_path: Path) -> None:
    bench = _bench()
    assert set(bench.PROXIES) == {"models", "stim", "store", "rig"}  # the assembly's ``source`` is left alone
    timeline = bench.Timeline()
    seen: list[tuple[str, Any]] = []

    class Models:
        async def retrain(self, step: Any, progress: Any = None) -> str:
            seen.append(("retrain", progress))
            return "done"

    class Rig:
        async def load(self, ids: Any, pixels: Any, chunk: int = 128) -> None:
            seen.append(("load", list(ids)))

        async def status(self) -> str:
            return "rig status"

    def progress(report: dict[str, Any]) -> None:
        pass

    async def go() -> None:
        models = bench.PROXIES["models"](Models(), timeline)
        assert await models.retrain("step", progress=progress) == "done"
        assert await models.retrain("step") == "done"
        rig = bench.PROXIES["rig"](Rig(), timeline)
        await rig.load(["a", "b"], [np.zeros((2, 2, 3), np.uint8)] * 2)
        assert await rig.status() == "rig status"  # the rest is passed on

    asyncio.run(go())
    assert seen == [("retrain", progress), ("retrain", None), ("load", ["a", "b"])]
    assert [s.part for s in timeline.spans] == ["retrain", "retrain", "rig"]
    cfg = bench.run_config("prefetch", bench.Options(), None, tmp_path)
    assert cfg.model.kind == "start" and cfg.model.data_dir == tmp_path / "modelserver-prefetch"
    assert cfg.acquisition.kind == "virtual" and cfg.acquisition.virtual.data is None
    assert cfg.bus.broker == "none"


@pytest.mark.slow
def test_bench_runs_both_variants_at_tiny_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    result = bench.main(["--blocks", "3", "--images", "6", "--picks", "3", "--neurons", "3", "--members", "2",
                         "--epochs", "1", "--pool-crops", "60", "--frames", "2", "--data", str(tmp_path / "none"),
                         "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    for word in ("sequential", "prefetch", "median (warm)", *bench.PARTS):
        assert word in printed
    assert result["device"].startswith("cpu")
    assert "synthetic" in result["ground_truth"]  # described by the virtual rig process
    for name in ("sequential", "prefetch"):
        v = result["variants"][name]
        assert v["exit"] == "success" and v["fallbacks"] == 0
        assert [(b["after"], b["before"]) for b in v["boundaries"]] == [("block-0", "block-1"), ("block-1", "block-2")]
        for b in v["boundaries"]:
            assert set(b["parts"]) == set(bench.PARTS)
            assert all(x >= 0 for x in b["parts"].values()), b
            assert sum(b["parts"].values()) == pytest.approx(b["total"], abs=1e-6)
            assert b["parts"]["retrain"] > 0 and b["parts"]["ingest"] > 0 and b["parts"]["start"] > 0, b
            assert b["parts"]["rig"] > 0 and b["new_images"] > 0, b  # new images are sent to the rig
            assert 0 < b["total"] < 120
        assert v["median"]["total"] == pytest.approx(v["boundaries"][1]["total"])
    # without prefetch the loop waits for every request's picks
    assert all(b["parts"]["generate"] > 0 for b in result["variants"]["sequential"]["boundaries"])
