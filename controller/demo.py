"""``cortexloop demo``: one shipped rig configuration plus scoring against the hidden ground truth.

The demo only chooses settings and scores; every part is started by the one assembly
(:mod:`controller.assembly`) that ``cortexloop run`` uses. Its rig configuration: a virtual rig
process (``python -m virtualrig``) stands in for the monkey and streams spikes over LSL, with the
real V4 compact models of Cowley et al. (2023) of session ``--ground-truth`` when a data folder in
their layout is found (``--data``, default ``../shared/data/v4``), else a synthetic population of
Gabor-energy units; a modelserver process whose data folder (``OUT/modelserver``) persists from one
session to the next; the display-free stimserver; the embedded MQTT broker. It runs several
``sysid`` recording sessions (each a new session to the modelserver, which retrains between blocks
and sessions), then a ``maximize`` causal test, each as its own session through the assembly. After
each sysid session it scores the model on images never shown (``images.holdout``) against the
ground truth's rates; after the causal test it measures how much the chosen images drive the
ground-truth neurons above randomly chosen natural images. Every figure goes to
``OUT/summary.json``; session files and the model server's data go to ``OUT``.

The ground truth stays in the rig process: the scoring asks the rig for its rates over the rig's
RPC (:meth:`controller.links.RigLink.rates`); the engine and the modelserver never see it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from controller.assembly import Session, assemble
from controller.config import (
    AcquisitionConfig,
    BusConfig,
    ImagesConfig,
    ModelConfig,
    RunConfig,
    VirtualRigConfig,
)
from controller.modellink import model_session, natural_key
from controller.store import SessionReader
from protocols.library.maximize import MaximizeProtocol
from protocols.library.sysid import SysidProtocol
from wire.documents import BlockDoc, ResponseDoc, StepDoc
from wire.model import Predict, Prediction

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "v4"


@dataclass
class DemoSettings:
    """Sizes the demo picks for the machine (small on a CPU, larger on a GPU)."""

    sessions: int = 3
    blocks: int = 2
    normal: int = 60
    gaudy: int = 15
    active: int = 20
    neurons: int = 8
    eval_images: int = 200
    epochs_block: int = 4
    epochs_session: int = 8
    members: int = 3
    device: str = "cpu"
    max_per_neuron: int = 3
    max_random: int = 30
    max_repeats: int = 3
    synth_steps: int = 60
    pool_crops: int = 1500
    heldout_images: int = 30  # shown with repeats in every sysid session, never trained on: r2_ER
    heldout_repeats: int = 3

    @classmethod
    def for_device(cls, device: str, sessions: int | None) -> DemoSettings:
        s = cls(device=device)
        if device.startswith("cuda"):
            s = cls(device=device, blocks=3, normal=200, gaudy=50, active=60, neurons=33, eval_images=600,
                    epochs_block=10, epochs_session=30, members=5, max_per_neuron=5, max_random=60, max_repeats=5,
                    synth_steps=200, pool_crops=20000, heldout_images=80, heldout_repeats=5)
        if sessions is not None:
            s.sessions = sessions
        return s


@dataclass
class Summary:
    ground_truth: str
    device: str
    settings: dict[str, Any]
    sessions: list[dict[str, Any]] = field(default_factory=list)
    causal: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def detect_device(requested: str) -> str:
    """``auto``: cuda when torch sees a GPU (asked in a child process: the controller never imports torch)."""
    if requested != "auto":
        return requested
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, timeout=120)
        return "cuda" if out.stdout.strip() == "True" else "cpu"
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"


def has_v4(data: Path | None) -> bool:
    return data is not None and (data / "compact_models").is_dir() and (data / "images").is_dir()


def demo_config(out: Path, settings: DemoSettings, data: Path | None, ground_truth: str | None = None) -> RunConfig:
    """The demo's rig configuration (what ``cortexloop run --config`` would read from a file)."""
    v4 = data if has_v4(data) else None
    images = (ImagesConfig(v4_dir=v4, holdout=settings.eval_images) if v4 is not None else
              ImagesConfig(synthetic=1300, holdout=settings.eval_images))
    # 100 ms images (6 frames at 60 Hz) on a 2 spikes/s baseline: the driven response fills the counting window
    rig = (VirtualRigConfig(data=v4, session=ground_truth, neurons=settings.neurons, device=settings.device,
                            baseline=2.0)
           if v4 is not None else VirtualRigConfig(n_units=settings.neurons * 2, seed=1, baseline=2.0))
    model = ModelConfig(device=settings.device, members=settings.members, max_epochs=settings.epochs_session,
                        block_epochs=settings.epochs_block, session_epochs=settings.epochs_session,
                        pool_crops=settings.pool_crops, v4_dir=v4, data_dir=out / "modelserver", timeout=60)
    return RunConfig(out_dir=out, rig="demo", subject="virtual", images=images,
                     acquisition=AcquisitionConfig(kind="virtual", virtual=rig), model=model,
                     bus=BusConfig(broker="embedded"))


