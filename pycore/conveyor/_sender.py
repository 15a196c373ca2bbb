"""Sender: sends to one tag, single messages or batches of rows routed in C++."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ._checks import check_user_tag
from ._native import core

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Sender"]


class Sender(core.engine.SenderBase):
    """Sends to one tag: single messages, or batches of rows routed in C++.

    Obtain one with `Messenger.sender`. Its `send` goes straight to the
    native core (no Python code runs per message); with aggregation on,
    small messages to one rank travel together in one MPI message.

    Attributes
    ----------
    tag : str
        The tag this sender sends to.
    aggregate : bool
        Whether small messages are packed into batches.
    """

    __slots__ = ("_size",)

    _size: int

    def __new__(cls, transport: Transport, tag: str, aggregate: bool, size: int) -> Sender:
        self = super().__new__(
            cls, transport.engine, check_user_tag(tag), aggregate, transport.relieve
        )
        self._size = size
        return self

    def send_many(self, dests: npt.ArrayLike, items: np.ndarray) -> None:
        """Send row ``items[i]`` to rank ``dests[i]``, for every i.

        Rows are grouped by destination in C++ (one pass, order kept per
        destination) and each rank receives one message whose payload is the
        numpy array of its rows (zero-copy from the receive buffer when
        large), or one handler call per row if its receiver asked for
        ``per_item=True``. When every row goes to one rank, ``items`` itself is
        sent, without a copy: as with any array sent, do not modify it until
        the next `Messenger.wait_quiet`.

        Every destination is read, so the narrowest integer dtype that holds
        the ranks (``numpy.uint16`` below 65,536) sends large batches fastest:
        reading 8-byte destinations costs about as much as sending 8-byte
        items (bench/README.md, "Where the time goes").

        Parameters
        ----------
        dests : array_like of int
            Destination rank of each row, shape ``(n,)``.
        items : numpy.ndarray
            ``n`` rows of any plain-data dtype (records included).

        Raises
        ------
        TypeError
            If ``dests`` is not a 1-D integer array, or ``items`` not a numpy array.
        ValueError
            If a destination is not a rank of the job, or the lengths differ.
        """
        dests = np.asarray(dests)
        if dests.ndim != 1 or dests.dtype.kind not in "iu":
            raise TypeError(f"dests must be a 1-D integer array, not {dests.ndim}-D {dests.dtype}")
        if not isinstance(items, np.ndarray):
            raise TypeError(f"items must be a numpy array, not {type(items).__name__}")
        routed, offsets, only = core.routing.route(dests, items, self._size)
        if only >= 0:
            self.send(only, routed)
            return
        for rank in range(self._size):
            lo, hi = int(offsets[rank]), int(offsets[rank + 1])
            if hi > lo:
                self.send(rank, routed[lo:hi])

    def __repr__(self) -> str:
        return f"<conveyor.Sender tag={self.tag!r} aggregate={self.aggregate}>"
