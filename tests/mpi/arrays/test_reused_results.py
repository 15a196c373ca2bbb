"""Results written into the buffers of freed chunks (`conveyor._pool`), never
into one that a view still shows."""

import builtins

import numpy as np

import conveyor as cv
from conveyor._chunks import layer_of
from conveyor._pool import SMALLEST

ROWS = 2 * SMALLEST // 8  # float64 rows per rank: pooled


def stash(chunk):
    # Keeps a view of its input chunk on the rank that ran it.
    builtins.__dict__.setdefault("_conveyor_test_views", []).append(chunk)
    return np.array([chunk[0]])


def case_reuse():
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(m, np.arange(ROWS, dtype=np.float64) + m.rank * ROWS)
        layer = layer_of(m)
        with m.driver() as d:
            if d is not None:
                y = (x + 1).resolve()
                seen = d.dmap(stash, y).collect()
                assert np.array_equal(seen, np.arange(m.size) * ROWS + 1)
                del y
        m.wait_quiet()
        # y's buffers are viewed by the stash: not kept.
        assert not layer._pooled and layer._pool._bytes == 0
        with m.driver() as d:
            if d is not None:
                z = (x + 2).resolve()
                w = (x + 3).resolve()
                del w  # nothing views it: kept, and the next result takes it
        m.wait_quiet()
        kept = layer._pool._bytes
        with m.driver() as d:
            if d is not None:
                v = x * 2
                assert np.array_equal(v.collect(), 2 * np.arange(ROWS * m.size))
                assert np.array_equal(z.collect(), np.arange(ROWS * m.size) + 2)
                del v, z
        m.wait_quiet()
        views = builtins.__dict__.pop("_conveyor_test_views", [])
        for view in views:  # untouched by every result since
            assert np.array_equal(view, np.arange(ROWS) + m.rank * ROWS + 1)
        assert kept == ROWS * 8, kept
        x = None
        m.wait_quiet()


def test_freed_results_are_reused_but_never_under_a_view(mpirun):
    for n in (1, 2, 4):
        mpirun(n, case_reuse, env={"CONVEYOR_HOSTS": "1"})
