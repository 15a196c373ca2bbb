"""Bytes that every rank of a host maps, stored once per host and named by their content.

A shared item's bytes live in an anonymous shared-memory file
(``memfd_create``): no name in ``/dev/shm``, so nothing can be left
behind, whatever way the job ends, and the kernel frees the memory once
the last process that holds the file or a mapping of it is gone. A rank of
the same host that fetches the item gets, instead of its bytes, a
`SharedView`: where to find the file (a holder's pid, its descriptor and
the file's name), and maps it read-only, so the fetch copies nothing.
Ranks of other hosts get the bytes, as for any item.

Content addressing (dedupe). Every file is named by the digest of its
bytes (`digest`: xxh3-128 from the xxhash library, or BLAKE2b-256 with
``CONVEYOR_STRONG_DIGEST=1``), and each host keeps an index of who holds
which (`HostIndex`: fixed-size records in a memfd of the host's lowest
rank, which every rank of the host opens when its messenger is made, and
edits under a POSIX record lock, which the kernel drops if its process
dies). `share` looks the digest up before it writes a new file: if a
process of the host holds the same bytes (compared byte for byte, so a
collision of digests stores a second file rather than wrong data), it opens
that file instead, and the host holds the bytes once. A `Segment` is one
process's hold of a file: its descriptor and its record in the index;
equal bytes shared twice by one process are one Segment, kept as long as
anything of the process refers to it (Python's reference counts), and the
file as long as any process holds or maps it (the kernel's). Records of
processes that closed their file or died are recognised as stale when read
(the descriptor no longer names the file) and reused.

Why not MPI's shared windows (``MPI_Win_allocate_shared``): they are
allocated collectively by every rank of the host, and a store's put is one
rank's act, at any time.

A view's descriptor comes in a message, so it is checked before anything is
opened: the pid must be one of this host's ranks (`trust`), the descriptor
must be a memfd of conveyor's under the name given (read back from
``/proc``, before and after opening, so a descriptor number reused for
another file is refused), and the file must be large enough for the
dtype, shape and offset, and the dtype plain numeric data.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import math
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash

from ._carriage import CarriageableItem

if TYPE_CHECKING:
    from mpi4py import MPI

    from ._hosts import Hosts

__all__ = [
    "HostIndex",
    "Segment",
    "SharedView",
    "UnknownContentError",
    "content_array",
    "digest",
    "lookup",
    "share",
    "trust",
]

_PREFIX = "conveyor-shared-"
_serial = itertools.count()
# The pids of the processes on this process's hosts (every messenger's):
# the only ones whose files a view may open.
_trusted: set[int] = set()


def trust(pids: Iterable[int]) -> None:
    """Let views open the shared files of processes `pids` (this host's ranks)."""
    _trusted.update(pids)


def digest(data: Any) -> bytes:
    """The content digest of the bytes of `data` (a C-contiguous buffer).

    16 bytes of xxh3-128, or, with ``CONVEYOR_STRONG_DIGEST=1``, 32 bytes of
    BLAKE2b (a cryptographic hash, for content a digest alone may stand
    for across hosts without its bytes being compared).
    """
    if os.environ.get("CONVEYOR_STRONG_DIGEST", "") not in ("", "0"):
        return hashlib.blake2b(data, digest_size=32).digest()
    return xxhash.xxh3_128_digest(data)


def _bytes_of(array: np.ndarray) -> np.ndarray:
    # The bytes of a C-contiguous array, as a flat uint8 array (no copy).
    return array.reshape(-1).view(np.uint8)


def _open_file(pid: int, fd: int, name: str) -> int:
    """Open the memfd `name` that process `pid` holds as `fd`; return this process's descriptor.

    Raises FileNotFoundError if that descriptor no longer names the file.
    """
    expected = f"/memfd:{name} (deleted)"
    source = f"/proc/{pid}/fd/{fd}"
    if os.readlink(source) != expected:
        raise FileNotFoundError(f"the shared item {name!r} is gone")
    mine = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    if os.readlink(f"/proc/self/fd/{mine}") != expected:  # replaced meanwhile
        os.close(mine)
        raise FileNotFoundError(f"the shared item {name!r} is gone")
    return mine


# One record of the host index: digest (zero-padded), the holder's pid
# (0: a free record) and descriptor, the pid and serial number that name
# the file, and its bytes.
_RECORD = struct.Struct("<32siiqqq")


class HostIndex:
    """Which process of the host holds which bytes: records in a memfd of the host's lowest rank.

    Each rank opens the one file (`open`, collective); edits take a POSIX
    record lock on it, which the kernel drops if the process dies.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.RLock()  # record locks are per process: threads take this first
        self._busy = False
        # (slot, fd, creator, serial) of records to free when not busy
        self._stale: list[tuple[int, int, int, int]] = []

    @classmethod
    def open(cls, comm: MPI.Intracomm, hosts: Hosts) -> HostIndex:
        """Make or open the index of this rank's host (collective over `comm`)."""
        leader = hosts.groups[hosts.index][0]
        made = None
        if comm.Get_rank() == leader:
            fd = os.memfd_create(f"{_PREFIX}index-{os.getpid()}", os.MFD_CLOEXEC)
            made = (os.getpid(), fd)
        found = comm.allgather(made)
        pid, fd = found[leader]
        if pid == os.getpid():
            index = cls(fd)
            _mappings.indexes.add(index)
            return index
        source = f"/proc/{pid}/fd/{fd}"
        mine = os.open(source, os.O_RDWR | os.O_CLOEXEC)
        if os.readlink(f"/proc/self/fd/{mine}") != f"/memfd:{_PREFIX}index-{pid} (deleted)":
            os.close(mine)
            raise OSError(f"the host index of rank {leader} is not where it said")
        index = cls(mine)
        _mappings.indexes.add(index)
        return index

    def close(self) -> None:
        self.fd, fd = -1, self.fd
        if fd >= 0:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index for a lookup and its edits (reentrant in a thread)."""
        with self._lock:
            if self._busy:  # nested in this thread
                yield
                return
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            self._busy = True
            try:
                yield
            finally:
                stale, self._stale = self._stale, []
                for slot, fd, creator, serial in stale:
                    self._free_if(slot, (os.getpid(), fd, creator, serial))
                self._busy = False
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def records(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """Every record in use: (slot, (digest, pid, fd, creator, serial, nbytes)); hold the lock."""
        data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        for slot, record in enumerate(_RECORD.iter_unpack(data)):
            if record[1] != 0:
                yield slot, record

    def add(self, key: bytes, fd: int, creator: int, serial: int, nbytes: int) -> int:
        """Record that this process holds file (creator, serial) as `fd`; return its slot."""
        data = os.pread(self.fd, os.fstat(self.fd).st_size, 0)
        free = next(
            (k for k, record in enumerate(_RECORD.iter_unpack(data)) if record[1] == 0),
            len(data) // _RECORD.size,
        )
        record = _RECORD.pack(key, os.getpid(), fd, creator, serial, nbytes)
        os.pwrite(self.fd, record, free * _RECORD.size)
        return free

    def _free_if(self, slot: int, holder: tuple[int, int, int, int]) -> None:
        # Free `slot` if it is still the record of holder (pid, fd, creator, serial).
        raw = os.pread(self.fd, _RECORD.size, slot * _RECORD.size)
        if len(raw) == _RECORD.size and _RECORD.unpack(raw)[1:5] == holder:
            os.pwrite(self.fd, bytes(_RECORD.size), slot * _RECORD.size)

    def forget(self, slot: int, fd: int, creator: int, serial: int) -> None:
        """Free this process's record `slot` (now, or at the end of the current edit)."""
        if self.fd < 0:
            return
        if self._busy or not self._lock.acquire(blocking=False):
            self._stale.append((slot, fd, creator, serial))  # a finaliser inside an edit
            return
        try:
            with self.locked():
                self._free_if(slot, (os.getpid(), fd, creator, serial))
        finally:
            self._lock.release()

    def free_stale(self, slot: int, record: tuple[Any, ...]) -> None:
        """Free another process's record whose descriptor no longer names its file."""
        self._free_if(slot, record[1:5])


# Each index's Segments of this process by (digest, bytes), and those of
# stores that have no index (made without a messenger).
_unindexed: weakref.WeakValueDictionary[tuple[bytes, int], Segment] = weakref.WeakValueDictionary()
_held: weakref.WeakKeyDictionary[HostIndex, weakref.WeakValueDictionary[tuple[bytes, int], Segment]]
_held = weakref.WeakKeyDictionary()
_BLOCK = 1 << 22  # bytes compared at a time: no temporary as large as the item


def _held_by(index: HostIndex | None) -> weakref.WeakValueDictionary[tuple[bytes, int], Segment]:
    if index is None:
        return _unindexed
    return _held.setdefault(index, weakref.WeakValueDictionary())


def _equal(mapping: mmap.mmap, data: np.ndarray) -> bool:
    held = np.frombuffer(mapping, np.uint8, data.nbytes)
    return all(
        np.array_equal(held[k : k + _BLOCK], data[k : k + _BLOCK])
        for k in range(0, data.nbytes, _BLOCK)
    )


def _let_go(fd: int, index: HostIndex | None, slot: int, creator: int, serial: int) -> None:
    # A Segment's end: its record goes, then its descriptor (mappings stay valid).
    if index is not None and slot >= 0:
        with contextlib.suppress(OSError):
            index.forget(slot, fd, creator, serial)
    os.close(fd)


class Segment:
    """This process's hold of one shared file: its descriptor, mapping and record in the host index.

    Made by `share` and `lookup`, one per content per index; it lives as
    long as something refers to it (a store's item, a shipped function),
    and lets the file go when the last reference does.

    Attributes
    ----------
    key : bytes
        The digest of its bytes.
    nbytes : int
        Its bytes.
    """

    __slots__ = ("fd", "name", "key", "nbytes", "mapping", "__weakref__")

    def __init__(
        self,
        fd: int,
        name: str,
        key: bytes,
        nbytes: int,
        mapping: mmap.mmap,
        index: HostIndex | None,
        serial: int,
    ) -> None:
        self.fd, self.name, self.key, self.nbytes, self.mapping = fd, name, key, nbytes, mapping
        slot = -1
        creator = int(name[len(_PREFIX) :].split("-")[0])
        if index is not None:
            slot = index.add(key.ljust(32, b"\0"), fd, creator, serial, nbytes)
        weakref.finalize(self, _let_go, fd, index, slot, creator, serial)
        _held_by(index)[key, nbytes] = self

    def array(self, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """A read-only array of `dtype` and `shape` over its bytes from `offset` on."""
        count = math.prod(shape)
        return np.frombuffer(self.mapping, dtype, count, offset).reshape(shape)

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int = 0) -> SharedView:
        """What a rank of this host needs to map `array` (dtype, shape, offset)."""
        return SharedView(os.getpid(), self.fd, self.name, dtype, shape, offset)


def _map(fd: int, nbytes: int) -> mmap.mmap:
    return mmap.mmap(fd, max(nbytes, 1), prot=mmap.PROT_READ)  # mmap refuses 0 bytes


def share(array: np.ndarray, index: HostIndex | None) -> Segment:
    """The Segment that holds `array`'s bytes on this host: found by their digest, or written.

    Equal bytes that a process of the host holds already are opened, not
    written again; a digest that matches different bytes (a collision)
    gets a file of its own.

    Raises
    ------
    TypeError
        If `array` holds Python objects.
    """
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"a shared item holds numeric numpy data, not dtype {array.dtype}")
    data = _bytes_of(array)
    key = digest(data)
    known = _held_by(index).get((key, data.nbytes))
    if known is not None and _equal(known.mapping, data):
        return known
    with index.locked() if index is not None else contextlib.nullcontext():
        if index is not None:
            found = _found(index, key, data.nbytes, data)
            if found is not None:
                return found
        serial = next(_serial)
        name = f"{_PREFIX}{os.getpid()}-{serial}"
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, max(data.nbytes, 1))
            with mmap.mmap(fd, max(data.nbytes, 1)) as writable:
                np.frombuffer(writable, np.uint8, data.nbytes)[:] = data
            mapping = _map(fd, data.nbytes)
        except BaseException:
            os.close(fd)
            raise
        return Segment(fd, name, key, data.nbytes, mapping, index, serial)


