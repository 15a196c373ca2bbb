"""Chunks: the pieces of distributed objects, and the tasks that compute them.

Each rank's `ChunkLayer` keeps its chunks in the native chunk table (values,
states, waiters, reference weights) and serves four reserved receivers: a
task computes one chunk from pieces of others, a fetch answers rows of a
chunk once it is settled, and two more carry reference weight back and
forth. A rank of the owner's host reads the rows of a chunk of
`SHARE_BYTES` or more through shared memory: the first such read moves
the chunk once into a file of the host's (`_shared.share`, then
`ChunkTable.replace`), and every read is a `SharedView` of the rows,
mapped where it arrives, so no large chunk's rows move through MPI within
a host. Nothing here ever blocks inside a handler: a task gathers its inputs
through callbacks and runs once the last one arrives, so a rank that is
asked for a chunk it will itself compute later simply answers later.

References are counted by weights (see the native ChunkTable): a `ChunkRef`
holds a handle, a copy that travels in a message carries part of its rank's
weight, and the last handle on a rank sends the weight back to its home: the
owner, or a rank that ran short and lent weight of its own as a proxy. The
owner frees the chunk once no weight is out and it holds no handle itself.
"""

from __future__ import annotations

import collections
import functools
import json
import struct
import traceback
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _pickling, _pool, _progress, _shared
from ._carriage import CarriageableItem
from ._config import env_number
from ._diagnostics import ChunkWait, logger
from ._errors import RECYCLING, RecyclingWarning, RemoteError, raised_remotely
from ._native import core
from ._segments import Segments, by_segments, by_segments_fits
from ._shipping import Received, Shipped
from ._tags import (
    CHUNK_FETCH,
    CHUNK_GIVE_BACK,
    CHUNK_MAPPED,
    CHUNK_REFILL,
    CHUNK_TASK,
    DRIVER_DONE,
)

if TYPE_CHECKING:
    from mpi4py import MPI

    from ._dispatch import Receivers
    from ._future import Future
    from ._message import Message
    from ._messenger import Messenger
    from ._requests import Requests
    from ._table import Table
    from ._transport import Transport

    # A task's input: ("value", x), ("pickled", bytes), ("whole", ref),
    # ("pieces", [(ref, start, stop), ...], rows) or ("aligned", [ref, ...])
    # (see ChunkLayer.submit).
    Spec = tuple[Any, ...]
    # A planned task's result chunk: (k, target), see ChunkLayer.submit.
    Plan = tuple[int, int]
    # Called with a settled chunk's rows, or with its error's bytes.
    Put = Callable[[Any], None]
    Fail = Callable[[bytes], None]

__all__ = ["ChunkRef"]


PENDING, RESOLVED, ERROR = (
    core.chunks.CHUNK_PENDING,
    core.chunks.CHUNK_RESOLVED,
    core.chunks.CHUNK_ERROR,
)
_STATE_NAMES = {PENDING: "pending", RESOLVED: "resolved", ERROR: "error"}
# Chunks at least this large are read through shared memory by the ranks
# of their owner's host; smaller ones cost less through MPI than a file.
SHARE_BYTES = 1 << 16
# How many host peers' chunk files a rank remembers (a few dozen bytes each).
PEER_FILES = 4096
# How long serve_until waits for messages between tests of its collective.
_SERVE_SLICE = 0.001

# Layers by their messenger's serial number, which is the same on every rank
# (messengers are created collectively): where an arriving ChunkRef belongs.
_layers: weakref.WeakValueDictionary[int, ChunkLayer] = weakref.WeakValueDictionary()
# And by their messenger: where DistArray.from_local(messenger, ...) finds its layer.
_layers_by_messenger: weakref.WeakKeyDictionary[Messenger, ChunkLayer] = weakref.WeakKeyDictionary()


def layer_of(messenger: Messenger) -> ChunkLayer:
    """The ChunkLayer of `messenger` (each has one, made with it)."""
    return _layers_by_messenger[messenger]


_REF_LAYOUT = struct.Struct("<QQqqqqQB")  # serial, id, owner, home, length, offset, weight, state


