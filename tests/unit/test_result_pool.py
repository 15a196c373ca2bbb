"""conveyor._pool: the buffers of freed results, reused only when nothing refers to them."""

import numpy as np

from conveyor._pool import SMALLEST, Pool

ROWS = SMALLEST // 8  # float64 rows of one pooled buffer


def made(pool, rows=ROWS):
    """A result of `rows` float64 and its buffer, as the chunk layer records them."""
    array = pool.empty((rows,), np.dtype(np.float64))
    buffer = pool.buffer_of(array)
    assert buffer is not None
    return array, buffer


def test_a_freed_result_is_the_next_of_its_size():
    pool = Pool(8 * SMALLEST)
    a, buffer = made(pool)
    address = a.__array_interface__["data"][0]
    del a  # the chunk goes
    pool.give(buffer)
    del buffer
    b = pool.empty((ROWS // 2, 2), np.dtype(np.int64))  # the same bytes, another shape
    assert b.__array_interface__["data"][0] == address and b.flags.c_contiguous
    c = pool.empty((ROWS,), np.dtype(np.float64))  # none left: fresh
    assert c.__array_interface__["data"][0] != address


def test_a_buffer_still_viewed_is_not_reused():
    pool = Pool(8 * SMALLEST)
    a, buffer = made(pool)
    a[:] = 7.0
    kept = a[10:20]  # a user's view of the chunk
    del a
    pool.give(buffer)
    b, _ = made(pool)
    b[:] = -1.0
    assert np.all(kept == 7.0)
    del kept
    pool.give(buffer)  # now nothing shows it: kept
    assert pool._bytes == SMALLEST


def test_the_bound_small_arrays_and_objects():
    pool = Pool(SMALLEST)
    (a, first), (b, second) = made(pool), made(pool)
    del a, b
    pool.give(first)
    pool.give(second)  # over the bound: let go
    assert pool._bytes == SMALLEST
    assert pool.buffer_of(pool.empty((ROWS,), np.dtype(np.float64))) is first
    assert pool.buffer_of(pool.empty((10,), np.dtype(np.float64))) is None
    assert pool.buffer_of(pool.empty((ROWS,), np.dtype(object))) is None
    assert pool.buffer_of(Pool(0).empty((ROWS,), np.dtype(np.float64))) is None
    assert pool.buffer_of(np.empty(ROWS)[::2]) is None  # not one of the pool's
