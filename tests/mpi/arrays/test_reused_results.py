"""Results written into the buffers of freed chunks (`conveyor._pool`), never
into one that a view still shows."""

import builtins
import gc

import numpy as np

import conveyor as cv
from conveyor._chunks import layer_of
from conveyor._pool import SMALLEST

from _helpers import world

ROWS = 2 * SMALLEST // 8  # float64 rows per rank: pooled


def stash(chunk):
    # Keeps a view of its input chunk on the rank that ran it.
    builtins.__dict__.setdefault("_conveyor_test_views", []).append(chunk)
    return np.array([chunk[0]])


def settle(m):
    """Every rank frees what it dropped, and the frees' messages are handled.

    Tasks' references can sit in cycles until the collector runs, and a
    free that a message brings can drop more of them: three rounds of
    collecting and quiescence, on every rank alike.
    """
    for _ in range(3):
        gc.collect()
        m.wait_quiet()


def case_reuse():
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(m, np.arange(ROWS, dtype=np.float64) + m.rank * ROWS)
        layer = layer_of(m)
        with m.driver() as d:
            if d is not None:
                y = (x + 1).resolve()
                seen = d.dmap(stash, y).collect()
                assert np.array_equal(seen, np.arange(m.size) * ROWS + 1)
                del y  # its buffers are viewed by the stash: never kept
        settle(m)
        with m.driver() as d:
            if d is not None:
                z = (x + 2).resolve()
                w = (x + 3).resolve()
                del w  # nothing views it: kept, and the next result takes it
        settle(m)
        kept = world().allgather(layer._pool._bytes)
        with m.driver() as d:
            if d is not None:
                v = x * 2
                assert np.array_equal(v.collect(), 2 * np.arange(ROWS * m.size))
                assert np.array_equal(z.collect(), np.arange(ROWS * m.size) + 2)
                del v, z
        settle(m)
        views = builtins.__dict__.pop("_conveyor_test_views", [])
        for view in views:  # untouched by every result since
            assert np.array_equal(view, np.arange(ROWS) + m.rank * ROWS + 1)
        # A freed chunk's memory is let go a few messages after its last
        # reference, so which ranks hold w's at this point can vary; y's are
        # never among them, and at least one rank's is.
        assert all(n in (0, ROWS * 8) for n in kept) and any(kept), kept
        x = None
        m.wait_quiet()


def test_freed_results_are_reused_but_never_under_a_view(mpirun):
    for n in (1, 2, 4):
        mpirun(n, case_reuse, env={"CONVEYOR_HOSTS": "1"})