def write_rig_file(cfg: RunConfig, path: Path) -> Path:
    """The demo's configuration as a rig file ``cortexloop run --config`` reads (defaults left out)."""
    import yaml

    data = cfg.model_dump(mode="json", exclude_defaults=True, exclude={"session_id"})
    path.write_text("# the rig configuration of cortexloop demo (written by the demo)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def sysid_protocol(k: int, settings: DemoSettings) -> SysidProtocol:
    return SysidProtocol.model_validate({
        "protocol": "sysid", "seed": k + 1, "n_blocks": settings.blocks, "normal": settings.normal,
        "gaudy": settings.gaudy, "timing": {"on_frames": 6, "off_frames": 4}, "retrain": "both",
        "active": {"n_images": settings.active, "start_block": 0 if k else 1, "timeout_s": 300},
        "heldout": {"block_id": "heldout", "n_images": settings.heldout_images,
                    "repeats": settings.heldout_repeats, "seed": 7},
        "prefetch": False})


def maximize_protocol(settings: DemoSettings) -> MaximizeProtocol:
    return MaximizeProtocol.model_validate({
        "protocol": "maximize", "seed": 99, "timing": {"on_frames": 6, "off_frames": 4},
        "heldout": {"n_images": 40, "repeats": 3}, "match": {"min_score": 0.3},
        "n_per_neuron": settings.max_per_neuron, "n_random": settings.max_random, "repeats": settings.max_repeats,
        "synth": {"steps": settings.synth_steps, "timeout_s": 900}, "analysis": {"n_permutations": 500}})


async def score_session(s: Session, session: str, images: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Median Pearson r between the model's predictions for ``session`` and the ground-truth rates."""
    async with s.model_client() as client:
        pred = await client.request(Predict(session=session, images=images), Prediction)
    resp = np.asarray(pred.responses)  # (neurons, images)
    rs = [float(np.corrcoef(resp[j], truth[:, j])[0, 1]) for j in range(min(len(resp), truth.shape[1]))
          if np.std(resp[j]) > 0 and np.std(truth[:, j]) > 0]
    return {"model_version": pred.version, "median_r": float(np.median(rs)) if rs else float("nan"),
            "r_per_neuron": [round(r, 4) for r in rs]}


def heldout_trials(path: Path, block: str = "heldout") -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(image ids, raw counts (neurons, images, repeats; NaN-padded), pixels) of a repeated block."""
    with SessionReader(path) as reader:
        docs = list(reader.documents())
        images = reader.images()
    bdoc = next((d for d in docs if isinstance(d, BlockDoc) and d.block_id == block), None)
    if bdoc is None:
        return [], np.zeros((0, 0, 0)), []
    image_of = {tid: img for tid, img, _ in bdoc.params["trials"]}
    resp = [d for d in docs if isinstance(d, ResponseDoc) and d.trial_id.removesuffix(".again") in image_of]
    ids = list(dict.fromkeys(image_of.values()))
    col = {i: n for n, i in enumerate(ids)}
    per: dict[str, list[tuple[list[str], np.ndarray]]] = {}
    for d in resp:
        per.setdefault(image_of[d.trial_id.removesuffix(".again")], []).append((d.units, np.asarray(d.counts, float)))
    # a trial lists the units the rig had seen by then: rows by unit name, in the model's order
    units = sorted({u for d in resp for u in d.units}, key=natural_key)
    row = {u: k for k, u in enumerate(units)}
    raw = np.full((len(units), len(ids), max((len(v) for v in per.values()), default=0)), np.nan)
    for img, reps in per.items():
        for r, (names, c) in enumerate(reps):
            raw[[row[u] for u in names], col[img], r] = c
    return ids, raw, [images[i] for i in ids]


async def heldout_r2er(s: Session, session: str, path: Path) -> dict[str, Any]:
    """Noise-corrected R2 (Pospisil & Bair's r2_ER) of the model on the session's repeated held-out
    block, against the recorded repeats (the block was never trained on)."""
    from modelserver.metrics import r2_er

    ids, raw, pix = heldout_trials(path)
    if not ids or raw.shape[2] < 2:
        return {}
    async with s.model_client() as client:
        pred = await client.request(Predict(session=session, images=np.stack(pix)), Prediction)
    r2 = r2_er(np.asarray(pred.responses)[:raw.shape[0]], raw)
    ok = r2[np.isfinite(r2)]
    return {"r2_er_median": float(np.median(ok)) if ok.size else None,
            "r2_er_per_neuron": [None if not np.isfinite(v) else round(float(v), 4) for v in r2],
            "heldout_images": len(ids), "heldout_repeats": int(raw.shape[2])}


async def causal_truth(path: Path, session: Session) -> dict[str, Any]:
    """Percent change of the ground-truth rate: each neuron's own maximizing images vs random normal."""
    assert session.rig is not None
    with SessionReader(path) as reader:
        docs = list(reader.documents())
        images = reader.images()
    block = next((d for d in docs if isinstance(d, BlockDoc) and d.block_id == "maximize"), None)
    if block is None:
        return {"error": "the maximize block was not shown (no neuron matched)"}
    by_cond: dict[str, list[str]] = {}
    for _, image, cond in block.params["trials"]:
        by_cond.setdefault(cond, [])
        if image not in by_cond[cond]:
            by_cond[cond].append(image)
    base_ids = by_cond.get("random_normal", [])
    base = (await session.rig.rates(np.stack([images[i] for i in base_ids]))).mean(0)
    out: dict[str, Any] = {}
    for kind in ("max_normal", "max_synth"):
        per_neuron = {}
        for cond, ids in by_cond.items():
            if cond.startswith(kind + "/neuron="):
                j = int(cond.split("=", 1)[1])
                rate = (await session.rig.rates(np.stack([images[i] for i in ids])))[:, j].mean()
                per_neuron[j] = float(100 * (rate - base[j]) / base[j])
        out[kind] = {"mean_percent_change": float(np.mean(list(per_neuron.values()))) if per_neuron else None,
                     "per_neuron": per_neuron}
    analysis = next((d for d in docs if isinstance(d, StepDoc) and d.step["kind"] == "analyse"), None)
    if analysis is not None:
        out["recorded"] = {c["condition"]: {"median_percent_change": c["median_percent_change"],
                                            "n_significant": c["n_significant"], "neurons": len(c["neurons"])}
                           for c in analysis.result["comparisons"]}
    return out


async def run_demo(data: Path | None, out: Path, *, sessions: int | None = None, device: str = "auto",
                   ground_truth: str | None = None, console: Console | None = None,
                   settings: DemoSettings | None = None) -> Summary:
    console = console or Console()
    t0 = time.monotonic()
    settings = settings or DemoSettings.for_device(detect_device(device), sessions)
    if data is not None and not has_v4(data):
        console.print(f"[yellow]no V4 data at {data}; using the synthetic population and images[/yellow]")
        data = None
    cfg = demo_config(out, settings, data, ground_truth)
    rig_file = write_rig_file(cfg, out / "demo-rig.yaml")
    summary = Summary(ground_truth="", device=settings.device, settings=asdict(settings))
    truth_held: np.ndarray | None = None
    for k in range(settings.sessions):
        sid = f"demo-{k + 1}-sysid"
        async with assemble(cfg.model_copy(update={"session_id": sid}), sysid_protocol(k, settings)) as s:
            assert s.rig is not None and s.model_endpoints is not None
            if truth_held is None:
                status = await s.rig.status()
                summary.ground_truth = status.description
                console.print(f"[bold]cortexloop demo[/bold]: {status.description}; {len(s.images)} images "
                              f"({s.images.name}); device {settings.device}; output in {out}")
                truth_held = await s.rig.rates(s.heldback)
            stop = await run_session(s, console)
            score = await score_session(s, model_session(sid), s.heldback, truth_held)
            score.update(await heldout_r2er(s, model_session(sid), s.path))
        summary.sessions.append({"session": sid, "file": str(s.path), "exit": stop.exit_status,
                                 "trials": stop.n_trials, **score})
        r2 = score.get("r2_er_median")
        console.print(f"session {k + 1}: {stop.n_trials} trials; held-out median r vs ground truth "
                      f"{score['median_r']:.3f}" + ("" if r2 is None else f"; r2_ER {r2:.3f}"))
    sid = "demo-maximize"
    async with assemble(cfg.model_copy(update={"session_id": sid}), maximize_protocol(settings)) as s:
        stop = await run_session(s, console)
        summary.causal = {"session": sid, "file": str(s.path), "exit": stop.exit_status,
                          **await causal_truth(s.path, s)}
    summary.seconds = time.monotonic() - t0
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    from controller.report import write_report

    files = [Path(s["file"]) for s in summary.sessions] + ([Path(summary.causal["file"])] if summary.causal else [])
    page = write_report(files, out / "report", out / "summary.json")
    print_summary(summary, console)
    console.print(f"report: {page}")
    console.print(f"rig file: {rig_file} (the same sessions: cortexloop run PROTOCOL --config {rig_file})")
    return summary


async def run_session(session: Session, console: Console) -> Any:
    """Run an assembled session's protocol with progress on the terminal."""
    from controller.progress import SessionProgress

    with SessionProgress(console) as progress:
        session.engine.on_status(progress.update)
        return await session.run()


def print_summary(summary: Summary, console: Console) -> None:
    table = Table(title=f"cortexloop demo ({summary.ground_truth}; {summary.device}; {summary.seconds:.0f} s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for s in summary.sessions:
        table.add_row(f"{s['session']}: held-out median r vs ground truth", f"{s['median_r']:.3f}")
        if s.get("r2_er_median") is not None:
            table.add_row(f"{s['session']}: median noise-corrected R2 (r2_ER) on its {s['heldout_images']} "
                          f"held-out images x {s['heldout_repeats']} repeats", f"{s['r2_er_median']:.3f}")
    c = summary.causal
    for kind, paper in (("max_normal", "+137%"), ("max_synth", "+153%")):
        v = c.get(kind, {}).get("mean_percent_change") if isinstance(c.get(kind), dict) else None
        table.add_row(f"{kind}: mean % change of ground-truth rate vs random normal (paper, real V4: {paper})",
                      "n/a" if v is None else f"{v:+.0f}%")
        rec = c.get("recorded", {}).get(kind)
        if rec and rec["median_percent_change"] is not None:
            table.add_row(f"{kind}: median recorded %dr ({rec['n_significant']}/{rec['neurons']} neurons p<0.05)",
                          f"{rec['median_percent_change']:+.0f}%")
    console.print(table)


def main(data: Path | None, out: Path, sessions: int | None, device: str,
         ground_truth: str | None = None) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_demo(data, out, sessions=sessions, device=device, ground_truth=ground_truth))
