"""Async ZeroMQ transport: a ROUTER request/reply server, a DEALER client, and an event stream.

* :class:`RpcServer` serves one dispatch table (command class -> async handler). Each request
  runs in its own task, so a long command (a block being presented, a model training) never
  stops the server from answering ``status`` or ``ping``. Unknown, malformed or oversized
  messages get a typed :class:`~wire.messages.ErrorReply`; a handler's exception becomes one
  too (its traceback logged), and the server keeps serving.
* :class:`RpcClient` sends typed commands and returns typed replies. Every request has a
  timeout (:class:`~wire.errors.RequestTimeout`); an error reply is raised as the matching
  class of :mod:`wire.errors`. ZeroMQ reconnects by itself when a dead server comes back;
  :meth:`RpcClient.reconnect` starts a fresh socket on demand.
* :class:`EventPublisher` / :class:`EventSubscriber`: a PUB/SUB stream of typed events whose
  topic is the event's ``kind``. The publisher is an XPUB, so it can wait until subscribers
  are connected (no sleeps as synchronisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import zmq
import zmq.asyncio
from pydantic import Field, TypeAdapter

from wire.base import Message
from wire.codec import DEFAULT_MAX_BYTES, decode_header, encode, validate
from wire.errors import CortexloopError, DecodeError, RequestTimeout, WireError, error_for_code
from wire.messages import ErrorReply, Ok, Ping, Pong
from wire.security import CurveClient, CurveServer, secure_client, secure_server

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
Handler = Callable[[Any], Awaitable[Message]]

__all__ = ["EventPublisher", "EventSubscriber", "RpcClient", "RpcServer", "kind_of", "union_adapter"]


def kind_of(cls: type[Message]) -> str:
    """The wire name of a message class (the default of its ``kind`` field)."""
    field = cls.model_fields.get("kind")
    if field is None or not isinstance(field.default, str):
        raise TypeError(f"{cls.__name__} has no literal 'kind' default")
    return field.default


def union_adapter(classes: Sequence[type[Message]]) -> TypeAdapter[Any]:
    """A validator for a discriminated union (on ``kind``) of message classes."""
    classes = list(dict.fromkeys(classes))
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    union: Any = typing.Union[tuple(classes)]  # noqa: UP007 - built at run time from a list
    return TypeAdapter(Annotated[union, Field(discriminator="kind")])


@functools.lru_cache(maxsize=256)
def _adapter_for(cls: type[Message]) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def _context(ctx: zmq.asyncio.Context | None) -> zmq.asyncio.Context:
    return ctx if ctx is not None else zmq.asyncio.Context.instance()


def _peek_request_id(frames: Sequence[zmq.Frame]) -> str | None:
    """Best effort: the request id of a message that failed to decode, so the error finds its caller."""
    try:
        rid = json.loads(frames[0].bytes).get("id")
    except Exception:
        return None
    return rid if isinstance(rid, str) else None


class RpcServer:
    """A ROUTER server for one dispatch table. Use as ``async with RpcServer(...) as srv:``."""

    def __init__(self, endpoint: str, handlers: Mapping[type[Message], Handler], *, name: str = "server",
                 context: zmq.asyncio.Context | None = None, curve: CurveServer | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, version: str = "0.1.0") -> None:
        self.name = name
        self._requested_endpoint = endpoint
        self._handlers: dict[str, Handler] = {kind_of(cls): h for cls, h in handlers.items()}
        self._handlers.setdefault("ping", self._ping)
        self._adapter = union_adapter([Ping, *handlers])
        self._ctx = _context(context)
        self._curve = curve
        self._max_bytes = max_bytes
        self._version = version
        self._sock: zmq.asyncio.Socket | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.endpoint = endpoint

    async def _ping(self, _cmd: Ping) -> Pong:
        return Pong(server=self.name, version=self._version)

    async def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        try:
            if self._curve is not None:
                secure_server(sock, self._curve, domain=f"cortexloop.{self.name}")
            sock.bind(self._requested_endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise WireError(f"{self.name}: cannot bind {self._requested_endpoint}: {exc}") from exc
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._loop_task = asyncio.create_task(self._serve(), name=f"{self.name}-rpc")
        log.info("%s serving on %s%s", self.name, self.endpoint, " (CURVE)" if self._curve else "")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._loop_task = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    async def __aenter__(self) -> RpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        if self._loop_task is None:
            await self.start()
        assert self._loop_task is not None
        await self._loop_task

    async def _serve(self) -> None:
        assert self._sock is not None
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            if len(frames) < 2:
                continue  # an empty message cannot be answered: there is no payload to reply to
            task = asyncio.create_task(self._handle(frames[0].bytes, frames[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, identity: bytes, frames: Sequence[zmq.Frame]) -> None:
        rid: str | None = None
        kind: str | None = None
        reply: Message
        try:
            try:
                rid, body = decode_header(frames, self._max_bytes)
            except CortexloopError:
                rid = _peek_request_id(frames)
                raise
            kind = body.get("kind") if isinstance(body, dict) else None
            cmd = validate(body, self._adapter)
            reply = await self._handlers[cmd.kind](cmd)
        except asyncio.CancelledError:
            raise
        except CortexloopError as exc:
            log.warning("%s: %s answered with %s: %s", self.name, kind, exc.code, exc)
            reply = ErrorReply(code=exc.code, message=str(exc), command=kind)
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, kind)
            reply = ErrorReply(code="internal", message=f"{type(exc).__name__}: {exc}", command=kind)
        if self._sock is not None:
            await self._sock.send_multipart([identity, *encode(reply, rid)], copy=False)


class RpcClient:
    """A DEALER client. ``await client.request(cmd, ReplyType)`` -> the typed reply."""

    def __init__(self, endpoint: str, *, timeout: float = 5.0, context: zmq.asyncio.Context | None = None,
                 curve: CurveClient | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = _context(context)
        self._curve = curve
        self._max_bytes = max_bytes
        self._sock: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._counter = 0

    def connect(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = True  # queue only to live connections: a dead server means a timeout, not a backlog
        if self._curve is not None:
            secure_client(sock, self._curve)
        sock.connect(self.endpoint)
        self._sock = sock
        self._reader = asyncio.create_task(self._read(sock), name=f"rpc-client-{self.endpoint}")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WireError(f"client for {self.endpoint} closed"))
        self._pending.clear()

    async def reconnect(self) -> None:
        """Drop the socket (and anything queued on it) and connect afresh."""
        await self.close()
        self.connect()

    async def __aenter__(self) -> RpcClient:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart(copy=False)
            try:
                rid, body = decode_header(frames, self._max_bytes)
            except CortexloopError as exc:
                log.error("undecodable reply from %s dropped: %s", self.endpoint, exc)
                continue
            fut = self._pending.pop(rid, None) if rid is not None else None
            if fut is None and rid is None and len(self._pending) == 1:
                fut = self._pending.pop(next(iter(self._pending)))
            if fut is None:
                log.debug("late reply %s from %s dropped", rid, self.endpoint)
            elif not fut.done():
                fut.set_result(body)

    async def request(self, cmd: Message, reply_type: type[R] = Ok, *, timeout: float | None = None) -> R:  # type: ignore[assignment]
        """Send ``cmd``; return its reply validated as ``reply_type``; raise the typed error otherwise."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        timeout = self.timeout if timeout is None else timeout
        self._counter += 1
        rid = f"{id(self):x}-{self._counter}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        kind = getattr(cmd, "kind", type(cmd).__name__)
        try:
            async with asyncio.timeout(timeout):
                await self._sock.send_multipart(encode(cmd, rid), copy=False)
                body = await fut
        except TimeoutError as exc:
            raise RequestTimeout(
                f"no reply from {self.endpoint} to {kind!r} within {timeout:g} s (is the server running?)"
            ) from exc
        finally:
            self._pending.pop(rid, None)
        if isinstance(body, dict) and body.get("kind") == "error":
            err = validate(body, _adapter_for(ErrorReply))
            raise error_for_code(err.code)(err.message)
        result: R = validate(body, _adapter_for(reply_type))
        return result

    async def ping(self, timeout: float | None = None) -> Pong:
        return await self.request(Ping(), Pong, timeout=timeout)


