"""The Messenger: moves messages between Senders and Receivers over MPI."""

import asyncio
import atexit
import collections
import contextvars
import functools
import itertools
import operator
import os
import sys
import time
import traceback
import warnings
import weakref

from ._carriage import Address
from ._errors import (
    ConveyorError,
    ConveyorWarning,
    FrameError,
    RemoteError,
    TimeoutError,
    UnknownTagError,
)
from ._chunks import ChunkLayer
from ._darray import DriverScope, scatter
from ._future import Future, Stream
from ._loop import LoopLink
from ._store import ItemService, Store, check_user_tag
from ._table import TableService
from ._native import comm_handle, core

__all__ = ["Messenger", "Message", "Receiver", "Sender"]

_MISSING = object()

_CANCEL = "conveyor.cancel"  # a requester cancelled request `payload`

# In an async handler's task (and the tasks it starts): the Messenger.
_handler_of = contextvars.ContextVar("conveyor_handler_of", default=None)

# How long one native wait may last before Python regains control (to notice
# Ctrl-C and deadlines); an arriving message ends the wait at once.
_WAIT_SLICE = 0.1

# Tags whose Sender send() keeps (a program uses a few; a bound for those that do not).
_MAX_CACHED_SENDERS = 256

# The longest pause between two termination-detection waves that saw
# messages in flight (an arriving message ends it early).
_WAVE_PAUSE = 200e-6


def _env_number(name, default, kind=int):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    return value


class Message(core.MessageBase):
    """A delivered message, as a receiver sees it.

    Attributes
    ----------
    tag : str
        The tag (receiver name) it was sent to.
    payload : object
        The decoded payload (with per-item delivery, one row of the batch).
    source : int
        The rank that sent it.
    reply_to : Address or None
        For a request, the address that answers it; None for a plain send.
    """

    # The fields live in the native base, which creates one per delivery; a
    # weak reference lets the messenger find an open request to cancel it.
    __slots__ = ("__weakref__",)

    @property
    def is_request(self):
        """True if the sender waits for an answer."""
        return self.reply_to is not None

    @property
    def cancelled(self):
        """True once the requester cancelled this request: stop working on it."""
        return self._cancelled

    def reply(self, value=None, *, final=True):
        """Answer the request with `value` (instead of the handler's return value).

        With ``final=False`` more answers follow (say a quick one from a
        cache, then a detailed one): the requester's `Messenger.request_stream`
        gets each, a plain `Messenger.request` only the final one. Answers
        to a cancelled request are dropped (and counted).
        """
        if self.reply_to is None:
            raise ConveyorError(f"the message to {self.tag!r} is not a request: nothing to reply to")
        if self._replied:
            raise ConveyorError(f"the request to {self.tag!r} was already answered")
        m = self._messenger
        if self._cancelled:
            m._counts["answers_cancelled"] += 1
        else:
            m.send(self.reply_to, value, final=final)  # a value that cannot travel raises
        if final:
            self._replied = True
            m._forget_request(self)

    def defer(self):
        """Answer later: the handler's return value is not the answer.

        Keep the message and call `reply` afterwards, or pass `reply_to` on:
        whichever rank sends to that address answers the request.
        """
        if self.reply_to is None:
            raise ConveyorError(f"the message to {self.tag!r} is not a request: nothing to defer")
        self._deferred = True

    def __repr__(self):
        kind = "request" if self.is_request else "message"
        return f"<conveyor.Message {kind} tag={self.tag!r} from rank {self.source}>"


class Receiver:
    """Base class of object receivers, registered by name with `Messenger.register`.

    Override `receive`; its return value answers a request.
    """

    def receive(self, msg):
        """Handle `msg` (a `Message`); return the answer if it is a request."""
        raise NotImplementedError


