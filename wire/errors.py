"""The one error tree of cortexloop.

Every error that can cross a process boundary has a stable ``code``. A server translates
an exception into an :class:`~wire.messages.ErrorReply` carrying that code; the client
translates it back into the same class (see :func:`error_for_code`), chained ``from`` the
reply, so callers catch domain errors, never transport details.
"""

from __future__ import annotations


class CortexloopError(Exception):
    """Root of every error cortexloop raises on purpose."""

    code = "error"


# --- wire / transport ---------------------------------------------------------------
class WireError(CortexloopError):
    code = "wire"


class DecodeError(WireError):
    """A message that is not a well-formed cortexloop message (bad JSON, frames, dtype, shape)."""

    code = "decode"


class UnknownCommand(DecodeError):
    code = "unknown_command"


class MessageTooLarge(WireError):
    code = "too_large"


class RequestTimeout(WireError):
    """No reply within the request's timeout; the server may be down or busy."""

    code = "timeout"


class ServerUnavailable(WireError):
    code = "unavailable"


# --- request handling -----------------------------------------------------------------
class InvalidRequest(CortexloopError):
    """A well-formed command whose content the server rejects (wrong shape, unknown id, ...)."""

    code = "invalid"


class NotFound(InvalidRequest):
    code = "not_found"


class Forbidden(InvalidRequest):
    """A request that names something outside what the server was configured to expose: a path
    outside its folders (``..``, an absolute path, a symlink out of a root), an existing file
    without ``overwrite``, a pool name that is a path."""

    code = "forbidden"


class LimitExceeded(InvalidRequest):
    """A request whose size, or whose memory or time estimate, exceeds a limit the server was
    configured with; the message names the limit and its value."""

    code = "limit"


class Busy(CortexloopError):
    """The server is doing something that excludes this command (a block already running, ...)."""

    code = "busy"


class StateError(CortexloopError):
    """An illegal state transition of an explicit state machine."""

    code = "state"


class Aborted(CortexloopError):
    code = "aborted"


class Cancelled(Aborted):
    """A request stopped on the client's ``job.cancel`` (or its timeout); the work was abandoned."""

    code = "cancelled"


class InternalError(CortexloopError):
    """A bug on the far side; the server logged the traceback and kept serving."""

    code = "internal"


# --- domains ------------------------------------------------------------------------
class StoreError(CortexloopError):
    code = "store"


class CorruptRecord(StoreError):
    """A record in a session file that was not completely written (e.g. writer killed)."""

    code = "corrupt_record"


class StimError(CortexloopError):
    code = "stim"


class DisplayError(StimError):
    code = "display"


class AcquisitionError(CortexloopError):
    code = "acquisition"


class ModelError(CortexloopError):
    code = "model"


class ProtocolError(CortexloopError):
    """A protocol file or protocol step that does not validate."""

    code = "protocol"


class BusError(CortexloopError):
    code = "bus"


def _all_subclasses(cls: type[CortexloopError]) -> list[type[CortexloopError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def error_for_code(code: str) -> type[CortexloopError]:
    """The error class registered under ``code`` (subclasses defined later included)."""
    for cls in _all_subclasses(CortexloopError):
        if cls.code == code:
            return cls
    return CortexloopError
