"""Helpers shared by the bus tests: users, a command collector and the contract scenario."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypedDict

from controller.bus import BusUser
from wire.topics import (
    AbortCommand,
    BusMessage,
    PauseCommand,
    ResumeCommand,
    SessionEvent,
    SessionStatus,
)

RIG = "rig-a"
USERS = [
    BusUser("ctl", "ctl-secret", "controller"),
    BusUser("alice", "alice-secret", "operator"),
    BusUser("bob", "bob-secret", "viewer"),
]


class Cred(TypedDict):
    username: str
    password: str


CRED: dict[str, Cred] = {u.role: Cred(username=u.name, password=u.password) for u in USERS}


class CommandCollector:
    """Runs the controller's command loop in a task and queues what it receives."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for cmd in self.bus.commands():
            await self.queue.put(cmd)

    async def __aenter__(self) -> CommandCollector:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def next(self, timeout: float = 5.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)


def is_status(state: str) -> Callable[[BusMessage], bool]:
    return lambda m: isinstance(m, SessionStatus) and m.state == state


async def scenario(bus: Any, operator: Any) -> None:
    """The contract every bus implementation must keep (run against fake, amqtt and mosquitto)."""
    async with CommandCollector(bus) as commands:
        await bus.publish(SessionStatus(rig=RIG, state="running", protocol="maximize", step_index=3))
        got = await operator.wait_for(is_status("running"))
        assert isinstance(got, SessionStatus) and got.protocol == "maximize" and got.step_index == 3

        sent = [PauseCommand(reason="animal moved", issued_by="alice"), ResumeCommand(), AbortCommand(when="now")]
        for cmd in sent:
            await operator.send(cmd)
            received = await commands.next()
            assert type(received) is type(cmd) and received.command_id == cmd.command_id
        assert received.when == "now"

        # an invalid command is rejected on the bus (not a crash) and the loop goes on
        await operator.send_raw(bus.topics.command("pause"), b'{"when": "never"}')
        event = await operator.wait_for(lambda m: isinstance(m, SessionEvent) and m.event == "command.rejected")
        assert "invalid pause command" in event.message
        resume = ResumeCommand(reason="after rejection")
        await operator.send(resume)
        assert (await commands.next()).command_id == resume.command_id
