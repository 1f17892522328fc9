"""``python -m modelserver`` / ``cortexloop modelserver``: run the model server."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import typer

from modelserver.serving.server import ModelServer, ModelServerConfig, serve
from modelserver.training.ensemble import EnsembleConfig

app = typer.Typer(help="The cortexloop model server (datasets, ensemble, compact models).", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    data_dir: Path = typer.Option(Path("modelserver-data"), help="training set and model versions live here"),
    endpoint: str = typer.Option("tcp://127.0.0.1:5570", help="RPC endpoint to bind"),
    events: str = typer.Option("tcp://127.0.0.1:5571", help="event (PUB) endpoint to bind"),
    device: str = typer.Option("auto", help="torch device: auto (a GPU when there is one), cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
    members: int = typer.Option(4, help="ensemble members"),
    max_epochs: int = typer.Option(30, help="epochs per training job at most"),
    frontend: str = typer.Option("gabor", help="the ensemble's input: pixels, gabor or resnet50"),
    weights: Path | None = typer.Option(None, help="--frontend resnet50: a local torchvision-layout ResNet50 "
                                                   "state_dict file (docs/modelserver.md)"),
    layer: str = typer.Option("layer3", help="--frontend resnet50: the trunk's last stage (layer1..layer4)"),
    input_size: int = typer.Option(0, help="images are resized to this (0: 56; 224 with resnet50)"),
    autocast: bool = typer.Option(False, "--autocast", help="bfloat16 autocast of forward passes (CUDA)"),
    v4_dir: Path | None = typer.Option(None, help="V4 data folder: its images feed the candidate pools"),
    image_root: list[Path] = typer.Option([], "--image-root", help="a folder clients may build pools from "
                                                                  "(repeatable; --v4-dir counts as one)"),
    curve_secret: Path | None = typer.Option(None, help="this server's NAME.key_secret: CURVE on (with "
                                                        "--curve-clients)"),
    curve_clients: Path | None = typer.Option(None, help="folder of the allowed clients' public NAME.key files"),
    insecure: bool = typer.Option(False, "--insecure", help="allow binding beyond loopback without CURVE"),
    ray: str | None = typer.Option(None, help="run the heavy work on a Ray cluster: auto (the one 'ray start' "
                                              "runs here), local (a private one) or its address"),
    ray_gpus: float = typer.Option(1.0, help="GPUs per member task or pool scorer on a Ray cluster with GPUs"),
    generate: bool = typer.Option(True, "--generate/--no-generate",
                                  help="serve the gen.* image commands too (--no-generate: training and "
                                       "prediction only)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve ``wire.model`` commands until interrupted.

    Endpoints other machines can reach (not loopback or ipc://) are bound only with CURVE
    (--curve-secret and --curve-clients), or with --insecure."""
    from wire.errors import CortexloopError
    from wire.security import check_bind, check_server_keys, curve_server

    def fail(message: str) -> NoReturn:
        typer.echo(f"modelserver: error: {' '.join(message.split())}", err=True)
        raise typer.Exit(1)

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:  # before anything is opened: a refused bind is one line, not a traceback
        curve = curve_server(curve_secret, curve_clients)
        if curve is not None:
            check_server_keys(curve)
        for ep in (endpoint, events):
            check_bind(ep, curve, insecure, server="modelserver")
    except CortexloopError as exc:
        fail(str(exc))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        ens = ensemble_config(members, max_epochs, frontend, weights, layer, input_size, autocast)
    except ValueError as exc:
        fail(str(exc))
    cfg = ModelServerConfig(data_dir=data_dir, endpoint=endpoint, events_endpoint=events, device=device,
                            threads=threads or None, v4_dir=v4_dir, curve=curve, insecure=insecure,
                            image_roots=list(image_root), ensemble=ens, ray=ray or None, ray_gpus=ray_gpus,
                            generate=generate)

    def ready(server: ModelServer) -> None:
        print(f"modelserver ready rpc={server.endpoint} events={server.events_endpoint} device={server.device}",
              flush=True)

    try:
        asyncio.run(serve(cfg, ready))
    except KeyboardInterrupt:
        sys.exit(0)
    except CortexloopError as exc:  # e.g. an endpoint in use
        fail(str(exc))


def ensemble_config(members: int, max_epochs: int, frontend: str, weights: Path | None, layer: str,
                    input_size: int, autocast: bool) -> EnsembleConfig:
    """The serve flags as an :class:`EnsembleConfig`; a resnet50 weights file is checked (loaded) here,
    so a wrong file is one line at start, not a failed training job later."""
    from modelserver.training.frontend import STAGES, load_resnet50

    if frontend not in ("pixels", "gabor", "resnet50"):
        raise ValueError(f"--frontend must be pixels, gabor or resnet50, not {frontend!r}")
    if layer not in STAGES:
        raise ValueError(f"--layer must be one of {', '.join(STAGES)}, not {layer!r}")
    if frontend == "resnet50":
        if weights is None:
            raise ValueError("--frontend resnet50 needs --weights FILE (a local ResNet50 state_dict)")
        load_resnet50(weights, layer)
    elif weights is not None:
        raise ValueError("--weights is for --frontend resnet50")
    size = input_size or (224 if frontend == "resnet50" else 56)
    return EnsembleConfig(members=members, max_epochs=max_epochs, frontend=frontend,  # type: ignore[arg-type]
                          weights=str(weights.resolve()) if weights is not None else None, layer=layer,
                          input_size=size, autocast=autocast)


