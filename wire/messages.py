"""Messages every server speaks: health checks and the two generic replies."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from wire.base import Message


class Ping(Message):
    """Liveness check; every server answers it with :class:`Pong`."""

    kind: Literal["ping"] = "ping"


class Pong(Message):
    kind: Literal["pong"] = "pong"
    server: str = Field(description="name of the server that answered")
    version: str = Field(description="cortexloop version of that server")


class Ok(Message):
    """A command that returns nothing but success."""

    kind: Literal["ok"] = "ok"


class ErrorReply(Message):
    """The typed error reply: ``code`` names a class of :mod:`wire.errors`."""

    kind: Literal["error"] = "error"
    code: str = Field(description="stable error code, see wire.errors")
    message: str = Field(description="human-readable explanation")
    command: str | None = Field(default=None, description="kind of the command that failed, if known")
