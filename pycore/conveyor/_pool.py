"""The memory of freed chunks, reused for the next results of the same size.

A task's result is written into fresh memory, whose every page the kernel
zeroes when it is first touched. For a large chunk that costs more than the
arithmetic (`np.add` over 25 M float64 takes 18 ms into memory already
touched and 30 ms into fresh memory here), and on a VM that hands freed
memory back to its host it cost 35% of all CPU in bench/arrays.py's
rebalance (`clear_page_erms`, bench/README.md). So the buffers of freed
chunks are kept, up to a bound, and a result of the same byte size takes
one instead of fresh memory.

A buffer is reused only when nothing but the pool refers to it: any view
of the chunk (a user's, one being sent, the chunk table's) holds a
reference to the buffer, which numpy makes the base of every view, and
CPython's reference count shows it.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from typing import Any

import numpy as np

# Results smaller than this are not worth keeping: malloc reuses its own.
SMALLEST = 1 << 20
# The most bytes a rank keeps (CONVEYOR_CHUNK_POOL_BYTES).
DEFAULT_BYTES = 512 << 20


def _references(buffer: np.ndarray) -> int:
    return sys.getrefcount(buffer)


def _as_given(buffer: np.ndarray) -> int:
    return _references(buffer)  # as `Pool.give` calls it


def _unreferenced_count() -> int:
    # What `give` sees of a buffer nothing else refers to, its caller
    # holding it in a name: measured by the same calls, since interpreters
    # count their own temporary references differently.
    buffer = np.empty(SMALLEST, np.uint8)
    return _as_given(buffer)


_UNREFERENCED = _unreferenced_count()


class Pool:
    """Buffers of freed results, by byte size, at most ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free: dict[int, list[np.ndarray]] = {}
        self._bytes = 0
        # The buffers `empty` made, by id (arrays cannot be hashed).
        self._made: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
        # Tasks take buffers on the thread that serves; chunks are freed on
        # any thread (a ChunkRef dropped by the program, the collector).
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """An uninitialised C-contiguous array, in a kept buffer if one has its byte size."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < SMALLEST or dtype.hasobject or self.limit <= 0:
            return np.empty(shape, dtype)
        with self._lock:
            free = self._free.get(nbytes)
            buffer = free.pop() if free else None
            if buffer is not None:
                self._bytes -= nbytes
        if buffer is None:
            buffer = np.empty(nbytes, np.uint8)
            self._made[id(buffer)] = buffer
        return buffer.view(dtype).reshape(shape)

    def buffer_of(self, array: np.ndarray) -> np.ndarray | None:
        """The pool's buffer `array` is a view of, if it is one of `empty`'s."""
        base = array.base
        if isinstance(base, np.ndarray) and self._made.get(id(base)) is base:
            return base
        return None

    def give(self, buffer: np.ndarray) -> None:
        """Keep `buffer` for reuse, if nothing else refers to it and it fits the bound."""
        if _references(buffer) > _UNREFERENCED:
            return
        with self._lock:
            if self._bytes + buffer.nbytes <= self.limit:
                self._free.setdefault(buffer.nbytes, []).append(buffer)
                self._bytes += buffer.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0