class Sender(core.SenderBase):
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

    __slots__ = ("_messenger",)

    def __new__(cls, messenger, tag, aggregate):
        self = super().__new__(
            cls, messenger._engine, messenger._check_tag(tag), aggregate, messenger._relieve
        )
        self._messenger = messenger
        return self

    def send_many(self, dests, items):
        """Send row ``items[i]`` to rank ``dests[i]``, for every i.

        Rows are grouped by destination in C++ (one pass, order kept per
        destination) and each rank receives one message whose payload is the
        numpy array of its rows (zero-copy from the receive buffer when
        large), or one handler call per row if its receiver asked for
        ``per_item=True``. When every row goes to one rank, `items` itself is
        sent, without a copy: as with any array sent, do not modify it until
        the next `Messenger.wait_quiet`.

        Parameters
        ----------
        dests : array_like of int
            Destination rank of each row, shape ``(n,)``.
        items : numpy.ndarray
            ``n`` rows of any plain-data dtype (records included).
        """
        import numpy as np

        dests = np.asarray(dests)
        if dests.ndim != 1 or dests.dtype.kind not in "iu":
            raise TypeError(
                f"dests must be a 1-D integer array, not {dests.ndim}-D {dests.dtype}"
            )
        if not isinstance(items, np.ndarray):
            raise TypeError(f"items must be a numpy array, not {type(items).__name__}")
        routed, offsets = core.route(dests, items, self._messenger.size)
        for rank in range(self._messenger.size):
            lo, hi = int(offsets[rank]), int(offsets[rank + 1])
            if hi > lo:
                self.send(rank, routed[lo:hi])

    def __repr__(self):
        return f"<conveyor.Sender tag={self.tag!r} aggregate={self.aggregate}>"