class ChunkRef(CarriageableItem, name="conveyor.ChunkRef"):
    """A reference to one chunk of a distributed object.

    Chunk references are made by `DistArray` and the tasks behind `dcall`;
    they travel in messages like any carriageable value, and the chunk's
    memory is released once no reference to it is left on any rank.

    Attributes
    ----------
    id : int
        Unique over the job: the rank that named it, and a sequence number.
    owner : int
        The rank that holds (or will compute) the chunk.
    length : int or None
        Its rows; None until known (the result of `dmap`).
    offset : int or None
        Its first row within the distributed object.
    state : str
        ``"pending"``, ``"resolved"`` or ``"error"``, as last learned here.
    """

    __slots__ = ("_layer", "id", "owner", "length", "offset", "_state")

    def __init__(
        self,
        layer: ChunkLayer,
        id: int,
        owner: int,
        length: int | None,
        offset: int | None = 0,
        state: int = PENDING,
    ) -> None:
        # Every ChunkRef object is one handle of its rank's (see ChunkTable.hold).
        if owner == layer.rank:
            layer.table.hold_owned(id)  # it may arrive before the task that creates it
        else:
            layer.table.hold(id)
        self._layer = layer
        self.id = id
        self.owner = owner
        self.length = length
        self.offset = offset
        self._state = state

    @property
    def state(self) -> str:
        """``"pending"``, ``"resolved"`` or ``"error"``, as last learned here."""
        layer = self._layer
        if (
            self._state == PENDING
            and self.owner == layer.rank
            and not layer.closed
            and self.id in layer.table
        ):  # not before the task that creates it
            self._state = layer.table.state(self.id)
        return _STATE_NAMES[self._state]

    def at(self, offset: int | None) -> ChunkRef:
        """Return another reference to this chunk, at row ``offset`` of its object.

        Parameters
        ----------
        offset : int or None
            The row of the distributed object where the chunk starts; None:
            unknown.

        Returns
        -------
        ChunkRef
            The new reference (it holds the chunk alive too).
        """
        return ChunkRef(self._layer, self.id, self.owner, self.length, offset, self._state)

    def __del__(self) -> None:
        layer = getattr(self, "_layer", None)
        if layer is not None:
            layer.release(self.id)

    def __repr__(self) -> str:
        return (
            f"ChunkRef(id={self.id:#x}, owner={self.owner}, length={self.length}, "
            f"offset={self.offset}, state={self.state!r})"
        )

    # -- carriage: a copy takes part of this rank's weight ---------------------

    def required_bytes(self) -> int:
        return _REF_LAYOUT.size

    def dump(self, buffer: memoryview) -> None:
        layer = self._layer
        if layer.closed:
            raise ValueError("a ChunkRef of a closed Messenger cannot travel")
        weight, home = layer.lend(self.id, self.owner)
        length = -1 if self.length is None else self.length
        offset = -1 if self.offset is None else self.offset
        _REF_LAYOUT.pack_into(
            buffer, 0, layer.serial, self.id, self.owner, home, length, offset, weight, self._state
        )

    def unsent(self, buffer: memoryview) -> None:
        # The copy never left: its weight returns to this rank's entry.
        _, id, owner, home, _, _, weight, _ = _REF_LAYOUT.unpack_from(buffer)
        self._layer.take_back(id, owner, home, weight)

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[Any]) -> ChunkRef:
        serial, id, owner, home, length, offset, weight, state = _REF_LAYOUT.unpack_from(buffer)
        layer = _layers.get(serial)
        if layer is None or layer.closed:
            raise ValueError("a ChunkRef arrived for a Messenger that is closed on this rank")
        return layer.adopt(
            id,
            owner,
            home,
            weight,
            None if length < 0 else length,
            None if offset < 0 else offset,
            state,
        )


def remote_error(data: bytes) -> RemoteError:
    """Rebuild the RemoteError that failed a chunk (see error_bytes).

    The bytes come from another rank (a fetch's answer, the chunk states
    table): they are read as JSON, never unpickled.
    """
    try:
        rank, remote_type, message, text = json.loads(data)
        return raised_remotely(int(rank), str(remote_type), str(message), str(text))
    except (TypeError, ValueError):
        return RemoteError(-1, "FrameError", "a chunk's error could not be read")


def published_length(fact: dict[str, Any]) -> int:
    """A chunk's rows, from what its owner published (see ChunkLayer.resolve).

    Raises the chunk's error if it failed, and TypeError if it is 0-d.
    """
    if fact["state"] == ERROR:
        raise remote_error(fact["error"])
    if fact["length"] is None:
        raise TypeError("a chunk of a DistArray is a 0-d array: use dreduce for single values")
    return int(fact["length"])


