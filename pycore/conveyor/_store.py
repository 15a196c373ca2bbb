"""Item stores and third-party orders.

Every rank has a store of named items (`Store`). A rank can fetch another's
item, and can order rank b to send its item to rank c (`Transfer`, `Copy`,
`Move`): the item goes from b to c directly (large arrays zero-copy) and
never through the rank that gave the order. Orders are messages to reserved
receivers, so a handler may give orders too.
"""

from __future__ import annotations

import collections.abc
import itertools
import operator
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex

import numpy as np

from ._carriage import CarriageableItem
from ._checks import check_name, check_rank, check_user_tag
from ._config import env_number
from ._errors import RemoteError, StoreFullError
from ._future import Future
from ._shared import (
    HostIndex,
    Segment,
    SharedView,
    UnknownContentError,
    content_array,
    share,
)
from ._tags import ITEM_FETCH, ITEM_MAPPED, ITEM_ORDER, ITEM_PUT

if TYPE_CHECKING:
    from ._dispatch import Receivers
    from ._message import Message
    from ._messenger import Messenger
    from ._requests import Requests

__all__ = ["Store", "Transfer", "Copy", "Move"]

# The reserved receivers of the item service.


def item_bytes(item: object) -> int:
    """The bytes of data ``item`` holds: arrays and byte strings exactly,
    containers as the sum of their items, any other value as 8."""
    nbytes = getattr(item, "nbytes", None)
    if isinstance(nbytes, int):  # numpy arrays and scalars, memoryviews
        return nbytes
    if isinstance(item, (bytes, bytearray)):
        return len(item)
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogatepass"))
    if isinstance(item, (list, tuple)):
        return sum(item_bytes(x) for x in item)
    if isinstance(item, dict):
        return sum(item_bytes(k) + item_bytes(v) for k, v in item.items())
    if isinstance(item, CarriageableItem):
        return item.required_bytes() + sum(item_bytes(a) for a in item.out_of_band())
    return 8


