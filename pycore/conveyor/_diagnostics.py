"""What a rank is waiting for, when a job hangs: `RankState`, and SIGUSR1.

`collect` asks each room for its own state through one small method
(``Transport.state``, ``Requests.state``, ``Dispatch.state``,
``TableService.state``, ``ChunkLayer.state``) and puts the answers together;
nothing here reads another room's members. `Messenger.dump_state` returns
what it collects, a timed-out wait carries it (`attach`), and SIGUSR1 logs
it for every open messenger of the process (`watch`), and writes the trace
of a traced one so far.

Everything here may run in a signal handler, between any two bytecodes of
the main thread: it takes no lock the main thread may hold (the engine's
lock is only tried, see ``Engine.describe``), and changes nothing of the
program's state.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import traceback
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, TypeVar

from ._config import env_number

if TYPE_CHECKING:
    from ._chunks import ChunkLayer
    from ._dispatch import Dispatch
    from ._requests import Requests
    from ._table import TableService
    from ._transport import Transport

__all__ = [
    "ChunkWait",
    "OpenRequest",
    "PendingRequest",
    "RankState",
    "TableWait",
    "attach",
    "collect",
    "logger",
    "unwatch",
    "watch",
]

#: Everything conveyor reports goes through this logger (see the guide).
logger = logging.getLogger("conveyor")

# How long a dump waits for the engine's lock before it reports the engine
# busy rather than waits on (a signal handler may have interrupted its holder).
_ENGINE_PATIENCE = 0.05
# Rows of one section the text shows (all are in the attributes).
_MAX_ROWS = 20

T = TypeVar("T")


class PendingRequest(NamedTuple):
    """A request this rank sent that waits for its answer."""

    ref: int
    """The request's number on this rank."""
    dest: int
    """The rank it was sent to."""
    tag: str
    """The receiver it was sent to."""
    age: float
    """Seconds since it was sent."""
    stream: bool
    """True for a `Stream` (`Messenger.request_stream`), False for a `Future`."""


class OpenRequest(NamedTuple):
    """A request this rank received and has not answered (finally) yet."""

    source: int
    """The rank that sent it."""
    ref: int
    """The request's number on its source."""
    tag: str
    """The receiver it was sent to."""
    running: bool
    """True while its handler runs; False once the handler returned (deferred, streaming)."""
    cancelled: bool
    """True if its requester cancelled it."""


class TableWait(NamedTuple):
    """Waits for a key of a table, not set yet, held by this rank (the key's home)."""

    table: str
    """The table's name."""
    key: Any
    """The key."""
    waits: int
    """How many waits (from any rank) the put of the key will answer."""


class ChunkWait(NamedTuple):
    """Callbacks waiting for a chunk owned by this rank to be settled."""

    chunk: int
    """The chunk's id."""
    waiters: int
    """How many callbacks (local tasks, fetches from other ranks) wait."""
    arrived: bool
    """False if the task that computes the chunk has not arrived yet."""


@dataclasses.dataclass(frozen=True)
class RankState:
    """What one rank of a messenger is doing and waiting for, at one moment.

    `Messenger.dump_state` returns it; a timed-out wait carries it as the
    ``state`` attribute of its `TimeoutError`. ``str(state)`` is a readable
    report (at most 20 rows a section; the attributes hold them all).

    Attributes
    ----------
    rank : int
        This rank.
    size : int
        The number of ranks.
    mode : str
        Who handles messages: ``"inline"`` (the program's waits),
        ``"thread"`` (a service thread), ``"asyncio"`` (an event loop), or
        ``"closed"``.
    handling : int
        Handlers running now (nested waits make it more than 1).
    pending : tuple
        The requests this rank sent that wait for their answers, oldest
        first: named tuples ``(ref, dest, tag, age, stream)``, ``age`` in
        seconds since it was sent, ``stream`` True for a `Stream`.
    answering : tuple
        The requests this rank received and has not finally answered:
        named tuples ``(source, ref, tag, running, cancelled)``,
        ``running`` False once its handler returned (deferred, streaming).
    table_waits : tuple
        Waits for keys not set yet, held here as the keys' home: named
        tuples ``(table, key, waits)``.
    chunk_waits : tuple
        What waits for chunks owned here to be computed: named tuples
        ``(chunk, waiters, arrived)``, ``arrived`` False while the task that
        computes the chunk has not arrived.
    async_handlers : int
        Async handlers' tasks still running.
    engine : dict or None
        The engine's queues and counters (``ready``, ``arriving``,
        ``pending_sends``, ``pending_receives``, ``frames_posted``,
        ``frames_finished``, ...) and ``routes``, one dict per destination
        with something batched, held for credit or in flight (its send
        window); None if the engine was busy, or the messenger is closed.
    """

    rank: int
    size: int
    mode: str
    handling: int
    pending: tuple[PendingRequest, ...]
    answering: tuple[OpenRequest, ...]
    table_waits: tuple[TableWait, ...]
    chunk_waits: tuple[ChunkWait, ...]
    async_handlers: int
    engine: dict[str, Any] | None

    def __str__(self) -> str:
        running = f"; {self.handling} handler(s) running" if self.handling else ""
        lines = [f"conveyor: rank {self.rank} of {self.size} ({self.mode}{running})"]
        _section(
            lines,
            "requests sent, waiting for an answer",
            [
                f"#{p.ref} to rank {p.dest}, tag {p.tag!r}, "
                f"{'stream' if p.stream else 'future'}, sent {p.age:.3f} s ago"
                for p in self.pending
            ],
        )
        _section(
            lines,
            "requests received, not answered yet",
            [
                f"#{r.ref} from rank {r.source}, tag {r.tag!r}, "
                f"{'handler running' if r.running else 'deferred (its handler returned)'}"
                f"{', cancelled' if r.cancelled else ''}"
                for r in self.answering
            ],
        )
        _section(
            lines,
            "table waits held here",
            [f"table {w.table!r}, key {w.key!r}: {w.waits} wait(s)" for w in self.table_waits],
        )
        _section(
            lines,
            "chunk waits",
            [
                f"chunk {w.chunk:#x}: {w.waiters} waiter(s)"
                f"{'' if w.arrived else ', its task has not arrived'}"
                for w in self.chunk_waits
            ],
        )
        if self.async_handlers:
            lines.append(f"async handlers running: {self.async_handlers}")
        if self.mode == "closed":
            lines.append("engine: closed")
        else:
            lines.extend(_engine_lines(self.engine))
        return "\n".join(lines)


