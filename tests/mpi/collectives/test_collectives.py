"""Collectives that serve while they wait, at 1 to 4 ranks.

`Messenger.barrier`, `bcast`, `gather`, `scatter`, `allgather` and
`allreduce` (and their awaited forms) against mpi4py's own results; called
from handlers; a rank that waits in one answers its neighbours meanwhile;
the same with a service thread; collectives that do not match across
ranks, and an op that raises, give clear errors instead of a hang.
"""

import asyncio
import operator

import numpy as np
import pytest

import conveyor as cv

from _helpers import no_state_left, same, world


def case_collectives_agree_with_mpi4py(serve):
    comm = world()
    with cv.Messenger(serve=serve) as m:
        n, r = m.size, m.rank
        root = n - 1
        m.barrier()
        assert m.bcast({"x": [r]} if r == root else None, root=root) == {"x": [root]}
        value = np.arange(r, r + 5, dtype=np.float64)  # arrays travel as arrays
        gathered = m.gather(value, root=root)
        expected = comm.gather(value, root=root)
        if r == root:
            assert all(same(a, b) for a, b in zip(gathered, expected))
        else:
            assert gathered is None
        parts = [("part", i) for i in range(n)] if r == root else None
        assert m.scatter(parts, root=root) == ("part", r)
        assert m.allgather(r * 10) == comm.allgather(r * 10)
        assert m.allreduce(r + 1) == comm.allreduce(r + 1)
        assert same(m.allreduce(value, np.maximum), np.maximum.reduce(comm.allgather(value)))
        assert m.allreduce(r, _mpi().MAX) == comm.allreduce(r, op=_mpi().MAX)
        # Not associative: folded in rank order on rank 0, the same everywhere.
        assert m.allreduce(f"{r}", lambda a, b: f"({a}{b})") == comm.bcast(
            _fold([f"{i}" for i in range(n)]), root=0
        )
        m.wait_quiet()
        no_state_left(m)


def _mpi():
    from mpi4py import MPI

    return MPI


def _fold(values):
    out = values[0]
    for v in values[1:]:
        out = f"({out}{v})"
    return out


@pytest.mark.parametrize("serve", ["inline", "thread"])
def test_collectives_agree_with_mpi4py(mpirun, nranks, serve):
    mpirun(nranks, case_collectives_agree_with_mpi4py, serve)


def case_a_rank_in_a_collective_answers_its_neighbours():
    # Rank 0 asks every other rank for answers before its barrier; they
    # are in the barrier already, and answer from there.
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        world().barrier()  # receivers registered everywhere
        if m.rank == 0:
            for peer in range(1, m.size):
                assert m.request(peer, "echo", peer).result(timeout=30) == peer
        m.barrier()
        m.wait_quiet()


def test_a_rank_in_a_collective_answers_its_neighbours(mpirun, nranks):
    mpirun(nranks, case_a_rank_in_a_collective_answers_its_neighbours)


def case_collectives_inside_handlers():
    # Every rank's handler of "sum" runs an allreduce: the handlers wait in
    # it, handling the parts of the others meanwhile, and the second "sum"
    # (whose allreduce, started second everywhere, may finish first).
    with cv.Messenger() as m:
        results = []
        m.on("sum")(lambda msg: results.append(m.allreduce(msg.payload)))
        world().barrier()
        m.send(m.rank, "sum", m.rank)
        m.send(m.rank, "sum", 1)
        m.wait_quiet()
        assert sorted(results) == sorted([sum(range(m.size)), m.size])


def test_collectives_inside_handlers(mpirun, nranks):
    mpirun(nranks, case_collectives_inside_handlers)


def case_awaited_collectives():
    async def main():
        async with cv.Messenger() as m:
            await m.abarrier()
            assert await m.abcast("hi" if m.rank == 0 else None) == "hi"
            assert await m.aallgather(m.rank) == list(range(m.size))
            assert await m.aallreduce(2, operator.mul) == 2**m.size
            got = await m.agather(m.rank, root=0)
            assert got == (list(range(m.size)) if m.rank == 0 else None)
            values = list(range(100, 100 + m.size)) if m.rank == 0 else None
            assert await m.ascatter(values) == 100 + m.rank

    asyncio.run(main())


def test_awaited_collectives(mpirun, nranks):
    mpirun(nranks, case_awaited_collectives)


def case_mismatched_collectives_are_named():
    with cv.Messenger() as m:
        with pytest.raises(cv.ConveyorError, match="does not match across ranks") as info:
            if m.rank == 0:
                m.allgather(1, timeout=30)
            else:
                m.barrier(timeout=30)
        assert ("called allgather" if m.rank == 0 else "called barrier") in str(info.value)
        m.wait_quiet()


def test_mismatched_collectives_are_named(mpirun):
    mpirun(2, case_mismatched_collectives_are_named)


def case_an_op_that_raises_fails_every_rank():
    def op(a, b):
        raise ArithmeticError("no")

    with cv.Messenger() as m:
        if m.size == 1:
            assert m.allreduce(1, op) == 1  # one value: nothing to fold
        elif m.rank == 0:
            with pytest.raises(ArithmeticError, match="no"):
                m.allreduce(1, op, timeout=30)
        else:
            with pytest.raises(
                cv.ConveyorError, match="allreduce failed on rank 0: ArithmeticError"
            ):
                m.allreduce(1, op, timeout=30)
        assert m.allreduce(1) == m.size  # the next collective works
        m.wait_quiet()


def test_an_op_that_raises_fails_every_rank(mpirun, nranks):
    mpirun(nranks, case_an_op_that_raises_fails_every_rank)


def test_bad_arguments_are_refused_before_anything_is_sent():
    with cv.Messenger() as m:
        with pytest.raises(ValueError, match="one value per rank"):
            m.scatter([1, 2], root=0)
        with pytest.raises(ValueError, match="out of range"):
            m.bcast(1, root=3)
        with pytest.raises(TypeError, match="op must be callable"):
            m.allreduce(1, op="sum")
        assert m.allgather("x") == ["x"]  # nothing was numbered by the refusals
        m.wait_quiet()
        assert m.stats()["handler_errors"] == 0


def test_forged_parts_are_refused_clearly():
    # Parts forged on the reserved tag: a malformed one is a handler error
    # (counted, the rank serves on); one for the next collective makes that
    # collective fail with a clear error instead of returning its value.
    from conveyor._tags import COLLECTIVE

    with cv.Messenger() as m:
        for junk in ("junk", (1, 2), (-1, "bcast", 0), ("0", "bcast", 0)):
            m._transport.send(0, COLLECTIVE, junk)
        m.progress(1.0)
        assert m.stats()["handler_errors"] == 4
        m._transport.send(0, COLLECTIVE, (0, "bcast", "forged"))
        m.progress(1.0)
        with pytest.raises(cv.ConveyorError, match="does not match across ranks"):
            m.allgather(1, timeout=10)
        assert m.allgather(2, timeout=10) == [2]  # the next one is untouched
        m.wait_quiet()