class Store(collections.abc.MutableMapping[str, Any]):
    """The named items of one rank: ``m.store``.

    A mapping from names (strings such as ``"kmers/19123890"``) to
    carriageable items, which other ranks can fetch (`Messenger.fetch`) or
    have sent elsewhere (`Messenger.order`).

    Attributes
    ----------
    nbytes : int
        The bytes of data its items hold (see `capacity`).
    """

    def __init__(
        self, capacity: SupportsIndex | None = None, *, index: HostIndex | None = None
    ) -> None:
        self._items: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._segments: dict[str, Segment] = {}  # the shared items' files
        self._index = index  # the host's index of shared files (dedupe across its ranks)
        self.nbytes = 0
        self.capacity = capacity
        # The most bytes of shared items (CONVEYOR_SHARED_BYTES); None: no limit.
        unset = not os.environ.get("CONVEYOR_SHARED_BYTES")
        self.shared_capacity = None if unset else env_number("CONVEYOR_SHARED_BYTES", 0)

    @property
    def capacity(self) -> int | None:
        """The most bytes of data the store may hold; None: no limit.

        An item that would exceed it is refused with `StoreFullError`. A
        negative capacity raises `ValueError`.
        """
        return self._capacity

    @capacity.setter
    def capacity(self, value: SupportsIndex | None) -> None:
        if value is not None:
            value = operator.index(value)
            if value < 0:
                raise ValueError("a store's capacity must be >= 0")
        self._capacity: int | None = value

    def put(self, name: str, item: Any, *, shared: bool = False) -> None:
        """Store ``item`` under ``name``, replacing what was there.

        Parameters
        ----------
        name : str
            The item's name, such as ``"kmers/42"``.
        item : object
            The item; it must be carriageable for other ranks to fetch it.
        shared : bool, default False
            Copy the array ``item`` once into memory that the other ranks
            of this host map when they fetch it: they get a read-only view
            of it, and no byte is copied (see :ref:`shared-items`). The
            store then holds a read-only view too. Bytes that a rank of
            this host shares already (the same digest, and compared byte
            for byte) are not copied again: the store maps them.

        Raises
        ------
        TypeError
            If ``name`` is not a str, or a shared item is not a numeric
            numpy array (or array-like).
        ValueError
            If ``name`` is empty.
        StoreFullError
            If the store would hold more than its ``capacity``, or its
            shared items more than ``CONVEYOR_SHARED_BYTES``.
        """
        check_name(name)
        if shared:
            item = np.asarray(item)
            self._check_room(name, item_bytes(item))
            segment = share(item, self._index)
            self._put_shared(name, segment, segment.array(item.dtype, item.shape))
            return
        size = self._check_room(name, item_bytes(item))
        self._segments.pop(name, None)  # its file goes with the last reference to it
        self._stored(name, item, size)

    def _check_room(self, name: str, size: int) -> int:
        held = self.nbytes - self._sizes.get(name, 0)
        if self._capacity is not None and held + size > self._capacity:
            raise StoreFullError(
                f"storing {name!r} ({size} bytes) would exceed the store's capacity of "
                f"{self._capacity} bytes ({held} held)"
            )
        return size

    def _put_shared(self, name: str, segment: Segment, item: np.ndarray) -> None:
        size = self._check_room(name, item.nbytes)
        # Bytes this store shares already under another name cost nothing more.
        if segment.key not in {s.key for n, s in self._segments.items() if n != name}:
            others = self._shared_bytes(without=name)
            if self.shared_capacity is not None and others + size > self.shared_capacity:
                raise StoreFullError(
                    f"sharing {name!r} ({size} bytes) would exceed CONVEYOR_SHARED_BYTES="
                    f"{self.shared_capacity} ({others} bytes shared)"
                )
        self._segments[name] = segment  # a previous file goes with its last reference
        self._stored(name, item, size)

    def _stored(self, name: str, item: Any, size: int) -> None:
        self.nbytes += size - self._sizes.get(name, 0)
        self._items[name] = item
        self._sizes[name] = size

    def _put_segment(
        self, name: str, segment: Segment, dtype: np.dtype[Any], shape: tuple[int, ...]
    ) -> None:
        """Store, as a shared item, an array of `dtype` and `shape` over `segment`'s bytes."""
        self._put_shared(name, segment, segment.array(dtype, shape))

    @property
    def shared_nbytes(self) -> int:
        """The bytes of the shared items (``put(..., shared=True)``), equal ones counted once."""
        return self._shared_bytes()

    def _shared_bytes(self, without: str | None = None) -> int:
        held = {s.key: s.nbytes for n, s in self._segments.items() if n != without}
        return sum(held.values())

    def segment(self, name: str) -> Segment | None:
        """The shared file of item ``name``; None if it is not shared."""
        return self._segments.get(name)

    def _view(self, name: str) -> SharedView | None:
        """What a rank of this host maps item ``name`` with; None if it is not shared."""
        segment = self._segments.get(name)
        if segment is None:
            return None
        item = self._items[name]
        return segment.view(item.dtype, item.shape)

    def get(self, name: str, default: Any = None) -> Any:
        """Return the item stored under ``name``, or ``default``.

        Parameters
        ----------
        name : str
            The item's name.
        default : object, optional
            What to return if there is no such item.

        Returns
        -------
        object
            The item itself (not a copy), or ``default``.
        """
        return self._items.get(name, default)

    def delete(self, name: str) -> None:
        """Remove the item ``name``.

        Parameters
        ----------
        name : str
            The item's name.

        Raises
        ------
        KeyError
            If there is no such item.
        """
        del self[name]

    def __getitem__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"no item {name!r} in this store") from None

    def __setitem__(self, name: str, item: Any) -> None:
        self.put(name, item)

    def __delitem__(self, name: str) -> None:
        try:
            del self._items[name]
        except KeyError:
            raise KeyError(f"no item {name!r} in this store") from None
        self._segments.pop(name, None)
        self.nbytes -= self._sizes.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<conveyor.Store {len(self)} items, {self.nbytes} bytes>"


