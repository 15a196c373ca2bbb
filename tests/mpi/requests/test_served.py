"""``Messenger(serve="thread")``: a rank answers while its program blocks anywhere.

Each rank's program thread blocks outside conveyor (a plain mpi4py
collective, ``time.sleep``, `concurrent.futures.wait`) while the others ask
it things; handlers run on the service thread, one at a time and in order;
a handler that waits serves inline there; waits, back-pressure,
termination detection and close work from the program's thread. At 1 to 4
ranks; every job has a timeout, so a rank that does not answer fails.
"""

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

import conveyor as cv

from _helpers import no_state_left, world


def case_a_rank_blocked_in_plain_mpi_still_answers():
    comm = world()
    with cv.Messenger(serve="thread") as m:
        threads = set()

        @m.on("echo")
        def echo(msg):
            threads.add(threading.current_thread().name)
            return msg.payload

        # Its service thread serves from the start: receivers are registered
        # before any rank may send to them.
        comm.barrier()
        # Rank 0 goes straight into a blocking allgather; the others first ask
        # it (and each other) for answers, which only its service thread can give.
        if m.rank != 0:
            futures = [m.request(r, "echo", (m.rank, i)) for r in range(m.size) for i in range(20)]
            done, not_done = concurrent.futures.wait(futures, timeout=30)
            assert not not_done
            assert [f.result() for f in futures] == [
                (m.rank, i) for r in range(m.size) for i in range(20)
            ]
        assert comm.allgather(m.rank) == list(range(m.size))
        time.sleep(0.1)  # the program sleeps: answering goes on
        if m.rank == 0:
            assert m.request(m.size - 1, "echo", "x").result(timeout=30) == "x"
        m.wait_quiet()
        if m.size > 1 and m.rank == 0:
            assert threads == {f"conveyor-serve-rank{m.rank}"}, threads
        assert m.progress(1.0) == 0  # the end of an idle round of the service thread
        no_state_left(m)


def test_a_rank_blocked_in_plain_mpi_still_answers(mpirun, nranks):
    mpirun(nranks, case_a_rank_blocked_in_plain_mpi_still_answers)


def case_served_handlers_keep_order_nest_and_send():
    with cv.Messenger(serve="thread") as m:
        got = []
        refused = []
        peer = (m.rank + 1) % m.size

        m.on("echo")(lambda msg: msg.payload)
        m.on("note")(lambda msg: got.append(msg.payload if np.isscalar(msg.payload) else -1))

        @m.on("relay")
        def relay(msg):
            # A handler that waits serves inline on the service thread.
            return m.request(peer, "echo", msg.payload).result(timeout=30) * 2

        @m.on("quiet")
        def quiet(msg):
            try:
                m.wait_quiet()
            except cv.ConveyorError as exc:  # refused in a handler, served or not
                refused.append(str(exc))

        world().barrier()  # every rank's receivers are registered
        for i in range(500):
            m.send(peer, "note", i)  # sends from the program's thread meanwhile
        big = np.zeros(1 << 17)  # 1 MiB, against a 1 MiB data window: back-pressure
        for _ in range(20):
            m.send(peer, "note", big)
        assert m.request(peer, "relay", 21).result(timeout=60) == 42
        m.send(m.rank, "quiet")
        m.wait_quiet()
        assert got == list(range(500)) + [-1] * 20
        assert len(refused) == 1 and "from a handler" in refused[0], refused
        assert world().allreduce(m.stats()["sends_held"]) > 0  # back-pressure did hold sends
        no_state_left(m)


def test_served_handlers_keep_order_nest_and_send(mpirun, nranks):
    mpirun(
        nranks,
        case_served_handlers_keep_order_nest_and_send,
        env={"CONVEYOR_DATA_WINDOW_BYTES": str(1 << 20)},
    )


def case_served_waits_time_out_and_futures_await():
    with cv.Messenger(serve="thread") as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        m.on("echo")(lambda msg: msg.payload)
        world().barrier()  # every rank's receivers are registered
        fut = m.request(m.rank, "later")
        with pytest.raises(cv.TimeoutError):
            fut.result(timeout=0.05)
        world().barrier()
        held.pop().reply("now")
        assert fut.result(timeout=30) == "now"

        async def main():
            return await m.arequest((m.rank + 1) % m.size, "echo", 5, timeout=30)

        assert asyncio.run(main()) == 5
        with pytest.raises(cv.ConveyorError, match="own thread"):
            m.attach(asyncio.new_event_loop())
        m.wait_quiet()


def test_served_waits_time_out_and_futures_await(mpirun, nranks):
    mpirun(nranks, case_served_waits_time_out_and_futures_await)


def test_serve_is_checked():
    with pytest.raises(ValueError, match="serve must be"):
        cv.Messenger(serve="threads")


def test_a_closed_served_messenger_stops_its_thread():
    before = {t.name for t in threading.enumerate()}
    m = cv.Messenger(serve="thread")
    assert "conveyor-serve-rank0" in {t.name for t in threading.enumerate()} - before
    m.close()
    assert "conveyor-serve-rank0" not in {t.name for t in threading.enumerate()}
    with pytest.raises(cv.ConveyorError, match="closed"):
        m.request(0, "echo", 1)
