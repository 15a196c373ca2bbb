"""Host groups: the ranks MPI puts on one host, split into virtual hosts by CONVEYOR_HOSTS.

On this machine MPI puts every rank on one host, so the virtual hosts are
what the cases check against; every rank's view must agree with every
other's, and a messenger of a sub-communicator groups its own ranks by the
hosts of their processes.
"""

import ast
import os

import pytest

import conveyor as cv
from conveyor._hosts import virtual_blocks

from _helpers import world


def case_hosts(expected):
    """Every rank sees the `expected` hosts (their repr), and its own place in them."""
    expected = ast.literal_eval(expected)
    with cv.Messenger() as m:
        assert m.hosts == expected and m.host_ranks == expected[m.host]
        assert world().allgather((m.host, m.host_ranks)) == [
            (k, host) for k, host in enumerate(expected) for _ in host
        ]
        # Even and odd ranks: each sub-communicator's ranks, by their processes' hosts.
        members = [r for r in range(m.size) if r % 2 == m.rank % 2]
        host_of = {r: k for k, host in enumerate(expected) for r in host}
        grouped = {}
        for sub_rank, r in enumerate(members):
            grouped.setdefault(host_of[r], []).append(sub_rank)
        half = m.comm.Split(m.rank % 2, m.rank)
        with cv.Messenger(half) as sub:
            assert sub.hosts == tuple(tuple(ranks) for ranks in grouped.values())
            assert sub.host_ranks == sub.hosts[sub.host] and sub.rank in sub.host_ranks
            sub.wait_quiet()
        half.Free()
        m.wait_quiet()


@pytest.mark.parametrize(
    ("n", "hosts", "expected"),
    [
        (1, None, ((0,),)),
        (4, None, ((0, 1, 2, 3),)),
        (2, "", ((0, 1),)),
        (4, "2", ((0, 1), (2, 3))),
        (3, "2", ((0, 1), (2,))),
        (4, "3,1", ((0, 1, 2), (3,))),
        (4, "1,1,2", ((0,), (1,), (2, 3))),
        (4, " 4 ", ((0,), (1,), (2,), (3,))),
    ],
)
def test_hosts(mpirun, n, hosts, expected):
    env = {} if hosts is None else {"CONVEYOR_HOSTS": hosts}
    mpirun(n, case_hosts, repr(expected), env=env)


def case_malformed(value):
    # Refused on every rank before anything collective: no rank is left waiting.
    os.environ["CONVEYOR_HOSTS"] = value
    with pytest.raises(ValueError, match="CONVEYOR_HOSTS"):
        cv.Messenger()
    del os.environ["CONVEYOR_HOSTS"]
    with cv.Messenger() as m:
        assert m.hosts == (tuple(range(m.size)),)
        m.wait_quiet()


@pytest.mark.parametrize("value", ["0", "5", "x", "2,1", "3,0,1", "2.5", "-1"])
def test_malformed(mpirun, value):
    mpirun(4, case_malformed, value)


def test_virtual_blocks():
    assert virtual_blocks(None, 4) is None and virtual_blocks("  ", 4) is None
    assert virtual_blocks("3", 7) == [0, 0, 0, 1, 1, 2, 2]
    assert virtual_blocks("1,2", 3) == [0, 1, 1]
    for bad in ("0", "8", "a,b", "3,3", "7,0"):
        with pytest.raises(ValueError, match="CONVEYOR_HOSTS"):
            virtual_blocks(bad, 7)


def case_late_rank_is_waited_for_asleep(late):
    """Ranks that make their messenger before a late one sleep while they wait for it.

    Their survey of the hosts starts with a barrier that sleeps between
    tests: MPI's blocking collectives yield and poll, which on a crowded
    machine takes the cores from the ranks still starting (64 ranks on 2
    cores spent some 2.5 s of CPU so before this barrier slept).
    """
    import time

    late = float(late)
    if world().Get_rank() == 0:
        time.sleep(late)
    cpu, wall = time.process_time(), time.monotonic()
    with cv.Messenger() as m:
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        if m.rank != 0:
            # They waited for rank 0 (most of `late`), using a small part of it as CPU.
            assert wall > late / 2, wall
            assert cpu < wall / 4, (cpu, wall)
        m.wait_quiet()


def test_a_late_rank_is_waited_for_asleep(mpirun):
    mpirun(4, case_late_rank_is_waited_for_asleep, 2.0)
