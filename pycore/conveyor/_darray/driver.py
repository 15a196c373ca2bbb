"""The driver model: the root rank scripts with a `Driver`, the others serve.

``with m.driver(root) as d``: `DriverScope` gives the root a `Driver` and
keeps the other ranks handling messages until the root has left its block.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Literal, SupportsIndex

import numpy.typing as npt

from .._checks import check_rank
from .._errors import ConveyorError
from .._tags import DRIVER_DONE
from .array import DistArray, dcall, dmap, dreduce

if TYPE_CHECKING:
    from .._chunks import ChunkLayer
    from .._messenger import Messenger

__all__ = ["Driver", "DriverScope"]

# How long a serving rank's wait lasts before it checks for Ctrl-C.
_SERVE_SLICE = 0.1


class Driver:
    """What the root rank gets from ``with m.driver() as d``: make and call on DistArrays.

    The other ranks serve inside their ``with`` (they get None) until the
    root leaves its own, as with mpi4py's ``MPICommExecutor``.
    """

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger

    def array(
        self,
        a: npt.ArrayLike,
        chunks: SupportsIndex | Iterable[SupportsIndex] | None = None,
        ranks: Iterable[SupportsIndex] | None = None,
    ) -> DistArray:
        """Return a DistArray of ``a``, as `Messenger.array` does.

        Parameters
        ----------
        a : array_like
            As for `Messenger.array`.
        chunks : int or sequence of int, optional
            As for `Messenger.array`.
        ranks : sequence of int, optional
            As for `Messenger.array`.

        Returns
        -------
        DistArray
            The array.
        """
        return self.messenger.array(a, chunks=chunks, ranks=ranks)

    dcall = staticmethod(dcall)
    dmap = staticmethod(dmap)
    dreduce = staticmethod(dreduce)

    def __repr__(self) -> str:
        return f"<conveyor.Driver on rank {self.messenger.rank} of {self.messenger.size}>"


class DriverScope:
    """``with m.driver(root) as d``: the root gets a `Driver`, the others serve.

    The other ranks handle messages in ``__enter__`` until the root has
    left its block, then get None (so the same code runs on every rank:
    ``if d is not None: ...``).
    """

    def __init__(self, messenger: Messenger, layer: ChunkLayer, root: int) -> None:
        self.m = messenger
        self.layer = layer
        self.root = check_rank(root, messenger.size, "the root rank")

    def __enter__(self) -> Driver | None:
        m = self.m
        layer = self.layer
        if m.rank == self.root:
            # What the collective calls of the arrays check: the other ranks
            # serve meanwhile, so the root saves and loads through tasks.
            layer.driving += 1
            return Driver(m)
        if layer.transport.in_handler():
            raise ConveyorError("a rank cannot serve a driver from inside a handler")
        seen = layer.drivers_seen
        while layer.drivers_done == seen:
            m.progress(_SERVE_SLICE)
        layer.drivers_seen += 1
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        m = self.m
        if m.rank == self.root:
            self.layer.driving -= 1
        if m.rank == self.root and not m.closed:
            for rank in range(m.size):
                if rank != self.root:
                    self.layer.transport.send(rank, DRIVER_DONE)
        return False
