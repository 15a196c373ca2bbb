"""The exceptions of conveyor: one root, each also a familiar built-in."""

from __future__ import annotations

import builtins
import concurrent.futures

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
    "ConveyorWarning",
]


class ConveyorError(Exception):
    """Root of every exception raised by conveyor."""


class RemoteError(ConveyorError):
    """A remote handler raised while answering a request.

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


class UnknownTagError(RemoteError, LookupError):
    """The destination rank has no receiver registered under the tag."""


class TimeoutError(ConveyorError, builtins.TimeoutError):
    """A wait ran out of time; the awaited work may still complete later."""


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


class ConveyorWarning(UserWarning):
    """Something was dropped or could not be delivered (never silently)."""


class RecyclingWarning(UserWarning):
    """R's warning: the longest argument's length is not a multiple of a shorter one's.

    The shorter argument is still recycled (row ``i`` of an argument of
    length ``L`` serves result row ``i mod L``); given once per call.
    """
