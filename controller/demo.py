"""``cortexloop demo``: one shipped rig configuration plus scoring against the hidden ground truth.

The demo only chooses settings and scores; every part is started by the one assembly
(:mod:`controller.assembly`) that ``cortexloop run`` uses. Its rig configuration: a virtual rig
process (``python -m virtualrig``) stands in for the monkey and streams spikes over LSL, with the
real V4 compact models of Cowley et al. (2023) of session ``--ground-truth`` when a data folder in
their layout is found (``--data``, default ``../shared/data/v4``), else a synthetic population of
Gabor-energy units; a modelserver process whose data folder (``OUT/modelserver``) persists from one
session to the next; the display-free stimserver; the embedded MQTT broker. It runs several
``sysid`` recording sessions (each a new session to the modelserver, which retrains between blocks
and sessions), then the causal battery (``maximize``, ``adversarial``, ``smooth``), each as its own
session through the assembly (the schedule ``protocols/examples/demo_day.yaml``). After each sysid
session it scores the model on images never shown (``images.holdout``) against the ground truth's
rates; after each causal test it measures how much its images move the ground-truth neurons (against
random natural images, or against their own base images). With ``compare``, a twin schedule runs the
same sysid sessions with random picks beside the day (its own modelserver and folder ``OUT/random``).
Every figure goes to ``OUT/summary.json``; session files and the model server's data go to ``OUT``.

The ground truth stays in the rig process: the scoring asks the rig for its rates over the rig's
RPC (:meth:`controller.links.RigLink.rates`); the engine and the modelserver never see it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from controller.assembly import Session
from controller.config import (
    AcquisitionConfig,
    BusConfig,
    ImagesConfig,
    ModelConfig,
    RunConfig,
    VirtualRigConfig,
    load_config,
)
from controller.demo_scoring import (
    PAPER,
    adversarial_truth,
    fit_alone,
    heldout_r2er,
    maximize_truth,
    score_session,
    smooth_truth,
)
from controller.modellink import model_session
from controller.progress import SessionProgress
from controller.schedule import run_schedule, state_path
from protocols.library.schedule import ScheduleProtocol
from protocols.library.sysid import SysidProtocol
from protocols.loader import validate_protocol
from wire.documents import StopDoc
from wire.errors import StoreError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "v4"
#: the demo's day: a schedule file any rig can run (``cortexloop run demo_day.yaml --config RIG``)
DEMO_DAY = REPO / "protocols" / "examples" / "demo_day.yaml"
#: the shipped awake rig file whose behaviour section ``--awake`` uses
AWAKE_RIG = REPO / "protocols" / "examples" / "rigs" / "awake_virtual.yaml"
T = TypeVar("T")
U = TypeVar("U")


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
    epochs_session: int = 16  # 8 left the CPU demo's models under-trained (r 0.53 -> 0.66 on a demo's data)
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
    """What ``OUT/summary.json`` holds (the report renders it)."""

    ground_truth: str
    device: str
    settings: dict[str, Any]
    neurons: str = ""
    schedule: dict[str, str] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    learning: dict[str, list[float | None]] = field(default_factory=dict)
    causal: dict[str, Any] = field(default_factory=dict)
    #: --awake: the virtual monkey's behaviour over the day (controller.behavior_summary)
    behavior: dict[str, Any] = field(default_factory=dict)
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


def demo_config(out: Path, settings: DemoSettings, data: Path | None, ground_truth: str | None = None,
                neurons: list[int] | None = None, awake: bool = False) -> RunConfig:
    """The demo's rig configuration (what ``cortexloop run --config`` would read from a file)."""
    v4 = data if has_v4(data) else None
    images = (ImagesConfig(v4_dir=v4, holdout=settings.eval_images) if v4 is not None else
              ImagesConfig(synthetic=1300, holdout=settings.eval_images))
    # 100 ms images (6 frames at 60 Hz) on a 2 spikes/s baseline: the driven response fills the counting window
    rig = (VirtualRigConfig(data=v4, session=ground_truth, neurons=neurons or settings.neurons, device=settings.device,
                            baseline=2.0)
           if v4 is not None else VirtualRigConfig(n_units=settings.neurons * 2, seed=1, baseline=2.0))
    model = ModelConfig(device=settings.device, members=settings.members, max_epochs=settings.epochs_session,
                        block_epochs=settings.epochs_block, session_epochs=settings.epochs_session,
                        pool_crops=settings.pool_crops, v4_dir=v4, data_dir=out / "modelserver", timeout=60)
    # --awake: the behaviour of the shipped awake rig file (the virtual monkey, fixation, reward)
    behavior = load_config(AWAKE_RIG).behavior if awake else None
    return RunConfig(out_dir=out, rig="demo", subject="virtual", images=images,
                     acquisition=AcquisitionConfig(kind="virtual", virtual=rig), model=model,
                     bus=BusConfig(broker="embedded"), behavior=behavior)