class EventPublisher:
    """Publishes typed events; the topic frame is the event's ``kind``."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveServer | None = None, name: str = "events") -> None:
        self._ctx = _context(context)
        sock = self._ctx.socket(zmq.XPUB)
        sock.linger = 0
        sock.sndhwm = 100_000
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, not only the first per topic
        try:
            if curve is not None:
                secure_server(sock, curve, domain=f"cortexloop.{name}")
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise WireError(f"{name}: cannot bind {endpoint}: {exc}") from exc
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._subscriptions = 0

    async def publish(self, event: Message) -> None:
        await self._sock.send_multipart([getattr(event, "kind", "event").encode(), *encode(event)], copy=False)

    async def wait_for_subscribers(self, n: int = 1, timeout: float = 5.0) -> None:
        """Return once ``n`` subscriptions have arrived (XPUB sees each subscribe message)."""
        async with asyncio.timeout(timeout):
            while self._subscriptions < n:
                msg = await self._sock.recv()
                if msg[:1] == b"\x01":
                    self._subscriptions += 1

    def close(self) -> None:
        self._sock.close(0)

    async def __aenter__(self) -> EventPublisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventSubscriber:
    """Receives typed events of the given classes (all of them unless ``topics`` narrows)."""

    def __init__(self, endpoint: str, events: Sequence[type[Message]], *, topics: Sequence[str] = ("",),
                 context: zmq.asyncio.Context | None = None, curve: CurveClient | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._ctx = _context(context)
        self._adapter = union_adapter(list(events))
        self._max_bytes = max_bytes
        sock = self._ctx.socket(zmq.SUB)
        sock.linger = 0
        sock.rcvhwm = 100_000
        if curve is not None:
            secure_client(sock, curve)
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        sock.connect(endpoint)
        self._sock = sock
        self.endpoint = endpoint

    async def recv(self, timeout: float | None = None) -> Any:
        """The next event; raises RequestTimeout after ``timeout`` seconds without one."""
        try:
            async with asyncio.timeout(timeout):
                frames = await self._sock.recv_multipart(copy=False)
        except TimeoutError as exc:
            raise RequestTimeout(f"no event from {self.endpoint} within {timeout:g} s") from exc
        if len(frames) < 2:
            raise DecodeError("event without a payload")
        _, body = decode_header(frames[1:], self._max_bytes)
        return validate(body, self._adapter)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except DecodeError as exc:  # one bad event must not end the stream
                log.error("undecodable event from %s dropped: %s", self.endpoint, exc)

    def close(self) -> None:
        self._sock.close(0)

    async def __aenter__(self) -> EventSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
