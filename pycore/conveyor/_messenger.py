"""The Messenger: the intermediary that moves messages between Senders and Receivers.

It composes the rooms below it and adds nothing of its own but the public
API: the transport (posting and serving), the receivers and the Python half
of dispatch, the requests this rank waits for, termination detection,
asyncio, and the services built on messages (item stores and orders,
tables, distributed arrays).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import operator
import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Literal, SupportsIndex, TypeVar, overload

import numpy.typing as npt

from . import _asyncio, _diagnostics, _exit, _failures, _quiescence, _shared
from ._actors import ActorRef, ActorService
from ._carriage import Address
from ._checks import check_name, check_rank, check_timeout, check_user_table, check_user_tag
from ._chunks import ChunkLayer
from ._collectives import Collectives
from ._config import engine_options, heartbeat_seconds, slow_handler_seconds
from ._config import zero_copy_threshold as _zero_copy_threshold
from ._darray import DistArray, DriverScope, scatter
from ._dispatch import COUNTERS, Dispatch, Receivers
from ._errors import ConveyorError
from ._executor import Executor, ExecutorService
from ._future import Future, Stream
from ._hosts import survey
from ._message import Message, Receiver
from ._native import comm_handle, core
from ._relay import routing
from ._requests import Requests
from ._sender import Sender
from ._service import Service
from ._store import ItemService, Store, Transfer
from ._table import TableService
from ._tags import CHUNK_STATES, ITEM_ORDER
from ._trace import Tracer, check_pattern

if TYPE_CHECKING:
    from mpi4py import MPI

    from ._diagnostics import RankState
    from ._table import Table

__all__ = ["Messenger", "Message", "Receiver", "Sender"]

_MISSING = object()

# A receiver function, returned as it is by the `Messenger.on` decorator.
HandlerT = TypeVar("HandlerT", bound=Callable[[Message], Any])

# Tags whose Sender send() keeps, and tags request() knows it checked (a
# program uses a few; a bound for those that do not).
_MAX_CACHED_TAGS = 256


class Messenger:
    """Moves messages between ranks: the intermediary of the messaging pattern.

    It works on a duplicate of `comm`, so its traffic never mixes with the
    user's own mpi4py traffic. By default (``serve="inline"``) handlers run
    only inside its calls that wait (`Future.result`, `progress`,
    `wait_quiet`, `close`, a send slowed by back-pressure) on the calling
    thread, or in an asyncio event loop (see `attach`). With
    ``serve="thread"`` they run on a service thread of the messenger's own,
    so that the rank answers while the program blocks anywhere else (in a
    plain mpi4py collective, `time.sleep`, `concurrent.futures.wait`). A
    Messenger is used from one thread of the program.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        The communicator to duplicate; ``MPI.COMM_WORLD`` by default.
    aggregate : bool, default True
        Pack small messages to the same rank into one MPI message (each
        `Sender` may override it). Batches leave when full, when this rank
        waits on anything, on `flush`, and at most about
        ``CONVEYOR_FLUSH_DELAY_US`` (100 µs) after their first message.
    pickle : bool, default False
        Carry objects that are not carriageable with pickle (protocol 5,
        large buffers out of band). Every rank must agree.
    zero_copy_threshold : int, optional
        Arrays and byte strings of at least this many bytes travel straight
        from and into user memory (default: ``CONVEYOR_ZERO_COPY_THRESHOLD``
        or 16384).
    abort_on_error : bool, default True
        In a multi-rank job, an uncaught exception prints its traceback and
        aborts the whole job rather than leaving the other ranks waiting.
        With False, Python reports it as usual, and the rank aborts the job
        only as it exits.
    serve : {"inline", "thread"}, default "inline"
        Who handles messages: the program's thread while it waits in
        conveyor (the fastest; see the guide's figures), or a service thread
        at any time. ``"thread"`` needs ``MPI_THREAD_MULTIPLE`` (mpi4py's
        default) and cannot be combined with an event loop (`attach`).
    trace : str or os.PathLike, optional
        Record a trace of this rank (sends, deliveries and handler spans
        with their tag, bytes and source, waits, termination-detection
        waves) and write it to this file, ``%r`` replaced by the rank, in
        the Chrome trace format (Perfetto, ``chrome://tracing``) on close.
        ``conveyor trace merge`` joins the ranks' files into one timeline.
    fault_tolerant : bool, default False
        Survive the death of other ranks: ranks exchange heartbeats, and a
        rank silent for ``CONVEYOR_HEARTBEAT_S`` seconds (5 by default) is
        declared failed. The requests waiting for it then fail with
        `RankFailedError`, later sends and requests to it raise it, and
        `wait_quiet` and `close` finish among the ranks left. The job must
        be started so that its other ranks outlive a dead one
        (``conveyor run --fault-tolerant``); see :ref:`fault-tolerance`.
        Served inline only (not with ``serve="thread"`` or an event loop).

    Raises
    ------
    ValueError
        If ``serve`` is neither ``"inline"`` nor ``"thread"``, the
        directory of ``trace`` does not exist, ``fault_tolerant`` is
        combined with ``serve="thread"`` or a relaying ``CONVEYOR_ROUTE``,
        or ``CONVEYOR_HOSTS`` or ``CONVEYOR_ROUTE`` is malformed.
    conveyor.ConveyorError
        If ``serve="thread"`` or ``fault_tolerant`` and MPI was initialised
        without ``MPI_THREAD_MULTIPLE``, or the ranks were given different
        ``CONVEYOR_ROUTE`` modes.
    """

    def __init__(
        self,
        comm: MPI.Intracomm | None = None,
        *,
        aggregate: bool = True,
        pickle: bool = False,
        zero_copy_threshold: int | None = None,
        abort_on_error: bool = True,
        serve: Literal["inline", "thread"] = "inline",
        trace: str | os.PathLike[str] | None = None,
        fault_tolerant: bool = False,
    ) -> None:
        from mpi4py import MPI

        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py.MPI.Intracomm, not {type(comm).__name__}")
        if serve not in ("inline", "thread"):
            raise ValueError(f"serve must be 'inline' or 'thread', not {serve!r}")
        if fault_tolerant and serve == "thread":
            raise ValueError("fault_tolerant=True needs serve='inline'")
        if (serve == "thread" or fault_tolerant) and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
            what = "serve='thread'" if serve == "thread" else "fault_tolerant=True"
            raise ConveyorError(
                f"{what} calls MPI from a second thread, which needs "
                "MPI_THREAD_MULTIPLE (mpi4py's default; see mpi4py.rc.thread_level)"
            )
        heartbeat = heartbeat_seconds() if fault_tolerant else 0.0  # may refuse: before anything
        trace = None if trace is None else check_pattern(trace)
        threshold = _zero_copy_threshold(zero_copy_threshold)
        self._hosts = hosts = survey(comm)
        _shared.trust(hosts.pids[r] for r in hosts.groups[hosts.index])
        self._host_index = _shared.HostIndex.open(comm, hosts)  # the host's shared files
        options = engine_options(crowded=self._hosts.crowded)
        self._route, options.next_hop = routing(comm, hosts.groups)
        if fault_tolerant and self._route != "direct":  # on every rank: the modes agree
            raise ValueError(
                f"fault_tolerant=True needs CONVEYOR_ROUTE=direct, not {self._route!r}: "
                "a relay that dies would take the messages it relays with it"
            )
        slow_handler = slow_handler_seconds()  # read before anything is made: it may refuse
        if serve == "thread":
            # The service thread yields its core from the start when it finds
            # nothing, rather than busy-poll: the program's thread, which
            # sends the next request, needs that core.
            options.spin_seconds = 0.0
        # Two duplicates: the engine's, on which nothing else sends (an
        # array's data is matched by its source and tag alone), and the one
        # `comm` gives the program.
        self._comm = comm.Dup()
        self._engine_comm = comm.Dup()
        engine = core.engine.Engine(
            comm_handle(self._engine_comm), threshold, bool(pickle), options
        )
        engine.slow_handler_seconds = slow_handler
        self.rank = engine.rank
        self.size = engine.size
        self.aggregate = bool(aggregate)
        self.pickle = bool(pickle)
        self._tracer = None if trace is None else Tracer(trace, self._comm, engine)
        self._transport = transport = _failures.messenger_transport(
            engine, self.aggregate, self._tracer, fault_tolerant
        )
        self._receivers = receivers = Receivers()
        self._requests = requests = Requests(transport)
        if fault_tolerant:
            transport.failures = _failures.Failures(self._comm, requests, heartbeat)
        self._dispatch = transport.dispatch = Dispatch(
            self.rank, transport, receivers, requests, Message
        )
        self._senders: dict[str, Sender] = {}  # tag -> Sender, behind send(rank, tag, payload)
        self._tag_senders = core.engine.TagSenders(self._senders, self.size, _MISSING)
        # The services built on messages, each behind reserved receivers.
        self.store = Store(index=self._host_index)
        self._items = ItemService(self, receivers, requests)
        self._tables = TableService(self, receivers, requests)
        self._collectives = Collectives(self.rank, self.size, receivers, requests)
        self._executor_service = ExecutorService(
            receivers, requests, self.host_ranks, self._host_index
        )
        self._actors = ActorService(self, receivers, requests, self._dispatch)
        chunk_states = self._tables.table(CHUNK_STATES)
        self._chunks = ChunkLayer(
            self, transport, receivers, requests, chunk_states, next(_serials)
        )
        transport.describe = functools.partial(
            _diagnostics.collect, transport, requests, self._dispatch, self._tables, self._chunks
        )
        _diagnostics.watch(transport)
        self._handler_watch = (
            _diagnostics.HandlerWatch(engine, self.rank, slow_handler)
            if slow_handler < math.inf
            else None
        )
        _exit.watch(self, abort_on_error)
        if serve == "thread":  # last: it dispatches from now on
            transport.service = Service(transport, f"conveyor-serve-rank{self.rank}")

    # -- context and lifetime ------------------------------------------------

    @property
    def comm(self) -> MPI.Intracomm:
        """A duplicate of the messenger's communicator, for the program's own MPI calls.

        conveyor's messages travel on another duplicate, which no other
        code reaches: what the program sends on this one never mixes with
        them.
        """
        return self._comm

    @property
    def hosts(self) -> tuple[tuple[int, ...], ...]:
        """The ranks of each host, in order of their lowest rank.

        Ranks are on one host if MPI says they share memory
        (``MPI_Comm_split_type``) and ``CONVEYOR_HOSTS``, if set, puts them
        in the same block: ``N`` splits the ranks into N hosts of
        consecutive ranks, ``"3,1"`` into hosts of these sizes (virtual
        hosts on one machine, for tests). See :ref:`hosts`.
        """
        return self._hosts.groups

    @property
    def host(self) -> int:
        """This rank's host: its index in `hosts`."""
        return self._hosts.index

    @property
    def host_ranks(self) -> tuple[int, ...]:
        """The ranks on this rank's host (itself included), ascending."""
        return self._hosts.groups[self._hosts.index]

    @property
    def route(self) -> str:
        """How small messages travel: ``"direct"``, ``"host"`` or ``"grid2d"``.

        Set by ``CONVEYOR_ROUTE`` (``auto`` by default: ``grid2d`` from 64
        ranks on, else ``direct``); relayed, they are aggregated at every
        hop, and order per pair is kept. See :ref:`relaying`.
        """
        return self._route

    @property
    def failed_ranks(self) -> frozenset[int]:
        """The ranks declared failed (always empty unless ``fault_tolerant=True``)."""
        failures = self._transport.failures
        if failures is None:
            return frozenset()
        if failures.news and not self.closed:
            failures.apply(self._transport.engine)
        return frozenset(failures.failed)

    @property
    def closed(self) -> bool:
        """True once `close` (or `aclose`) was called, or a block it managed raised."""
        return self._transport.closed

    def __enter__(self) -> Messenger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Another rank may not be here to join a collective close: let
            # the exception go on (in a multi-rank job it aborts the job).
            self._abandon()
            _exit.abandoned(exc)

    async def __aenter__(self) -> Messenger:
        self.attach()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
        else:
            self._abandon()
            _exit.abandoned(exc)

    def close(self) -> None:
        """Wait until no message is in flight (collective), then release MPI resources.

        Raises
        ------
        conveyor.ConveyorError
            If called from a handler (the messenger stays open and working).
        """
        if self.closed:
            return
        # Refused before anything is released: the handler's own answer
        # still has to leave, and the other ranks wait for this one's close.
        _quiescence.refuse_in_handler(self._transport, "close()")
        if self._dispatch.tasks:
            raise ConveyorError(
                f"{len(self._dispatch.tasks)} async handlers are still running: use 'await m.aclose()'"
            )
        try:
            self.wait_quiet()
            self._transport.engine.flush_sends(self._flush_seconds())
        finally:
            self._release()

    def _flush_seconds(self) -> float:
        # How long close waits for its sends to complete: without limit,
        # unless a rank failed (a large send to it never completes).
        failures = self._transport.failures
        return failures.seconds if failures is not None and failures.failed else -1.0

    async def aclose(self) -> None:
        """The asyncio `close`: await `aquiet`, then release MPI resources.

        Raises
        ------
        conveyor.ConveyorError
            If awaited in a handler (the messenger stays open and working).
        """
        if self.closed:
            return
        _quiescence.refuse_in_handler(self._transport, "aclose()")  # as close() does
        try:
            await self.aquiet()
            self._transport.engine.flush_sends(self._flush_seconds())
        finally:
            self._release()

    def _release(self) -> None:
        self._abandon()
        self._chunks.free_communicator()
        if self._transport.failures is not None:
            self._transport.failures.free()
        self._comm.Free()
        self._engine_comm.Free()

    def _abandon(self) -> None:
        # Stops everything without a collective call (an error path may have
        # left the other ranks elsewhere).
        if self._transport.service is not None:
            self._transport.service.stop()
        self._transport.closed = True
        self._chunks.close()
        self._host_index.close()
        _exit.unwatch(self)
        _diagnostics.unwatch(self._transport)
        if self._transport.failures is not None and _failures.failure_seen():
            _failures.ignore_launcher_signal()
        if self._handler_watch is not None:
            self._handler_watch.stop()
        _asyncio.detach(self._transport)
        if self._transport.failures is not None:
            self._transport.failures.stop()
        self._transport.engine.close()  # stops the background thread before MPI goes away
        self._requests.fail_all("the messenger was closed before the answer came")
        if self._tracer is not None:
            self._tracer.write_safely()

    # -- receivers -----------------------------------------------------------

    def on(self, tag: str, *, per_item: bool = False) -> Callable[[HandlerT], HandlerT]:
        """Register the decorated function as the receiver of ``tag``.

        The function is called with a `Message`; for a request, its return
        value is the answer (unless it called ``msg.reply`` or ``msg.defer``).
        An ``async def`` function runs as a task of the event loop the
        messenger serves (see `attach`).

        Parameters
        ----------
        tag : str
            The receiver's name.
        per_item : bool, default False
            For sends whose payload is an array, list or tuple (such as the
            numpy rows of `Sender.send_many`), call the function once per
            item, with the item as ``msg.payload``, instead of once with the
            whole batch.

        Returns
        -------
        callable
            The decorator, which returns the function unchanged.

        Raises
        ------
        ValueError
            If a receiver is already registered under ``tag``.
        """
        check_user_tag(tag)  # at the @m.on(...) line, not only once it decorates

        def decorate(fn: HandlerT) -> HandlerT:
            self._receivers.add_user(tag, fn, per_item)
            return fn

        return decorate

    def register(self, name: str, receiver: Receiver, *, per_item: bool = False) -> None:
        """Register a `Receiver` object under ``name`` (a tag like any other).

        Parameters
        ----------
        name : str
            The receiver's name.
        receiver : Receiver
            Its `Receiver.receive` handles each message.
        per_item : bool, default False
            As for `on`.

        Raises
        ------
        ValueError
            If a receiver is already registered under ``name``.
        """
        receive = getattr(receiver, "receive", None)
        if not callable(receive):
            raise TypeError(
                f"a receiver must have a receive(msg) method; {type(receiver).__name__} has none"
            )
        self._receivers.add_user(name, receive, per_item)

    def unregister(self, name: str) -> None:
        """Remove the receiver of ``name``; later messages to it are unknown-tag errors.

        Parameters
        ----------
        name : str
            The receiver's name.

        Raises
        ------
        KeyError
            If no receiver is registered under ``name``.
        """
        self._receivers.remove_user(name)

    # -- sending -------------------------------------------------------------

    def _target(
        self, verb: str, dest: int | Address, tag: Any, payload: Any
    ) -> tuple[int, str, int | None, Any]:
        # Both call forms, (dest, tag[, payload]) and (address, payload), as
        # (rank, receiver name, reply ref or None, payload). The callers check
        # the name: a reply (ref set) reaches no receiver, whatever its name.
        self._transport.check_open()
        # A rank that is an int in range, the common case, needs no check (nor its call).
        if not (type(dest) is int and 0 <= dest < self.size):
            if isinstance(dest, Address):
                if payload is not _MISSING:
                    raise TypeError(
                        f"{verb}(address, payload) takes no tag: the address names the receiver"
                    )
                return (
                    check_rank(dest.rank, self.size, "destination rank"),
                    dest.name,
                    dest.ref,
                    tag,
                )
            dest = check_rank(dest, self.size, "destination rank")
        return dest, tag, None, None if payload is _MISSING else payload

    # Two call forms: (dest, tag[, payload]), and (address, payload).

    @overload
    def send(self, dest: int, tag: str, payload: Any = ..., *, final: bool = ...) -> None: ...
    @overload
    def send(self, dest: Address, payload: Any, /, *, final: bool = ...) -> None: ...
    def send(
        self, dest: int | Address, tag: Any, payload: Any = _MISSING, *, final: bool = True
    ) -> None:
        """send(dest, tag, payload=None, *, final=True)

        Send ``payload`` to the receiver of ``tag`` on rank ``dest``, without waiting.

        With an `Address` instead of ``dest`` and ``tag``, send to that address:
        ``send(address, payload)``; if it is a request's ``reply_to``, this
        answers that request, from any rank.

        Parameters
        ----------
        dest : int or Address
            The destination rank, or an address (then ``tag`` is the payload).
        tag : str
            The receiver's tag on ``dest``.
        payload : object, optional
            What to send; None by default. It must be carriageable (or
            picklable, with ``pickle=True``).
        final : bool, default True
            ``False`` makes it one answer of several to the request whose
            ``reply_to`` ``dest`` is (see `request_stream`).

        Raises
        ------
        conveyor.CarriageError
            If ``payload`` cannot travel.
        ValueError
            If ``dest`` is not a rank of the job.
        """
        # The common case, a tag sent to before, goes in C to the tag's
        # cached Sender: 180 ns a send, where checking it in Python cost 280.
        if self._tag_senders.send(dest, tag, payload, final):
            return
        rank, name, ref, payload = self._target("send", dest, tag, payload)
        if ref is not None:
            self._transport.post(
                rank,
                core.message.KIND_REPLY if final else core.message.KIND_ANSWER,
                ref,
                name,
                payload,
            )
        elif not final:
            raise ValueError("final=False answers a request: send it to the request's reply_to")
        else:
            self._transport.send(rank, check_user_tag(name), payload)
            # A fault-tolerant messenger's sends take the path that checks
            # for failed ranks, never a Sender's native one.
            if len(self._senders) < _MAX_CACHED_TAGS and self._transport.failures is None:
                self._senders[name] = Sender(self._transport, name, self.aggregate, self.size)

    @overload
    def request(self, dest: int, tag: str, payload: Any = ...) -> Future[Any]: ...
    @overload
    def request(self, dest: Address, payload: Any, /) -> Future[Any]: ...
    def request(self, dest: int | Address, tag: Any, payload: Any = _MISSING) -> Future[Any]:
        """request(dest, tag, payload=None)

        Send a request and return a `Future` for its answer.

        With an `Address` instead of ``dest`` and ``tag``, send the request to
        that address: ``request(address, payload)``.

        Parameters
        ----------
        dest : int or Address
            The destination rank, or an address (then ``tag`` is the payload).
        tag : str
            The receiver's tag on ``dest``.
        payload : object, optional
            What to send; None by default.

        Returns
        -------
        Future
            Resolves to the receiver's answer, or fails with `RemoteError`.

        Raises
        ------
        conveyor.CarriageError
            If ``payload`` cannot travel.
        ValueError
            If ``dest`` is not a rank of the job.
        """
        requests = self._requests
        # The common case, a rank and a tag requested before, all native.
        future: Future[Any] | None = requests.try_request(
            dest, tag, None if payload is _MISSING else payload
        )
        if future is not None:
            return future
        dest, tag, _, payload = self._target("request", dest, tag, payload)  # checks it is open
        name = check_user_tag(tag)
        future = requests.open(dest, name, payload)
        if type(name) is str and len(requests.user_tags) < _MAX_CACHED_TAGS:
            requests.user_tags.add(name)
        return future

    @overload
    def request_stream(
        self, dest: int, tag: str, payload: Any = ..., *, timeout: float | None = ...
    ) -> Stream[Any]: ...
    @overload
    def request_stream(
        self, dest: Address, payload: Any, /, *, timeout: float | None = ...
    ) -> Stream[Any]: ...
    def request_stream(
        self,
        dest: int | Address,
        tag: Any,
        payload: Any = _MISSING,
        *,
        timeout: float | None = None,
    ) -> Stream[Any]:
        """request_stream(dest, tag, payload=None, *, timeout=None)

        Send a request whose receiver may answer several times, and return
        a `Stream` of the answers (``for answer in stream``, or ``async
        for``), in order, ending after the final one.

        Parameters
        ----------
        dest : int or Address
            The destination rank, or an address (then ``tag`` is the payload).
        tag : str
            The receiver's tag on ``dest``.
        payload : object, optional
            What to send; None by default.
        timeout : float, optional
            Seconds to wait for each answer (`TimeoutError`); no limit by default.

        Returns
        -------
        Stream
            The answers, in order.

        Raises
        ------
        conveyor.CarriageError
            If ``payload`` cannot travel.
        ValueError
            If ``dest`` is not a rank of the job.
        """
        dest, tag, _, payload = self._target("request_stream", dest, tag, payload)
        timeout = check_timeout(timeout)
        requests = self._requests
        return requests.open(
            dest, check_user_tag(tag), payload, lambda ref: Stream(requests, dest, ref, timeout)
        )

    def sender(self, tag: str, *, aggregate: bool | None = None) -> Sender:
        """Return a `Sender` for ``tag``.

        Parameters
        ----------
        tag : str
            The receiver name its messages go to.
        aggregate : bool, optional
            Pack its small messages into batches; the Messenger's setting by
            default.

        Returns
        -------
        Sender
            A sender bound to ``tag``.

        Raises
        ------
        TypeError
            If ``tag`` is not a str.
        ValueError
            If ``tag`` is empty or reserved (it starts with ``conveyor.``).
        conveyor.ConveyorError
            If the messenger is closed.
        """
        self._transport.check_open()
        aggregate = self.aggregate if aggregate is None else bool(aggregate)
        return Sender(self._transport, tag, aggregate, self.size)

    def flush(self) -> None:
        """Send the small messages waiting in batches now, without waiting for anything.

        Raises
        ------
        conveyor.ConveyorError
            If the messenger is closed.
        """
        self._transport.check_open()
        self._transport.engine.flush()

    # -- items, tables and arrays ----------------------------------------------

    def fetch(self, rank: int, name: str) -> Future[Any]:
        """Return a `Future` for a copy of item ``name`` of rank ``rank``'s store.

        It fails with a `RemoteError` that is also a ``KeyError`` if that
        store has no such item. A shared item (``store.put(..., shared=True)``)
        arrives as a read-only view: mapped where it lies from a rank of this
        host; from another host by its digest first, mapped if a rank of this
        host holds the bytes, else received and shared on this host while the
        array lives (see :ref:`shared-items`).

        Parameters
        ----------
        rank : int
            The rank whose store holds the item.
        name : str
            The item's name.

        Returns
        -------
        Future
            Resolves with the copy.

        Raises
        ------
        ValueError
            If ``rank`` is not a rank of the job, or ``name`` is empty.
        """
        rank = check_rank(rank, self.size, "destination rank")
        return self._items.fetch(rank, check_name(name))

    def order(self, rank: int, order: Transfer) -> Future[dict[str, Any]]:
        """Order rank ``rank`` to carry out ``order`` (a `Transfer`, `Copy` or `Move`).

        The item goes from ``rank`` straight to the destinations (large arrays
        without copies), never through this rank.

        Parameters
        ----------
        rank : int
            The rank whose store holds the item.
        order : Transfer
            What to send where.

        Returns
        -------
        Future
            Resolves, once every destination holds the item, to ``{"name",
            "to", "bytes"}``; fails with a `RemoteError` (a ``KeyError`` too)
            if ``rank`` has no such item, or if a destination refused it (say
            ``StoreFullError``).

        Raises
        ------
        TypeError
            If ``order`` is not a `Transfer`.
        ValueError
            If a destination is not a rank of the job.
        """
        if not isinstance(order, Transfer):
            raise TypeError(
                f"an order must be a Transfer, Copy or Move, not {type(order).__name__}"
            )
        for dest in order.to + ([order.then[0]] if order.then else []):
            check_rank(dest, self.size, "destination rank")
        rank = check_rank(rank, self.size, "destination rank")
        return self._requests.request(rank, ITEM_ORDER, order._as_payload())

    def table(self, name: str) -> Table:
        """Return the distributed key-value `Table` called ``name``.

        The same object for the same name. Any rank may use any table at
        any time: there is nothing to create collectively.

        Parameters
        ----------
        name : str
            The table's name, the same on every rank.

        Returns
        -------
        Table
            The table.

        Raises
        ------
        TypeError
            If ``name`` is not a str.
        ValueError
            If ``name`` is empty, or starts with ``"conveyor."`` (conveyor's
            own tables).
        """
        return self._tables.table(check_user_table(name))

    def array(
        self,
        a: npt.ArrayLike,
        chunks: SupportsIndex | Iterable[SupportsIndex] | None = None,
        ranks: Iterable[SupportsIndex] | None = None,
    ) -> DistArray:
        """Return a `DistArray` of numpy array ``a``, split by rows into chunks.

        Parameters
        ----------
        a : array_like
            1-D, or 2-D (chunked by rows); numeric. Copied, so that later
            changes to it do not show.
        chunks : int or sequence of int, optional
            How many near-equal chunks (one per rank by default), or the
            rows of each.
        ranks : sequence of int, optional
            The rank of each chunk; chunk i goes to rank ``i % size`` by default.

        Returns
        -------
        DistArray
            The array, its chunks already on their ranks.

        Raises
        ------
        ValueError
            If ``a`` is not 1-D or 2-D, or the chunks or ranks do not fit it.
        TypeError
            If ``a`` is not numeric.
        """
        self._transport.check_open()
        return scatter(DistArray, self._chunks, a, chunks, ranks)

    def driver(self, root: int = 0) -> DriverScope:
        """Return the context manager of the driver model.

        ``with m.driver(root) as d:`` gives the root rank a `Driver` (make
        arrays, call on them) and the other ranks None, after serving the
        root's requests until it leaves its block: as mpi4py's
        ``MPICommExecutor``. Collective.

        Parameters
        ----------
        root : int, default 0
            The rank that drives.

        Returns
        -------
        contextlib.AbstractContextManager
            Entering it gives a `Driver` on ``root``, None elsewhere.
        """
        self._transport.check_open()
        return DriverScope(self, self._chunks, root)

    def chunk_stats(self) -> dict[str, int]:
        """Return what this rank holds of distributed objects.

        Returns
        -------
        dict
            ``chunks`` and ``bytes`` (computed chunks owned here and their
            size), ``pending`` and ``failed`` chunks, ``foreign``
            references to chunks held elsewhere (proxies waiting for the
            weight they lent included), and ``placeholders``.
        """
        return self._chunks.table.stats()

    # -- progress and quiescence -----------------------------------------------

    def progress(self, timeout: float | None = 0.0) -> int:
        """Handle the messages that have arrived; wait up to ``timeout`` s for the first.

        Also sends the batches waiting to leave this rank.

        Parameters
        ----------
        timeout : float or None, default 0.0
            Seconds to wait if nothing has arrived; None or ``math.inf``
            wait without limit.

        Returns
        -------
        int
            The number of messages handled. With ``serve="thread"`` the
            service thread handles them: this waits up to ``timeout`` for the
            end of its next round, and returns how many that round handled.

        Raises
        ------
        ValueError
            If ``timeout`` is negative or NaN.
        """
        # The common case, a number of seconds (NaN fails >=), without a call.
        plain = (type(timeout) is float or type(timeout) is int) and timeout >= 0
        seconds = timeout if plain else check_timeout(timeout)
        return self._transport.serve(-1.0 if seconds is None else seconds)

    def wait_quiet(self, timeout: float | None = None) -> None:
        """Return, on every rank, once no message is in flight and no handler runs.

        Collective: every rank of the messenger must call it. Messages keep
        being handled meanwhile, so cascades of any depth finish first.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; no limit by default. If it runs out, the other
            ranks wait until this one calls `wait_quiet` again, which takes
            up where it stopped.

        Raises
        ------
        conveyor.TimeoutError
            If the job was not quiet within ``timeout`` seconds; its
            ``state`` is this rank's `dump_state`.
        conveyor.ConveyorError
            If called from a handler, or the messenger is closed.
        """
        _quiescence.wait_quiet(self._transport, check_timeout(timeout))

    # -- asyncio -------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Serve this messenger from an asyncio event loop.

        The engine's background thread receives messages and wakes the loop,
        which runs the handlers (``async def`` ones as tasks) between its
        other callbacks; an idle loop sleeps. `arequest`, `aquiet` and
        ``async with Messenger()`` attach to the running loop by themselves.

        Parameters
        ----------
        loop : asyncio.AbstractEventLoop, optional
            The running loop by default.

        Raises
        ------
        conveyor.ConveyorError
            If the messenger is fault-tolerant or served by its own thread.
        """
        if self._transport.failures is not None:
            raise _failures.refuse("serving from an event loop")
        _asyncio.attach(self._transport, loop)

    def detach(self) -> None:
        """Stop serving from the event loop; messages are handled in waits again."""
        _asyncio.detach(self._transport)

    @overload
    async def arequest(
        self, dest: int, tag: str, payload: Any = ..., *, timeout: float | None = ...
    ) -> Any: ...
    @overload
    async def arequest(
        self, dest: Address, payload: Any, /, *, timeout: float | None = ...
    ) -> Any: ...
    async def arequest(
        self,
        dest: int | Address,
        tag: Any,
        payload: Any = _MISSING,
        *,
        timeout: float | None = None,
    ) -> Any:
        """arequest(dest, tag, payload=None, *, timeout=None)

        Send a request and await its answer (the asyncio `request`; a
        `Future` can be awaited too). If the awaiting task is cancelled or
        the timeout runs out, the request is cancelled (see `Future.cancel`).

        Parameters
        ----------
        dest : int or Address
            The destination rank, or an address (then ``tag`` is the payload).
        tag : str
            The receiver's tag on ``dest``.
        payload : object, optional
            What to send; None by default.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        object
            The answer.

        Raises
        ------
        conveyor.TimeoutError
            If no answer came within ``timeout`` seconds.
        conveyor.RemoteError
            If the remote handler raised.
        """
        timeout = check_timeout(timeout)  # before the request leaves
        future = self.request(dest, tag, payload)  # type: ignore[arg-type]  # either form
        try:
            return await asyncio.wait_for(_asyncio.wait_answer(self._transport, future), timeout)
        except asyncio.TimeoutError:
            raise self._transport.timed_out(f"no answer within {timeout} s") from None

    async def aquiet(self) -> None:
        """Await, on every rank, the moment no message is in flight and no handler runs.

        The asyncio `wait_quiet` (collective); async handlers count as
        running until their task ends. If it is cancelled, the other ranks
        wait until this one awaits `aquiet` (or `wait_quiet`) again, which
        takes up where it stopped.

        Raises
        ------
        conveyor.ConveyorError
            If awaited in a handler, or the messenger is closed.
        """
        await _quiescence.aquiet(self._transport)

    def executor(self, ranks: Iterable[int] | None = None) -> Executor:
        """Return a `concurrent.futures.Executor` whose workers are ranks of this messenger.

        ``with m.executor() as ex: ex.submit(f, x)``; see `Executor`.

        Parameters
        ----------
        ranks : iterable of int, optional
            The ranks that run the tasks, in turn; by default every rank but
            this one (this one alone in a job of one rank).

        Returns
        -------
        Executor
            A new executor (shutting it down leaves the messenger open).
        """
        return Executor(self, ranks)

    def spawn(
        self,
        rank: int,
        cls: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Create the actor ``cls(*args, **kwargs)`` on rank ``rank``; return its reference.

        The actor handles its calls (``ref.method(x)``, a `Future`;
        ``ref.method.send(x)``, no answer) one at a time, in order. With a
        ``name``, any rank finds it with `lookup`; of two spawns of one name,
        however close, one gets the actor and the other an error. The class
        travels as `Executor` functions do (by reference when importable);
        the arguments as any payload.

        Parameters
        ----------
        rank : int
            Where the actor lives.
        cls : callable
            Its class (or any callable that makes it).
        *args
            The positional arguments of ``cls``.
        name : str, optional
            A name unique in the job.
        timeout : float, optional
            Seconds each step (claim the name, create, publish) may take.
        **kwargs
            The keyword arguments of ``cls``.

        Returns
        -------
        ActorRef
            The reference: it travels in messages and survives `pickle`.

        Raises
        ------
        ValueError
            If the name is taken (a `RemoteError` too), or not a non-empty str.
        conveyor.RemoteError
            If ``cls(*args, **kwargs)`` raised on ``rank`` (the name is free again).
        """
        check_rank(rank, self.size)
        return self._actors.spawn(rank, cls, args, kwargs, name, timeout)

    def lookup(self, name: str, timeout: float | None = None) -> ActorRef:
        """Return the reference of the actor spawned under ``name`` (by any rank).

        If its spawn is still creating it, the lookup waits for it.

        Parameters
        ----------
        name : str
            The actor's name.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        ActorRef
            The reference.

        Raises
        ------
        KeyError
            If no actor has that name (also a `RemoteError`).
        """
        return self._actors.lookup(name, timeout)

    # -- collectives ---------------------------------------------------------
    #
    # Collective: every rank calls the same ones in the same order. Each
    # handles messages while it waits, so it is safe anywhere, handlers
    # included; the a-prefixed forms are awaited instead.

    def barrier(self, timeout: float | None = None) -> None:
        """Return once every rank has called `barrier` (collective), handling messages meanwhile.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; no limit by default.

        Raises
        ------
        conveyor.TimeoutError
            If not every rank called it in time.
        """
        self._collectives.barrier().result(timeout)

    def bcast(self, value: Any = None, root: int = 0, timeout: float | None = None) -> Any:
        """Return rank ``root``'s ``value`` on every rank (collective).

        Parameters
        ----------
        value : object, optional
            The value to broadcast (read on ``root`` only); carriageable,
            or anything with ``pickle=True``.
        root : int, default 0
            The rank whose value every rank gets.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        object
            ``root``'s value.
        """
        return self._collectives.bcast(value, root).result(timeout)

    def gather(self, value: Any, root: int = 0, timeout: float | None = None) -> list[Any] | None:
        """Return every rank's ``value``, in rank order, on ``root``; None elsewhere (collective).

        Parameters
        ----------
        value : object
            This rank's value.
        root : int, default 0
            The rank that gets the values.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        list or None
            The values on ``root``; None on the other ranks (at once).
        """
        return self._collectives.gather(value, root).result(timeout)

    def scatter(
        self, values: Sequence[Any] | None = None, root: int = 0, timeout: float | None = None
    ) -> Any:
        """Return ``values[rank]`` of ``root``'s ``values`` on every rank (collective).

        Parameters
        ----------
        values : sequence, optional
            One value per rank, on ``root`` (ignored elsewhere).
        root : int, default 0
            The rank that hands the values out.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        object
            This rank's value.

        Raises
        ------
        ValueError
            On ``root``, if ``values`` does not have one value per rank.
        """
        return self._collectives.scatter(values, root).result(timeout)

    def allgather(self, value: Any, timeout: float | None = None) -> list[Any]:
        """Return every rank's ``value``, in rank order, on every rank (collective).

        Parameters
        ----------
        value : object
            This rank's value.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        list
            The values, one per rank.
        """
        return self._collectives.allgather(value).result(timeout)

    def allreduce(
        self,
        value: Any,
        op: Callable[[Any, Any], Any] = operator.add,
        timeout: float | None = None,
    ) -> Any:
        """Return ``op`` folded over every rank's ``value`` in rank order, on every rank (collective).

        Rank 0 folds and sends the result to the others: every rank gets the
        same result, even for an ``op`` that is not associative.

        Parameters
        ----------
        value : object
            This rank's value (numbers, numpy arrays, anything ``op`` takes).
        op : callable, default operator.add
            Combines two values: `operator.add`, `max`, ``numpy.maximum``,
            ``mpi4py.MPI.SUM``, or a function of your own.
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        object
            The folded value.

        Raises
        ------
        conveyor.ConveyorError
            If ``op`` raised on rank 0 (there, the error itself is raised).
        """
        return self._collectives.allreduce(value, op).result(timeout)

    async def abarrier(self) -> None:
        """Await the moment every rank has called `barrier` or `abarrier` (collective)."""
        await self._collectives.barrier()

    async def abcast(self, value: Any = None, root: int = 0) -> Any:
        """Await rank ``root``'s ``value`` (the asyncio `bcast`).

        Parameters
        ----------
        value : object, optional
            The value to broadcast (read on ``root`` only).
        root : int, default 0
            The rank whose value every rank gets.

        Returns
        -------
        object
            ``root``'s value.
        """
        return await self._collectives.bcast(value, root)

    async def agather(self, value: Any, root: int = 0) -> list[Any] | None:
        """Await every rank's ``value`` on ``root`` (the asyncio `gather`).

        Parameters
        ----------
        value : object
            This rank's value.
        root : int, default 0
            The rank that gets the values.

        Returns
        -------
        list or None
            The values on ``root``; None on the other ranks.
        """
        return await self._collectives.gather(value, root)

    async def ascatter(self, values: Sequence[Any] | None = None, root: int = 0) -> Any:
        """Await this rank's value of ``root``'s ``values`` (the asyncio `scatter`).

        Parameters
        ----------
        values : sequence, optional
            One value per rank, on ``root``.
        root : int, default 0
            The rank that hands the values out.

        Returns
        -------
        object
            This rank's value.
        """
        return await self._collectives.scatter(values, root)

    async def aallgather(self, value: Any) -> list[Any]:
        """Await every rank's ``value`` (the asyncio `allgather`).

        Parameters
        ----------
        value : object
            This rank's value.

        Returns
        -------
        list
            The values, one per rank.
        """
        return await self._collectives.allgather(value)

    async def aallreduce(self, value: Any, op: Callable[[Any, Any], Any] = operator.add) -> Any:
        """Await ``op`` folded over every rank's ``value`` (the asyncio `allreduce`).

        Parameters
        ----------
        value : object
            This rank's value.
        op : callable, default operator.add
            Combines two values.

        Returns
        -------
        object
            The folded value.
        """
        return await self._collectives.allreduce(value, op)

    # -- introspection -------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Return the counters of this rank: messages, frames, batches, bytes, drops, errors.

        Returns
        -------
        dict of str to int
            Each counter by name (``unknown_tag``, ``pending_requests``, ...).
        """
        stats = dict(self._transport.engine.stats()) if not self.closed else {}
        counts = self._dispatch.counts
        for key in COUNTERS:
            stats[key] = counts[key]
        stats["late_answers"] = self._requests.late
        stats["answers_malformed"] = self._requests.malformed
        stats["pending_requests"] = len(self._requests)
        stats["open_requests"] = self._dispatch.open_requests()
        stats["store_items"] = len(self.store)
        stats["store_bytes"] = self.store.nbytes
        return stats

    def dump_state(self) -> RankState:
        """Return what this rank is doing and waiting for: the first thing to read in a hang.

        The requests it sent that wait for answers (destination, tag, age),
        the requests it received and has not answered (source, tag; running
        or deferred), the table and chunk waits it holds, and the engine's
        queues and send windows. ``print(m.dump_state())`` shows it; so do
        SIGUSR1 (logged for every open messenger of the process) and every
        `TimeoutError` of a wait (its ``state``). Safe from a handler, and
        from any thread while the messenger serves.

        Returns
        -------
        RankState
            The state; ``str()`` of it is a readable report.
        """
        describe = self._transport.describe
        assert describe is not None  # set once the rooms exist
        return describe()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<conveyor.Messenger rank {self.rank} of {self.size}, {state}>"


# Messengers are numbered in the order a process makes them, the same on
# every rank (making one is collective): chunk references name theirs so.
_serials = itertools.count(1)