def _section(lines: list[str], title: str, rows: list[str]) -> None:
    if not rows:
        lines.append(f"{title}: none")
        return
    lines.append(f"{title} ({len(rows)}):")
    lines.extend("  " + row for row in rows[:_MAX_ROWS])
    if len(rows) > _MAX_ROWS:
        lines.append(f"  ... and {len(rows) - _MAX_ROWS} more")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]  # a float from here on
    return f"{n:.1f} GiB"


def _engine_lines(engine: dict[str, Any] | None) -> list[str]:
    if engine is None:
        return ["engine: busy (its lock was held by another thread); no queues shown"]
    lines = [
        f"engine: {engine['ready']} message(s) ready to handle, {engine['arriving']} arriving; "
        f"{engine['pending_sends']} MPI send(s) and {engine['pending_receives']} receive(s) "
        f"pending; frames posted {engine['frames_posted']}, finished "
        f"{engine['frames_finished']}; messages sent {engine['messages_sent']}, handled "
        f"{engine['messages_handled']}"
        + ("; a termination wave is running" if engine["wave_active"] else "")
    ]
    routes = engine["routes"]
    rows = []
    for r in routes:
        parts = []
        if r["batch_bytes"]:
            parts.append(f"{_bytes(r['batch_bytes'])} batched")
        if r["held"]:
            parts.append(f"{r['held']} frame(s) held for credit")
        if r["in_flight_frame_bytes"] or r["in_flight_data_bytes"]:
            parts.append(
                f"in flight {_bytes(r['in_flight_frame_bytes'])} of frames, "
                f"{_bytes(r['in_flight_data_bytes'])} of data"
            )
        if r["asked"]:
            parts.append("credit asked, none came yet")
        if r["consumed_frame_bytes"] or r["consumed_data_bytes"]:
            consumed = r["consumed_frame_bytes"] + r["consumed_data_bytes"]
            parts.append(f"{_bytes(consumed)} of its messages consumed, not credited yet")
        if r["owes"]:
            parts.append("it asked for credit")
        rows.append(f"rank {r['rank']}: " + "; ".join(parts))
    title = (
        f"send windows (frames {_bytes(engine['window_bytes'])}, "
        f"data {_bytes(engine['data_window_bytes'])} a rank)"
    )
    _section(lines, title, rows)
    return lines


def _retried(read: Callable[[], T]) -> T:
    # A room's state, read again if a thread changed a dict under it (with
    # serve="thread" the service thread runs while the program's thread reads).
    for _ in range(3):
        try:
            return read()
        except RuntimeError:
            pass
    return read()


def collect(
    transport: Transport,
    requests: Requests,
    dispatch: Dispatch,
    tables: TableService,
    chunks: ChunkLayer,
) -> RankState:
    """Return the state of one messenger's rank, each room asked for its own."""
    mode, handling, engine = transport.state(_ENGINE_PATIENCE)
    return RankState(
        rank=transport.engine.rank,
        size=transport.engine.size,
        mode=mode,
        handling=handling,
        pending=_retried(requests.state),
        answering=_retried(dispatch.state),
        table_waits=_retried(tables.state),
        chunk_waits=_retried(chunks.state),
        async_handlers=len(dispatch.tasks),
        engine=engine,
    )


