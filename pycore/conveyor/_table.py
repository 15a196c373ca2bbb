"""Distributed key-value tables: ``m.table(name)``.

Every key has a home rank, chosen by a stable hash of the key's canonical
encoding, the same on every rank and in every process (Python's own
``hash`` is salted per process). The home stores the value and answers
gets, deletes and waits. A wait for a key that is not set yet is deferred
at the home and answered by the put that sets it, so no handler ever
blocks. Tables are reserved receivers on every rank: any rank may use any
table at any time, without a collective call.
"""

from __future__ import annotations

import hashlib
import numbers
from typing import TYPE_CHECKING, Any, Callable, Union

from ._checks import check_name
from ._diagnostics import TableWait
from ._dispatch import reply_target
from ._errors import RemoteError
from ._future import Future
from ._tags import TABLE_DELETE, TABLE_GET, TABLE_PUT, TABLE_UNWAIT, TABLE_WAIT

if TYPE_CHECKING:
    import numpy as np

    from ._dispatch import Receivers
    from ._message import Message
    from ._messenger import Messenger
    from ._requests import Requests

    # What a table key may be: str, bytes, int, or a (nested) tuple of these.
    Key = Union[str, bytes, int, np.integer[Any], tuple["Key", ...]]

__all__ = ["Table"]


# The canonical encoding of a key: a type byte, the length of the data as
# an unsigned LEB128 number, then the data. For a tuple the "length" is its
# number of items, and the items follow, each encoded the same way.
_STR, _BYTES, _INT, _TUPLE = b"s", b"b", b"i", b"t"

# Table.get without a default (None is a default like any other).
_NO_DEFAULT: Any = object()


def encode_key(key: Key) -> bytes:
    """Return the canonical encoding (bytes) of a table key.

    Raises
    ------
    TypeError
        If ``key`` is not a str, bytes, int or (nested) tuple of these.
    """
    out = bytearray()
    _encode(key, out)
    return bytes(out)


def _encode(key: Key, out: bytearray) -> None:
    if isinstance(key, str):
        kind, data = _STR, key.encode("utf-8", "surrogatepass")
    elif isinstance(key, bytes):
        kind, data = _BYTES, bytes(key)
    elif isinstance(key, tuple):
        out += _TUPLE
        _put_length(len(key), out)
        for item in key:
            _encode(item, out)
        return
    elif isinstance(key, numbers.Integral) and not isinstance(key, bool):
        n = int(key)  # numpy integers are the int of the same value
        kind, data = _INT, n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)
    else:
        raise TypeError(
            f"a table key must be a str, bytes, int or tuple of these, not {type(key).__name__}"
        )
    out += kind
    _put_length(len(data), out)
    out += data