@app.command("info")
def info_cmd(data_dir: Path = typer.Option(Path("modelserver-data"))) -> None:
    """Show the training set's sessions and the saved model versions."""
    from modelserver.training.dataset import TrainingSet

    path = data_dir / "training_set.h5"
    if not path.exists():
        typer.echo(f"no training set at {path}")
        raise typer.Exit(1)
    with TrainingSet(path) as ts:
        typer.echo(f"{ts.n_images} images")
        for s in ts.sessions():
            typer.echo(f"session {s.name}: {s.neurons} neurons, {s.trials} trials, {s.images} images")
    for p in sorted((data_dir / "versions").glob("*.pt")):
        typer.echo(f"version {p.stem} ({p.stat().st_size} bytes)")


@app.command("distill")
def distill_cmd(
    data_dir: Path = typer.Option(..., help="the server's data folder (training_set.h5, versions/)"),
    session: str = typer.Option(..., help="session whose neurons get compact models"),
    out: Path = typer.Option(..., help="folder for compact_model_<session>_neuron<k>.pt files"),
    version: str | None = typer.Option(None, help="model version (default: the one the server serves, versions/CURRENT)"),
    pool: int = typer.Option(23552, help="labelled pool images for training"),
    heldout: int = typer.Option(1024, help="further pool images: half prune, half test"),
    filters: str = typer.Option("24,48,8,6,6", help="students' filters per layer before pruning"),
    shared: int = typer.Option(4, help="leading units the students share while training (0..8)"),
    train_minutes: float = typer.Option(20.0),
    prune_minutes: float = typer.Option(5.0),
    finetune_minutes: float = typer.Option(5.0),
    epochs: int = typer.Option(100, help="epochs of distillation and of fine-tuning at most (the minutes usually end them first; "
                                        "set it with generous minutes for a run that does not depend on the machine's speed)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace this session's models in --out"),
) -> None:
    """Distil, prune and fine-tune compact models of a session's neurons from an ensemble version.

    Writes compact_model_<session>_neuron<k>.pt + .filters.npy per neuron and summary.json to --out.
    """
    from modelserver.compact.compress import (
        CompressConfig,
        check_out_dir,
        compress,
        format_report,
        progress_printer,
        write_compact_models,
    )
    from modelserver.serving.versions import read_version
    from modelserver.training.dataset import TrainingSet
    from wire.errors import CortexloopError

    def fail(message: str) -> NoReturn:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    if threads:
        torch.set_num_threads(threads)
    try:
        cfg = CompressConfig(pool=pool, heldout=heldout, filters=tuple(int(v) for v in filters.split(",")),
                             shared=shared, train_minutes=train_minutes, prune_minutes=prune_minutes,
                             finetune_minutes=finetune_minutes, epochs=epochs, seed=seed)
        check_out_dir(out, session, overwrite)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    ts_path = data_dir / "training_set.h5"
    if not ts_path.is_file():
        fail(f"no training set at {ts_path}")
    try:
        ensemble, version_id = read_version(data_dir, version, device)
    except CortexloopError as exc:
        fail(str(exc))
    if session not in ensemble.session_neurons:
        fail(f"version {version_id} has no session {session!r} (it has: {', '.join(sorted(ensemble.session_neurons)) or 'none'})")
    try:
        with TrainingSet(ts_path) as ts:
            base = ts.images(np.arange(ts.n_images))
    except CortexloopError as exc:
        fail(str(exc))
    if len(base) == 0:
        fail(f"the training set at {ts_path} holds no images")
    neurons = ensemble.session_neurons[session]
    typer.echo(f"version {version_id}, session {session}: {neurons} neurons; {len(base)} training-set images "
               f"({base.shape[1]}x{base.shape[2]}); pool {cfg.pool} + {cfg.heldout} held out", err=False)

    def teacher(images: np.ndarray) -> np.ndarray:
        return ensemble.predict(images, session)

    try:
        model, report = compress(teacher, base, cfg, device=device, progress=progress_printer(typer.echo))
        report.extra = {"session": session, "version": version_id, "data_dir": str(data_dir.resolve())}
        paths = write_compact_models(model, out, session, report, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    typer.echo(format_report(report))
    typer.echo(f"wrote {len(paths)} compact models and summary.json to {out}")


def run() -> None:
    app()
