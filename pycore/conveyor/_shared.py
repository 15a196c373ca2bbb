"""Arrays that every rank of a host maps, stored once: ``m.store.put(name, a, shared=True)``.

A shared item's bytes live in an anonymous shared-memory file of the rank
that stored it (``memfd_create``): no name in ``/dev/shm``, so nothing can
be left behind, whatever way the job ends, and the kernel frees the memory
once the last process that holds the file or a mapping of it is gone,
which is also all the reference counting the host needs. A rank of the
same host that fetches the item gets, instead of its bytes, a `SharedView`:
where to find the file (the owner's pid, its descriptor and the file's
name), and maps it read-only, so the fetch copies nothing. Ranks of other
hosts get the bytes, as for any item.

Why not MPI's shared windows (``MPI_Win_allocate_shared``): they are
allocated collectively by every rank of the host, and a store's put is one
rank's act, at any time.

A view's descriptor comes in a message, so it is checked before anything is
opened: the pid must be one of this host's ranks (`trust`), the descriptor
must be a memfd of conveyor's under the name given (read back from
``/proc``, before and after opening, so a descriptor number reused for
another file is refused), and the file must be large enough for the
dtype and shape, which must be plain numeric data.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ._carriage import CarriageableItem

__all__ = ["Segment", "SharedView", "trust"]

_PREFIX = "conveyor-shared-"
_serial = itertools.count()
# The pids of the processes on this process's hosts (every messenger's):
# the only ones whose files a view may open.
_trusted: set[int] = set()


def trust(pids: Iterable[int]) -> None:
    """Let views open the shared files of processes `pids` (this host's ranks)."""
    _trusted.update(pids)


class Segment:
    """One array's bytes in a shared-memory file of this process, and a read-only view of them."""

    __slots__ = ("fd", "name", "array")

    def __init__(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            raise TypeError(f"a shared item holds numeric numpy data, not dtype {array.dtype}")
        self.name = f"{_PREFIX}{os.getpid()}-{next(_serial)}"
        self.fd = os.memfd_create(self.name, os.MFD_CLOEXEC)
        try:
            size = max(array.nbytes, 1)  # mmap refuses 0 bytes
            os.ftruncate(self.fd, size)
            with mmap.mmap(self.fd, size) as writable:
                np.frombuffer(writable, np.uint8, array.nbytes)[:] = array.reshape(-1).view(
                    np.uint8
                )
            self.array = _mapped(self.fd, array.dtype, array.shape)
        except BaseException:
            os.close(self.fd)
            raise

    def view(self) -> SharedView:
        """What a rank of this host needs to map the array."""
        return SharedView(os.getpid(), self.fd, self.name, self.array.dtype, self.array.shape)

    def close(self) -> None:
        """Let the file go; mappings made of it (views on other ranks) stay valid."""
        os.close(self.fd)


def _mapped(fd: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    # A read-only numpy array over the file: the mapping lives as long as it.
    count = math.prod(shape)
    mapping = mmap.mmap(fd, max(count * dtype.itemsize, 1), prot=mmap.PROT_READ)
    return np.frombuffer(mapping, dtype, count).reshape(shape)


class SharedView(CarriageableItem, name="conveyor.SharedView"):
    """Where a rank of the same host finds a shared item; it arrives as the mapped array."""

    def __init__(
        self, pid: int, fd: int, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]
    ) -> None:
        self.pid, self.fd, self.name, self.dtype, self.shape = pid, fd, name, dtype, shape

    def out_of_band(self) -> Sequence[Any]:
        return [self.pid, self.fd, self.name, self.dtype.str, list(self.shape)]

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[Any]) -> Any:  # an ndarray
        pid, fd, name, kind, shape = out_of_band
        if not (
            isinstance(pid, int)
            and isinstance(fd, int)
            and isinstance(name, str)
            and name.startswith(_PREFIX)
            and isinstance(kind, str)
            and isinstance(shape, list)
            and all(isinstance(n, int) and n >= 0 for n in shape)
        ):
            raise ValueError("a malformed shared view")
        if pid not in _trusted:
            raise ValueError(f"a shared view of process {pid}, not a rank of this host")
        dtype = np.dtype(kind)
        if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
            raise ValueError(f"a shared view of dtype {kind!r}: only plain numeric data")
        expected = f"/memfd:{name} (deleted)"
        source = f"/proc/{pid}/fd/{fd}"
        if os.readlink(source) != expected:
            raise FileNotFoundError(f"the shared item {name!r} is gone")
        mine = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.readlink(f"/proc/self/fd/{mine}") != expected:  # replaced meanwhile
                raise FileNotFoundError(f"the shared item {name!r} is gone")
            if os.fstat(mine).st_size < math.prod(shape) * dtype.itemsize:
                raise ValueError(f"the shared item {name!r} is smaller than its shape")
            return _mapped(mine, dtype, tuple(shape))
        finally:
            os.close(mine)
