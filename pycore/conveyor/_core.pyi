"""The native core of conveyor (internal: use the conveyor package).

The one native boundary of the package: the progress engine, the native
bases of Sender and Message, the frame codec (for tests) and the routing of
batches. C++ exceptions arrive as the façade's
exceptions once `configure` has run: CarriageError, FrameError,
MessageTooLargeError, MPIError, and ValueError for a bad argument.
"""

from collections.abc import Sequence
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from ._carriage import Address

#: Frame kind: deliver the payload to the receiver of the tag.
KIND_SEND: Final = 1
#: Frame kind: deliver, and answer the sender with a reply carrying ``ref``.
KIND_REQUEST: Final = 2
#: Frame kind: resolve the requester's future ``ref`` with the payload.
KIND_REPLY: Final = 3
#: Frame kind: fail the requester's future ``ref``; the payload describes the error.
KIND_ERROR: Final = 4
#: Frame kind: one answer to the requester's stream ``ref``, with more to come.
KIND_ANSWER: Final = 7

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

class EngineOptions:
    """Tunables of an Engine, read when it is created."""

    max_frame_bytes: int
    """Largest frame that may be sent (default 1 GiB)."""
    piece_bytes: int
    """Largest MPI message an out-of-band buffer is cut into (1 .. INT_MAX, default 1 GiB)."""
    spin_seconds: float
    """How long an idle wait busy-polls after the last activity (default 50 µs)."""
    yield_seconds: float
    """Until when an idle wait yields the processor before sleeping (default 200 µs)."""
    max_sleep_seconds: float
    """Longest sleep of an idle wait between two polls (default 500 µs)."""
    batch_bytes: int
    """Size of a destination's batch of small frames (default 32 KiB; 0: no aggregation)."""
    flush_delay_seconds: float
    """Age from which the background thread sends a batch left waiting (default 100 µs)."""
    background_max_sleep_seconds: float
    """Longest sleep of the background thread while the owner is away, nothing in flight (default 32 ms)."""
    window_bytes: int
    """Frame bytes in flight to one rank before its credit is needed (default 8 MiB; 0: unbounded)."""
    data_window_bytes: int
    """Out-of-band bytes in flight to one rank before its credit is needed (default 256 MiB)."""
    background: bool
    """Run the background thread (if MPI provides MPI_THREAD_MULTIPLE; default True)."""
    def __init__(self) -> None:
        """Make options with the default values."""

class Engine:
    """The progress engine of one Messenger: owns every MPI request on its communicator."""

    def __init__(
        self, comm: int, zero_copy_threshold: int, allow_pickle: bool, options: EngineOptions
    ) -> None:
        """Drive MPI on `comm`, a raw MPI_Comm handle (see conveyor._mpi.comm_handle).

        The engine does not own the communicator: the caller frees it after use.
        """
    @property
    def rank(self) -> int:
        """The rank of this process in the communicator."""
    @property
    def size(self) -> int:
        """The number of ranks of the communicator."""
    @property
    def wave_active(self) -> bool:
        """Whether a quiescence wave was started and not yet collected by `wave_done`."""
    @property
    def handling(self) -> int:
        """How many handlers are running (nested waits make it more than 1)."""
    @property
    def background(self) -> bool:
        """Whether the engine runs its background thread."""
    def send(
        self, dest: int, kind: int, ref: int, tag: str, payload: object, aggregate: bool
    ) -> bool:
        """Encode `payload` in a frame of `kind` and send it to rank `dest`.

        With `aggregate`, a small frame without out-of-band data joins the
        destination's batch. Arrays of at least the zero-copy threshold are
        sent from their own memory, which is kept alive until MPI has sent
        it. Return whether `dest` is congested (frames wait for its credit).
        """
    def post_raw(self, dest: int, frame: bytes) -> None:
        """Send `frame` as it is, without out-of-band buffers (to test malformed input)."""
    def serve(self, timeout: float, uncongested: int, dispatch: Any) -> int:
        """Flush, receive, wait up to `timeout` s (GIL released) if nothing is ready, dispatch.

        The wait also ends once rank `uncongested` takes sends again (-1:
        none). `dispatch` is the façade's Dispatch: plain sends and requests
        to a tag of ``dispatch.receivers`` (``{tag: (handler, per_item)}``)
        are delivered here, as ``dispatch.message_type`` instances; every
        answer goes to ``dispatch.requests.answer(kind, source, ref,
        payload, error)``; anything else to ``dispatch.fallback((kind,
        source, ref, tag, payload, error))``. A handler's non-None result
        goes to ``dispatch.returned(msg, result)``, its exception to
        ``dispatch.failed(msg, exc)``, and what is unusual about a request
        to ``dispatch.finish_request(msg, result, exc)``. Each message is
        counted as handled once its dispatch ends. Return how many messages
        were dispatched.
        """
    def answering(self, source: int, ref: int) -> Any:
        """Return the Message of the request (`source`, `ref`) whose handler runs now, or None."""
    @property
    def answering_count(self) -> int:
        """How many requests' handlers run now (nested waits make it more than 1)."""
    def flush(self) -> None:
        """Send every batch now."""
    def congested(self, dest: int) -> bool:
        """Whether frames to `dest` wait for its credit (or too many sends are pending)."""
    def mark_handled(self, messages: int = 1) -> None:
        """Count `messages` deferred messages as handled (an async handler's task ended)."""
    def defer_handled(self) -> None:
        """The message being dispatched stays unfinished after its dispatch (async handler)."""
    def start_wave(self) -> None:
        """Start a quiescence wave: a non-blocking sum of (sent, handled) over all ranks."""
    def wave_done(self) -> tuple[int, int] | None:
        """Return the wave's ``(sent, handled)`` totals once it has completed, else None."""
    def serve_in_background(self, fd: int) -> None:
        """Let the background thread receive, and write to `fd` when something is ready (-1: stop)."""
    def close(self) -> None:
        """Refuse further calls and stop the background thread (before MPI goes away)."""
    def flush_sends(self, timeout: float) -> bool:
        """Complete every outstanding send; return False if `timeout` s passed first (negative: no limit)."""
    def stats(self) -> dict[str, int]:
        """Return the engine's counters: messages, frames, batches, credits, bytes, sleeps."""
    def abort(self, code: int, /) -> NoReturn:
        """Abort the whole MPI job with exit `code` (MPI_Abort on the communicator)."""

