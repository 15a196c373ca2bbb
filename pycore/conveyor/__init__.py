"""conveyor: message-driven programs over MPI, with a C++ core.

>>> import conveyor as cv
>>> with cv.Messenger() as m:
...     @m.on("square")
...     def square(msg):
...         return msg.payload ** 2
...     m.request(m.rank, "square", 7).result(timeout=5)
49
"""

from ._carriage import Address, CarriageableItem
from ._errors import (
    CancelledError,
    CarriageError,
    ConveyorError,
    ConveyorWarning,
    FrameError,
    MessageTooLargeError,
    MPIError,
    RecyclingWarning,
    RemoteError,
    StoreFullError,
    TimeoutError,
    UnknownTagError,
)
from ._chunks import ChunkRef
from ._darray import DistArray, Driver, dcall, dmap, dreduce
from ._future import Future, Stream
from ._messenger import Message, Messenger, Receiver, Sender
from ._store import Copy, Move, Store, Transfer
from ._table import Table

from ._version import __version__

__all__ = [
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
    "FrameError",
    "Future",
    "MPIError",
    "Message",
    "MessageTooLargeError",
    "Messenger",
    "Move",
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
