"""Session progress on the terminal (rich): the block, its trials, an ETA, and the last event."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn


class SessionProgress:
    """``with SessionProgress(console) as p: engine.on_status(p.update)``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console)
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> SessionProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, topic: str, payload: dict[str, Any]) -> None:
        if topic == "trial":
            block = payload["block_id"]
            if block not in self._tasks:
                self._tasks[block] = self.progress.add_task(f"block {block}", total=payload["total"], note="")
            self.progress.update(self._tasks[block], completed=payload["done"], total=payload["total"])
        elif topic == "step":
            self.console.log(f"step {payload['index']}: {payload['kind']} {payload.get('note', '')}".rstrip())
        elif topic == "event":
            self.console.log(f"[yellow]{payload['what']}[/yellow]: {payload['message']}")
        elif topic == "session":
            self.console.log(f"session {payload['session_id']}: {payload['state']}")