def lookup(key: bytes, nbytes: int, index: HostIndex | None) -> Segment | None:
    """The Segment of the bytes with digest `key` that a process of this host holds; None if none."""
    known = _held_by(index).get((key, nbytes))
    if known is not None or index is None:
        return known
    with index.locked():
        return _found(index, key, nbytes, None)


def _found(index: HostIndex, key: bytes, nbytes: int, data: np.ndarray | None) -> Segment | None:
    # Open another process's file of these bytes (compared with `data` if
    # given); stale records met on the way are freed. Hold the lock.
    padded = key.ljust(32, b"\0")
    for slot, record in list(index.records()):
        _, pid, fd, creator, serial, size = record
        if record[0] != padded or size != nbytes or pid == os.getpid():
            continue
        name = f"{_PREFIX}{creator}-{serial}"
        try:
            mine = _open_file(pid, fd, name)
        except OSError:  # closed, or its process is gone
            index.free_stale(slot, record)
            continue
        try:
            mapping = _map(mine, nbytes)
            if data is not None and not _equal(mapping, data):
                os.close(mine)
                continue
        except BaseException:
            os.close(mine)
            raise
        return Segment(mine, name, key, nbytes, mapping, index, serial)
    return None


class UnknownContentError(KeyError):
    """Content named by its digest alone, which no process of this host holds."""

    def __str__(self) -> str:  # not KeyError's repr of the message
        return str(self.args[0])


