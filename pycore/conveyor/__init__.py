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
    CarriageError,
    ConveyorError,
    ConveyorWarning,
    FrameError,
    MessageTooLargeError,
    MPIError,
    RemoteError,
    TimeoutError,
    UnknownTagError,
)
from ._future import Future
from ._messenger import Message, Messenger, Receiver, Sender

__version__ = "0.1.0"

__all__ = [
    "Address",
    "CarriageError",
    "CarriageableItem",
    "ConveyorError",
    "ConveyorWarning",
    "FrameError",
    "Future",
    "MPIError",
    "Message",
    "MessageTooLargeError",
    "Messenger",
    "Receiver",
    "RemoteError",
    "Sender",
    "TimeoutError",
    "UnknownTagError",
]
