"""`cv.Executor`: a concurrent.futures.Executor over the ranks, at 1 to 4 ranks.

Cases after mpi4py's own test_futures.py where they make sense here
(submit, map with several iterables, chunksize and timeout, exceptions,
shutdown and its cancel_futures, the context manager, the standard
helpers), plus what is conveyor's own: every rank submits to every rank,
a function travels once per rank (shown by the bytes sent), and forged
tasks are refused while the rank keeps serving.
"""

import concurrent.futures
import functools
import math
import operator
import time

import numpy as np
import pytest

import conveyor as cv
from conveyor._tags import EXECUTOR_RUN

from _helpers import no_state_left, world


def square(x):
    return x * x


def slow_identity(x, seconds):
    time.sleep(seconds)
    return x


def case_submit_runs_functions_of_every_kind():
    with cv.Messenger() as m:
        world().barrier()
        with m.executor() as ex:
            assert isinstance(ex, concurrent.futures.Executor)
            offset = m.rank * 100
            closure = lambda x, scale=1: (x + offset) * scale  # noqa: E731  # by value
            assert ex.submit(square, 7).result(timeout=30) == 49  # by reference
            assert ex.submit(closure, 1, scale=2).result(timeout=30) == (1 + offset) * 2
            assert ex.submit(math.hypot, 3, 4).result(timeout=30) == 5.0  # a builtin
            assert ex.submit(functools.partial(operator.mul, 3), 5).result(timeout=30) == 15
            a = np.arange(1000.0)
            assert np.array_equal(ex.submit(np.cumsum, a).result(timeout=30), np.cumsum(a))
            futures = [ex.submit(square, i) for i in range(50)]
            assert [f.result(timeout=30) for f in futures] == [i * i for i in range(50)]
            with pytest.raises(ValueError, match="math domain error") as info:
                ex.submit(math.sqrt, -1).result(timeout=30)
            assert isinstance(info.value, cv.RemoteError)
            with pytest.raises(ZeroDivisionError):
                ex.submit(operator.truediv, 1, 0).result(timeout=30)
        m.wait_quiet()
        no_state_left(m)


def test_submit_runs_functions_of_every_kind(mpirun, nranks):
    mpirun(nranks, case_submit_runs_functions_of_every_kind)


def case_map_as_concurrent_futures_does():
    with cv.Messenger() as m:
        world().barrier()
        ex = cv.Executor(m, ranks=range(m.size))  # every rank, this one included
        assert ex.ranks == list(range(m.size))
        for chunksize in (1, 3, 100):
            got = list(ex.map(operator.add, range(20), range(100, 150), chunksize=chunksize))
            assert got == [a + b for a, b in zip(range(20), range(100, 150))]
            assert list(ex.map(square, [], chunksize=chunksize)) == []
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(square, [1], chunksize=0)
        results = ex.map(math.sqrt, [4, -1, 9])
        assert next(results) == 2.0
        with pytest.raises(ValueError):
            next(results)  # the task's error, where it is iterated
        if m.rank == 0 and m.size > 1:
            # A result that cannot come in time: TimeoutError, as concurrent.futures raises.
            slow = ex.map(slow_identity, [1], [2.0], timeout=0.2)
            with pytest.raises(concurrent.futures.TimeoutError):
                list(slow)
        ex.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            ex.submit(square, 1)
        m.wait_quiet()


def test_map_as_concurrent_futures_does(mpirun, nranks):
    mpirun(nranks, case_map_as_concurrent_futures_does)


def case_shutdown_waits_or_cancels():
    with cv.Messenger() as m:
        world().barrier()
        if m.rank == 0:
            ex = m.executor()
            futures = [ex.submit(slow_identity, i, 0.01) for i in range(5)]
            ex.shutdown(wait=True)
            assert all(f.done() for f in futures)
            ex = m.executor()
            futures = [ex.submit(slow_identity, i, 0.01) for i in range(5)]
            ex.shutdown(wait=True, cancel_futures=True)
            assert all(f.cancelled() for f in futures)
        m.wait_quiet()
        no_state_left(m)


def test_shutdown_waits_or_cancels(mpirun, nranks):
    mpirun(nranks, case_shutdown_waits_or_cancels)


def case_a_function_travels_once_per_rank():
    # A closure that captures 800 kB: sent once per rank, then by digest;
    # whole to a rank of another host, through shared memory to one of its own.
    with cv.Messenger() as m:
        world().barrier()
        if m.rank == 0:
            big = np.ones(100_000)
            total = lambda x: x + big.sum()  # noqa: E731
            with m.executor() as ex:
                before = sent_bytes(m)
                futures = [ex.submit(total, i) for i in range(40)]
                assert [f.result(timeout=30) for f in futures] == [i + 100_000.0 for i in range(40)]
                sent = sent_bytes(m) - before
            others = len([r for r in ex.ranks if r not in m.host_ranks])
            assert 800_000 * others <= sent < 800_000 * others + 100_000, sent
        m.wait_quiet()


def sent_bytes(m):
    stats = m.stats()  # a large pickle travels out of band, without a copy
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


@pytest.mark.parametrize("hosts", ["one", "each"])
def test_a_function_travels_once_per_rank(mpirun, nranks, hosts):
    env = {"CONVEYOR_HOSTS": "1" if hosts == "one" else str(nranks)}
    mpirun(nranks, case_a_function_travels_once_per_rank, env=env)


def case_the_standard_helpers_with_a_served_messenger():
    with cv.Messenger(serve="thread") as m:
        world().barrier()
        with m.executor() as ex:
            futures = [ex.submit(square, i) for i in range(20)]
            done, not_done = concurrent.futures.wait(futures, timeout=30)
            assert not not_done
            completed = concurrent.futures.as_completed(futures, timeout=30)
            assert sorted(f.result() for f in completed) == [i * i for i in range(20)]
        m.wait_quiet()


def test_the_standard_helpers_with_a_served_messenger(mpirun, nranks):
    mpirun(nranks, case_the_standard_helpers_with_a_served_messenger)


def test_bad_tasks_are_refused_and_the_rank_serves_on():
    with cv.Messenger() as m:
        with pytest.raises(ValueError, match="out of range"):
            m.executor(ranks=[0, 5])
        with pytest.raises(ValueError, match="at least one rank"):
            m.executor(ranks=[])
        with m.executor() as ex:
            with pytest.raises(TypeError, match="callable"):
                ex.submit(5)
            with pytest.raises(cv.CarriageError):
                ex.submit(square, {1, 2})  # a set travels only with pickle=True
            assert ex.submit(square, 3).result(timeout=10) == 9  # nothing left half-sent
        requests = m._requests
        forged = [
            "not a task",
            ((b"\x00" * 16, None), (1,), {}, False),  # a digest never sent
            ((b"\x00" * 16, b"junk"), (1,), {}, False),  # bytes that do not match it
            ((b"d", None), (1,), {1: 2}, False),  # keyword names that are not str
        ]
        for payload in forged:
            with pytest.raises(cv.RemoteError) as info:
                requests.request(0, EXECUTOR_RUN, payload).result(timeout=10)
            assert info.value.remote_type == "FrameError", info.value
        with m.executor() as ex:
            assert ex.submit(square, 4).result(timeout=10) == 16
        m.wait_quiet()