def content_array(
    content: Any, index: HostIndex | None
) -> tuple[Segment, np.dtype[Any], tuple[int, ...]]:
    """The Segment, dtype and shape of ``content``: ``(digest, nbytes, dtype, shape)`` as sent.

    Raises
    ------
    ValueError
        If ``content`` is malformed, or its shape does not fit its bytes.
    UnknownContentError
        If no process of this host holds bytes of that digest.
    """
    try:
        key, nbytes, kind, shape = content
        if not (
            isinstance(key, bytes)
            and len(key) in (16, 32)
            and isinstance(nbytes, int)
            and isinstance(kind, str)
            and isinstance(shape, list)
            and all(isinstance(n, int) and n >= 0 for n in shape)
        ):
            raise TypeError
        dtype = _checked_dtype(kind)
    except (TypeError, ValueError):
        raise ValueError(f"malformed content named by digest: {content!r:.200}") from None
    if math.prod(shape) * dtype.itemsize != nbytes:
        raise ValueError(f"content of {nbytes} bytes cannot be of shape {shape} and dtype {kind}")
    segment = lookup(key, nbytes, index)
    if segment is None:
        raise UnknownContentError(
            f"no process of this host holds content of digest {key.hex()} ({nbytes} bytes)"
        )
    return segment, dtype, tuple(shape)


