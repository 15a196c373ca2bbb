"""conveyor._core.chunks: the distributed-data kernels (alignment and the chunk table)."""

from typing import Final

import numpy as np
import numpy.typing as npt

def align(sizes: npt.ArrayLike, begin: int, end: int) -> npt.NDArray[np.int64]:
    """Find the pieces of an argument that one period of target rows needs.

    Target row ``i`` takes row ``i mod L`` of an argument of ``L`` rows
    (R's recycling). The pieces hold ``min(end - begin, L)`` rows from row
    ``begin mod L`` on, wrapping from the last row to row 0; tile them to
    ``end - begin`` rows with ``np.resize``.

    Parameters
    ----------
    sizes : array_like of int
        Rows of each chunk of the argument, in order; zeros are allowed.
    begin, end : int
        The target rows ``[begin, end)``.

    Returns
    -------
    numpy.ndarray of int64, shape (k, 3)
        One row ``(chunk, start, stop)`` a piece: rows ``[start, stop)`` of
        chunk ``chunk``, counted from the chunk's first row. Never an empty
        piece; no piece at all when ``begin == end`` or ``L == 0``.

    Raises
    ------
    ValueError
        If a size is negative or above ``2**63 - 1``, `sizes` is not 1-D,
        `begin` is negative, or ``begin > end``.
    TypeError
        If `sizes` are not integers.
    """

#: Chunk state: not computed yet.
CHUNK_PENDING: Final = 0
#: Chunk state: holds its value.
CHUNK_RESOLVED: Final = 1
#: Chunk state: holds the (pickled) exception that computing it raised.
CHUNK_ERROR: Final = 2

class ChunkTable:
    """The chunks of one rank: values, states, waiters and reference weights.

    Chunks this rank owns hold a value or an error and count the reference
    weight they lent out; references to chunks owned elsewhere hold a share
    of weight to give back. Each Python handle of a chunk calls `hold` when
    made and `release` when dropped. An id this rank has no such entry for
    raises KeyError; a call out of order (settling twice, releasing an
    unheld chunk, weight that does not add up) raises ValueError. Not
    thread-safe: use one table from one thread.
    """

    MINT_WEIGHT: Final[int]
    """Weight the owner adds to a chunk's outstanding weight for each `lend` (2**40)."""
    LEND_CAP: Final[int]
    """Most weight a foreign reference gives to one outgoing copy (2**20)."""
    REFILL_BELOW: Final[int]
    """Weight below which a foreign reference asks its owner for more (2**30)."""

    def __init__(self, rank: int) -> None:
        """Make the empty table of `rank` (0 .. 2**24 - 1)."""
    @property
    def rank(self) -> int:
        """The rank this table belongs to."""
    def new_id(self) -> int:
        """Return a chunk id no other rank or call mints: ``(rank << 40) | sequence``, never 0."""
    @staticmethod
    def creator_of(id: int) -> int:
        """Return the rank that minted `id`."""
    def create(self, id: int, lent_weight: int = 0) -> None:
        """Make a pending chunk that this rank will compute.

        Parameters
        ----------
        id : int
            The chunk's id, minted by any rank.
        lent_weight : int, optional
            Reference weight the minter already handed out for it.

        Notes
        -----
        Weight given back before the create is counted. The chunk stays
        until a `release` or `give_back` drops its last reference: hold a
        handle while computing it.
        """
    def resolve(self, id: int, array: np.ndarray) -> list[int]:
        """Settle pending chunk `id` with `array`, without copying it.

        The table keeps `array` alive and reads its memory: do not modify
        it afterwards. A non-contiguous array is copied once into a
        C-contiguous one.

        Returns
        -------
        list of int
            The waiter tokens to notify.

        Raises
        ------
        TypeError
            If `array` is not a numpy array, or its dtype has objects or
            fields.
        """
    def fail(self, id: int, error: bytes) -> list[int]:
        """Settle pending chunk `id` with `error` (opaque bytes); return the waiter tokens."""
    def state(self, id: int) -> int:
        """Return `CHUNK_PENDING`, `CHUNK_RESOLVED` or `CHUNK_ERROR`."""
    def value(self, id: int) -> np.ndarray:
        """Return a read-only view of resolved chunk `id`'s value (no copy)."""
    def replace(self, id: int, array: np.ndarray) -> None:
        """Keep resolved chunk `id`'s value in `array` instead: the same bytes, dtype and shape.

        Raises
        ------
        ValueError
            If the chunk is not resolved, or `array` differs in dtype or shape.
        """
    def error(self, id: int) -> bytes:
        """Return the error that failed chunk `id` was settled with."""
    def add_waiter(self, id: int, token: int) -> bool:
        """Register `token` to be returned when chunk `id` settles.

        Returns
        -------
        bool
            True if registered (still pending); False if already settled,
            when the caller goes on at once.
        """
    def hold(self, id: int) -> None:
        """Count one more local handle of chunk `id` (owned or foreign)."""
    def hold_owned(self, id: int) -> None:
        """Count one more local handle of chunk `id`, which this rank owns or will own.

        A reference may arrive before the chunk is created (the task that
        creates it comes from another rank): it holds a placeholder, which
        `create` completes.
        """
    def release(self, id: int) -> tuple[bool, int, int]:
        """Drop one local handle of chunk `id`.

        Returns
        -------
        freed : bool
            Whether the entry went (an owned chunk's value is released).
        home : int
            The rank the entry's weight returns to.
        weight : int
            Weight to send back to `home` (0: nothing to send).
        """
    def lend(self, id: int) -> tuple[int, int, bool]:
        """Take weight for a reference to chunk `id` about to leave in a message.

        The owner mints `MINT_WEIGHT`; a foreign reference gives
        ``min(weight // 2, LEND_CAP)`` of its own, or, with a weight of 1
        left, `LEND_CAP` that it lends as a proxy: that weight returns to
        this rank, whose entry stays until all of it is back.

        Returns
        -------
        weight : int
            Weight to send with the reference.
        home : int
            The rank the weight returns to: the owner, a proxy, or this rank.
        refill : bool
            True once, when a foreign reference's weight falls below
            `REFILL_BELOW`: ask the owner to `lend` more, and `adopt` it.
        """
    def adopt(self, id: int, owner: int, home: int, weight: int) -> tuple[bool, int, int]:
        """Add `weight`, lent by `home`, received with a reference to chunk `id` owned by `owner`.

        `home` may not be this rank: such weight is this rank's to
        `give_back`. A chunk's entry keeps weight of one home: weight of
        another is returned at once, unless it comes from the owner, which
        replaces the entry's weight. The owner keeps none: weight lent by a
        proxy goes back to it. A refill answer for a chunk no longer held
        here must be given back to the owner instead.

        Returns
        -------
        tuple of (bool, int, int)
            As `release`: (False, home, weight to send back to home).
        """
    def give_back(self, id: int, weight: int) -> tuple[bool, int, int]:
        """Take back `weight` lent for chunk `id`, as its owner or as a proxy.

        At the owner it may arrive before the chunk is created: it is
        counted then.

        Returns
        -------
        tuple of (bool, int, int)
            As `release`: whether the entry went (an owned chunk was
            freed), and weight a proxy's entry sends on to its home.
        """
    def stats(self) -> dict[str, int]:
        """Return counts of owned chunks (chunks, bytes, pending, failed, placeholders) and foreign ones."""
    def __contains__(self, id: int) -> bool:
        """Whether this rank holds chunk `id`: created here, or referenced from elsewhere."""
    def __len__(self) -> int:
        """The number of chunks this rank holds (as `__contains__` counts them)."""
