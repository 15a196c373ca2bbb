"""conveyor._core.engine: the progress engine, and the per-message send path into it."""

from collections.abc import Callable
from typing import Any, NoReturn, final

from typing_extensions import Self, disjoint_base

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
    window_pool_bytes: int
    """Frame bytes in flight to all ranks together, beyond one frame each (default 64 MiB; 0: no pool)."""
    data_window_pool_bytes: int
    """Out-of-band bytes in flight to all ranks together, beyond one frame each (default 1 GiB; 0: no pool)."""
    background: bool
    """Run the background thread (if MPI provides MPI_THREAD_MULTIPLE; default True)."""
    next_hop: list[int]
    """Per rank, the next hop of small messages to it (empty, the default: straight there)."""
    relay_pool_bytes: int
    """Held frame bytes beyond which a relay stops crediting what it relays (default 16 MiB; 0: unbounded)."""
    batch_pool_bytes: int
    """Batch buffers of all destinations together at most (default 32 MiB; 0: unbounded)."""
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
        self, dest: int, kind: int, ref: int, tag: str, payload: object, aggregate: bool, /
    ) -> bool:
        """Encode `payload` in a frame of `kind` and send it to rank `dest`.

        With `aggregate`, a small frame without out-of-band data joins the
        destination's batch. Arrays of at least the zero-copy threshold are
        sent from their own memory, which is kept alive until MPI has sent
        it. Return whether `dest` is congested (frames wait for its credit).
        """
    def start_trace(self, capacity: int) -> None:
        """Record every send and dispatched message from now on, up to `capacity` entries."""
    def read_trace(self, start: int, count: int) -> list[tuple[bool, int, int, str, int, int, int]]:
        """Return the recorded entries ``start`` to ``start + count`` (fewer at the end).

        Each is ``(sent, kind, peer, tag, start_ns, end_ns, bytes)``: a send
        to rank `peer`, or a message from `peer` dispatched between the two
        times (``time.monotonic_ns()``'s clock). Empty if not tracing.
        """
    @property
    def trace_size(self) -> int:
        """How many entries are recorded."""
    @property
    def trace_dropped(self) -> int:
        """Entries not recorded because the trace was full."""
    def post_raw(self, dest: int, frame: bytes) -> None:
        """Send `frame` as it is, without out-of-band buffers (to test malformed input)."""
    def serve(
        self, timeout: float, uncongested: int, dispatch: Any, answered: bool = False, /
    ) -> int:
        """Flush, receive, wait up to `timeout` s (GIL released) if nothing is ready, dispatch.

        The wait also ends once rank `uncongested` takes sends again (-1:
        none). `dispatch` is the façade's Dispatch: plain sends and requests
        to a tag of ``dispatch.receivers`` (``{tag: (handler, per_item)}``)
        are delivered here, as ``dispatch.message_type`` instances; a
        readable final answer to an open request goes to its waiter,
        ``waiter._answer(payload, True)``, taken from
        ``dispatch.requests.waiters`` (``{ref: waiter}``), and every other
        answer to ``dispatch.requests.answer(kind, source, ref, payload,
        error)``; anything else to ``dispatch.fallback((kind,
        source, ref, tag, payload, error))``. A handler's non-None result
        goes to ``dispatch.returned(msg, result)``, its exception to
        ``dispatch.failed(msg, exc)``, and what is unusual about a request
        to ``dispatch.finish_request(msg, result, exc)``; a handler that ran
        at least `slow_handler_seconds` is reported to
        ``dispatch.slow_handler(tag, source, seconds)``. Each message is
        counted as handled once its dispatch ends. With `answered`, the
        caller waits for an answer: dispatching stops after the first answer
        and starts no message once `timeout` has passed. Return how many
        messages were dispatched.
        """
    def wait(
        self,
        waiter: Any,
        timeout: float,
        slice: float,
        dispatch: Any,
        check: Callable[[], object] | None,
        /,
    ) -> bool:
        """Serve (as `serve` with `answered`) until ``waiter._ready()``; False if `timeout` s passed first.

        The caller found `waiter` not ready: it is asked after each serve.
        A negative or infinite `timeout` is no limit. Each native wait lasts
        at most `slice` seconds; between two, signals (Ctrl-C) are handled
        and ``check()`` is called, if not None.
        """
    def answering(self, source: int, ref: int) -> Any:
        """Return the Message of the request (`source`, `ref`) whose handler runs now, or None."""
    @property
    def answering_count(self) -> int:
        """How many requests' handlers run now (nested waits make it more than 1)."""
    def answering_now(self) -> list[Any]:
        """Return the Messages of the requests whose handlers run now, outermost first."""
    def timed_now(self) -> list[tuple[str, int, float, float]]:
        """Return ``(tag, source, started, seconds)`` of each timed handler running now, outermost first.

        Handlers are timed while `slow_handler_seconds` is finite.
        """
    slow_handler_seconds: float
    """A handler whose dispatch lasts at least this long is reported (infinity: never).

    ``serve`` then calls ``dispatch.slow_handler(tag, source, seconds)``.
    """
    def describe(self, patience: float) -> dict[str, Any] | None:
        """Return the engine's queues, counters and busy routes, for a state dump.

        None if the engine's lock did not come within `patience` s (it is
        only tried: a signal handler that interrupted its holder cannot
        deadlock). Keys: ``pending_sends``, ``pending_receives``,
        ``arriving``, ``ready``, ``wave_active``, ``messages_sent``,
        ``messages_handled``, ``frames_posted``, ``frames_finished``,
        ``sends_held``, ``window_bytes``, ``data_window_bytes`` and
        ``routes``: a dict per destination that is not idle (``rank``,
        ``batch_bytes``, ``held``, ``in_flight_frame_bytes``,
        ``in_flight_data_bytes``, ``asked``, ``consumed_frame_bytes``,
        ``consumed_data_bytes``, ``owes``).
        """
    def flush(self) -> None:
        """Send every batch now."""
    def congested(self, dest: int) -> bool:
        """Whether frames to `dest` wait for its credit (or too many sends are pending)."""
    def mark_handled(self, messages: int = 1, source: int = -1) -> None:
        """Count `messages` deferred messages from rank `source` as handled (an async handler's task ended)."""
    def defer_handled(self, source: int = -1) -> None:
        """The message being dispatched (from rank `source`) stays unfinished after its dispatch."""
    def frames_without(self, excluded: list[int]) -> tuple[int, int]:
        """Return (frames posted, frames finished) less those to and from the `excluded` ranks."""
    def abandon(self, rank: int) -> None:
        """Drop the frames held for a failed `rank`; what it never credits returns to the pool."""
    def start_wave(self) -> None:
        """Start a quiescence wave: a non-blocking sum of (frames posted, finished) over all ranks."""
    def wave_done(self) -> tuple[int, int] | None:
        """Return the wave's ``(posted, finished)`` frame totals once it has completed, else None."""
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

