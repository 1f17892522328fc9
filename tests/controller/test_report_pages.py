"""The report as figure pages: sections per session and test, labelled conditions, rounded numbers,
causal tests recomputed at image level. The builders here also serve the browser test."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.report import write_report
from controller.report.data import Session, load_images
from controller.store import SessionReader, SessionWriter
from protocols.analysis import TrialData, run_analysis
from protocols.steps import Analyse
from wire.base import image_id
from wire.documents import (
    BlockDoc,
    ImageDoc,
    ModelVersionDoc,
    PickDoc,
    ResponseDoc,
    StartDoc,
    StepDoc,
    StopDoc,
    TrialDoc,
)

N_UNITS = 3
#: a float no page may print as it is
UNROUNDED = 98.89502762430939
LONG_FLOAT = re.compile(r"\d\.\d{4,}")


def _images(rng: np.random.Generator, n: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for _ in range(n):
        px = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        out.append((image_id(px), px))
    return out


class Builder:
    """Writes a small real session file: blocks of labelled images, trials, Poisson counts, picks."""

    def __init__(self, path: Path, protocol: dict[str, Any], seed: int) -> None:
        self.w = SessionWriter.create(path)
        self.rng = np.random.default_rng(seed)
        self.w.write(StartDoc(session_id=path.stem, code_version="test", protocol=protocol))
        self.n_blocks = 0
        self.t = 1000.0

    def block(self, block_id: str, sets: list[tuple[str, list[tuple[str, np.ndarray]], float | np.ndarray]],
              repeats: int, picks: dict[str, tuple[str, float | None]] | None = None,
              step_images: list[dict[str, Any]] | None = None) -> None:
        """``sets``: (condition label, images, rate per unit); ``picks``: label -> (generator, score)."""
        self.w.write_many(ImageDoc(image_id=i, pixels=px) for _, imgs, _ in sets for i, px in imgs)
        trials = [(cond, i, rate) for cond, imgs, rate in sets for i, _ in imgs for _ in range(repeats)]
        order = self.rng.permutation(len(trials))
        rows = [[f"{block_id}/{k}", trials[o][1], trials[o][0]] for k, o in enumerate(order)]
        self.w.write(BlockDoc(block_id=block_id, index=self.n_blocks, source="normal", n_trials=len(rows),
                              params={"trials": rows, "step": {"kind": "present_block", "block_id": block_id,
                                                                "images": step_images or []}}))
        for cond, imgs, _ in sets:
            gen, score0 = (picks or {}).get(cond, ("pool_random", None))
            for k, (i, _) in enumerate(imgs):
                self.w.write(PickDoc(image_id=i, block_id=block_id, generator=gen, model_version="v1" if score0 else None,
                                     score=None if score0 is None else score0 - 0.37 * k))
        self.n_blocks += 1
        for k, o in enumerate(order):
            cond, image, rate = trials[o]
            tid = f"{block_id}/{k}"
            gain = float(np.random.default_rng(int(image[:8], 16)).lognormal(0, 0.3))  # the image's own drive
            self.t += 0.2
            self.w.write(TrialDoc(trial_id=tid, block_id=block_id, index=k, image_id=image, onset=self.t,
                                  offset=self.t + 0.1, on_frames=6, dropped_frames=int(k == 3), time=self.t))
            counts = self.rng.poisson(np.broadcast_to(np.asarray(rate, dtype=float) * gain, (N_UNITS,)))
            self.w.write(ResponseDoc(trial_id=tid, units=[str(u) for u in range(N_UNITS)], counts=counts,
                                     window=(0.05, 0.15), onset_acq=self.t, time=self.t + 0.15))

    def close(self, n_trials: int) -> None:
        self.w.write(StopDoc(exit_status="success", n_trials=n_trials))
        self.w.close()


def make_sysid(path: Path, seed: int = 1) -> Path:
    b = Builder(path, {"protocol": "sysid", "title": "system identification, day 1"}, seed)
    imgs = _images(b.rng, 20)
    b.block("heldout", [("heldout", imgs[:4], 6.0)], repeats=2)
    b.block("sysid-0", [("normal", imgs[4:10], 6.0), ("gaudy", imgs[10:13], 9.0)], repeats=1)
    b.w.write(ModelVersionDoc(version="20260101-a", n_images=9, metrics={"val_r": 0.31234567891}))
    b.w.write(StepDoc(index=3, step={"kind": "generate_images", "request_id": "active-1",
                                     "params": {"generator": "active", "strategy": "ensemble_variance",
                                                "pool_size": 500}}, result={}))
    b.block("sysid-1", [("normal", imgs[13:16], 6.0), ("active/active", imgs[16:20], 7.0)], repeats=1,
            picks={"active/active": ("active", 12.3456789)},
            step_images=[{"source": "pool_random", "condition": "normal"},
                         {"source": "active", "condition": None, "request": "active-1", "fallback": "pool_random"}])
    b.w.write(ModelVersionDoc(version="20260101-b", n_images=16, metrics={"val_r": 0.4567891234}))
    b.close(8 + 9 + 7)
    return path


def make_maximize(path: Path, seed: int = 2) -> Path:
    """Neuron 0's own images drive it 3x, neuron 1's 2x; the stored analysis is trial-level (no image ids)."""
    b = Builder(path, {"protocol": "maximize", "title": "maximizing images"}, seed)
    imgs = _images(b.rng, 20)
    rate = np.array([5.0, 5.0, 5.0])
    sets: list[tuple[str, list[tuple[str, np.ndarray]], float | np.ndarray]] = [
        ("max_normal/neuron=0", imgs[0:3], rate * [3, 1, 1]), ("max_normal/neuron=1", imgs[3:6], rate * [1, 2, 1]),
        ("max_synth/neuron=0", imgs[6:9], rate * [3, 1, 1]), ("max_synth/neuron=1", imgs[9:12], rate * [1, 2, 1]),
        ("random_normal", imgs[12:20], rate)]
    picks: dict[str, tuple[str, float | None]] = {c: ("maximize_normal" if c.startswith("max_normal") else "maximize_synth", 30.0) for c, _, _ in sets[:4]}
    b.block("maximize", sets, repeats=3, picks=picks)
    b.w.close()
    with SessionReader(path) as r:
        trials, _, counts = r.counts()
        block = next(d for d in r.documents() if isinstance(d, BlockDoc))
    cond = {t: c for t, _, c in block.params["trials"]}
    step = Analyse(analysis="percent_change", name="maximize", blocks=["maximize"], conditions=["max_normal", "max_synth"],
                   baseline="random_normal", neurons=[0, 1], alternative="greater", n_permutations=500)
    stored = run_analysis(step, TrialData(counts, [cond[t.trial_id] for t in trials], ["maximize"] * len(trials)))
    w = SessionWriter.resume(path)
    w.write(StepDoc(index=9, step=step.model_dump(mode="json"), result=stored.model_dump(mode="json")))
    w.write(StopDoc(exit_status="success", n_trials=len(trials)))
    w.close()
    return path


def make_summary(path: Path, sysid: Path, maximize: Path) -> Path:
    causal = {"max_normal": {"session": "s-max", "file": str(maximize), "mean_percent_change": UNROUNDED,
                             "ci": [61.123456, 140.98765], "per_neuron": {"0": 120.456789, "1": 77.3333333},
                             "paper": 137.0},
              "max_synth": {"mean_percent_change": 150.00001, "ci": [100.5, 190.25], "per_neuron": {"0": 150.1},
                            "paper": 153.0},
              "adv_plus": {"mean_percent_change": 70.12345, "ci": [50.5, 90.5], "per_neuron": {"0": 70.1},
                           "fraction_in_direction": 0.875, "paper": 84.0},
              "smooth_minus": {"mean_percent_change": -40.123, "ci": [-50.0, -30.0], "per_neuron": {"0": -40.1},
                               "fraction_in_direction": 1.0, "paper": -46.0},
              "smooth_random": {"mean_percent_change": -10.9876, "ci": [-20.0, -2.0], "per_neuron": {"0": -11.0}}}
    summary = {"ground_truth": "synthetic units", "neurons": "0-2", "device": "cpu", "seconds": 123.456789,
               "settings": {"sessions": 1},
               "sessions": [{"session": sysid.stem, "file": str(sysid), "exit": "success", "trials": 24,
                             "median_r": 0.523456789, "r_per_neuron": [0.5123456, 0.6, 0.41],
                             "r2_er_median": 0.41234567, "r2_er_per_neuron": [0.4, 0.5, None],
                             "random_policy": {"median_r": 0.4444444, "r_per_neuron": [0.4, 0.45, 0.3]}}],
               "learning": {"shared_core": [0.3123456, 0.5234567], "no_shared_core": [0.3123456, 0.40000001]},
               "causal": causal}
    path.write_text(json.dumps(summary))
    return path


def page_text(page: str) -> str:
    """The visible text of a page (tags, style and attributes dropped)."""
    body = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def build_report(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(index.html, sysid session, maximize session) of a report with a summary."""
    sysid = make_sysid(tmp_path / "s-sysid.h5")
    maximize = make_maximize(tmp_path / "s-max.h5")
    summary = make_summary(tmp_path / "summary.json", sysid, maximize)
    return write_report([sysid, maximize], tmp_path / "rep", summary), sysid, maximize


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    pytest.importorskip("matplotlib")
    return build_report(tmp_path_factory.mktemp("report"))