class Messenger:
    """Moves messages between ranks: the intermediary of the messaging pattern.

    It works on a duplicate of `comm`, so its traffic never mixes with the
    user's own mpi4py traffic. Handlers run only inside its calls that wait
    (`Future.result`, `progress`, `wait_quiet`, `close`, a send slowed by
    back-pressure) on the calling thread, or in an asyncio event loop (see
    `serve_forever`). A Messenger is used from one thread.

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
    """

    def __init__(
        self, comm=None, *, aggregate=True, pickle=False, zero_copy_threshold=None, abort_on_error=True
    ):
        from mpi4py import MPI

        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py.MPI.Intracomm, not {type(comm).__name__}")
        if zero_copy_threshold is None:
            zero_copy_threshold = _env_number("CONVEYOR_ZERO_COPY_THRESHOLD", 16384)
        zero_copy_threshold = operator.index(zero_copy_threshold)
        if zero_copy_threshold < 0:
            raise ValueError("zero_copy_threshold must be >= 0")
        options = core.EngineOptions()
        options.max_frame_bytes = _env_number("CONVEYOR_MAX_FRAME_BYTES", options.max_frame_bytes)
        options.piece_bytes = _env_number("CONVEYOR_PIECE_BYTES", options.piece_bytes)
        options.spin_seconds = _env_number("CONVEYOR_SPIN_US", 50, float) * 1e-6
        options.max_sleep_seconds = _env_number("CONVEYOR_MAX_SLEEP_US", 500, float) * 1e-6
        options.batch_bytes = _env_number("CONVEYOR_BATCH_BYTES", options.batch_bytes)
        options.flush_delay_seconds = _env_number("CONVEYOR_FLUSH_DELAY_US", 100, float) * 1e-6
        options.background_max_sleep_seconds = (
            _env_number("CONVEYOR_BACKGROUND_MAX_SLEEP_US", 32000, float) * 1e-6
        )
        options.window_bytes = _env_number("CONVEYOR_WINDOW_BYTES", options.window_bytes)
        options.data_window_bytes = _env_number(
            "CONVEYOR_DATA_WINDOW_BYTES", options.data_window_bytes
        )
        options.background = bool(_env_number("CONVEYOR_BACKGROUND", 1))
        core.set_buffer_cache_limit(_env_number("CONVEYOR_BUFFER_CACHE_BYTES", 512 << 20))

        self._comm = comm.Dup()
        self._engine = core.Engine(
            comm_handle(self._comm), zero_copy_threshold, bool(pickle), options
        )
        self.rank = self._engine.rank
        self.size = self._engine.size
        self.aggregate = bool(aggregate)
        self.pickle = bool(pickle)
        self._receivers = {}  # tag -> (handler, per_item), read by the native dispatcher
        self._senders = {}  # tag -> Sender, behind send(rank, tag, payload)
        self._futures = {}
        self._next_ref = 1
        self._closed = False
        self._counts = collections.Counter()
        self._unknown_tags = collections.Counter()
        self._link = None  # LoopLink while served from an asyncio event loop
        self._tasks = set()  # async handlers running
        # Requests this rank is answering, by (source, ref), where a cancel
        # finds them: those whose handler runs, and those left open after it
        # returned (deferred, streaming), held weakly: a deferred request
        # whose reply_to was passed on is forgotten with its message.
        self._answering = {}
        self._open_requests = weakref.WeakValueDictionary()
        self._hooks = (self, self._receivers, Message, self._dispatch, self._returned, self._failed,
                       self._finish_request, self._futures, self._answering, self.aggregate)
        self.store = Store()
        self._add_receiver(_CANCEL, self._on_cancel, False)
        ItemService(self)
        self._tables = TableService(self)
        self._chunks = ChunkLayer(self, next(_serials))
        self._collective_comm = None  # for from_local, made on first use
        _open_messengers.add(self)
        if abort_on_error and MPI.COMM_WORLD.Get_size() > 1:
            _install_abort_hook()

    # -- context and lifetime ------------------------------------------------

    @property
    def comm(self):
        """The messenger's own duplicate communicator (do not send on it)."""
        return self._comm

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            # Another rank may not be here to join a collective close: let
            # the exception go on (in a multi-rank job it aborts the job).
            self._abandon()

    async def __aenter__(self):
        self.attach()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if exc_type is None:
            await self.aclose()
        else:
            self._abandon()

    def close(self):
        """Wait until no message is in flight (collective), then release MPI resources."""
        if self._closed:
            return
        if self._tasks:
            raise ConveyorError(
                f"{len(self._tasks)} async handlers are still running: use 'await m.aclose()'"
            )
        try:
            self.wait_quiet()
            self._engine.flush_sends(-1.0)
        finally:
            self._abandon()
            self._comm.Free()
            if self._collective_comm is not None:
                self._collective_comm.Free()

    def _abandon(self):
        self._closed = True
        self._chunks.close()
        _open_messengers.discard(self)
        if self._link is not None:
            self._link.close()
            self._link = None
        self._engine.close()  # stops the background thread before MPI goes away
        for waiter in self._futures.values():
            waiter._fail(ConveyorError("the messenger was closed before the answer came"))
        self._futures.clear()

    def _check_open(self):
        if self._closed:
            raise ConveyorError("this Messenger is closed")

    # -- receivers -----------------------------------------------------------

    def _check_tag(self, tag):
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, not {type(tag).__name__}")
        if not tag:
            raise ValueError("a tag must not be empty")
        return tag

    def _check_user_tag(self, tag):
        self._check_tag(tag)
        check_user_tag(tag)
        return tag

    def on(self, tag, *, per_item=False):
        """Register the decorated function as the receiver of `tag`.

        The function is called with a `Message`; for a request, its return
        value is the answer (unless it called ``msg.reply`` or ``msg.defer``).
        An ``async def`` function runs as a task of the event loop the
        messenger serves (see `serve_forever`).

        Parameters
        ----------
        tag : str
            The receiver's name.
        per_item : bool, default False
            For sends whose payload is an array, list or tuple (such as the
            numpy rows of `Sender.send_many`), call the function once per
            item, with the item as ``msg.payload``, instead of once with the
            whole batch.
        """
        self._check_user_tag(tag)

        def decorate(fn):
            if not callable(fn):
                raise TypeError(f"a receiver must be callable, not {type(fn).__name__}")
            self._add_receiver(tag, fn, per_item)
            return fn

        return decorate

    def register(self, name, receiver, *, per_item=False):
        """Register a `Receiver` object under `name` (a tag like any other).

        `per_item` is as for `on`.
        """
        self._check_user_tag(name)
        if not callable(getattr(receiver, "receive", None)):
            raise TypeError(
                f"a receiver must have a receive(msg) method; {type(receiver).__name__} has none"
            )
        self._add_receiver(name, receiver.receive, per_item)

    def unregister(self, name):
        """Remove the receiver of `name`; later messages to it are unknown-tag errors."""
        self._check_user_tag(name)
        try:
            del self._receivers[name]
        except KeyError:
            raise KeyError(f"no receiver is registered under {name!r}") from None

    def _add_receiver(self, name, handler, per_item):
        if name in self._receivers:
            raise ValueError(f"a receiver is already registered under {name!r}")
        self._receivers[name] = (handler, bool(per_item))

    # -- sending -------------------------------------------------------------

    def _check_rank(self, dest):
        try:
            dest = operator.index(dest)
        except TypeError:
            raise TypeError(f"a destination rank must be an int, not {type(dest).__name__}") from None
        if not 0 <= dest < self.size:
            hint = ""
            if self.size == 1:
                hint = (": this job has 1 rank; start several with `conveyor run -n 4 script.py`"
                        " or `mpiexec -n 4 python script.py`")
            raise ValueError(f"destination rank {dest} is out of range 0..{self.size - 1}{hint}")
        return dest

    def _target(self, verb, dest, tag, payload):
        # Both call forms, (dest, tag[, payload]) and (address, payload), as
        # (rank, receiver name, reply ref or None, payload).
        self._check_open()
        if isinstance(dest, Address):
            if payload is not _MISSING:
                raise TypeError(f"{verb}(address, payload) takes no tag: the address names the receiver")
            return self._check_rank(dest.rank), dest.name, dest.ref, tag
        return self._check_rank(dest), tag, None, None if payload is _MISSING else payload

    def _post(self, rank, kind, ref, tag, payload):
        if self._engine.send(rank, kind, ref, tag, payload, self.aggregate):
            self._relieve(rank)

    def send(self, dest, tag, payload=_MISSING, *, final=True):
        """send(dest, tag, payload=None)

        Send `payload` to the receiver of `tag` on rank `dest`, without waiting.

        With an `Address` instead of `dest` and `tag`, send to that address:
        ``send(address, payload)``; if it is a request's ``reply_to``, this
        answers that request, from any rank. ``final=False`` makes it one
        answer of several (see `request_stream`).
        """
        if type(dest) is int and type(tag) is str and final:
            # The common case goes through a Sender of the tag: its native
            # send checks the rank and costs a fraction of the path below.
            sender = self._senders.get(tag)
            if sender is not None and 0 <= dest < self.size:
                sender.send(dest, None if payload is _MISSING else payload)
                return
        rank, name, ref, payload = self._target("send", dest, tag, payload)
        if ref is not None:
            self._post(rank, core.KIND_REPLY if final else core.KIND_ANSWER, ref, name, payload)
        elif not final:
            raise ValueError("final=False answers a request: send it to the request's reply_to")
        else:
            self._post(rank, core.KIND_SEND, 0, self._check_tag(name), payload)
            if len(self._senders) < _MAX_CACHED_SENDERS:
                self._senders[name] = Sender(self, name, self.aggregate)

    def request(self, dest, tag, payload=_MISSING):
        """request(dest, tag, payload=None)

        Send a request and return a `Future` for its answer.

        With an `Address` instead of `dest` and `tag`, send the request to
        that address: ``request(address, payload)``.
        """
        dest, tag, _, payload = self._target("request", dest, tag, payload)
        return self._open(dest, tag, payload, lambda ref: Future(self, dest, ref))

    def request_stream(self, dest, tag, payload=_MISSING, *, timeout=None):
        """request_stream(dest, tag, payload=None, *, timeout=None)

        Send a request whose receiver may answer several times, and return
        a `Stream` of the answers (``for answer in stream``, or ``async
        for``), in order, ending after the final one.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for each answer (`TimeoutError`); no limit by default.
        """
        dest, tag, _, payload = self._target("request_stream", dest, tag, payload)
        return self._open(dest, tag, payload, lambda ref: Stream(self, dest, ref, timeout))

    def _open(self, dest, tag, payload, make_waiter):
        # Sends a request whose answers go to the waiter (Future or Stream).
        self._check_tag(tag)
        ref = self._next_ref
        waiter = make_waiter(ref)
        self._next_ref += 1
        self._futures[ref] = waiter
        try:
            self._post(dest, core.KIND_REQUEST, ref, tag, payload)
        except BaseException:
            del self._futures[ref]
            raise
        return waiter

    def _cancel(self, waiter):
        # Cancels logically: the answers still to come will be dropped, and
        # the worker is told so that its handler can stop (msg.cancelled).
        if self._futures.pop(waiter._ref, None) is not None and not self._closed:
            self._post(waiter._dest, core.KIND_SEND, 0, _CANCEL, waiter._ref)

    def _on_cancel(self, msg):
        key = (msg.source, msg.payload)
        request = self._answering.get(key) or self._open_requests.pop(key, None)
        if request is not None:
            request._cancelled = True
            self._counts["requests_cancelled"] += 1

    # -- items ---------------------------------------------------------------

    def fetch(self, rank, name):
        """Return a `Future` for a copy of item `name` of rank `rank`'s store.

        It fails with `RemoteError` (remote type ``KeyError``) if that store
        has no such item.
        """
        from ._store import FETCH, check_name

        return self.request(rank, FETCH, check_name(name))

    def order(self, rank, order):
        """Order rank `rank` to carry out `order` (a `Transfer`, `Copy` or `Move`).

        The item goes from `rank` straight to the destinations (large arrays
        without copies), never through this rank. Returns a `Future` that
        resolves, once every destination holds the item, to ``{"name",
        "to", "bytes"}``; it fails with `RemoteError` if `rank` has no such
        item (remote type ``KeyError``) or a destination refused it (say
        ``StoreFullError``).
        """
        from ._store import ORDER, Transfer

        if not isinstance(order, Transfer):
            raise TypeError(f"an order must be a Transfer, Copy or Move, not {type(order).__name__}")
        for dest in order.to + ([order.then[0]] if order.then else []):
            self._check_rank(dest)
        return self.request(rank, ORDER, order._as_payload())

    def table(self, name):
        """Return the distributed key-value `Table` called `name`.

        The same object for the same name. Any rank may use any table at
        any time: there is nothing to create collectively.
        """
        return self._tables.table(name)

    # -- distributed arrays ----------------------------------------------------

    def array(self, a, chunks=None, ranks=None):
        """Return a `DistArray` of numpy array `a`, split by rows into chunks.

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
        """
        self._check_open()
        return scatter(self._chunks, a, chunks, ranks)

    def driver(self, root=0):
        """Return the context manager of the driver model.

        ``with m.driver(root) as d:`` gives the root rank a `Driver` (make
        arrays, call on them) and the other ranks None, after serving the
        root's requests until it leaves its block: as mpi4py's
        ``MPICommExecutor``. Collective.
        """
        self._check_open()
        return DriverScope(self, root)

    def chunk_stats(self):
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

    def _collectives(self):
        # A communicator of its own for the collective calls of from_local,
        # which must not cross the engine's termination waves.
        if self._collective_comm is None:
            self._collective_comm = self._comm.Dup()
        return self._collective_comm

    def sender(self, tag, *, aggregate=None):
        """Return a `Sender` for `tag`.

        Parameters
        ----------
        tag : str
            The receiver name its messages go to.
        aggregate : bool, optional
            Pack its small messages into batches; the Messenger's setting by
            default.
        """
        self._check_open()
        return Sender(self, tag, self.aggregate if aggregate is None else bool(aggregate))

    def flush(self):
        """Send the small messages waiting in batches now, without waiting for anything."""
        self._check_open()
        self._engine.flush()

    def _relieve(self, dest):
        # Back-pressure: `dest` has not consumed what we sent. Serve incoming
        # messages until it takes more. A handler never waits here (its sends
        # queue instead), so nested handlers cannot pile up on the stack.
        if self._engine.handling or self._link is not None:
            return  # nor does an event loop: it would stall every other task
        while self._engine.congested(dest):
            self._check_open()
            self._engine.serve(_WAIT_SLICE, dest, self._hooks)

    # -- progress ------------------------------------------------------------

    def progress(self, timeout=0.0):
        """Handle the messages that have arrived; wait up to `timeout` s for the first.

        Also sends the batches waiting to leave this rank.

        Returns
        -------
        int
            The number of messages handled.
        """
        self._check_open()
        return self._engine.serve(timeout, -1, self._hooks)

    def _wait_for(self, waiter, timeout):
        # Serves messages until the Future or Stream has something for its caller.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not waiter._ready():
            self._check_open()
            wait = _WAIT_SLICE
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer within {timeout} s")
                wait = min(wait, left)
            self._engine.serve(wait, -1, self._hooks)

    def wait_quiet(self):
        """Return, on every rank, once no message is in flight and no handler runs.

        Collective: every rank of the messenger must call it. Messages keep
        being handled meanwhile, so cascades of any depth finish first.
        """
        self._check_open()
        if self._engine.handling:
            raise ConveyorError("wait_quiet() is collective and cannot be called from a handler")
        # Mattern's four-counter method: quiet once the messages handled by
        # the latest wave equal those sent by the wave before it. Handled
        # counts only rise after a handler returns (after its own sends).
        sent_before = None
        while True:
            self.progress()
            self._join_wave()
            totals = self._engine.wave_done()
            while totals is None:
                self._engine.serve(_WAIT_SLICE, -1, self._hooks)
                totals = self._engine.wave_done()
            sent, handled = totals
            if handled == sent_before == sent:
                return
            if handled != sent:
                # Messages are in flight: let one arrive before the next wave
                # rather than spinning through waves (a wave may end at once).
                self.progress(_WAVE_PAUSE)
            sent_before = sent

    # -- asyncio -------------------------------------------------------------

    def attach(self, loop=None):
        """Serve this messenger from an asyncio event loop.

        The engine's background thread receives messages and wakes the loop,
        which runs the handlers (``async def`` ones as tasks) between its
        other callbacks; an idle loop sleeps. `arequest`, `aquiet` and
        ``async with Messenger()`` attach to the running loop by themselves.

        Parameters
        ----------
        loop : asyncio.AbstractEventLoop, optional
            The running loop by default.
        """
        self._check_open()
        loop = loop or asyncio.get_running_loop()
        if self._link is not None:
            if self._link.loop is loop:
                return
            raise ConveyorError("this Messenger is already served by another event loop")
        self._link = LoopLink(self, loop)

    def detach(self):
        """Stop serving from the event loop; messages are handled in waits again."""
        if self._link is not None:
            self._link.close()
            self._link = None

    async def arequest(self, dest, tag, payload=_MISSING, *, timeout=None):
        """arequest(dest, tag, payload=None, *, timeout=None)

        Send a request and await its answer (the asyncio `request`; a
        `Future` can be awaited too). If the awaiting task is cancelled or
        the timeout runs out, the request is cancelled (see `Future.cancel`).

        Raises
        ------
        conveyor.TimeoutError
            If no answer came within `timeout` seconds.
        conveyor.RemoteError
            If the remote handler raised.
        """
        future = self.request(dest, tag, payload)
        try:
            return await asyncio.wait_for(self._await_future(future), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no answer within {timeout} s") from None

    def _link_loop(self):
        self.attach()
        self._engine.flush()  # the caller waits now: do not keep its requests in a batch
        return self._link.loop

    async def _await_future(self, future):
        if not future.done():
            waiter = self._link_loop().create_future()
            future.add_done_callback(lambda done: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            except asyncio.CancelledError:
                # Given up (the task was cancelled, or a timeout ran out):
                # so is the request, as with any awaitable asyncio cancels.
                future.cancel()
                raise
        return future.result()

    async def aquiet(self):
        """Await, on every rank, the moment no message is in flight and no handler runs.

        The asyncio `wait_quiet` (collective); async handlers count as
        running until their task ends. If it is cancelled, the other ranks
        wait until this one awaits `aquiet` (or `wait_quiet`) again, which
        takes up where it stopped.
        """
        self.attach()
        if self._engine.handling or _handler_of.get() is self:
            # A handler counts as running until it returns: quiet would never come.
            raise ConveyorError("aquiet() is collective and cannot be awaited in a handler")
        link = self._link
        sent_before = None
        while True:
            self._engine.serve(0.0, -1, self._hooks)
            self._join_wave()
            totals = self._engine.wave_done()
            if totals is None:
                link.wave = link.loop.create_future()
                try:
                    totals = await link.wave
                finally:
                    link.wave = None
            sent, handled = totals
            if handled == sent_before == sent:
                return
            if handled != sent:
                await asyncio.sleep(_WAVE_PAUSE)
            sent_before = sent

    async def aclose(self):
        """The asyncio `close`: await `aquiet`, then release MPI resources."""
        if self._closed:
            return
        try:
            await self.aquiet()
            self._engine.flush_sends(-1.0)
        finally:
            self._abandon()
            self._comm.Free()
            if self._collective_comm is not None:
                self._collective_comm.Free()

    def _spawn(self, msg, coro):
        # An async handler's coroutine runs as a task; its message counts as
        # handled (for termination detection) only once the task ends.
        if self._link is None:
            coro.close()
            raise ConveyorError(
                f"the receiver of {msg.tag!r} is async: serve the Messenger from an event "
                "loop (Messenger.attach, or async with Messenger())"
            )
        task = self._link.loop.create_task(self._run_handler(coro))
        self._engine.defer_handled()
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, msg))

    async def _run_handler(self, coro):
        # Marks the task's context (inherited by the tasks it starts) as a
        # handler of this messenger's, for aquiet() to refuse.
        _handler_of.set(self)
        return await coro

    def _task_done(self, msg, task):
        self._tasks.discard(task)
        try:
            exc = ConveyorError("the handler's task was cancelled") if task.cancelled() else task.exception()
            if msg.is_request and not (msg._replied or msg._deferred):
                if exc is None:
                    try:
                        msg.reply(task.result())
                        return
                    except Exception as answer_error:  # the answer cannot travel
                        exc = answer_error
                self._counts["handler_errors"] += 1
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self._answer_error(msg, exc, text)
            elif exc is not None:
                self._failed(msg, exc)
        finally:
            self._engine.mark_handled(1)

    def _join_wave(self):
        # Starts a wave, unless one is in flight already: an aquiet() that
        # was cancelled left it so, and the other ranks take part in it.
        if not self._engine.wave_active:
            self._engine.start_wave()

    # -- delivery ------------------------------------------------------------
    # The native dispatcher calls a plain send's receiver itself; it hands
    # everything else to _dispatch, and reports to _returned and _failed.

    def _dispatch(self, item):
        kind, source, ref, tag, payload, error = item
        try:
            if kind == core.KIND_SEND or kind == core.KIND_REQUEST:
                self._refuse_delivery(kind == core.KIND_REQUEST, source, ref, tag, error)
            elif kind in (core.KIND_REPLY, core.KIND_ANSWER, core.KIND_ERROR):
                self._answer(kind, source, ref, payload, error)
            else:  # counted by the engine as frames_malformed
                warnings.warn(
                    f"rank {self.rank}: dropped a malformed frame from rank {source}: {error}",
                    ConveyorWarning,
                    stacklevel=2,
                )
        finally:
            self._engine.mark_handled()

    def _refuse_delivery(self, is_request, source, ref, tag, error):
        # A message the native dispatcher could not deliver: its payload
        # could not be read, or no receiver has its tag.
        if error is not None:
            self._counts["payloads_undecodable"] += 1
            self._refuse(is_request, source, ref, FrameError(f"payload to {tag!r}: {error}"))
            return
        self._counts["unknown_tag"] += 1
        self._unknown_tags[tag] += 1
        self._refuse(
            is_request,
            source,
            ref,
            UnknownTagError(self.rank, "UnknownTagError", f"no receiver for tag {tag!r}"),
            warn_once=self._unknown_tags[tag] == 1,
        )

    def _finish_request(self, msg, result, exc):
        # The native dispatcher ran the handler of request `msg`, which
        # raised (`exc`), or whose result needs more than a plain reply: it
        # replied or deferred itself, was cancelled, is a coroutine, or
        # cannot travel.
        if exc is None:
            try:
                if asyncio.iscoroutine(result):
                    self._spawn(msg, result)
                elif not (msg._replied or msg._deferred):
                    msg.reply(result)
            except Exception as error:
                exc = error
        if exc is not None:
            if msg._replied:
                self._failed(msg, exc)
            else:
                self._counts["handler_errors"] += 1
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                self._answer_error(msg, exc, text)
        if not msg._replied:
            self._open_requests[(msg.source, msg.reply_to.ref)] = msg

    def _forget_request(self, msg):
        # Its final answer is sent: a cancel has nothing to find any more.
        key = (msg.source, msg.reply_to.ref)
        if key not in self._answering:  # else its handler's return forgets it
            self._open_requests.pop(key, None)

    def _returned(self, msg, result):
        # What a plain send's receiver returned: nobody waits for it, but a
        # coroutine (an async handler's) must run.
        if asyncio.iscoroutine(result):
            try:
                self._spawn(msg, result)
            except ConveyorError as exc:
                self._failed(msg, exc)

    def _failed(self, msg, exc):
        self._counts["handler_errors"] += 1
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(
            f"conveyor: rank {self.rank}: the receiver of {msg.tag!r} raised "
            f"(message from rank {msg.source}):\n{text}",
            file=sys.stderr,
            end="",
            flush=True,
        )

    def _refuse(self, is_request, source, ref, exc, warn_once=True):
        if is_request:
            self._send_error(source, ref, exc, "")
        elif warn_once:
            warnings.warn(f"rank {self.rank}: dropped a message: {exc}", ConveyorWarning, stacklevel=3)

    def _send_error(self, dest, ref, exc, text):
        kind = "unknown_tag" if isinstance(exc, UnknownTagError) else "error"
        if isinstance(exc, RemoteError) and not isinstance(exc, UnknownTagError):
            # Passed on from another rank: report the original error.
            kind_type, message = exc.remote_type, f"rank {exc.rank}: {exc.remote_message}"
            text = exc.remote_traceback
        else:
            kind_type = type(exc).__qualname__
            message = exc.remote_message if isinstance(exc, RemoteError) else str(exc)
        report = {"kind": kind, "type": kind_type, "message": message, "traceback": text}
        self._post(dest, core.KIND_ERROR, ref, "", report)

    def _answer_error(self, msg, exc, text=""):
        # Fails the request `msg` (final): its requester gets a RemoteError.
        msg._replied = True
        self._forget_request(msg)
        if msg._cancelled:
            self._counts["answers_cancelled"] += 1
        else:
            self._send_error(msg.reply_to.rank, msg.reply_to.ref, exc, text)

    def _answer(self, kind, source, ref, payload, error):
        waiter = self._futures.get(ref)
        if waiter is None:
            self._counts["late_answers"] += 1  # after a cancel or a closed messenger
            return
        if error is not None:
            del self._futures[ref]
            waiter._fail(FrameError(f"the answer from rank {source}: {error}"))
        elif kind == core.KIND_ANSWER:
            waiter._answer(payload, final=False)
        elif kind == core.KIND_REPLY:
            del self._futures[ref]
            waiter._answer(payload, final=True)
        else:
            del self._futures[ref]
            cls = UnknownTagError if payload.get("kind") == "unknown_tag" else RemoteError
            waiter._fail(
                cls(source, payload.get("type", "?"), payload.get("message", ""), payload.get("traceback", ""))
            )

    # -- introspection -------------------------------------------------------

    def stats(self):
        """Return the counters of this rank: messages, frames, batches, bytes, drops, errors."""
        stats = dict(self._engine.stats()) if not self._closed else {}
        for key in ("unknown_tag", "payloads_undecodable", "handler_errors", "late_answers",
                    "requests_cancelled", "answers_cancelled"):
            stats[key] = self._counts[key]
        stats["pending_requests"] = len(self._futures)
        stats["open_requests"] = len(self._answering) + len(self._open_requests)
        stats["store_items"] = len(self.store)
        stats["store_bytes"] = self.store.nbytes
        return stats

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<conveyor.Messenger rank {self.rank} of {self.size}, {state}>"


# Messengers not closed yet: their background threads must stop before MPI
# is finalized at exit (mpi4py finalizes after Python's atexit handlers).
_open_messengers = weakref.WeakSet()
# Messengers are numbered in the order a process makes them, the same on
# every rank (making one is collective): chunk references name theirs so.
_serials = itertools.count(1)


@atexit.register
def _stop_background_threads():
    for messenger in list(_open_messengers):
        messenger._engine.close()


_abort_hook_installed = False


def _install_abort_hook():
    """Make an uncaught exception print its traceback, then abort the MPI job."""
    global _abort_hook_installed
    if _abort_hook_installed:
        return
    previous = sys.excepthook

    def abort_job(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if issubclass(exc_type, KeyboardInterrupt):
            code = 130
        else:
            code = 1
        from mpi4py import MPI

        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(code)

    sys.excepthook = abort_job
    _abort_hook_installed = True
