"""conveyor: message-driven programs over MPI, with a C++ core.

>>> import conveyor as cv
>>> with cv.Messenger() as m:
...     @m.on("square")
...     def square(msg):
...         return msg.payload ** 2
...     m.request(m.rank, "square", 7).result(timeout=5)
49
"""

from __future__ import annotations

import importlib
import typing

from ._version import __version__ as __version__

# Where each public name lives. Importing a module that reaches the native
# core imports mpi4py.MPI, which initialises MPI; the names are therefore
# imported on first use (PEP 562), so that ``import conveyor`` and the
# command line's launchers (``conveyor --help``, ``conveyor run``) never do.
_MODULE_OF = {
    "ActorRef": "._actors",
    "Address": "._carriage",
    "CarriageableItem": "._carriage",
    "CancelledError": "._errors",
    "CarriageError": "._errors",
    "ConveyorError": "._errors",
    "ConveyorWarning": "._errors",
    "FrameError": "._errors",
    "MessageTooLargeError": "._errors",
    "MPIError": "._errors",
    "RankFailedError": "._errors",
    "RecyclingWarning": "._errors",
    "RemoteError": "._errors",
    "StoreFullError": "._errors",
    "TimeoutError": "._errors",
    "UnknownTagError": "._errors",
    "ChunkRef": "._chunks",
    "DistArray": "._darray",
    "Driver": "._darray",
    "dcall": "._darray",
    "dmap": "._darray",
    "dreduce": "._darray",
    "Executor": "._executor",
    "Future": "._future",
    "Stream": "._future",
    "Message": "._message",
    "Messenger": "._messenger",
    "Receiver": "._message",
    "ProgressBar": "._progress",
    "Sender": "._sender",
    "RankState": "._diagnostics",
    "Copy": "._store",
    "Move": "._store",
    "Store": "._store",
    "Transfer": "._store",
    "Table": "._table",
}

if typing.TYPE_CHECKING:
    from ._actors import ActorRef
    from ._carriage import Address, CarriageableItem
    from ._chunks import ChunkRef
    from ._darray import DistArray, Driver, dcall, dmap, dreduce
    from ._diagnostics import RankState
    from ._errors import (
        CancelledError,
        CarriageError,
        ConveyorError,
        ConveyorWarning,
        FrameError,
        MessageTooLargeError,
        MPIError,
        RankFailedError,
        RecyclingWarning,
        RemoteError,
        StoreFullError,
        TimeoutError,
        UnknownTagError,
    )
    from ._executor import Executor
    from ._future import Future, Stream
    from ._message import Message, Receiver
    from ._messenger import Messenger
    from ._progress import ProgressBar
    from ._sender import Sender
    from ._store import Copy, Move, Store, Transfer
    from ._table import Table


def __getattr__(name: str) -> typing.Any:
    """Import the public `name` from its module on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    """The names defined here and every public name, imported or not."""
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ActorRef",
    "Address",
    "CancelledError",
    "CarriageError",
    "CarriageableItem",
    "ChunkRef",
    "ConveyorError",
    "ConveyorWarning",
    "Copy",
    "DistArray",
    "Driver",
    "Executor",
    "FrameError",
    "Future",
    "MPIError",
    "Message",
    "MessageTooLargeError",
    "Messenger",
    "Move",
    "ProgressBar",
    "RankFailedError",
    "RankState",
    "Receiver",
    "RecyclingWarning",
    "RemoteError",
    "Sender",
    "Store",
    "StoreFullError",
    "Stream",
    "Table",
    "TimeoutError",
    "Transfer",
    "UnknownTagError",
    "dcall",
    "dmap",
    "dreduce",
]
