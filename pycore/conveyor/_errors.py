"""The exceptions of conveyor: one root, each also a familiar built-in."""

from __future__ import annotations

import builtins
import concurrent.futures
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._diagnostics import RankState

__all__ = [
    "ConveyorError",
    "RemoteError",
    "TimeoutError",
    "CarriageError",
    "FrameError",
    "MessageTooLargeError",
    "UnknownTagError",
    "MPIError",
    "CancelledError",
    "StoreFullError",
    "RankFailedError",
    "ConveyorWarning",
]


class ConveyorError(Exception):
    """Root of every exception raised by conveyor."""


class RemoteError(ConveyorError):
    """A remote handler raised while answering a request.

    When the remote exception is one of Python's built-in types, the error
    is also an instance of that type: a remote
    ``ValueError`` is caught by ``except ValueError`` as well as by
    ``except conveyor.RemoteError``. Other types (the user's own, and the
    ``OSError`` and ``UnicodeError`` families, whose constructors take other
    arguments) arrive as a plain `RemoteError`; ``remote_type`` names them.

    Attributes
    ----------
    rank : int
        The rank whose handler raised.
    remote_type : str
        Qualified name of the remote exception's type.
    remote_message : str
        ``str()`` of the remote exception.
    remote_traceback : str
        The remote traceback, formatted.
    """

    def __init__(
        self, rank: int, remote_type: str, remote_message: str, remote_traceback: str = ""
    ) -> None:
        super().__init__(rank, remote_type, remote_message, remote_traceback)
        self.rank = rank
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"rank {self.rank} raised {self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


# The typed RemoteErrors made so far, by built-in name; None where the
# built-in type cannot be combined with RemoteError. Only built-in names are
# keys: a forged report's made-up type names cannot grow it.
_typed: dict[str, type[RemoteError] | None] = {}


def builtin_exception(name: str) -> type[Exception] | None:
    """The built-in exception type called `name`, if one is; else None.

    The one way a type name from the wire becomes a type: it never imports
    or unpickles anything, and never selects SystemExit and the like, which
    an error report must not raise in the rank that reads it.
    """
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return builtin
    return None


def raised_remotely(
    rank: int, remote_type: str, remote_message: str, remote_traceback: str = ""
) -> RemoteError:
    """Return the `RemoteError` for a report from `rank`, typed when it can be.

    ``remote_type`` comes from the wire: it only ever selects one of
    Python's own built-in exception types by name, never imports or
    unpickles anything.
    """
    cls: type[RemoteError] | None = RemoteError
    builtin = builtin_exception(remote_type)
    if builtin is not None:
        if remote_type not in _typed:
            _typed[remote_type] = _typed_error(builtin)
        cls = _typed[remote_type]
    return (cls or RemoteError)(rank, remote_type, remote_message, remote_traceback)


def _typed_error(builtin: type[Exception]) -> type[RemoteError] | None:
    name = builtin.__name__
    try:
        cls = type(
            "Remote" + name,
            (RemoteError, builtin),
            {"__module__": __name__, "__reduce__": _reduce_typed},
        )
        probe = cls(0, name, "", "")
    except TypeError:
        return None  # a constructor that wants other arguments (UnicodeDecodeError)
    # OSError's constructor reads the arguments as errno and strerror.
    return cls if probe.args == (0, name, "", "") else None


def _reduce_typed(self: RemoteError) -> tuple[object, tuple[object, ...]]:
    # A typed class is made at run time: pickle how to make it again.
    return raised_remotely, self.args


class UnknownTagError(RemoteError, LookupError):
    """The destination rank has no receiver registered under the tag."""


def traceback_text(exc: BaseException) -> str:
    """Return `exc`'s traceback as Python prints it: what a remote error carries."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class TimeoutError(ConveyorError, builtins.TimeoutError):
    """A wait ran out of time; the awaited work may still complete later.

    Attributes
    ----------
    state : RankState or None
        What this rank was waiting for when the wait ran out (see
        `Messenger.dump_state`), also added to the error's text as a note
        (Python 3.11 and later); None if it was not raised by a wait of a
        messenger.
    """

    state: RankState | None = None


class CarriageError(ConveyorError, TypeError):
    """A value cannot travel in a message (raised before anything is sent)."""


class FrameError(ConveyorError, ValueError):
    """A frame or payload could not be decoded (malformed, truncated, refused)."""


class MessageTooLargeError(ConveyorError, ValueError):
    """A message's frame exceeds the limit (large data must be numpy arrays)."""


class MPIError(ConveyorError, RuntimeError):
    """An MPI call failed."""


class CancelledError(ConveyorError, concurrent.futures.CancelledError):
    """The request was cancelled before its answer came."""


class StoreFullError(ConveyorError, MemoryError):
    """An item store refused an item: it would exceed the store's capacity."""


class RankFailedError(ConveyorError, ConnectionError):
    """A rank of a fault-tolerant messenger failed: it sent no heartbeat in time.

    Every request to it that was still waiting fails with this error, and
    so does every later send or request to it (see the ``fault_tolerant``
    parameter of `Messenger`).

    Parameters
    ----------
    rank : int
        The rank that failed.
    why : str, optional
        How it was found to have failed.

    Attributes
    ----------
    rank : int
        The rank that failed.
    why : str
        How it was found to have failed.
    """

    def __init__(self, rank: int, why: str = "") -> None:
        super().__init__(rank, why)
        self.rank = rank
        self.why = why

    def __str__(self) -> str:
        return f"rank {self.rank} failed" + (f": {self.why}" if self.why else "")


class ConveyorWarning(UserWarning):
    """The base of conveyor's warnings, which are for the caller's own mistakes (`RecyclingWarning`)."""


class RecyclingWarning(ConveyorWarning):
    """R's warning: the longest argument's length is not a multiple of a shorter one's.

    The shorter argument is still recycled (row ``i`` of an argument of
    length ``L`` serves result row ``i mod L``); given once per call.
    """


# RecyclingWarning's text, R's own words.
RECYCLING = "longer object length is not a multiple of shorter object length"
