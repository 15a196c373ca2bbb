"""The native core of conveyor (internal: use the conveyor package).

The one native boundary of the package, one submodule an area, each named
as its room under csrc/conveyor: `message` (delivered messages, frame
kinds), `engine` (the progress engine and the send path into it),
`routing` (batches grouped by rank), `chunks` (alignment, the chunk table)
and `testing` (the frame codec, for tests). C++ exceptions arrive as the
façade's exceptions once `configure` has run: CarriageError, FrameError,
MessageTooLargeError, MPIError, and ValueError for a bad argument.
"""

from typing import Any

from . import chunks as chunks
from . import engine as engine
from . import message as message
from . import routing as routing
from . import testing as testing

def configure(
    *,
    address_type: type,
    item_base: type,
    registry: dict[str, type],
    pickle: Any,
    conveyor_error: type,
    carriage_error: type,
    frame_error: type,
    too_large_error: type,
    mpi_error: type,
) -> None:
    """Hand the façade's carrier and exception types to the native core (once, at import)."""