def _checked_dtype(kind: str) -> np.dtype[Any]:
    dtype = np.dtype(kind)
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise ValueError(f"a shared view of dtype {kind!r}: only plain numeric data")
    return dtype


class SharedView(CarriageableItem, name="conveyor.SharedView"):
    """Where a rank of the same host finds a shared array; it arrives as the mapped array.

    The array is `shape` items of `dtype` from byte `offset` on of file
    `name`, which process `pid` holds as descriptor `fd`.
    """

    def __init__(
        self,
        pid: int,
        fd: int,
        name: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        offset: int = 0,
    ) -> None:
        self.pid, self.fd, self.name, self.dtype, self.shape = pid, fd, name, dtype, shape
        self.offset = offset

    def out_of_band(self) -> Sequence[Any]:
        return [self.pid, self.fd, self.name, self.dtype.str, list(self.shape), self.offset]

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[Any]) -> Any:  # an ndarray
        try:
            pid, fd, name, kind, shape, offset = out_of_band
        except ValueError:
            raise ValueError("a malformed shared view") from None
        if not (
            isinstance(pid, int)
            and isinstance(fd, int)
            and isinstance(name, str)
            and name.startswith(_PREFIX)
            and isinstance(kind, str)
            and isinstance(shape, list)
            and all(isinstance(n, int) and n >= 0 for n in shape)
            and isinstance(offset, int)
            and offset >= 0
        ):
            raise ValueError("a malformed shared view")
        if pid not in _trusted:
            raise ValueError(f"a shared view of process {pid}, not a rank of this host")
        dtype = _checked_dtype(kind)
        mapping = _mappings.get(name)
        if mapping is None:
            mapping = _mappings.open(pid, fd, name)
        array = _array_in(mapping, dtype, tuple(shape), offset)
        if array is None:
            raise ValueError(f"the shared item {name!r} is smaller than its shape")
        return array