class _Gather:
    """Collects `count` inputs that arrive in any order, then calls `done(values)`.

    The first failure (a chunk's error bytes) calls `failed` instead, once.
    """

    __slots__ = ("values", "missing", "done", "failed", "over")

    def __init__(self, count: int, done: Callable[[list[Any]], None], failed: Fail) -> None:
        self.values: list[Any] = [None] * count
        self.missing = count
        self.done = done
        self.failed = failed
        self.over = False

    def put(self, index: int, value: Any) -> None:
        if self.over:
            return
        self.values[index] = value
        self.missing -= 1
        if self.missing == 0:
            self.over = True
            self.done(self.values)

    def fail(self, error: bytes) -> None:
        if not self.over:
            self.over = True
            self.failed(error)


class ChunkLayer:
    """The chunks of one rank of a messenger, and the receivers behind them."""

    def __init__(
        self,
        messenger: Messenger,
        transport: Transport,
        receivers: Receivers,
        requests: Requests,
        states: Table,
        serial: int,
    ) -> None:
        self.m = messenger
        self.transport = transport
        self.requests = requests
        self.rank = messenger.rank
        self.serial = serial
        self.table = core.chunks.ChunkTable(messenger.rank)
        self.closed = False
        # The other ranks of this host, which read chunks through shared
        # memory, and the shared files of the chunks they read, by id.
        self._host_peers = set(messenger.host_ranks) - {self.rank}
        self._shared: dict[int, _shared.Segment] = {}
        # Chunks of host peers read here through their shared files, by id:
        # (the file's name, the chunk's dtype and shape). Chunks never
        # change, so later reads map the rows here without asking the
        # owner, which may be busy computing (`_mapped_rows`).
        self._peer_files: collections.OrderedDict[int, tuple[str, np.dtype[Any], tuple[int, ...]]]
        self._peer_files = collections.OrderedDict()
        # Results are written into the buffers of freed chunks where one
        # fits (`_pool`): the owned chunks whose value is such a buffer.
        self._pool = _pool.Pool(env_number("CONVEYOR_CHUNK_POOL_BYTES", _pool.DEFAULT_BYTES))
        self._pooled: dict[int, np.ndarray] = {}
        # token -> (chunk id, callback), for owned chunks not settled yet
        self._waiters: dict[int, tuple[int, Callable[[], None]]] = {}
        self._next_token = 1
        # id -> callbacks waiting for a chunk whose task has not arrived
        self._early: dict[int, list[Callable[[], None]]] = {}
        # callbacks of chunks just settled, run in order
        self._ready: collections.deque[Callable[[], None]] = collections.deque()
        self._draining = False
        # The tasks' functions: sent once per rank, then by digest.
        self._shipped = Shipped(messenger.host_ranks, messenger._host_index)
        self._received = Received()
        # What owners publish about their chunks once computed (CHUNK_STATES),
        # a table users cannot name.
        self.states = states
        self._published: set[int] = set()  # owned chunks whose state is in it
        receivers.add(CHUNK_TASK, self._on_task)
        receivers.add(CHUNK_FETCH, self._on_fetch)
        receivers.add(CHUNK_GIVE_BACK, self._on_give_back)
        receivers.add(CHUNK_REFILL, self._on_refill)
        receivers.add(CHUNK_MAPPED, lambda msg: self._shipped.mapped(msg.payload))
        self.drivers_done = 0  # driver blocks the root left, and those served here
        self.driving = 0  # driver blocks this rank is the root of, and in
        self.drivers_seen = 0
        receivers.add(DRIVER_DONE, self._on_driver_done)
        self._collective_comm: MPI.Intracomm | None = None  # for from_local, made on first use
        _layers[serial] = self
        _layers_by_messenger[messenger] = self

    def close(self) -> None:
        self.closed = True
        self._pool.clear()

    def collectives(self) -> MPI.Intracomm:
        """A communicator of the layer's own for the collective calls of from_local.

        They must not cross the engine's termination waves on the messenger's.
        Made on first use, which is collective: serving while the other ranks
        come (`serve_until`).
        """
        if self._collective_comm is None:
            comm, made = self.m.comm.Idup()
            self.serve_until(made)
            self._collective_comm = comm
        return self._collective_comm

    def serve_until(self, request: MPI.Request) -> None:
        """Handle messages until `request`, a nonblocking collective's, completes.

        A rank that waits in a blocking collective serves nothing: it would
        never answer another rank that still waits on it (for a chunk, a
        table key, a request) before joining the collective.
        """
        while not request.Test():
            self.m.progress(_SERVE_SLICE)

    def free_communicator(self) -> None:
        """Free the communicator of `collectives` (collective, as closing the messenger is)."""
        if self._collective_comm is not None:
            self._collective_comm.Free()
            self._collective_comm = None

    # -- references ------------------------------------------------------------

    def mint(self, owner: int, length: int | None, offset: int | None = 0) -> tuple[ChunkRef, int]:
        """Name a new chunk that `owner` will compute; return (ref, weight to lend it).

        The task that asks `owner` to compute the chunk must carry the weight.
        """
        id = self.table.new_id()
        if owner == self.rank:
            self.table.create(id, 0)
            return ChunkRef(self, id, owner, length, offset), 0
        weight = self.table.MINT_WEIGHT
        self.table.adopt(id, owner, owner, weight)
        return ChunkRef(self, id, owner, length, offset), weight

    def lend(self, id: int, owner: int) -> tuple[int, int]:
        """Take weight for a reference about to travel; return (weight, its home)."""
        weight, home, refill = self.table.lend(id)
        if refill:
            self.requests.request(owner, CHUNK_REFILL, id).add_done_callback(
                lambda future: self._refilled(id, owner, future)
            )
        return weight, home

    def take_back(self, id: int, owner: int, home: int, weight: int) -> None:
        """Return `weight`, lent for a copy that was never sent, to this rank's entry."""
        if home == self.rank:
            self._returned(id, weight)
        else:  # its handle is still held here
            self._settle(id, self.table.adopt(id, owner, home, weight))

    def adopt(
        self,
        id: int,
        owner: int,
        home: int,
        weight: int,
        length: int | None,
        offset: int | None = 0,
        state: int = PENDING,
    ) -> ChunkRef:
        """Return a handle of a reference that arrived with `weight`, lent by `home`."""
        if home != self.rank:
            self._settle(id, self.table.adopt(id, owner, home, weight))
            return ChunkRef(self, id, owner, length, offset, state)
        # Back where its weight was lent: hold before the weight returns,
        # which could free the entry.
        ref = ChunkRef(self, id, owner, length, offset, state)
        self._returned(id, weight)
        return ref

    def _refilled(self, id: int, owner: int, future: Future[int]) -> None:
        if future.exception() is not None or self.closed:
            return
        weight = future.result()
        if id in self.table:
            self._settle(id, self.table.adopt(id, owner, owner, weight))
        else:  # every handle went meanwhile: the weight goes straight back
            self._give_back(owner, id, weight)

    def release(self, id: int) -> None:
        if self.closed:
            return
        try:
            self._settle(id, self.table.release(id))
        except Exception:  # from __del__: report, never raise
            logger.exception("conveyor: rank %d: releasing chunk %#x failed", self.rank, id)

    def _settle(self, id: int, released: tuple[bool, int, int]) -> None:
        # What the table left to do (see ChunkTable.release): send weight
        # back to its home, or forget an owned chunk that went.
        freed, home, weight = released
        if weight:
            self._give_back(home, id, weight)
        elif freed:
            self._forget(id)

    def _give_back(self, home: int, id: int, weight: int) -> None:
        self.transport.send(home, CHUNK_GIVE_BACK, (id, weight))

    def _forget(self, id: int) -> None:
        # The chunk is gone: so is what its owner published about it, and
        # its hold of a shared file (mappings elsewhere stay valid). A
        # chunk freed before it was settled published nothing, and deleting
        # a key never set is an error at the table's home.
        self._shared.pop(id, None)
        buffer = self._pooled.pop(id, None)
        if buffer is not None:
            self._pool.give(buffer)
        if id in self._published:
            self._published.remove(id)
            self.states.delete(id)

    def _on_give_back(self, msg: Message) -> None:
        self._returned(*msg.payload)

    def _returned(self, id: int, weight: int) -> None:
        # Weight back where it was lent: at the owner, the last of it frees
        # the chunk; at a proxy, it lets the entry go.
        self._settle(id, self.table.give_back(id, weight))

    def _on_refill(self, msg: Message) -> int:
        return self.table.lend(msg.payload)[0]  # the owner's: minted

    def _on_driver_done(self, msg: Message) -> None:
        self.drivers_done += 1

    # -- owned chunks: settling and waiting ----------------------------------

    def when_settled(self, id: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once chunk `id`, owned here, is settled (at once if it is).

        A chunk whose task has not arrived yet (a fetch may overtake it)
        is waited for from its creation on.
        """
        if id not in self.table:
            self._early.setdefault(id, []).append(callback)
            return
        token = self._next_token
        if self.table.add_waiter(id, token):
            self._next_token += 1
            self._waiters[token] = (id, callback)
        else:
            callback()

    def state(self) -> tuple[ChunkWait, ...]:
        """What waits for chunks owned here: by chunk, and those whose task has not arrived."""
        waiting = collections.Counter(id for id, _ in list(self._waiters.values()))
        arrived = [ChunkWait(id, n, True) for id, n in waiting.items()]
        early = [ChunkWait(id, len(calls), False) for id, calls in list(self._early.items())]
        return tuple(arrived + early)

    def resolve(self, ref: ChunkRef, value: np.ndarray) -> None:
        tokens = self.table.resolve(ref.id, value)
        buffer = self._pool.buffer_of(value)
        if buffer is not None:
            self._pooled[ref.id] = buffer
        rows = value.shape[0] if value.ndim else None
        self._settled(
            ref,
            RESOLVED,
            tokens,
            {
                "state": RESOLVED,
                "owner": self.rank,
                "length": rows,
                "dtype": value.dtype.str,
                "shape": value.shape,
            },
        )

    def fail(self, ref: ChunkRef, error: bytes) -> None:
        """Settle `ref`'s chunk with `error`, made by `error_bytes`."""
        tokens = self.table.fail(ref.id, error)
        self._settled(ref, ERROR, tokens, {"state": ERROR, "owner": self.rank, "error": error})

    def _settled(
        self, ref: ChunkRef, state: int, tokens: list[int], published: dict[str, Any]
    ) -> None:
        ref._state = state
        self._published.add(ref.id)
        self.states.put(ref.id, published)
        self._ready.extend(self._waiters.pop(token)[1] for token in tokens)
        # Settling one chunk may complete tasks that settle others: run them
        # one after the other here rather than nested ever deeper.
        if self._draining:
            return
        self._draining = True
        try:
            while self._ready:
                self._ready.popleft()()
        finally:
            self._draining = False

    def rows(self, ref: ChunkRef, start: int, stop: int | None, put: Put, fail: Fail) -> None:
        """Pass rows [start, stop) of `ref`'s chunk (all with stop None) to ``put(array)``
        once it is settled, or its error's bytes to ``fail(error)``."""
        if ref.owner == self.rank:
            self.when_settled(ref.id, lambda: self._local_rows(ref.id, start, stop, put, fail))
            return
        whole = self._mapped_rows(ref.id)
        if whole is not None:
            put(whole if stop is None else whole[start:stop])
            return
        # The callback holds `ref` until the answer is read: the chunk
        # (and a shared file its rows are a view of) lives until then.
        self.requests.request(ref.owner, CHUNK_FETCH, (ref.id, start, stop)).add_done_callback(
            functools.partial(self._fetched, ref=ref, put=put, fail=fail)
        )

    def _local_rows(self, id: int, start: int, stop: int | None, put: Put, fail: Fail) -> None:
        # Rows of an owned chunk, in place.
        if self.table.state(id) == ERROR:
            fail(self.table.error(id))
            return
        value = self.table.value(id)  # a read-only view: no copy
        put(value if stop is None else value[start:stop])

    def _shared_rows(
        self, id: int, value: np.ndarray, start: int, stop: int | None
    ) -> _shared.SharedView:
        segment = self._shared.get(id)
        if segment is None:
            segment = self._shared[id] = _shared.share(value, self.m._host_index)
            # The chunk now lives in the file: its private memory goes.
            self.table.replace(id, segment.array(value.dtype, value.shape))
            self._pooled.pop(id, None)  # its views here go with this call
        if value.ndim == 0:
            return segment.view(value.dtype, ())
        begin, end, _ = slice(start, stop).indices(value.shape[0])
        rows = value[begin:end]  # C-contiguous, as the table keeps values
        return segment.view(value.dtype, rows.shape, begin * value.strides[0] if len(rows) else 0)

    def _fetched(
        self, future: Future[tuple[Any, ...]], ref: ChunkRef, put: Put, fail: Fail
    ) -> None:
        exc = future.exception()
        if exc is not None:
            fail(error_bytes(exc, self.rank))
            return
        state, value, *file = future.result()
        if state == RESOLVED and file:  # rows of a shared file: (its name, the chunk's shape)
            self._remember_file(ref, value, file[0])
        (put if state == RESOLVED else fail)(value)

    def _remember_file(self, ref: ChunkRef, rows: Any, file: Any) -> None:
        # What a host peer said of the file its chunk lives in, checked as
        # far as it can be here (a shape of the chunk's length, when known);
        # `_shared.mapped` checks the rest.
        if not (
            isinstance(rows, np.ndarray)
            and isinstance(file, (tuple, list))
            and len(file) == 2
            and isinstance(file[0], str)
            and isinstance(file[1], list)
            and all(isinstance(n, int) and n >= 0 for n in file[1])
            and (ref.length is None or file[1][:1] == [ref.length])
        ):
            return
        self._peer_files[ref.id] = (file[0], rows.dtype, tuple(file[1]))
        if len(self._peer_files) > PEER_FILES:
            self._peer_files.popitem(last=False)

    def _mapped_rows(self, id: int) -> np.ndarray | None:
        # The whole chunk `id` of a host peer, if its file is still mapped here.
        file = self._peer_files.get(id)
        if file is None:
            return None
        whole = _shared.mapped(*file)
        if whole is None:
            del self._peer_files[id]
        return whole

    def _on_fetch(self, msg: Message) -> None:
        id, start, stop = msg.payload
        msg.defer()
        self.when_settled(id, lambda: self._answer_fetch(msg, id, start, stop))

    def _answer_fetch(self, msg: Message, id: int, start: int, stop: int | None) -> None:
        # The rows, or for a rank of this host a view of them in the
        # chunk's shared file, with the file's name and the chunk's shape,
        # so that it reads other rows later without asking (`_mapped_rows`).
        if msg.source in self._host_peers and self.table.state(id) != ERROR:
            value = self.table.value(id)
            if value.nbytes >= SHARE_BYTES:
                rows = self._shared_rows(id, value, start, stop)
                msg.reply((RESOLVED, rows, (rows.name, list(value.shape))))
                return
        self._local_rows(
            id,
            start,
            stop,
            lambda rows: msg.reply((RESOLVED, rows)),
            lambda error: msg.reply((ERROR, error)),
        )

    # -- tasks -----------------------------------------------------------------

    def submit(
        self,
        owner: int,
        length: int | None,
        offset: int | None,
        function: bytes | None,
        args: Sequence[Spec],
        kwargs: dict[str, Spec] | None = None,
        plan: Plan | None = None,
    ) -> ChunkRef:
        """Ask `owner` to compute a new chunk; return its reference at once.

        Parameters
        ----------
        function : bytes or None
            ``_pickling.dumps(f)``; None passes the single argument on. It
            travels once per rank, and by digest afterwards (`_shipping`).
        args, kwargs : list, dict
            Input specs: ``("value", x)``, ``("pickled", bytes)``,
            ``("whole", ref)`` (a whole chunk), ``("pieces", [(ref,
            start, stop), ...], rows)`` (those rows, one after the other,
            recycled to ``rows`` rows: an argument aligned by
            `core.chunks.align`), or, with a `plan`, ``("aligned", [ref,
            ...])``: every chunk of an argument whose lengths need not be
            known yet, aligned on the owner once they are (`_planned`).
        plan : tuple of int, optional
            ``(k, target)``: the new chunk is chunk k of the result of an
            elementwise call over the "aligned" arguments, recycled as in R,
            where ``target`` is the index among all inputs of the argument
            whose chunking the result keeps (see `_planned`).
        """
        ref, weight = self.mint(owner, length, offset)
        parcel = None if function is None else self._shipped.parcel_pickled(owner, function)
        task = {
            "id": ref.id,
            "weight": weight if owner != self.rank else -1,
            "length": length,
            "function": parcel,
            "args": args,
            "kwargs": kwargs or {},
            "plan": plan,
        }
        self.transport.send(owner, CHUNK_TASK, task)
        if parcel is not None:
            # Only once it left: the owner will see it (and map it).
            self._shipped.sent(owner, parcel)
        return ref

    def _on_task(self, msg: Message) -> None:
        task = msg.payload
        # First, in the order the tasks came, whatever becomes of the task:
        # the sender counts on it (_shipping).
        function: Callable[..., Any] | None = None
        unloaded = None
        try:
            if task["function"] is not None:
                function = self._received.function(msg.source, task["function"])
        except Exception as exc:  # a function that does not unpickle here: the chunk fails
            unloaded = error_bytes(exc, self.rank, traceback.format_exc())
        mapped = Received.mapped_digest(task["function"])
        if mapped is not None:  # its sender holds the file until it hears so
            self.transport.send(msg.source, CHUNK_MAPPED, mapped)
        id = task["id"]
        if task["weight"] >= 0:  # else its minter, this rank, created it
            self.table.create(id, task["weight"])
        elif id not in self.table:
            # Minted here, and every reference was dropped before the task
            # ran (a result not kept: ``dcall(f, x)`` alone, or rebound):
            # the chunk is freed already and nobody can ask for it.
            return
        out = ChunkRef(self, id, self.rank, task["length"], None)  # held until settled
        for callback in self._early.pop(id, ()):
            self.when_settled(id, callback)
        if _progress.active:  # counted by the ProgressBars in their blocks
            self.when_settled(id, _progress.task_arrived())
        args, kwargs = task["args"], task["kwargs"]
        names = list(kwargs)
        specs = list(args) + [kwargs[name] for name in names]
        if unloaded is not None:
            self.fail(out, unloaded)
            return

        def compute(specs: list[Spec], length: int | None) -> None:
            def run(values: list[Any]) -> None:
                try:
                    empty = self._pool.empty
                    if length is not None and by_segments_fits(function, values, names, length):
                        result = by_segments(function, values, length, empty)
                    else:
                        values = [v.joined(empty) if isinstance(v, Segments) else v for v in values]
                        positional = values[: len(args)]
                        keywords = dict(zip(names, values[len(args) :]))
                        result = (
                            positional[0] if function is None else function(*positional, **keywords)
                        )
                    self.resolve(out, self._checked(result, length))
                except Exception as exc:
                    self.fail(out, error_bytes(exc, self.rank, traceback.format_exc()))

            gather = _Gather(len(specs), run, lambda error: self.fail(out, error))
            try:
                for index, spec in enumerate(specs):
                    self._input(spec, index, gather)
            except Exception as exc:
                # An input that cannot be read here (an argument that does
                # not unpickle on this rank): the chunk fails, else it would
                # stay pending and everything waiting for it would hang.
                gather.fail(error_bytes(exc, self.rank, traceback.format_exc()))

        if task["plan"] is None:
            compute(specs, task["length"])
        else:
            self._planned(task["plan"], specs, compute, lambda error: self.fail(out, error))

    def _planned(
        self,
        plan: Plan,
        specs: list[Spec],
        compute: Callable[[list[Spec], int], None],
        fail: Fail,
    ) -> None:
        # Chunk k of an elementwise call whose arguments' lengths were not
        # all known when it was issued (dcall on results of dmap): learned
        # here, from what their owners publish, as callbacks, so that
        # neither the caller nor this handler waits. Then the arguments are
        # aligned as the caller would have: the target keeps its chunking
        # if it is the longest, else the longest length is split evenly
        # over as many chunks; shorter arguments are recycled.
        k, target = plan if isinstance(plan, (tuple, list)) and len(plan) == 2 else (-1, -1)
        aligned = [i for i, spec in enumerate(specs) if spec[0] == "aligned"]
        if target not in aligned or not (isinstance(k, int) and 0 <= k < len(specs[target][1])):
            error = ValueError(f"a task's plan {plan!r} does not match its inputs")
            fail(error_bytes(error, self.rank))  # a forged plan: the chunk fails
            return
        unknown = [ref for i in aligned for ref in specs[i][1] if ref.length is None]

        def align(_: list[Any]) -> None:
            try:
                sizes = {i: [ref.length for ref in specs[i][1]] for i in aligned}
                totals = {i: sum(sizes[i]) for i in aligned}
                longest = 0 if 0 in totals.values() else max(totals.values())  # R: 0 wins
                count = len(sizes[target])
                if totals[target] == longest:
                    begin, length = sum(sizes[target][:k]), sizes[target][k]
                else:
                    begin = k * longest // count
                    length = (k + 1) * longest // count - begin
                planned = list(specs)
                for i in aligned:
                    refs = specs[i][1]
                    if i == target and totals[i] == longest:
                        planned[i] = ("whole", refs[k])
                    else:
                        pieces = aligned_pieces(refs, sizes[i], begin, length)
                        planned[i] = ("pieces", pieces, length)
            except Exception as exc:
                fail(error_bytes(exc, self.rank, traceback.format_exc()))
                return
            if k == 0 and any(longest % n for n in totals.values() if n):
                # The caller could not know: it is said where the lengths are.
                warnings.warn(RECYCLING, RecyclingWarning, stacklevel=1)
            compute(planned, length)

        lengths = _Gather(len(unknown), align, fail)
        if not unknown:
            align([])
        for index, ref in enumerate(unknown):
            self.states.wait(ref.id).add_done_callback(
                functools.partial(self._learned, ref, index, lengths)
            )

    def _learned(self, ref: ChunkRef, index: int, lengths: _Gather, future: Future[Any]) -> None:
        # What `ref`'s owner published once it computed it: its length, or its error.
        try:
            ref.length = published_length(future.result())
        except Exception as exc:  # the chunk's error (kept whole), the wait's, or 0-d
            lengths.fail(error_bytes(exc, self.rank))
        else:
            lengths.put(index, None)

    def _input(self, spec: Spec, index: int, gather: _Gather) -> None:
        kind = spec[0]
        if kind == "value":
            gather.put(index, spec[1])
        elif kind == "pickled":
            gather.put(index, _pickling.loads(spec[1]))
        elif kind == "whole":
            self.rows(spec[1], 0, None, lambda value: gather.put(index, value), gather.fail)
        elif kind == "pieces":
            self._pieces(spec[1], spec[2], index, gather)
        elif kind == "aligned":  # only in a plan, which replaces it
            raise ValueError("an aligned task input without a plan")
        else:
            gather.fail(error_bytes(ValueError(f"unknown task input {kind!r}"), self.rank))

    def _pieces(
        self,
        pieces: list[tuple[ChunkRef, int, int]],
        length: int,
        index: int,
        gather: _Gather,
    ) -> None:
        # One period of an aligned argument, fetched piece by piece (local
        # ones read in place) and recycled to `length` rows. Rows from more
        # than one piece stay `Segments` until the task knows whether its
        # function can take them a piece at a time (no copy) or needs them
        # joined.
        def assemble(parts: list[np.ndarray]) -> None:
            filled = [part for part in parts if len(part)] or parts[:1]
            if len(filled) > 1 and sum(map(len, filled)) == length:
                gather.put(index, Segments(filled))
                return
            period = filled[0] if len(filled) == 1 else np.concatenate(filled)
            if len(period) != length:
                period = np.take(period, np.arange(length) % len(period), axis=0)
            gather.put(index, period)

        parts = _Gather(len(pieces), assemble, gather.fail)
        for k, (ref, start, stop) in enumerate(pieces):
            self.rows(ref, start, stop, functools.partial(parts.put, k), parts.fail)

    @staticmethod
    def _checked(result: Any, length: int | None) -> np.ndarray:
        value = np.asarray(result)
        if value.dtype.hasobject or value.dtype.names is not None:
            raise TypeError(f"a chunk must be a numeric numpy array, not of dtype {value.dtype}")
        if length is not None and (value.ndim == 0 or value.shape[0] != length):
            got = "a scalar" if value.ndim == 0 else f"{value.shape[0]} rows"
            raise ValueError(
                f"the function returned {got} for {length} rows of input: dcall "
                "calls it elementwise (use dmap for chunks of any length)"
            )
        return value


def aligned_pieces(
    refs: Sequence[ChunkRef], sizes: Sequence[int], begin: int, length: int
) -> list[tuple[ChunkRef, int, int]]:
    """The rows of the chunks `refs` (of `sizes` rows) that result rows
    begin .. begin + length take, as the native kernel lists them: one
    period at most, wrapping round (R's recycling). Only the chunks these
    touch travel with a task."""
    pieces = core.chunks.align(list(sizes), begin, begin + length).tolist()
    if not pieces:  # an empty result chunk: no rows, but of the argument's dtype
        pieces = [[next((k for k, size in enumerate(sizes) if size), 0), 0, 0]]
    return [(refs[k], start, stop) for k, start, stop in pieces]


def error_bytes(exc: BaseException, rank: int, text: str = "") -> bytes:
    """What a failed chunk holds: the fields of the RemoteError it raises."""
    if isinstance(exc, RemoteError):
        fields = (exc.rank, exc.remote_type, exc.remote_message, exc.remote_traceback)
    else:
        fields = (rank, type(exc).__qualname__, str(exc), text)
    return json.dumps(fields).encode()
