"""Chunks read through shared memory by the ranks of their owner's host (issue 15 item 5).

``x + y`` with x in one chunk per rank and y in chunks that straddle
them, so that every task needs rows of other ranks' chunks: on one host
no row moves through MPI (read from the byte counters), across virtual
hosts the rows of the other host do, and the values are numpy's either
way. A chunk's shared file goes when the chunk does. A rank that read rows of
a host peer's chunk once reads other rows of it without the owner.
"""

import numpy as np
import pytest

import conveyor as cv
from conveyor._chunks import layer_of

from _helpers import read_rows, world

ROWS = 1 << 15  # rows of x per rank: 256 KiB of float64


def sent_bytes(m):
    stats = m.stats()
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


def case_add(hosts):
    with cv.Messenger() as m:
        x_all = np.arange(ROWS * m.size, dtype=np.float64)
        x = cv.DistArray.from_local(m, x_all[m.rank * ROWS : (m.rank + 1) * ROWS])
        y_sizes = [ROWS * m.size // 3, ROWS * m.size - 2 * (ROWS * m.size // 3), ROWS * m.size // 3]
        y_all = np.random.default_rng(5).random(ROWS * m.size)
        m.wait_quiet()
        with m.driver() as d:
            if d is not None:
                y = d.array(y_all, chunks=y_sizes).resolve()
        m.wait_quiet()
        before = sent_bytes(m)
        with m.driver() as d:
            if d is not None:
                for _ in range(2):  # the second time from the files the first made
                    z = (x + y).resolve()
                    assert np.array_equal(np.asarray(z), x_all + y_all)
                    del z
        m.wait_quiet()
        cost = world().allgather(sent_bytes(m) - before)
        layer = layer_of(m)
        shared = world().allgather(len(layer._shared))
        if m.rank == 0:
            if len(m.hosts) == 1:  # descriptors only (rows of x, results collected to rank 0)
                assert max(cost[1:], default=0) < 16 * 1024, cost
                assert sum(shared) > 0, shared
            else:  # the rows of x that cross a host travel: at least one chunk's
                assert sum(cost[1:]) > ROWS * 8, cost
        with m.driver() as d:
            if d is not None:
                del y
        x = None
        m.wait_quiet()
        assert not layer._shared  # every chunk gone: so are their files
        m.wait_quiet()


@pytest.mark.parametrize(("n", "hosts"), [(2, "1"), (4, "1"), (4, "2")])
def test_add_reads_chunks_of_the_host_in_place(mpirun, n, hosts):
    mpirun(n, case_add, hosts, env={"CONVEYOR_HOSTS": hosts})


def case_read_again_without_the_owner():
    with cv.Messenger() as m:
        x_all = np.arange(ROWS * m.size, dtype=np.float64)
        x = cv.DistArray.from_local(m, x_all[m.rank * ROWS : (m.rank + 1) * ROWS])
        if m.rank == 1:
            assert np.array_equal(read_rows(m, x.chunks[0], 10, 20), x_all[10:20])
        m.wait_quiet()
        if m.rank == 1:
            # Rank 0 serves nothing until this rank joins the barrier: a
            # read that asked it would never be answered.
            assert np.array_equal(read_rows(m, x.chunks[0], 300, 4000), x_all[300:4000])
        world().Barrier()
        x = None
        m.wait_quiet()


def test_a_peer_reads_other_rows_of_a_chunk_it_mapped_without_the_owner(mpirun):
    mpirun(2, case_read_again_without_the_owner, env={"CONVEYOR_HOSTS": "1"})