class Transfer:
    """An order: the rank that holds item ``name`` sends it to rank(s) ``to``.

    Give it with ``m.order(b, Transfer(name, to=c))``. The future resolves
    once every destination holds the item. `Copy` keeps the item at b;
    `Move` deletes it there once every destination has acknowledged it.

    Parameters
    ----------
    name : str
        The item's name in the sending rank's store.
    to : int or sequence of int
        The destination rank, or several (a fan-out).
    as_name : str, optional
        The name the destinations store it under (``name`` by default).
    then : tuple, optional
        A follow-up message ``(rank, tag, payload)`` that the sending rank
        sends once the order completed.
    """

    move = False

    def __init__(
        self,
        name: str,
        to: int | Sequence[int],
        *,
        as_name: str | None = None,
        then: tuple[int, str, Any] | None = None,
    ) -> None:
        self.name = check_name(name)
        ranks = [to] if not isinstance(to, (list, tuple, range)) else list(to)
        if not ranks:
            raise ValueError("an order needs at least one destination rank")
        self.to = [check_rank(r) for r in ranks]
        self.as_name = check_name(as_name) if as_name is not None else self.name
        if then is not None:
            if not (isinstance(then, tuple) and len(then) == 3 and isinstance(then[1], str)):
                raise TypeError("then must be a (rank, tag, payload) tuple")
            then = (check_rank(then[0]), check_user_tag(then[1]), then[2])
        self.then = then

    def _as_payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "to": self.to,
            "as": self.as_name,
            "move": self.move,
            "then": self.then,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, to={self.to})"


class Copy(Transfer):
    """A `Transfer` that keeps the item at the sending rank."""


class Move(Transfer):
    """A `Transfer` that deletes the item at the sending rank once every destination holds it."""

    move = True