def _put_length(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def decode_key(data: bytes) -> Key:
    """Return the key whose canonical encoding is `data` (ValueError if malformed)."""
    key, end = _decode(data, 0)
    if end != len(data):
        raise ValueError("malformed table key: trailing bytes")
    return key


def _decode(data: bytes, pos: int) -> tuple[Key, int]:
    if pos >= len(data):
        raise ValueError("malformed table key: truncated")
    kind = data[pos : pos + 1]
    n, shift, pos = 0, 0, pos + 1
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("malformed table key: bad length")
        byte = data[pos]
        n |= (byte & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if byte < 0x80:
            break
    if kind == _TUPLE:
        items: list[Key] = []
        for _ in range(n):
            item, pos = _decode(data, pos)
            items.append(item)
        return tuple(items), pos
    end = pos + n
    if end > len(data):
        raise ValueError("malformed table key: truncated")
    chunk = bytes(data[pos:end])
    if kind == _STR:
        return chunk.decode("utf-8", "surrogatepass"), end
    if kind == _BYTES:
        return chunk, end
    if kind == _INT:
        return int.from_bytes(chunk, "big", signed=True), end
    raise ValueError(f"malformed table key: unknown type byte {kind!r}")


def key_hash(key: Key) -> int:
    """Return the stable 64-bit hash of a table key (identical on every rank and run)."""
    return _hash(encode_key(key))


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def home_of(key: Key, size: int) -> int:
    """Return the home rank of `key` among `size` ranks: the same on every rank and run."""
    return _hash(encode_key(key)) % size


class Table:
    """A distributed key-value table: ``m.table(name)``.

    Keys are str, bytes, int (numpy integers too, bool not), or (nested)
    tuples of these; values are anything carriageable. Each key lives on one home rank, chosen by a
    stable hash of the key (the same on every rank, and in every table:
    facts about one key in several tables live together). Every method
    sends a request to the key's home (this rank included) and returns a
    `Future` at once, so it may be called from a handler (with
    `Future.add_done_callback`) or awaited in a coroutine. Any rank may use
    any table at any time; no collective call is needed.

    A key that is not a str, bytes, int or tuple of these raises
    `TypeError` at the call, and a value that cannot travel raises
    `CarriageError`: nothing is sent.
    """

    __slots__ = ("_service", "_name")

    def __init__(self, service: TableService, name: str) -> None:
        self._service = service
        self._name = name

    @property
    def name(self) -> str:
        """The table's name (a str)."""
        return self._name

    def put(self, key: Key, value: Any) -> Future[None]:
        """Set ``key`` to ``value``, replacing any value it had.

        The waits for ``key`` on every rank resolve with ``value``. As with
        any send, do not modify a large array until the future resolves.

        Parameters
        ----------
        key : str, bytes, int or tuple
            The key.
        value : object
            The value; it must be carriageable.

        Returns
        -------
        Future
            Resolves to None once the home rank stores the value.

        Raises
        ------
        TypeError
            If ``key`` is not a str, bytes, int or tuple of these.
        conveyor.CarriageError
            If ``value`` cannot travel.
        """
        return self._request(TABLE_PUT, key, value)

    def get(self, key: Key, default: Any = _NO_DEFAULT) -> Future[Any]:
        """Return a `Future` for the value of ``key``.

        If the key is not set, the future resolves to ``default`` when one
        is given, and otherwise fails with a `RemoteError` that is also a
        ``KeyError``, as `Messenger.fetch` does for a missing item.

        Parameters
        ----------
        key : str, bytes, int or tuple
            The key.
        default : object, optional
            The value of a key that is not set.

        Returns
        -------
        Future
            Resolves with the value.

        Raises
        ------
        TypeError
            If ``key`` is not a str, bytes, int or tuple of these.
        """
        if default is _NO_DEFAULT:
            return self._request(TABLE_GET, key)
        return self._open(
            TABLE_GET, key, lambda requests, home, ref, data: _Get(requests, home, ref, default)
        )

    def wait(self, key: Key) -> Future[Any]:
        """Return a `Future` for the value of ``key`` once it is set.

        It resolves at once if the key is set, otherwise when any rank puts
        it. Cancelling the future (``future.cancel()``, or cancelling the
        task that awaits it) removes the wait from the home rank.

        Parameters
        ----------
        key : str, bytes, int or tuple
            The key.

        Returns
        -------
        Future
            Resolves with the value.

        Raises
        ------
        TypeError
            If ``key`` is not a str, bytes, int or tuple of these.
        """
        return self._open(
            TABLE_WAIT,
            key,
            lambda requests, home, ref, data: _Wait(requests, home, ref, (self.name, data, ref)),
        )

    def delete(self, key: Key) -> Future[None]:
        """Remove ``key``.

        Parameters
        ----------
        key : str, bytes, int or tuple
            The key.

        Returns
        -------
        Future
            Resolves to None once the key is removed; fails with a
            `RemoteError` that is also a ``KeyError`` if it was not set.

        Raises
        ------
        TypeError
            If ``key`` is not a str, bytes, int or tuple of these.
        """
        return self._request(TABLE_DELETE, key)

    def local_keys(self) -> list[Key]:
        """Return the keys set in this table whose home is this rank (for tests and debugging).

        Returns
        -------
        list
            The keys, in no particular order.
        """
        shard = self._service._shards.get(self.name)
        return [decode_key(data) for data in shard.values] if shard else []

    def local_waiters(self) -> dict[Key, int]:
        """Return ``{key: number of waits}`` for the keys not set yet whose waits this rank holds.

        A key waited for but never put shows here, on its home rank.

        Returns
        -------
        dict
            The number of waits of each such key.
        """
        shard = self._service._shards.get(self.name)
        return {decode_key(data): len(w) for data, w in shard.waiters.items()} if shard else {}

    def _home(self, key: Key) -> tuple[int, bytes]:
        # (home rank, encoded key); a bad key raises before anything is sent.
        data = encode_key(key)
        return _hash(data) % self._service._m.size, data

    def _open(
        self, tag: str, key: Key, make: Callable[[Requests, int, int, bytes], Future[Any]]
    ) -> Future[Any]:
        # A request whose future is ``make(requests, home, ref, encoded key)``.
        home, data = self._home(key)
        requests = self._service.requests
        requests.transport.check_open()
        return requests.open(
            home, tag, (self.name, data), lambda ref: make(requests, home, ref, data)
        )

    def _request(self, tag: str, key: Key, *value: Any) -> Future[Any]:
        home, data = self._home(key)
        return self._service.requests.request(home, tag, (self.name, data, *value))

    def __repr__(self) -> str:
        return f"<conveyor.Table {self.name!r} on rank {self._service._m.rank}>"


class _Get(Future[Any]):
    # The future of a get with a default: a missing key resolves to it.

    __slots__ = ("_default",)

    def __init__(self, requests: Requests, dest: int, ref: int, default: Any) -> None:
        super().__init__(requests, dest, ref)
        self._default = default

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, RemoteError) and isinstance(exc, KeyError):  # from _holding
            self._answer(self._default, True)
        else:
            super()._fail(exc)


class _Wait(Future[Any]):
    # The future of a wait: cancelling it also removes the waiter at the home.

    __slots__ = ("_unwait",)

    def __init__(
        self, requests: Requests, dest: int, ref: int, unwait: tuple[str, bytes, int]
    ) -> None:
        super().__init__(requests, dest, ref)
        self._unwait = unwait

    def cancel(self) -> bool:
        waiting = not self.done()
        if not super().cancel():
            return False
        if waiting and not self._requests.transport.closed:
            self._requests.transport.send(self._dest, TABLE_UNWAIT, self._unwait)
        return True


class _Shard:
    # The keys of one table whose home is this rank, by encoded key: their
    # values, and the waits (deferred requests) for keys not set yet.

    __slots__ = ("values", "waiters")

    def __init__(self) -> None:
        self.values: dict[bytes, Any] = {}
        self.waiters: dict[bytes, dict[tuple[int, int], Message]] = {}


class TableService:
    """The receivers behind tables, on every rank, and the tables made here."""

    def __init__(self, messenger: Messenger, receivers: Receivers, requests: Requests) -> None:
        self._m = messenger
        self.requests = requests
        self._tables: dict[str, Table] = {}
        self._shards: dict[str, _Shard] = {}
        receivers.add(TABLE_PUT, self._put)
        receivers.add(TABLE_GET, self._get)
        receivers.add(TABLE_WAIT, self._wait)
        receivers.add(TABLE_DELETE, self._delete)
        receivers.add(TABLE_UNWAIT, self._unwait)

    def table(self, name: str) -> Table:
        table = self._tables.get(check_name(name, "a table name"))
        if table is None:
            table = self._tables[name] = Table(self, name)
        return table

    def state(self) -> tuple[TableWait, ...]:
        """The waits this rank holds, as the home of keys not set yet."""
        return tuple(
            TableWait(name, decode_key(data), len(waits))
            for name, shard in list(self._shards.items())
            for data, waits in list(shard.waiters.items())
        )

    # -- the home's side -----------------------------------------------------

    def _shard(self, name: str) -> _Shard:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = _Shard()
        return shard

    def _drop_if_empty(self, name: str, shard: _Shard) -> None:
        if not shard.values and not shard.waiters:
            del self._shards[name]

    def _holding(self, msg: Message) -> tuple[str, bytes, _Shard] | None:
        # (name, encoded key, shard) of a get or delete. If the key is not
        # set, None, and the request fails with KeyError, without a
        # traceback: nothing went wrong on this rank.
        name, data = msg.payload
        shard = self._shards.get(name)
        if shard is None or data not in shard.values:
            msg.fail(KeyError(f"no key {decode_key(data)!r} in table {name!r}"))
            return None
        return name, data, shard

    def _put(self, msg: Message) -> None:
        name, data, value = msg.payload
        shard = self._shard(name)
        shard.values[data] = value
        for waiter in shard.waiters.pop(data, {}).values():
            waiter.reply(value)

    def _get(self, msg: Message) -> Any:
        held = self._holding(msg)
        if held is not None:
            _, data, shard = held
            return shard.values[data]
        return None

    def _wait(self, msg: Message) -> Any:
        name, data = msg.payload
        shard = self._shard(name)
        if data in shard.values:
            return shard.values[data]
        msg.defer()
        _, _, ref = reply_target(msg)
        shard.waiters.setdefault(data, {})[(msg.source, ref)] = msg

    def _delete(self, msg: Message) -> None:
        held = self._holding(msg)
        if held is not None:
            name, data, shard = held
            del shard.values[data]
            self._drop_if_empty(name, shard)

    def _unwait(self, msg: Message) -> None:
        name, data, ref = msg.payload
        shard = self._shards.get(name)
        waiters = shard.waiters.get(data) if shard else None
        if shard is None or waiters is None or waiters.pop((msg.source, ref), None) is None:
            return  # answered by a put before the cancel came
        if not waiters:
            del shard.waiters[data]
            self._drop_if_empty(name, shard)
