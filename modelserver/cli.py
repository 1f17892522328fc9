"""``python -m modelserver`` / ``cortexloop modelserver``: run the model server."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import typer

from modelserver.ensemble import EnsembleConfig
from modelserver.server import ModelServer, ModelServerConfig, serve

app = typer.Typer(help="The cortexloop model server (datasets, ensemble, compact models).", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    data_dir: Path = typer.Option(Path("modelserver-data"), help="training set and model versions live here"),
    endpoint: str = typer.Option("tcp://127.0.0.1:5560", help="RPC endpoint to bind"),
    events: str = typer.Option("tcp://127.0.0.1:5561", help="event (PUB) endpoint to bind"),
    device: str = typer.Option("cpu", help="torch device: cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default)"),
    members: int = typer.Option(4, help="ensemble members"),
    max_epochs: int = typer.Option(30, help="epochs per training job at most"),
    v4_dir: Path | None = typer.Option(None, help="V4 data folder: its images feed the candidate pools"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve ``wire.model`` commands until interrupted."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ModelServerConfig(data_dir=data_dir, endpoint=endpoint, events_endpoint=events, device=device,
                            threads=threads or None, v4_dir=v4_dir,
                            ensemble=EnsembleConfig(members=members, max_epochs=max_epochs))

    def ready(server: ModelServer) -> None:
        print(f"modelserver ready on {server.endpoint} events {server.events_endpoint}", flush=True)

    try:
        asyncio.run(serve(cfg, ready))
    except KeyboardInterrupt:
        sys.exit(0)


@app.command("info")
def info_cmd(data_dir: Path = typer.Option(Path("modelserver-data"))) -> None:
    """Show the training set's sessions and the saved model versions."""
    from modelserver.dataset import TrainingSet

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


def run() -> None:
    app()