class ItemService:
    """The receivers behind fetch and orders, on every rank."""

    def __init__(self, messenger: Messenger, receivers: Receivers, requests: Requests) -> None:
        self._m = messenger
        self._requests = requests
        # The files of shared items lent as views to ranks of this host,
        # held until the fetcher says it mapped them: deleting the item
        # meanwhile would close a file that the view names.
        self._lent: dict[int, Segment] = {}
        self._leases = itertools.count()
        receivers.add(ITEM_FETCH, self._fetch)
        receivers.add(ITEM_MAPPED, self._mapped)
        receivers.add(ITEM_PUT, self._put)
        receivers.add(ITEM_ORDER, self._order)

    def fetch(self, rank: int, name: str) -> Future[Any]:
        """`Messenger.fetch`: a shared item as a view, by its digest first from another host.

        From a rank of this host, a shared item's file is mapped, and the
        holder told so (it holds the file until then). What arrives from
        another host's shared item is shared on this host for as long as
        its array lives, so that another rank of this host fetching it maps
        it rather than receives it again (and this rank too, fetching it
        again).
        """
        index = self._m._host_index
        answer: Future[Any] = Future(self._requests, rank, 0)

        # Each step resolves the answer, whatever goes wrong: it never stays pending.
        def offered(future: Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                return answer._resolve(None, error)
            try:
                how, what, *lease = future.result()
                if how == "view":  # mapped as it arrived
                    self._m._transport.send(rank, ITEM_MAPPED, lease[0])
                if how in ("view", "item"):
                    return answer._resolve(what, None)
                try:
                    return answer._resolve(_held(*content_array(what, index)), None)
                except UnknownContentError:  # not on this host yet: its bytes, once
                    pass
            except Exception as exc:
                return answer._resolve(None, exc)
            self._requests.request(rank, ITEM_FETCH, (name, "whole")).add_done_callback(received)

        def received(future: Future[Any]) -> None:
            error = future.exception()
            value = None
            if error is None:
                try:
                    item = future.result()
                    value = _held(share(item, index), item.dtype, item.shape)
                except Exception as exc:
                    error = exc
            answer._resolve(value, error)

        how = "view" if rank in self._m.host_ranks else "digest"
        self._requests.request(rank, ITEM_FETCH, (name, how)).add_done_callback(offered)
        return answer

    def _fetch(self, msg: Message) -> Any:
        # (name, "view"), from a rank of this host: ("view", a view, its
        # lease) for a shared item; (name, "digest"), from another host:
        # ("digest", its content) for a shared item; either way ("item",
        # the item) for a plain one. (name, "whole"): the item itself.
        m = self._m
        try:
            name, how = msg.payload
            if not isinstance(name, str) or how not in ("view", "digest", "whole"):
                raise ValueError
        except (TypeError, ValueError):
            msg.fail(ValueError(f"malformed fetch: {msg.payload!r:.200}"))
            return None
        try:
            item = m.store[name]
        except KeyError as exc:
            msg.fail(exc.with_traceback(None))  # without a traceback: nothing went wrong here
            return None
        if how == "whole":
            return item
        segment = m.store.segment(name)
        if segment is None:
            return ("item", item)
        if how == "digest" or msg.source not in m.host_ranks:
            return ("digest", _content(segment, item))
        lease = next(self._leases)
        self._lent[lease] = segment
        return ("view", m.store._view(name), lease)

    def _mapped(self, msg: Message) -> None:
        if type(msg.payload) is int:
            self._lent.pop(msg.payload, None)

    def _put(self, msg: Message) -> int:
        # (name, item): a plain item; (name, array, "shared"): a shared item
        # of another host, shared here too; (name, (digest, nbytes, dtype,
        # shape), "digest"): one that this host holds already, or an
        # UnknownContentError (the sender then sends it whole).
        name, item, *how = msg.payload
        store = self._m.store
        if how == ["digest"]:
            store._put_segment(name, *content_array(item, self._m._host_index))
            return item_bytes(store[name])
        store.put(name, item, shared=how == ["shared"])
        return item_bytes(item)

    def _order(self, msg: Message) -> None:
        m = self._m
        order = msg.payload
        item = m.store[order["name"]]  # a KeyError answers the order's giver
        msg.defer()
        acks = [self._send_put(order["as"], order["name"], item, rank) for rank in order["to"]]
        pending = [len(acks)]
        failures: list[BaseException] = []

        def acked(future: Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                failures.append(error)
            pending[0] -= 1
            if pending[0] == 0:
                self._complete(msg, order, acks, failures)

        for future in acks:
            future.add_done_callback(acked)

    def _send_put(self, as_name: str, name: str, item: Any, rank: int) -> Future[Any]:
        # A shared item goes by its digest first, and whole only if the
        # destination's host lacks it: a rank of this host maps this file,
        # and stores the item shared too.
        segment = self._m.store.segment(name)
        if segment is None:
            return self._requests.request(rank, ITEM_PUT, (as_name, item))
        offered = self._requests.request(
            rank, ITEM_PUT, (as_name, _content(segment, item), "digest")
        )
        answer: Future[Any] = Future(self._requests, rank, 0)

        def offered_done(future: Future[Any]) -> None:
            error = future.exception()
            if not (isinstance(error, RemoteError) and error.remote_type == "UnknownContentError"):
                answer._resolve(None if error else future.result(), error)
                return
            whole = self._requests.request(rank, ITEM_PUT, (as_name, item, "shared"))
            whole.add_done_callback(
                lambda f: answer._resolve(None if f.exception() else f.result(), f.exception())
            )

        offered.add_done_callback(offered_done)
        return answer

    def _complete(
        self,
        msg: Message,
        order: dict[str, Any],
        acks: list[Future[Any]],
        failures: list[BaseException],
    ) -> None:
        m = self._m
        if msg.cancelled:
            return
        if failures:
            msg.fail(failures[0])
            return
        # A move onto itself under the same name keeps what the put stored.
        kept = m.rank in order["to"] and order["as"] == order["name"]
        if order["move"] and not kept and order["name"] in m.store:
            m.store.delete(order["name"])
        try:
            if order["then"] is not None:
                rank, tag, payload = order["then"]
                m.send(rank, tag, payload)
        except Exception as exc:  # a follow-up that cannot go fails the order, never hangs it
            msg.fail(exc)
            return
        msg.reply({"name": order["as"], "to": order["to"], "bytes": acks[0].result()})


def _content(segment: Segment, item: np.ndarray) -> tuple[bytes, int, str, list[int]]:
    """A shared item named by its content: (digest, nbytes, dtype, shape), as it is offered."""
    return (segment.key, segment.nbytes, item.dtype.str, list(item.shape))


def _held(segment: Segment, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """A read-only array over `segment` that holds it (and its record in the
    host index) for as long as the array, or any view of it, lives."""
    array = segment.array(dtype, shape)
    # Views of it (and it) refer to the array over the mapping itself, not
    # to each other: numpy collapses a view's base to that one.
    root = array
    while isinstance(root.base, np.ndarray):
        root = root.base
    weakref.finalize(root, _hold, segment)
    return array


def _hold(segment: Segment) -> None:
    """Nothing: weakref.finalize keeps its arguments alive until it runs."""