class SenderBase:
    """The native send path of conveyor.Sender."""

    def __new__(cls, engine: Engine, tag: str, aggregate: bool, relieve: Any) -> Self: ...
    @property
    def tag(self) -> str:
        """The tag this sender sends to."""
    @property
    def aggregate(self) -> bool:
        """Whether small messages are packed into batches."""
    def send(self, dest: int, payload: object = None) -> None:
        """Send `payload` to this sender's tag on rank `dest`; call ``relieve(dest)`` if congested."""

class MessageBase:
    """The fields of a delivered message (see conveyor.Message)."""

    @property
    def tag(self) -> str:
        """The tag (receiver name) it was sent to."""
    @property
    def payload(self) -> Any:
        """The decoded payload."""
    @property
    def source(self) -> int:
        """The rank that sent it."""
    @property
    def reply_to(self) -> Address | None:
        """For a request, the address that answers it; None for a plain send."""
    @property
    def _dispatch(self) -> Any: ...
    _replied: bool
    _deferred: bool
    _cancelled: bool
    def __new__(
        cls, dispatch: Any, tag: str, payload: object, source: int, reply_to: Any
    ) -> MessageBase: ...

def set_buffer_cache_limit(bytes: int) -> None:
    """Keep at most `bytes` of freed large receive buffers for reuse (process-wide)."""

def encode_frame(
    kind: int,
    ref: int,
    tag: str,
    payload: object,
    zero_copy_threshold: int,
    allow_pickle: bool,
) -> tuple[bytes, list[bytes]]:
    """Encode a frame without sending it: return the frame and copies of its out-of-band buffers."""

def decode_frame(
    frame: bytes, oob: Sequence[bytes], allow_pickle: bool
) -> tuple[int, int, str, object]:
    """Decode what `encode_frame` made: return ``(kind, ref, tag, payload)``.

    Raises FrameError for a malformed or truncated frame.
    """

def route(
    dests: npt.ArrayLike, items: np.ndarray, nranks: int
) -> tuple[np.ndarray, npt.NDArray[np.uint64]]:
    """Group the rows of `items` by destination rank, keeping their order per rank.

    Return the grouped rows (`items` itself when all go to one rank) and
    ``offsets`` (``nranks + 1`` entries): the rows for rank ``r`` are
    ``grouped[offsets[r]:offsets[r + 1]]``. `dests` may have any integer
    dtype; a destination outside ``0 .. nranks - 1`` raises ValueError.
    """

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
