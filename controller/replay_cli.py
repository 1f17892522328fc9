"""``cortexloop replay``: replay session files with a modelserver, print and save the comparison.

A modelserver is started (on an empty data folder under ``OUT/modelserver``, so each replay
learns from nothing but the replayed files) when a file's protocol has model steps, with the
demo's settings for the device; ``--modelserver RPC,EVENTS`` uses a running one instead.
Files are replayed in the order given, each through the one assembly, sharing the modelserver's
data folder as the sessions did.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.config import ModelConfig
from controller.replay import ReplayOutcome, replay_session
from controller.store import SessionReader
from wire.documents import StepDoc
from wire.errors import InvalidRequest, StoreError

MODEL_STEPS = frozenset({"ingest", "retrain", "generate_images", "match_models"})


def needs_models(files: Sequence[Path]) -> bool:
    for f in files:
        with SessionReader(f) as r:
            if any(isinstance(d, StepDoc) and d.step.get("kind") in MODEL_STEPS for d in r.documents()):
                return True
    return False


def model_config(spec: str, out: Path, settings: Any, v4_dir: Path | None) -> ModelConfig:
    """The modelserver of a replay: ``none``, ``start`` (on an empty ``OUT/modelserver``) or 'RPC,EVENTS'."""
    if spec == "none":
        return ModelConfig(kind="none")
    if spec == "start":
        folder = out / "modelserver"
        if folder.exists() and any(folder.iterdir()):
            raise StoreError(f"{folder} holds an earlier replay's model data: choose another --out")
        return ModelConfig(kind="start", data_dir=folder, device=settings.device, members=settings.members,
                           max_epochs=settings.epochs_session, block_epochs=settings.epochs_block,
                           session_epochs=settings.epochs_session, pool_crops=settings.pool_crops, v4_dir=v4_dir)
    rpc, _, events = spec.partition(",")
    if not rpc or not events:
        raise InvalidRequest("--modelserver takes 'auto', 'none', 'start' or 'RPC,EVENTS'")
    return ModelConfig(kind="connect", rpc=rpc, events=events, pool_crops=settings.pool_crops,
                       block_epochs=settings.epochs_block, session_epochs=settings.epochs_session)


def run_replay(files: Sequence[Path], out: Path, *, policy: str | None, modelserver: str, data: Path | None,
               device: str, seed: int | None, console: Console, settings: Any = None) -> list[ReplayOutcome]:
    """Replay ``files`` in order into ``out``; ``settings``: the modelserver's (default: the demo's).

    A started modelserver keeps its data folder from one file to the next, as the sessions did."""
    from controller.demo import DemoSettings, detect_device
    from controller.progress import SessionProgress
    from controller.replay import Recording, recorded_images

    settings = settings or DemoSettings.for_device(detect_device(device), None)
    spec = modelserver if modelserver != "auto" else ("start" if needs_models(files) else "none")
    model = model_config(spec, out, settings, data)
    outcomes: list[ReplayOutcome] = []
    for f in files:
        images = recorded_images(Recording(f), data)
        with SessionProgress(console) as progress:
            outcome = asyncio.run(replay_session(f, out, model=model, policy=policy, seed=seed, images=images,
                                                 on_status=progress.update))
        outcomes.append(outcome)
        summary = out / f"{outcome.path.stem}.comparison.json"
        summary.write_text(json.dumps({"source": str(f), "replay": str(outcome.path),
                                       "stop": outcome.stop.model_dump(mode="json"), **outcome.comparison},
                                      indent=2))
        print_outcome(outcome, console)
    return outcomes


def print_outcome(o: ReplayOutcome, console: Console) -> None:
    c = o.comparison
    t = c["trials_with_counts"]
    table = Table(title=f"replay of {o.source.name} -> {o.path} ({o.stop.exit_status})")
    table.add_column("what")
    table.add_column("recording", justify="right")
    table.add_column("replay", justify="right")
    table.add_row("trials with counts", str(t["recording"]), f"{t['replay']} ({t['identical']} identical)")
    rec, rep = c["model_versions"]["recording"], c["model_versions"]["replay"]
    for k in range(max(len(rec), len(rep))):
        a = rec[k].get("val_r") if k < len(rec) else None
        b = rep[k].get("val_r") if k < len(rep) else None
        table.add_row(f"model version {k + 1}: val r", _fmt(a), _fmt(b))
    for key, row in c["picks"].items():
        table.add_row(f"picks {key}", "", f"{row['picked']} ({row['shown']} shown in the recording)")
    console.print(table)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
