"""Async ZeroMQ transport: a ROUTER request/reply server, a DEALER client, and an event stream.

* :class:`RpcServer` serves one dispatch table (command class -> async handler). Each request
  runs in its own task, so a long command (a block being presented, a model training) never
  stops the server from answering ``status`` or ``ping``. Unknown or malformed messages get a
  typed :class:`~wire.messages.ErrorReply` carrying the request id wherever it can be read
  (leniently, :func:`wire.codec.peek_request_id`); a handler's exception becomes one too (its
  traceback logged), and the server keeps serving.
* Limits (docs/security.md, "Limits and confinement"): ZeroMQ's ``MAXMSGSIZE`` on every receiving
  socket, so a frame larger than ``max_bytes`` is refused by the socket before it is buffered (the
  sender's connection is dropped; its request times out); at most ``max_concurrent`` requests run
  at once per server, beyond that a typed ``busy`` reply comes at once (``ping``, ``job.cancel``
  and commands marked ``always_admitted`` excepted).
* Cancellation: the generic :class:`CancelRequest` (``job.cancel``) sets the cancel flag of a
  running request of the same client; handlers read it through :func:`current_request` /
  :func:`cancel_check` (cooperatively: long loops test it each step). :class:`RpcClient` sends it
  by itself when a request times out or its caller's task is cancelled.
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
import logging
import threading
import typing
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

import zmq
import zmq.asyncio
from pydantic import Field, TypeAdapter

from wire.base import Message
from wire.codec import DEFAULT_MAX_BYTES, MAX_ID_CHARS, decode_header, encode, peek_request_id, validate
from wire.errors import (
    Busy,
    Cancelled,
    CortexloopError,
    DecodeError,
    MessageTooLarge,
    NotFound,
    RequestTimeout,
    WireError,
    error_for_code,
)
from wire.messages import ErrorReply, Ok, Ping, Pong
from wire.security import CurveClient, CurveServer, secure_client, secure_server

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Message)
Handler = Callable[[Any], Awaitable[Message]]

__all__ = ["ALWAYS_ADMITTED", "DEFAULT_MAX_CONCURRENT", "CancelRequest", "EventPublisher", "EventSubscriber",
           "RequestContext", "RpcClient", "RpcServer", "cancel_check", "current_request", "kind_of",
           "union_adapter"]

#: Requests one server runs at once, by default; one more gets a ``busy`` reply at once.
DEFAULT_MAX_CONCURRENT = 16
#: Kinds every server admits even at its concurrency bound: cheap, and what regains control.
ALWAYS_ADMITTED: frozenset[str] = frozenset({"ping", "job.cancel"})
#: Largest message an event publisher (XPUB) accepts from a subscriber: subscriptions are topic names.
SUBSCRIPTION_MAX_BYTES = 64 << 10
#: Longest error message a reply carries (the rest is cut, with a note of the length).
MAX_ERROR_CHARS = 4000


class CancelRequest(Message):
    """Stop a running request of this client (the same connection) by its request id.

    Served by every :class:`RpcServer` (like ``ping``): it sets the request's cancel flag, which
    the handler's loops test each step; the cancelled request then answers ``cancelled``. The
    reply is :class:`~wire.messages.Ok`, or ``not_found`` when no such request is running.
    """

    kind: Literal["job.cancel"] = "job.cancel"
    request_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="id of the request to stop")


@dataclass
class RequestContext:
    """The request a handler is serving (see :func:`current_request`)."""

    request_id: str | None
    kind: str
    peer: bytes = field(repr=False)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(f"{self.kind} {self.request_id} was cancelled by its client")


_current: ContextVar[RequestContext | None] = ContextVar("cortexloop_request", default=None)


def current_request() -> RequestContext | None:
    """The request being handled by this task (or the worker thread it started with
    ``asyncio.to_thread``, which copies the context); None outside a request."""
    return _current.get()


def _never() -> bool:
    return False


def cancel_check() -> Callable[[], bool]:
    """A cheap, thread-safe 'has my client cancelled?' test for the request being handled (always
    False outside a request). Take it in the handler and pass it to the work's loops."""
    ctx = _current.get()
    return ctx.cancel_event.is_set if ctx is not None else _never


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _nbytes(frames: Sequence[bytes | memoryview]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


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


class RpcServer:
    """A ROUTER server for one dispatch table. Use as ``async with RpcServer(...) as srv:``.

    ``max_bytes`` bounds one message: ZeroMQ refuses any larger frame before buffering it (and
    drops the sender's connection), a message whose frames together exceed it gets a
    ``too_large`` reply, and so does a reply that would exceed it. ``max_concurrent`` bounds the
    requests running at once; beyond it a request gets a ``busy`` reply at once, except the kinds
    in :data:`ALWAYS_ADMITTED`, ``always_admit`` and command classes with a true
    ``always_admitted`` class attribute. ``stats`` counts received, malformed, busy, cancelled.
    """

    def __init__(self, endpoint: str, handlers: Mapping[type[Message], Handler], *, name: str = "server",
                 context: zmq.asyncio.Context | None = None, curve: CurveServer | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, version: str = "0.1.0",
                 max_concurrent: int = DEFAULT_MAX_CONCURRENT, always_admit: Collection[str] = ()) -> None:
        if max_bytes < 1 or max_concurrent < 1:
            raise ValueError("max_bytes and max_concurrent must be >= 1")
        self.name = name
        self._requested_endpoint = endpoint
        self._handlers: dict[str, Handler] = {kind_of(cls): h for cls, h in handlers.items()}
        self._handlers.setdefault("ping", self._ping)
        self._handlers.setdefault("job.cancel", self._cancel)
        self._adapter = union_adapter([Ping, CancelRequest, *handlers])
        self._always = set(ALWAYS_ADMITTED) | set(always_admit) | {
            kind_of(cls) for cls in handlers if getattr(cls, "always_admitted", False) is True}
        self._ctx = _context(context)
        self._curve = curve
        self._max_bytes = max_bytes
        self.max_concurrent = max_concurrent
        self._version = version
        self._sock: zmq.asyncio.Socket | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[tuple[bytes, str], RequestContext] = {}
        self._in_flight = 0
        #: counters: received (messages), malformed (typed decode errors), busy, cancelled
        self.stats: Counter[str] = Counter()
        self.endpoint = endpoint

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered (their handlers, or worker threads, still run)."""
        return self._in_flight

    async def _ping(self, _cmd: Ping) -> Pong:
        return Pong(server=self.name, version=self._version)

    async def _cancel(self, cmd: CancelRequest) -> Ok:
        me = _current.get()
        target = self._running.get((me.peer if me is not None else b"", cmd.request_id))
        if target is None:
            raise NotFound(f"no request {_short(cmd.request_id, 80)!r} of this client is running")
        if not target.cancel_event.is_set():
            target.cancel_event.set()
            self.stats["cancelled"] += 1
            log.info("%s: %s %s cancelled by its client", self.name, target.kind, target.request_id)
        return Ok()

    async def start(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        try:
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)  # larger frames: refused before buffering
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
        for ctx in list(self._running.values()):  # worker threads that test the flag stop too
            ctx.cancel_event.set()
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        self._running.clear()
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
            self.stats["received"] += 1
            if len(frames) < 2:
                self.stats["malformed"] += 1
                continue  # an empty message cannot be answered: there is no payload to reply to
            task = asyncio.create_task(self._handle(frames[0].bytes, frames[1:]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _admit(self, kind: str) -> bool:
        """Take a slot for a request of ``kind`` (False: needs none); Busy when all are taken."""
        if kind in self._always:
            return False
        if self._in_flight >= self.max_concurrent:
            self.stats["busy"] += 1
            raise Busy(f"{self.name} is running {self._in_flight} requests, its limit (max_concurrent="
                       f"{self.max_concurrent}); try again when one has finished")
        self._in_flight += 1
        return True

    async def _handle(self, identity: bytes, frames: Sequence[zmq.Frame]) -> None:
        rid: str | None = None
        kind: str | None = None
        reply: Message
        admitted = False
        key: tuple[bytes, str] | None = None
        ctx: RequestContext | None = None
        try:
            try:
                rid, body = decode_header(frames, self._max_bytes)
            except CortexloopError:
                rid = peek_request_id(frames[0])
                raise
            raw_kind = body.get("kind") if isinstance(body, dict) else None
            kind = raw_kind[:128] if isinstance(raw_kind, str) else None
            cmd = validate(body, self._adapter)
            admitted = self._admit(cmd.kind)
            ctx = RequestContext(rid, cmd.kind, identity)
            if rid is not None:
                key = (identity, rid)
                self._running[key] = ctx
            _current.set(ctx)
            reply = await self._handlers[cmd.kind](cmd)
        except asyncio.CancelledError:
            raise
        except Cancelled as exc:
            log.info("%s: %s stopped: %s", self.name, kind, exc)
            reply = ErrorReply(code=exc.code, message=_short(str(exc)), command=kind)
        except CortexloopError as exc:
            if isinstance(exc, DecodeError):
                self.stats["malformed"] += 1
            # quiet: cancelling a request that already finished, and refusals at the concurrency bound (a flood)
            quiet = kind == "job.cancel" or (isinstance(exc, Busy) and ctx is None)
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "%s: %s answered with %s: %s", self.name, kind, exc.code, _short(str(exc), 500))
            reply = ErrorReply(code=exc.code, message=_short(str(exc)), command=kind)
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, kind)
            reply = ErrorReply(code="internal", message=_short(f"{type(exc).__name__}: {exc}"), command=kind)
        finally:
            if admitted:
                self._in_flight -= 1
            if key is not None and self._running.get(key) is ctx:
                del self._running[key]
        await self._reply(identity, reply, rid, kind)

    async def _reply(self, identity: bytes, reply: Message, rid: str | None, kind: str | None) -> None:
        try:
            out = encode(reply, rid)
            size = _nbytes(out)
            if size > self._max_bytes:
                log.warning("%s: reply to %s of %d bytes exceeds the limit of %d", self.name, kind, size,
                            self._max_bytes)
                out = encode(ErrorReply(code=MessageTooLarge.code, command=kind, message=(
                    f"the reply ({size} bytes) exceeds this server's message limit of {self._max_bytes} bytes; "
                    "ask for less")), rid)
        except Exception as exc:
            log.exception("%s: reply to %s could not be encoded", self.name, kind)
            out = encode(ErrorReply(code="internal", command=kind,
                                    message=_short(f"reply could not be encoded: {type(exc).__name__}: {exc}")), rid)
        if self._sock is not None:
            try:
                await self._sock.send_multipart([identity, *out], copy=False)
            except zmq.ZMQError as exc:  # closing, or the peer's queue is full: nothing to tell anyone
                log.warning("%s: reply to %s not sent: %s", self.name, kind, exc)


class RpcClient:
    """A DEALER client. ``await client.request(cmd, ReplyType)`` -> the typed reply.

    ``max_bytes`` bounds the replies it accepts (ZeroMQ's ``MAXMSGSIZE``: a larger frame is refused
    before it is buffered and ZeroMQ closes the connection; the request times out, and the client
    then connects afresh) and the requests it sends (a larger one raises
    :class:`~wire.errors.MessageTooLarge` without being sent). A request that times out, or whose
    caller is cancelled, sends ``job.cancel`` for it (``cancel_on_timeout``), so the server stops
    working on it.
    """

    def __init__(self, endpoint: str, *, timeout: float = 5.0, context: zmq.asyncio.Context | None = None,
                 curve: CurveClient | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 cancel_on_timeout: bool = True) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.cancel_on_timeout = cancel_on_timeout
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
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_bytes)  # larger replies: refused before buffering
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
        kind = getattr(cmd, "kind", type(cmd).__name__)
        frames = encode(cmd, rid)
        size = _nbytes(frames)
        if size > self._max_bytes:
            raise MessageTooLarge(f"{kind!r} of {size} bytes exceeds this client's message limit of "
                                  f"{self._max_bytes} bytes; not sent")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        sock = self._sock
        sent = False
        try:
            async with asyncio.timeout(timeout):
                await sock.send_multipart(frames, copy=False)
                sent = True
                body = await fut
        except TimeoutError as exc:
            if sent:
                self._send_cancel(sock, rid)
            self._revive(sock)
            raise RequestTimeout(
                f"no reply from {self.endpoint} to {kind!r} within {timeout:g} s (is the server running?)"
            ) from exc
        except asyncio.CancelledError:
            if sent:
                self._send_cancel(sock, rid)
            raise
        finally:
            self._pending.pop(rid, None)
        if isinstance(body, dict) and body.get("kind") == "error":
            err = validate(body, _adapter_for(ErrorReply))
            raise error_for_code(err.code)(err.message)
        result: R = validate(body, _adapter_for(reply_type))
        return result

    async def ping(self, timeout: float | None = None) -> Pong:
        return await self.request(Ping(), Pong, timeout=timeout)

    def _revive(self, sock: zmq.asyncio.Socket) -> None:
        """After a timeout with no live connection, connect afresh. ZeroMQ reconnects by itself after a
        connection error, but not after a protocol error (e.g. a reply frame over this client's
        MAXMSGSIZE), which would leave the client deaf for good. Pending requests are kept."""
        if sock is not self._sock or sock.closed:
            return
        try:
            if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:  # immediate=True: writable only when connected
                return
            with contextlib.suppress(zmq.ZMQError):
                sock.disconnect(self.endpoint)
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            log.warning("could not reconnect to %s: %s", self.endpoint, exc)

    def _send_cancel(self, sock: zmq.asyncio.Socket, rid: str) -> None:
        """Fire and forget ``job.cancel`` for ``rid`` (its reply is dropped as a late one)."""
        if not self.cancel_on_timeout or sock is not self._sock or sock.closed:
            return
        try:
            sent = sock.send_multipart(encode(CancelRequest(request_id=rid), f"{rid}.cancel"), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        if isinstance(sent, asyncio.Future):
            sent.add_done_callback(_retrieve)


class EventPublisher:
    """Publishes typed events; the topic frame is the event's ``kind``."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveServer | None = None, name: str = "events") -> None:
        self._ctx = _context(context)
        sock = self._ctx.socket(zmq.XPUB)
        sock.linger = 0
        sock.sndhwm = 100_000
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, not only the first per topic
        sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)  # subscribers only send topic names
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
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # larger events: refused before buffering
        if curve is not None:
            secure_client(sock, curve)
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        sock.connect(endpoint)
        self._sock = sock
        self.endpoint = endpoint

    async def recv(self, timeout: float | None = None) -> Any:
        """The next event; raises RequestTimeout after ``timeout`` seconds without one."""
        # wait by polling, which consumes nothing: a timeout that cancelled a pending receive could
        # drop a message that arrived in the same loop iteration
        if timeout is not None and not await self._sock.poll(max(0, int(timeout * 1000))):
            raise RequestTimeout(f"no event from {self.endpoint} within {timeout:g} s")
        frames = await self._sock.recv_multipart(copy=False)
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