def write_rig_file(cfg: RunConfig, path: Path) -> Path:
    """The demo's configuration as a rig file ``cortexloop run --config`` reads (defaults left out)."""
    import yaml

    data = cfg.model_dump(mode="json", exclude_defaults=True, exclude={"session_id"})
    path.write_text("# the rig configuration of cortexloop demo (written by the demo)\n"
                    + yaml.safe_dump(data, sort_keys=False))
    return path


def _spec(neurons: list[int]) -> str:
    """``[8, 9, ..., 15]`` -> ``"8-15"``; other lists comma-separated."""
    if neurons == list(range(neurons[0], neurons[0] + len(neurons))) and len(neurons) > 1:
        return f"{neurons[0]}-{neurons[-1]}"
    return ",".join(map(str, neurons))


def parse_neurons(spec: str) -> list[int]:
    """``"8-15"`` or ``"0,3,5-8"`` -> neuron indices (of the ground-truth session's compact models)."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--neurons: {part!r} is not N or N-M")
        out.extend(range(int(lo), int(hi or lo) + 1))
    if not out or len(set(out)) != len(out):
        raise ValueError(f"--neurons {spec!r}: give distinct indices, e.g. 8-15 or 0,3,5-8")
    return out


async def run_demo(data: Path | None, out: Path, *, sessions: int | None = None, device: str = "auto",
                   ground_truth: str | None = None, neurons: list[int] | None = None,
                   console: Console | None = None, settings: DemoSettings | None = None,
                   compare: bool = True, awake: bool = False) -> Summary:
    """The demo: sysid sessions (and, with ``compare``, the same sessions with random picks in place of
    the active ones, and each session's model without the shared core), then the causal battery."""
    console = console or Console()
    t0 = time.monotonic()
    settings = settings or DemoSettings.for_device(detect_device(device), sessions)
    if data is not None and not has_v4(data):
        console.print(f"[yellow]no V4 data at {data}; using the synthetic population and images[/yellow]")
        data = None
    cfg = demo_config(out, settings, data, ground_truth, neurons, awake)
    rig_file = write_rig_file(cfg, out / "demo-rig.yaml")
    summary = Summary(ground_truth="", device=settings.device, settings=asdict(settings),
                      neurons=_spec(neurons) if neurons else f"0-{settings.neurons - 1}")
    if state_path(out, "demo").exists():
        raise StoreError(f"{out} already holds a demo run ({state_path(out, 'demo')}): choose another --out")
    scorer = _Scorer(settings, console, summary, compare)
    truth = (f"V4 compact models of {cfg.acquisition.virtual.session or 'the first session'}, neurons {summary.neurons}"
             if data is not None else "a synthetic Gabor-energy population")
    console.print(f"[bold]cortexloop demo[/bold]: {settings.sessions} sysid sessions, then maximize, adversarial and "
                  f"smooth{'; random-pick and no-shared-core comparisons' if compare else ''}; ground truth: {truth}; "
                  f"device {settings.device}; output in {out}")
    with SessionProgress(console) as progress:
        day_run = run_schedule(demo_schedule(settings), cfg.model_copy(update={"session_id": "demo"}),
                               after_session=scorer.after, on_status=progress.update)
        if compare:  # the same sysid sessions with random pool images in place of the active picks, side by side
            day, _ = await _side_by_side(day_run, run_schedule(
                demo_schedule(settings, strategy="random", causal=False), twin_config(cfg, out),
                after_session=scorer.after, on_status=progress.update))
            scorer.merge_random()
        else:
            day = await day_run
    summary.schedule = {"status": day.status, "reason": day.reason}
    summary.learning = {"shared_core": [s.get("median_r") for s in summary.sessions],
                        "no_shared_core": [s.get("no_shared_core", {}).get("median_r") for s in summary.sessions]}
    if awake:
        from controller.behavior_summary import summarize

        summary.behavior = summarize([Path(s["file"]) for s in summary.sessions]
                                     + [Path(c["file"]) for c in summary.causal.values() if "file" in c])
    summary.seconds = time.monotonic() - t0
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    from controller.report import write_report

    files = list(dict.fromkeys([Path(s["file"]) for s in summary.sessions]
                               + [Path(c["file"]) for c in summary.causal.values() if "file" in c]))
    page = write_report(files, out / "report", out / "summary.json")
    print_summary(summary, console)
    console.print(f"report: {page}")
    console.print(f"rig file: {rig_file} (the same day on it: cortexloop run {DEMO_DAY.relative_to(REPO)} "
                  f"--config {rig_file})")
    return summary


def twin_config(cfg: RunConfig, out: Path) -> RunConfig:
    """The random-pick twin's rig: its own folder ``OUT/random`` (session files, state, bus credentials),
    its own modelserver (one torch thread: it runs beside the day) and rig name (LSL and MQTT names)."""
    folder = out / "random"
    folder.mkdir(parents=True, exist_ok=True)
    return cfg.model_copy(update={"session_id": "demo-random", "out_dir": folder, "rig": f"{cfg.rig}-random",
                                  "model": cfg.model.model_copy(update={"data_dir": folder / "modelserver",
                                                                        "threads": 1})})


async def _side_by_side(first: Awaitable[T], second: Awaitable[U]) -> tuple[T, U]:
    """Both results; the first error cancels the other and is raised as itself (not a group)."""
    a, b = asyncio.ensure_future(first), asyncio.ensure_future(second)
    try:
        done, _ = await asyncio.wait([a, b], return_when=asyncio.FIRST_EXCEPTION)
    finally:
        a.cancel()
        b.cancel()
        await asyncio.gather(a, b, return_exceptions=True)
    for t in done:
        if not t.cancelled() and (exc := t.exception()) is not None:
            raise exc
    return a.result(), b.result()


def demo_schedule(settings: DemoSettings, *, strategy: str = "ensemble_variance",
                  causal: bool = True) -> ScheduleProtocol:
    """``protocols/examples/demo_day.yaml`` with the sizes of ``settings`` as each stage's ``set``.

    ``causal=False`` is the random-pick twin: the sysid stage alone, without its held-out block
    (the twins are scored on the ground truth only, so showing it would only cost time)."""
    data = yaml.safe_load(DEMO_DAY.read_text())
    stages = {s["name"]: s for s in data["stages"]}
    st = settings
    stages["sysid"]["sessions"] = st.sessions
    stages["sysid"]["set"] = {
        "n_blocks": st.blocks, "normal": st.normal, "gaudy": st.gaudy,
        "active": {"n_images": st.active, "strategy": strategy},
        "heldout": {"n_images": st.heldout_images, "repeats": st.heldout_repeats}}
    for name in ("maximize", "adversarial", "smooth"):
        stages[name]["set"] = {"n_per_neuron": st.max_per_neuron, "repeats": st.max_repeats}
    stages["maximize"]["set"].update({"n_random": st.max_random, "synth": {"steps": st.synth_steps}})
    if not causal:
        data["stages"] = [stages["sysid"]]
        stages["sysid"]["protocol"].pop("heldout", None)
        stages["sysid"]["set"].pop("heldout")
    proto = validate_protocol(data, source=str(DEMO_DAY))
    assert isinstance(proto, ScheduleProtocol)
    return proto


class _Scorer:
    """Scores each session of the demo's schedules on the ground truth while its parts are up."""

    def __init__(self, settings: DemoSettings, console: Console, summary: Summary, compare: bool = True) -> None:
        self.settings, self.console, self.summary, self.compare = settings, console, summary, compare
        self.truth_held: np.ndarray | None = None
        self.random: list[dict[str, Any]] = []  # the twin's sessions, in order (merged once both days end)
        self._truth_lock = asyncio.Lock()

    async def after(self, s: Session, stop: StopDoc) -> dict[str, Any]:
        assert s.rig is not None
        sid, kind = s.config.session_id or "", s.protocol.protocol
        async with self._truth_lock:  # the day and its twin: asked once
            if self.truth_held is None:
                status = await s.rig.status()
                self.summary.ground_truth = status.description
                self.console.print(f"ground truth: {status.description}; {len(s.images)} images ({s.images.name})")
                self.truth_held = await s.rig.rates(s.heldback)
        if kind == "sysid":
            return await self.sysid(s, sid, stop)
        score = {"maximize": maximize_truth, "adversarial": adversarial_truth, "smooth": smooth_truth}[kind]
        entries = await score(s.path, s.rig)
        for key, entry in entries.items():
            self.summary.causal[key] = ({"session": sid, "file": str(s.path), "exit": stop.exit_status, **entry}
                                        if isinstance(entry, dict) else {"session": sid, key: entry})
        return {"causal": sorted(entries)}

    async def sysid(self, s: Session, sid: str, stop: StopDoc) -> dict[str, Any]:
        assert self.truth_held is not None
        score = await score_session(s, model_session(sid), s.heldback, self.truth_held)
        active = s.protocol.active if isinstance(s.protocol, SysidProtocol) else None
        if active is not None and active.strategy == "random":
            self.random.append({"session": sid, "file": str(s.path), **score})
            self.console.print(f"{sid} (random picks): held-out median r {score['median_r']:.3f}")
            return {"median_r": score["median_r"]}
        score.update(await heldout_r2er(s, model_session(sid), s.path))
        score["no_shared_core"] = await self._alone(s, sid) if self.compare else {"median_r": None}
        self.summary.sessions.append({"session": sid, "file": str(s.path), "exit": stop.exit_status,
                                      "trials": stop.n_trials, **score})
        r2 = score.get("r2_er_median")
        self.console.print(f"{sid}: {stop.n_trials} trials; held-out median r vs ground truth "
                           f"{score['median_r']:.3f}" + ("" if not self.compare else
                           f" (without the shared core {score['no_shared_core']['median_r']:.3f})")
                           + ("" if r2 is None else f"; r2_ER {r2:.3f}"))
        return {"median_r": score["median_r"]}

    def merge_random(self) -> None:
        """The twin's k-th session beside the day's k-th sysid session."""
        for day, twin in zip(self.summary.sessions, self.random, strict=False):
            day["random_policy"] = twin

    async def _alone(self, s: Session, sid: str) -> dict[str, Any]:
        """The session's data alone, a fresh ensemble, the same epochs the chain's model got in it."""
        st = self.settings
        epochs = st.epochs_session + st.blocks * st.epochs_block
        assert self.truth_held is not None
        async with s.model_client(timeout=600.0) as client:
            version = await fit_alone(client, model_session(sid), epochs)
        score = await score_session(s, model_session(sid), s.heldback, self.truth_held, version=version)
        return {"median_r": score["median_r"], "model_version": version, "epochs": epochs}


async def run_session(session: Session, console: Console) -> Any:
    """Run an assembled session's protocol with progress on the terminal."""
    from controller.progress import SessionProgress

    with SessionProgress(console) as progress:
        session.engine.on_status(progress.update)
        return await session.run()


_LABELS = {"max_normal": "maximizing natural images vs random natural",
           "max_synth": "maximizing synthesized images vs random natural",
           "adv_plus": "adversarial+ vs their base images", "adv_minus": "adversarial- vs their base images",
           "smooth_minus": "smooth- vs their base images", "smooth_random": "randomly smoothed (control) vs base"}


def print_summary(summary: Summary, console: Console) -> None:
    table = Table(title=f"cortexloop demo ({summary.ground_truth}; neurons {summary.neurons}; {summary.device}; "
                        f"{summary.seconds:.0f} s)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for s in summary.sessions:
        alone = s.get("no_shared_core", {}).get("median_r")
        rnd = s.get("random_policy", {}).get("median_r")
        table.add_row(f"{s['session']}: held-out median r vs ground truth (without shared core; random picks)",
                      f"{s['median_r']:.3f} ({_f(alone)}; {_f(rnd)})")
        if s.get("r2_er_median") is not None:
            table.add_row(f"{s['session']}: median r2_ER on its {s['heldout_images']} held-out images x "
                          f"{s['heldout_repeats']} repeats", f"{s['r2_er_median']:.3f}")
    for key, label in _LABELS.items():
        c = summary.causal.get(key, {})
        v = c.get("mean_percent_change")
        frac = c.get("fraction_in_direction")
        paper = f"; paper {PAPER[key]:+.0f}%" if key in PAPER else ""
        table.add_row(f"{label}: mean % change of the ground-truth rate{paper}",
                      "n/a" if v is None else f"{v:+.0f}%" + ("" if frac is None else f" ({frac:.0%} of neurons)"))
    b = summary.behavior
    if b:
        table.add_row("awake: sequences completed / started (share)",
                      f"{b['completed']} / {b['sequences']} ({b['completed_share']:.0%})")
        table.add_row("awake: trials invalid / shown; images given up; rewards",
                      f"{b['invalid']} / {b['trials']}; {b['missing']}; {b['rewards']}")
        if b.get("break_to_blank_ms"):
            table.add_row("awake: break sample to blanking flip, median (max) ms",
                          f"{b['break_to_blank_ms']['median']:.1f} ({b['break_to_blank_ms']['max']:.1f})")
    console.print(table)


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main(data: Path | None, out: Path, sessions: int | None, device: str,
         ground_truth: str | None = None, neurons: list[int] | None = None, compare: bool = True,
         awake: bool = False) -> Summary:
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(run_demo(data, out, sessions=sessions, device=device, ground_truth=ground_truth,
                                neurons=neurons, compare=compare, awake=awake))
