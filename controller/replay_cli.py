"""``cortexloop replay``: replay session files with a modelserver, print and save the comparison.

A modelserver is started (on an empty data folder under ``OUT/modelserver``, so each replay
learns from nothing but the replayed files) when a file's protocol has model steps, with the
demo's settings for the device; ``--modelserver RPC,EVENTS`` uses a running one instead.
Files are replayed in the order given, against the same modelserver, as the sessions were run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.replay import ReplayOutcome, replay_session
from controller.store import SessionReader
from wire.documents import StepDoc

MODEL_STEPS = frozenset({"ingest", "retrain", "generate_images", "match_models"})


def needs_models(files: Sequence[Path]) -> bool:
    for f in files:
        with SessionReader(f) as r:
            if any(isinstance(d, StepDoc) and d.step.get("kind") in MODEL_STEPS for d in r.documents()):
                return True
    return False


@contextlib.contextmanager
def _modelserver(spec: str, out: Path, data: Path | None, settings: Any) -> Iterator[tuple[Any, Any]]:
    """(endpoints or None, settings) for ``spec``: none, start, or 'RPC,EVENTS'."""
    if spec == "none":
        yield None, settings
    elif spec == "start":
        from controller.demo import modelserver_process

        folder = out / "modelserver"
        if folder.exists() and any(folder.iterdir()):
            from wire.errors import StoreError

            raise StoreError(f"{folder} holds an earlier replay's model data: choose another --out")
        with modelserver_process(folder, settings, data) as endpoints:
            yield endpoints, settings
    else:
        rpc, _, events = spec.partition(",")
        if not events:
            from wire.errors import InvalidRequest

            raise InvalidRequest("--modelserver takes 'none', 'start' or 'RPC,EVENTS'")
        yield (rpc, events), settings


def run_replay(files: Sequence[Path], out: Path, *, policy: str | None, modelserver: str, data: Path | None,
               device: str, seed: int | None, console: Console, settings: Any = None) -> list[ReplayOutcome]:
    """Replay ``files`` in order into ``out``; ``settings``: the modelserver's (default: the demo's)."""
    from controller.demo import DemoSettings, detect_device
    from controller.progress import SessionProgress

    settings = settings or DemoSettings.for_device(detect_device(device), None)

    spec = modelserver if modelserver != "auto" else ("start" if needs_models(files) else "none")
    lib: Any = None
    outcomes: list[ReplayOutcome] = []
    with _modelserver(spec, out, data, settings) as (endpoints, settings):
        if data is not None and endpoints is not None:
            from controller.demo import library

            lib, _ = library(data, settings)  # the demo's image library: the same pool as its sessions

        def link_factory(sid: str, engine: Any) -> Any:
            if endpoints is None:
                return contextlib.nullcontext()
            from controller.modellink import ZmqModelLink

            images = lib if lib is not None else engine.images
            return ZmqModelLink(endpoints[0], endpoints[1], session_id=sid, pixels=lambda i: engine.pixels[i],
                                base_images=lambda n, s: [images.images[i] for i in images.take(n, s)],
                                pool_crops=settings.pool_crops, block_epochs=settings.epochs_block,
                                session_epochs=settings.epochs_session, timeout=60)

        for f in files:
            with SessionProgress(console) as progress:
                outcome = asyncio.run(replay_session(f, out, policy=policy, seed=seed, link_factory=link_factory,
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
