"""Turning a trained ensemble version into compact models, one per neuron of a session.

The pipeline of ``bench/distill_bench.py`` as a library call: an unlabeled pool
(:func:`~modelserver.compact.distill.make_pool`: crops, gaudy crops and noise made from the given base
images) is labelled by the teacher (any ``uint8 (K, 112, 112, 3) -> (neurons, K)`` callable, e.g.
an ensemble's predictions for one session), students are distilled batched, pruned by RAR
(:func:`~modelserver.compact.prune.prune`, layer 0 jointly while the trunk shares layer 1) down to
``min_r + margin`` on half of the held-out pool images, and fine-tuned with their masks fixed.
The other half of the held-out images (used neither for training nor pruning) measures each
student's r with its teacher after every stage.

:func:`write_compact_models` writes the students in the published layout
(``compact_model_<session>_neuron<k>.pt`` + ``.filters.npy``, read by
:func:`~modelserver.compact.model.load_compact_model`) plus ``summary.json``; every file is written to a
temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelserver.compact.distill import DistillConfig, StackedCompact, distill, evaluate, make_pool
from modelserver.compact.distill_stack import UNITS
from modelserver.compact.model import find_compact_models
from modelserver.compact.prune import prune
from modelserver.serving.versions import write_atomic

__all__ = ["CompressConfig", "CompressReport", "Progress", "Teacher", "check_out_dir", "compress", "format_report",
           "progress_printer",
           "write_compact_models"]

Teacher = Callable[[np.ndarray], np.ndarray]  # uint8 (K, 112, 112, 3) -> (neurons, K)
Progress = Callable[[str, Mapping[str, float]], None]  # (stage, numbers)
SUMMARY = "summary.json"
_SESSION_FILE_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # what compact-model file names can carry


# --- configuration and report --------------------------------------------------------------
@dataclass
class CompressConfig:
    """Pool, students, and the budgets of the three stages (see the module docstring)."""

    pool: int = 23552  # labelled pool images for training (and distillation's validation)
    heldout: int = 1024  # further pool images: the first half prunes, the rest tests
    filters: tuple[int, ...] = (24, 48, 8, 6, 6)
    shared: int = 4  # leading units shared by the students while training (see StackedCompact)
    readout_rank: int | None = 2  # Beta trained as space x channels (None: dense)
    train_minutes: float = 20.0
    batch_size: int = 32
    lr: float = 5e-3
    tolerance: float = 0.02  # allowed drop of r per pruned layer
    min_r: float = 0.9  # pruning stops at min_r + margin on its images
    margin: float = 0.01
    prune_minutes: float = 5.0  # no new pruning round after this (0: no pruning)
    finetune_minutes: float = 5.0  # training of the pruned students (0: none)
    finetune_lr: float = 1e-3
    seed: int = 0
    epochs: int = 100  # at most; the time budgets usually end training first
    val_fraction: float = 0.05  # of the training pool, watched while distilling
    prune_layers: tuple[int, ...] = (4, 3, 2, 1, 0)
    label_batch: int = 256  # images per teacher call

    def __post_init__(self) -> None:
        self.filters = tuple(int(f) for f in self.filters)
        self.prune_layers = tuple(int(v) for v in self.prune_layers)
        if len(self.filters) != 5 or min(self.filters) < 1:
            raise ValueError(f"filters must be 5 numbers >= 1, got {list(self.filters)}")
        if not 0 <= self.shared < UNITS:
            raise ValueError(f"shared must be in 0..{UNITS - 1}, got {self.shared}")
        if self.readout_rank is not None and self.readout_rank < 1:
            raise ValueError(f"readout_rank must be >= 1 or None, got {self.readout_rank}")
        if self.batch_size < 1 or self.label_batch < 1 or self.epochs < 1:
            raise ValueError("batch_size, label_batch and epochs must be >= 1")
        n_val = max(1, round(self.val_fraction * self.pool))
        if not 0 < self.val_fraction < 1 or self.pool - n_val < self.batch_size:
            raise ValueError(f"pool ({self.pool}) must hold a batch ({self.batch_size}) of training images "
                             f"besides its validation share {self.val_fraction}")
        if self.heldout < 6:
            raise ValueError(f"heldout must be >= 6 (half prunes, half tests), got {self.heldout}")
        if not self.train_minutes > 0:
            raise ValueError(f"train_minutes must be > 0, got {self.train_minutes}")
        if not (self.prune_minutes >= 0 and self.finetune_minutes >= 0):
            raise ValueError("prune_minutes and finetune_minutes must be >= 0")
        if not (self.lr > 0 and self.finetune_lr > 0):
            raise ValueError("lr and finetune_lr must be > 0")
        if not (self.tolerance >= 0 and self.margin >= 0):
            raise ValueError("tolerance and margin must be >= 0")
        if not -1 <= self.min_r <= 1:
            raise ValueError(f"min_r must be a correlation in -1..1, got {self.min_r}")
        if not self.prune_layers or not set(self.prune_layers) <= set(range(5)):
            raise ValueError(f"prune_layers must be layers 0..4, got {list(self.prune_layers)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @property
    def prune_images(self) -> int:
        return self.heldout // 2

    @property
    def test_images(self) -> int:
        return self.heldout - self.prune_images


STAGES = ("distilled", "pruned", "finetuned")


@dataclass
class CompressReport:
    config: CompressConfig
    r: dict[str, np.ndarray]  # stage (STAGES) -> (n,) r with the teacher on the test images
    filters_before: np.ndarray  # (n, 5)
    filters_after: np.ndarray  # (n, 5)
    seconds: dict[str, float]  # pool, labels, distill, prune, finetune
    steps: dict[str, int]  # distill, finetune (training steps); prune (evaluations)
    prune_complete: bool = True  # False where pruning's time budget stopped it
    base_images: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def neurons(self) -> int:
        return len(self.filters_after)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (NaN correlations as None)."""
        def r_list(a: np.ndarray) -> list[float | None]:
            return [None if not math.isfinite(float(v)) else float(v) for v in a]

        return {"config": asdict(self.config), "neurons": self.neurons, "base_images": self.base_images,
                "test_images": self.config.test_images, "r": {s: r_list(self.r[s]) for s in STAGES},
                "filters_before": self.filters_before.astype(int).tolist(),
                "filters_after": self.filters_after.astype(int).tolist(),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "steps": dict(self.steps),
                "prune_complete": self.prune_complete, **self.extra}


