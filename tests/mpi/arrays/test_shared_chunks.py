"""Chunks read through shared memory by the ranks of their owner's host (issue 15 item 5).

``x + y`` with x in one chunk per rank and y in chunks that straddle
them, so that every task needs rows of other ranks' chunks: on one host
no row moves through MPI (read from the byte counters), across virtual
hosts the rows of the other host do, and the values are numpy's either
way. A chunk's shared file goes when the chunk does. A rank that read rows of
a host peer's chunk once reads other rows of it without the owner, and
not through a file that a forged answer named.
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


# What a forged answer may say of the file a chunk lives in, from the true
# (name, shape): each must be ignored, the rows asked of the owner again.
FORGED_FILES = [
    lambda name, shape: ("conveyor-shared-1-999999", shape),  # a file not mapped here
    lambda name, shape: (name, [shape[0] - 1]),  # within the file, not the chunk's length
    lambda name, shape: (name, [shape[0], 1 << 40]),  # larger than the file
    lambda name, shape: (name, [shape[0], -1]),
    lambda name, shape: (name, "rows"),
    lambda name, shape: (7, shape),
    lambda name, shape: (name, shape, "more"),
    lambda name, shape: "junk",
]


class Forging:
    """A fetch message whose answer says `forge(name, shape)` of the chunk's file."""

    def __init__(self, msg, forge):
        self._msg, self._forge = msg, forge

    def __getattr__(self, name):
        return getattr(self._msg, name)

    def reply(self, answer):
        state, rows, (name, shape) = answer
        self._msg.reply((state, rows, self._forge(name, shape)))


def case_forged_file_in_an_answer():
    with cv.Messenger() as m:
        layer = layer_of(m)
        answered = {}
        if m.rank == 0:
            honest = layer._answer_fetch

            def answer(msg, id, start, stop):  # the first answer for each chunk is forged
                answered[id] = answered.get(id, 0) + 1
                forge = FORGED_FILES[len(answered) - 1] if answered[id] == 1 else None
                honest(msg if forge is None else Forging(msg, forge), id, start, stop)

            layer._answer_fetch = answer
        for k in range(len(FORGED_FILES)):
            x_all = np.random.default_rng(k).random(ROWS * m.size)
            x = cv.DistArray.from_local(m, x_all[m.rank * ROWS : (m.rank + 1) * ROWS])
            if m.rank == 1:
                assert np.array_equal(read_rows(m, x.chunks[0], 10, 20), x_all[10:20])
                assert np.array_equal(read_rows(m, x.chunks[0], 300, 4000), x_all[300:4000])
            m.wait_quiet()
            x = None
            m.wait_quiet()
        if m.rank == 0:  # each chunk's rows asked again: the forged file was not used
            assert list(answered.values()) == [2] * len(FORGED_FILES), answered
        m.wait_quiet()


def test_a_forged_file_in_an_answer_is_not_used(mpirun):
    mpirun(2, case_forged_file_in_an_answer, env={"CONVEYOR_HOSTS": "1"})