def attach(exc: BaseException, state: RankState) -> BaseException:
    """Give `exc` the `state` of its rank: as ``exc.state``, and as a note in its text."""
    exc.state = state  # type: ignore[attr-defined]  # conveyor.TimeoutError declares it
    add_note = getattr(exc, "add_note", None)  # Python 3.11 and later
    if add_note is not None:
        add_note(str(state))
    return exc


# -- SIGUSR1 -------------------------------------------------------------------

# The transports of the open messengers of this process, whose describe()
# SIGUSR1 logs. Weak: a messenger dropped without close() is forgotten.
_watched: weakref.WeakSet[Transport] = weakref.WeakSet()
_SIGNAL = getattr(signal, "SIGUSR1", None)  # not on Windows
_installed = False
_dumping = False


def watch(transport: Transport) -> None:
    """Log `transport`'s state on SIGUSR1 while its messenger is open.

    The handler is installed with the first messenger, in the main thread,
    only if SIGUSR1 still has its default action (which ends the process):
    a program's own handler, or an ignored signal, is left alone.
    ``CONVEYOR_DUMP_ON_SIGUSR1=0`` turns it off.
    """
    global _installed
    _watched.add(transport)
    if _installed or _SIGNAL is None or not _wanted():
        return
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may install a handler
    if signal.getsignal(_SIGNAL) is not signal.SIG_DFL:
        return
    signal.signal(_SIGNAL, _on_signal)
    _installed = True


def unwatch(transport: Transport) -> None:
    """Stop logging `transport`'s state; the last one removes the handler if it can."""
    _watched.discard(transport)
    if not _watched:
        _uninstall()


def _wanted() -> bool:
    return bool(env_number("CONVEYOR_DUMP_ON_SIGUSR1", 1))


def _uninstall() -> bool:
    # Restores the default action if the handler is still ours and this is
    # the main thread; else the handler stays, and restores it when called.
    global _installed
    if not _installed or threading.current_thread() is not threading.main_thread():
        return False
    assert _SIGNAL is not None
    if signal.getsignal(_SIGNAL) is _on_signal:
        signal.signal(_SIGNAL, signal.SIG_DFL)
    _installed = False
    return True


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _dumping
    transports = [t for t in list(_watched) if not t.closed]
    if not transports:
        # Every messenger closed where the handler could not be removed
        # (another thread): the signal does what it did before.
        if _uninstall():
            os.kill(os.getpid(), signum)
        return
    if _dumping:  # a second signal while the first is being logged
        return
    _dumping = True
    try:
        stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        for transport in transports:
            if transport.describe is None:
                continue  # a messenger still being made
            try:
                state = str(transport.describe())
            except Exception as exc:  # a dump must never break the program it reports on
                state = f"conveyor: the state could not be collected: {exc!r}"
            where = f"\nthe main thread was at:\n{stack.rstrip()}" if stack else ""
            logger.warning("conveyor: SIGUSR1 (pid %d):\n%s%s", os.getpid(), state, where)
            if transport.tracer is not None:  # the trace so far, for a job that may never end
                transport.tracer.write_safely()
    finally:
        _dumping = False


class HandlerWatch:
    """Log a handler that has run ``CONVEYOR_SLOW_HANDLER_S`` and not returned, while it runs.

    The warning given once a slow handler returns never comes for one that
    never returns, which hangs its rank, and the ranks that wait for it,
    with nothing said. A daemon thread looks every half threshold at the
    engine's timed handlers (it needs the GIL, which a handler running
    Python code gives up every few milliseconds, and one blocked in a call
    that waits mostly releases).
    """

    def __init__(self, engine: Any, rank: int, seconds: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(engine, rank, seconds),
            name=f"conveyor-handler-watch-rank{rank}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """End the thread (it does not wait for it: a handler may hold the GIL)."""
        self._stop.set()

    def _run(self, engine: Any, rank: int, seconds: float) -> None:
        reported: set[tuple[str, int, float]] = set()
        while not self._stop.wait(seconds / 2):
            running = engine.timed_now()
            for tag, source, started, so_far in running:
                if so_far >= seconds and (tag, source, started) not in reported:
                    reported.add((tag, source, started))
                    logger.warning(
                        "conveyor: rank %d: the receiver of %r has run for %.3f s and not "
                        "returned (message from rank %d; CONVEYOR_SLOW_HANDLER_S=%g)",
                        rank,
                        tag,
                        so_far,
                        source,
                        seconds,
                    )
            reported &= {(tag, source, started) for tag, source, started, _ in running}