# --- the pipeline ----------------------------------------------------------------------------
def _label(teacher: Teacher, pool: np.ndarray, batch: int, emit: Progress) -> np.ndarray:
    parts: list[np.ndarray] = []
    for i in range(0, len(pool), batch):
        chunk = pool[i:i + batch]
        y = np.asarray(teacher(chunk), dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(chunk) or (parts and y.shape[0] != parts[0].shape[0]):
            raise ValueError(f"the teacher must return (neurons, {len(chunk)}), got {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("the teacher returned NaN or infinite responses")
        parts.append(y)
        emit("labels", {"done": float(i + len(chunk)), "total": float(len(pool))})
    return np.concatenate(parts, axis=1)


def compress(teacher: Teacher, base_images: np.ndarray, config: CompressConfig | None = None,
             device: torch.device | str = "cpu",
             progress: Progress | None = None) -> tuple[StackedCompact, CompressReport]:
    """Distil, prune and fine-tune one compact student per neuron of ``teacher``.

    ``base_images``: uint8 (N, H, W, 3) of any size, the source of the pool's crops.
    ``progress(stage, numbers)``: ``"pool"`` ({"images"}), ``"labels"`` ({"done", "total"}),
    ``"distill"`` / ``"finetune"`` (distill's epoch numbers), ``"prune"`` ({"images"} at the start,
    then {"seconds", "evaluations"}) and ``"test"`` ({"stage": 0, 1, 2 for STAGES, "median_r"}).
    Returns the students (eval mode, masks set by pruning) and the report.
    """
    c = config or CompressConfig()
    base = np.asarray(base_images)
    if base.dtype != np.uint8 or base.ndim != 4 or base.shape[-1] != 3 or len(base) == 0:
        raise ValueError(f"base images must be non-empty uint8 (N, H, W, 3), got {base.dtype} {base.shape}")

    def emit(stage: str, info: Mapping[str, float]) -> None:
        if progress is not None:
            progress(stage, info)

    seconds: dict[str, float] = {}
    t = time.monotonic()
    pool = make_pool(base, c.pool + c.heldout, seed=c.seed)
    seconds["pool"] = time.monotonic() - t
    emit("pool", {"images": float(len(pool)), "base_images": float(len(base)), "seconds": seconds["pool"]})
    t = time.monotonic()
    targets = _label(teacher, pool, c.label_batch, emit)
    seconds["labels"] = time.monotonic() - t
    train_i = np.arange(c.pool)
    prune_i = np.arange(c.pool, c.pool + c.prune_images)
    test_i = np.arange(c.pool + c.prune_images, c.pool + c.heldout)
    r: dict[str, np.ndarray] = {}

    def test(stage: str, model: StackedCompact) -> None:
        r[stage] = evaluate(model, pool[test_i], targets[:, test_i], device)
        emit("test", {"stage": float(STAGES.index(stage)), "median_r": float(np.nanmedian(r[stage]))})

    cfg = DistillConfig(filters=c.filters, shared=c.shared, readout_rank=c.readout_rank, epochs=c.epochs,
                        batch_size=c.batch_size, lr=c.lr, val_fraction=c.val_fraction,
                        time_budget_s=60 * c.train_minutes, seed=c.seed)
    students, drep = distill(pool[train_i], targets[:, train_i], cfg, device=device,
                             progress=lambda i: emit("distill", i))
    seconds["distill"] = drep.seconds
    test("distilled", students)

    joint = (0,) if c.shared >= 3 else ()  # a shared trunk stays one computation (see prune's docstring)
    emit("prune", {"images": float(len(prune_i))})
    prep = prune(students, pool[prune_i], targets[:, prune_i], tolerance=c.tolerance, min_r=c.min_r + c.margin,
                 layers=c.prune_layers, joint=joint, device=device, time_budget_s=60 * c.prune_minutes)
    seconds["prune"] = prep.seconds
    emit("prune", {"seconds": prep.seconds, "evaluations": float(prep.evaluations)})
    test("pruned", students)

    steps = {"distill": drep.steps, "prune": prep.evaluations, "finetune": 0}
    seconds["finetune"] = 0.0
    if c.finetune_minutes > 0:
        ft = DistillConfig(filters=c.filters, shared=c.shared, epochs=c.epochs, batch_size=c.batch_size,
                           lr=c.finetune_lr, val_fraction=c.val_fraction, time_budget_s=60 * c.finetune_minutes,
                           seed=c.seed + 1)
        students, frep = distill(pool[train_i], targets[:, train_i], ft, device=device, model=students.train(),
                                 calibrated=True, progress=lambda i: emit("finetune", i))
        seconds["finetune"], steps["finetune"] = frep.seconds, frep.steps
    test("finetuned", students)
    report = CompressReport(c, r, prep.filters_before, students.kept_filters(), seconds, steps,
                            prune_complete=prep.complete, base_images=len(base))
    return students.eval(), report


def progress_printer(echo: Callable[[str], None]) -> Progress:
    """A ``progress`` for :func:`compress` that describes each stage in lines (about ten for labels)."""
    last_labels = [0.0]

    def progress(stage: str, info: Mapping[str, float]) -> None:
        if stage == "pool":
            echo(f"pool: {int(info['images'])} images in {info['seconds']:.0f} s")
        elif stage == "labels":
            if info["done"] - last_labels[0] >= info["total"] / 10 or info["done"] == info["total"]:
                last_labels[0] = info["done"]
                echo(f"labels: {int(info['done'])}/{int(info['total'])}")
        elif stage in ("distill", "finetune"):
            echo(f"{stage} epoch {int(info['epoch'])}: validation r median {info['median_val_r']:.3f}, "
                 f"min {info['min_val_r']:.3f} ({info['seconds']:.0f} s)")
        elif stage == "prune" and "images" in info:
            echo(f"prune: on {int(info['images'])} held-out images")
        elif stage == "prune":
            echo(f"prune: {int(info['evaluations'])} evaluations in {info['seconds']:.0f} s")

    return progress


def format_report(report: CompressReport) -> str:
    """A table: per stage, median and min r with the teacher on the test images and how many reach
    ``min_r``; then the median filters before and after pruning."""
    c = report.config
    lines = [f"r with the teacher on {c.test_images} held-out pool images (used neither for training nor pruning):",
             f"{'stage':<10} {'median r':>9} {'min r':>7} {'>= ' + str(c.min_r):>8}"]
    for stage, v in report.r.items():
        lines.append(f"{stage:<10} {np.nanmedian(v):>9.3f} {np.nanmin(v):>7.3f} "
                     f"{f'{int((v >= c.min_r).sum())}/{len(v)}':>8}")
    before, after = report.filters_before, report.filters_after
    lines.append(f"median filters {np.median(before.sum(1)):.0f} -> {np.median(after.sum(1)):.0f} "
                 f"(per layer {np.median(before, 0).astype(int).tolist()} -> "
                 f"{np.median(after, 0).astype(int).tolist()})")
    return "\n".join(lines)


# --- writing the compact models -----------------------------------------------------------------
def _torch_save(obj: Any, f: Any) -> None:
    torch.save(obj, f)


def _model_name(session: str, k: int) -> str:
    return f"compact_model_{session}_neuron{k}.pt"


def check_out_dir(out_dir: Path, session: str, overwrite: bool = False) -> None:
    """Raise ``ValueError`` for a session name that cannot be a file name, ``FileExistsError`` where
    ``out_dir`` already holds compact models of ``session`` and ``overwrite`` is False."""
    if not _SESSION_FILE_RE.match(session):
        raise ValueError(f"session {session!r} cannot name compact-model files: use 1-64 of [A-Za-z0-9_]")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not overwrite and out.is_dir():
        existing = find_compact_models(out, session)
        if existing:
            raise FileExistsError(f"{out} already holds {len(existing)} compact models of session {session} "
                                  f"(e.g. {existing[0].name}): pass overwrite to replace them")


def write_compact_models(model: StackedCompact, out_dir: Path, session: str, report: CompressReport,
                         overwrite: bool = False) -> list[Path]:
    """Write each student as ``compact_model_<session>_neuron<k>.pt`` (the state_dict of
    ``model.export(k)``) + ``.filters.npy``, and record the run in ``out_dir/summary.json``.

    ``summary.json`` maps each session written to this folder to ``report.to_dict()`` plus the
    file names. Files are renamed into place (the filters file before its model). With
    ``overwrite``, models of ``session`` with neuron indices past this model's are removed, so the
    folder never mixes two runs. Returns the model files, in neuron order.
    """
    check_out_dir(out_dir, session, overwrite)
    if report.neurons != model.n:
        raise ValueError(f"the report describes {report.neurons} students, the model holds {model.n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = set(find_compact_models(out, session))
    paths = []
    for k in range(model.n):
        compact = model.export(k)
        path = out / _model_name(session, k)
        filters = np.asarray(compact.filters, dtype=np.int64)
        state = {name: t.detach().cpu().clone() for name, t in compact.state_dict().items()}
        write_atomic(path.with_name(path.name[:-3] + ".filters.npy"),
                      functools.partial(np.save, arr=filters, allow_pickle=False))
        write_atomic(path, functools.partial(_torch_save, state))
        paths.append(path)
        stale.discard(path)
    for p in sorted(stale):  # models of an earlier, larger run of this session
        p.unlink()
        with contextlib.suppress(FileNotFoundError):
            p.with_name(p.name[:-3] + ".filters.npy").unlink()
    summary_path = out / SUMMARY
    summary: dict[str, Any] = {"sessions": {}}
    if summary_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(summary_path.read_text())
            if isinstance(old, dict) and isinstance(old.get("sessions"), dict):
                summary = old
    summary["sessions"][session] = {**report.to_dict(), "created": time.time(),
                                    "files": [p.name for p in paths]}
    text = json.dumps(summary, indent=1)
    write_atomic(summary_path, lambda f: f.write(text.encode()))
    return paths