def mapped(name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray | None:
    """The read-only array of `dtype` and `shape` at the start of file `name`, if
    this process still has the file mapped (from a `SharedView` it loaded), else None."""
    mapping = _mappings.get(name)
    return None if mapping is None else _array_in(mapping, dtype, shape, 0)


def _array_in(
    mapping: mmap.mmap, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int
) -> np.ndarray | None:
    # None if the file is too small for it.
    count = math.prod(shape)
    if offset + count * dtype.itemsize > len(mapping):
        return None
    return np.frombuffer(mapping, dtype, count, offset).reshape(shape)


class _Mappings:
    """The files this process mapped from views, kept mapped while their holders hold them.

    Mapping a file costs a page fault per 4 KiB page on first touch (shared
    memory gets no transparent huge pages), more than reading it: the
    chunks of a DistArray read again and again would pay it every time.
    So a file stays mapped, its page tables filled, while a process of the
    host holds it (its record in a host index), at most `LIMIT` files; the
    files no one holds any more are let go at the next file mapped.
    """

    LIMIT = 256

    def __init__(self) -> None:
        self._files: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()  # a served messenger decodes on its service thread
        self.indexes: weakref.WeakSet[HostIndex] = weakref.WeakSet()

    def get(self, name: str) -> mmap.mmap | None:
        return self._files.get(name)

    def open(self, pid: int, fd: int, name: str) -> mmap.mmap:
        mine = _open_file(pid, fd, name)
        try:
            size = os.fstat(mine).st_size
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mapping = mmap.mmap(mine, max(size, 1), flags=flags, prot=mmap.PROT_READ)
        finally:
            os.close(mine)
        with self._lock:
            self._sweep()
            self._files[name] = mapping
        return mapping

    def _sweep(self) -> None:
        held: set[str] = set()
        for index in list(self.indexes):
            if index.fd >= 0:
                with index.locked():
                    held.update(f"{_PREFIX}{r[3]}-{r[4]}" for _, r in index.records())
        for name in [n for n in self._files if n not in held]:
            del self._files[name]  # arrays made from it keep their mapping
        while len(self._files) >= self.LIMIT:
            del self._files[next(iter(self._files))]


_mappings = _Mappings()