@disjoint_base
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

@final
class TagSenders:
    """Messenger.send's common case, by the Sender of its tag."""

    def __new__(cls, senders: dict[str, Any], size: int, missing: object) -> Self: ...
    def send(self, dest: object, tag: object, payload: object, final: bool, /) -> bool:
        """Send through the Sender cached for `tag` and return True, if `dest` is an int
        of a rank, `tag` a str with a cached Sender and `final` True; else return False."""

@disjoint_base
class RequestsBase:
    """The native half of the façade's Requests."""

    waiters: dict[int, Any]
    """``{ref: Future or Stream}`` of the open requests."""
    _next_ref: int
    """The number of the next request."""
    @property
    def user_tags(self) -> set[str]:
        """The user tags requested before (a set the façade fills): `try_request` takes them."""
    def __init__(self, engine: Engine, transport: Any, future_type: Any, plain: bool) -> None: ...
    def try_request(self, dest: object, tag: object, payload: object, /) -> Any:
        """Messenger.request's common case: if `dest` is an int of a rank, `tag` a str in
        `user_tags` and the transport plain, send the request and return its Future;
        else return None."""
    def _post(self, dest: int, ref: int, tag: str, payload: Any, waiter: Any, /) -> None:
        """Record `waiter` as open request `ref` and send the request (through the
        transport's post); if it does not leave, forget it and raise."""

def set_buffer_cache_limit(bytes: int) -> None:
    """Keep at most `bytes` of freed large receive buffers for reuse (process-wide)."""
