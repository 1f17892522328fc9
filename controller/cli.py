"""The ``cortexloop`` command line (typer). Subcommands arrive with the parts they drive."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from controller import __version__

app = typer.Typer(help="Closed-loop experiment control for visual neuroscience.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="ZeroMQ CURVE key files.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()


def _mount(module: str, name: str, help_text: str) -> None:
    """Mount a sub-application (a typer app named ``app`` in ``module``) if its package is present."""
    try:
        sub = importlib.import_module(module).app
    except (ImportError, AttributeError):
        return
    app.add_typer(sub, name=name, help=help_text)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def version() -> None:
    """Print the cortexloop version."""
    console.print(__version__)


@keys_app.command("generate")
def keys_generate(folder: Path, name: str) -> None:
    """Write NAME.key (public) and NAME.key_secret into FOLDER."""
    from wire.security import generate_keypair

    public, secret = generate_keypair(folder, name)
    console.print(f"public: {public}\nsecret: {secret} (keep it private; mode 600)")


@app.command()
def inspect(session: Path, documents: Annotated[bool, typer.Option(help="print every document")] = False) -> None:
    """Summarise a session file: documents by kind, trials, counts, problems."""
    from controller.store import SessionReader

    with SessionReader(session) as reader:
        kinds: dict[str, int] = {}
        for doc in reader.documents():
            kinds[doc.kind] = kinds.get(doc.kind, 0) + 1
            if documents:
                console.print_json(json.dumps(doc.model_dump(mode="json", exclude={"pixels", "counts"})))
        table = Table(title=str(session))
        table.add_column("document")
        table.add_column("count", justify="right")
        for k, n in kinds.items():
            table.add_row(k, str(n))
        console.print(table)
        for p in reader.problems:
            console.print(f"[red]problem:[/red] {p}")


@app.command()
def smoke(out: Annotated[Path, typer.Option(help="folder for the session file")] = Path("out/smoke")) -> None:
    """Start a server, exchange typed messages and an event stream, and write a session file."""
    from controller.smoke import run_smoke

    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(run_smoke(out, console))


_mount("stimserver.cli", "stimserver", "Run the PsychoPy stimulus server.")
_mount("modelserver.cli", "modelserver", "Run the model server.")
_mount("virtualrig.cli", "virtualrig", "Run the virtual rig (model neurons over LSL).")


def run() -> None:
    """Console entry point: domain errors are reported in one line, not as a traceback."""
    from wire.errors import CortexloopError

    try:
        app()
    except CortexloopError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(1) from exc