def test_report_reads_like_figure_pages(report: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("matplotlib")
    page_path, _, _ = report
    page = page_path.read_text()
    text = page_text(page)
    # contents, with a link to every section and subsection, each of which exists
    nav = re.search(r"<nav id='contents'>(.*?)</nav>", page, flags=re.S)
    assert nav is not None
    links = re.findall(r"href='#([^']+)'", nav.group(1))
    assert len(links) >= 8 and all(f"id='{a}'" in page for a in links)
    for title in ("Ground truth", "System identification: s-sysid", "Causal test: maximizing images: s-max",
                  "model versions", "held-out prediction", "images by condition",
                  "maximizing natural vs random normal", "maximizing synthesized vs random normal", "Timing"):
        assert title in text, title
    # every condition by name, none by its raw label
    for label in ("held-out", "random normal", "gaudy", "active picks", "maximizing natural, n0",
                  "maximizing synthesized, n1", "active learning", "ensemble_variance"):
        assert label in text, label
    assert "active/active" not in text and "max_normal/neuron" not in text
    # numbers as a paper prints them
    assert LONG_FLOAT.search(text) is None, LONG_FLOAT.findall(text)[:5]
    assert "+99%" in text and "[+61%, +141%]" in text and "+137%" in text and "88%" in text
    assert "0.31" in text and "0.46" in text and "0.52" in text and "123 s" in text
    # the figures the page names exist
    for src in re.findall(r"<img src='([^']+)'", page):
        assert (page_path.parent / src).stat().st_size > 1000, src
    assert "s-max-causal.png" in page and "truth-causal.png" in page and "truth-learning.png" in page


def test_causal_tables_are_image_level_and_match_the_analysis(report: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("matplotlib")
    page_path, _, maximize = report
    text = page_text(page_path.read_text())
    assert "image-level permutation test" in text and "recomputed here from the recorded trials" in text
    assert "per neuron: 3 vs 8 images, 9 vs 24 trials" in text
    with SessionReader(maximize) as r:
        docs = list(r.documents())
    session = Session("s-max", maximize, docs, load_images(docs))
    ((_step, result, recomputed),) = session.analyses()
    assert recomputed and [c.unit for c in result.comparisons] == ["image", "image"]
    data = session.trial_data(["maximize"])
    assert data.images is not None and len(set(data.images)) == 20 and data.counts.shape == (60, N_UNITS)
    natural = result.comparisons[0]
    assert natural.n_images == 3 and natural.n_baseline_images == 8
    # the drive is there and found: n0 3x, n1 2x (each image's own gain varies)
    assert natural.percent_change[0] is not None and natural.percent_change[0] > 100
    # the page prints this result's numbers, rounded
    row = f"n0 {natural.mean_test[0]:.2f} {natural.mean_baseline[0]:.2f} {natural.percent_change[0]:+.0f}%"
    assert row in " ".join(text.split()), row
    assert f"{natural.p_values[0]:.2g}" in text


def test_a_summary_without_the_new_keys_renders_what_it_has(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sysid = make_sysid(tmp_path / "s-sysid.h5")
    old = tmp_path / "summary.json"
    old.write_text(json.dumps({"ground_truth": "x", "device": "cpu", "sessions": [
        {"session": "s-sysid", "file": str(sysid), "median_r": 0.3, "r_per_neuron": [0.3, 0.2, 0.4]}],
        "causal": {"session": "m", "file": "m.h5", "exit": "success",
                   "max_normal": {"mean_percent_change": 107.4, "per_neuron": {"0": 107.4}}}}))
    page = write_report([sysid], tmp_path / "rep", old).read_text()
    text = page_text(page)
    assert "+107%" in text and "truth-learning.png" not in page and "heldout.png" in page
    assert "maximizing synthesized" not in text
