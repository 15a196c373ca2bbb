"""A fault-tolerant messenger outlives a dead rank: RankFailedError, then quiet among the rest.

Each case runs a script on 3 ranks with ``conveyor run --fault-tolerant``
(MPICH's ``-disable-auto-cleanup``, Open MPI's ``--enable-recovery``).
Rank 2 dies while ranks 0 and 1 wait for an answer it will never give;
they must get `RankFailedError(2)`, be refused further sends to it, have
nothing in flight to it left in their pool of windows, go on
exchanging messages, and finish `wait_quiet` and `close` without it. Every
wait in the script is unbounded, so a detector that misses the death is a
hang, which fails the test.
"""

import sys

import pytest

from conftest import mpiexec, mpiexec_is_open_mpi, run_command

SCRIPT = """
import os, signal, sys
import conveyor as cv

how = sys.argv[1]
with cv.Messenger(fault_tolerant=True) as m:
    m.on("echo")(lambda msg: msg.payload)
    m.on("never")(lambda msg: msg.defer())  # answered by no one
    got = []
    m.on("count")(lambda msg: got.append(msg.payload))
    peer = (m.rank + 1) % m.size
    for i in range(20):
        assert m.request(peer, "echo", i).result() == i
    m.wait_quiet()
    if m.rank == 2:
        if how == "kill -9":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    pending = m.request(2, "never", m.rank)
    try:
        pending.result()
    except cv.RankFailedError as error:
        print(f"rank {m.rank}: pending request failed: {error!r}, rank {error.rank}", flush=True)
    for refused in (lambda: m.send(2, "count", 1), lambda: m.request(2, "echo", 1)):
        try:
            refused()
        except cv.RankFailedError as error:
            print(f"rank {m.rank}: refused: {error}", flush=True)
    # What rank 2 will never credit (the requests sent to it) no longer
    # counts against this rank's pool of windows.
    routes = m._transport.engine.describe(5.0)["routes"]
    owed = sum(r["in_flight_frame_bytes"] + r["held"] for r in routes if r["rank"] == 2)
    print(f"rank {m.rank}: in flight to rank 2: {owed}", flush=True)
    # The survivors go on: a cascade between them, then quiet without rank 2.
    other = 1 - m.rank
    for i in range(100):
        m.send(other, "count", i)
    m.wait_quiet()
    assert sorted(got) == list(range(100)), got
    assert m.stats()["pending_requests"] == 0
    print(f"rank {m.rank}: quiet without rank 2", flush=True)
print(f"rank {m.rank}: closed", flush=True)
"""

# Short, for the test's sake; on a loaded machine, not so short that a
# busy rank is taken for dead (the whole job has 120 s).
HEARTBEAT_S = "3"


@pytest.mark.parametrize("how", ["os._exit", "kill -9"])
def test_survivors_fail_pending_requests_and_finish_without_the_dead_rank(how, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "conveyor", "run", "--fault-tolerant", "-n", "3", str(script), how]
    proc = run_command(cmd, timeout=120, env={"CONVEYOR_HEARTBEAT_S": HEARTBEAT_S})
    output = proc.stdout + proc.stderr
    if how == "kill -9" and not mpiexec_is_open_mpi():
        # MPICH's hydra ends the whole job when a rank dies of a signal,
        # -disable-auto-cleanup or not (docs/fault-tolerance.rst): it must
        # end, and fail.
        assert proc.returncode != 0, output
        return
    assert proc.returncode == 0, output
    for rank in (0, 1):
        assert f"rank {rank}: pending request failed: RankFailedError(2, " in output, output
        assert output.count(f"rank {rank}: refused: rank 2 failed") == 2, output
        assert f"rank {rank}: in flight to rank 2: 0" in output, output
        assert f"rank {rank}: quiet without rank 2" in output, output
        assert f"rank {rank}: closed" in output, output
        assert f"conveyor: rank {rank} of 3: rank 2 failed (no heartbeat for" in output, output
    assert "conveyor run: rank 2 did not finish" in output, output
    assert "the other 2 ranks finished without it" in output, output


# -- without a failure: the same results as any messenger ------------------------


def case_quiet_without_failures():
    import conveyor as cv

    with cv.Messenger(fault_tolerant=True) as m:
        got = []

        @m.on("hop")
        def hop(msg):
            got.append(msg.payload)
            if msg.payload > 0:  # a cascade: each message sends the next
                m.send((m.rank + 1) % m.size, "hop", msg.payload - 1)

        for round in range(3):
            for dest in range(m.size):
                m.send(dest, "hop", 5)
            m.wait_quiet()
            # Every rank started size chains of 6 messages: 6 * size in all
            # arrive somewhere; each rank gets its share once quiet.
            total = m.allreduce(len(got))
            assert total == 6 * m.size * m.size * (round + 1), total
        assert m.request((m.rank + 1) % m.size, "hop", 0).result() is None
        assert m.failed_ranks == frozenset()
        assert m.stats()["pending_requests"] == 0


def test_quiet_without_failures(mpirun, nranks):
    mpirun(nranks, case_quiet_without_failures, env={"CONVEYOR_HEARTBEAT_S": "30"})


def case_fault_tolerant_arguments():
    import asyncio
    import os

    import conveyor as cv

    assert issubclass(cv.RankFailedError, cv.ConveyorError)
    assert issubclass(cv.RankFailedError, ConnectionError)
    error = cv.RankFailedError(3, "no heartbeat for 5.0 s")
    assert error.rank == 3 and str(error) == "rank 3 failed: no heartbeat for 5.0 s"
    try:
        cv.Messenger(fault_tolerant=True, serve="thread")
    except ValueError as e:
        assert "fault_tolerant=True needs serve='inline'" in str(e), e
    else:
        raise AssertionError("fault_tolerant with serve='thread' was accepted")
    for bad in ("0", "-1", "nan", "inf", "soon"):
        os.environ["CONVEYOR_HEARTBEAT_S"] = bad
        try:
            cv.Messenger(fault_tolerant=True)
        except ValueError as e:
            assert "CONVEYOR_HEARTBEAT_S" in str(e), e
        else:
            raise AssertionError(f"CONVEYOR_HEARTBEAT_S={bad} was accepted")
    del os.environ["CONVEYOR_HEARTBEAT_S"]
    with cv.Messenger() as m:
        assert m.failed_ranks == frozenset()
    with cv.Messenger(fault_tolerant=True) as m:

        async def attach():
            m.attach()

        try:
            asyncio.run(attach())
        except cv.ConveyorError as e:
            assert "not supported by a fault-tolerant messenger" in str(e), e
        else:
            raise AssertionError("a fault-tolerant messenger was served from an event loop")
        m.wait_quiet()
        assert m.failed_ranks == frozenset()


def test_fault_tolerant_arguments(mpirun):
    mpirun(1, case_fault_tolerant_arguments)


def test_fault_tolerance_options_of_this_mpiexec():
    from conveyor.cli.launch import fault_tolerance_options

    expected = ["--enable-recovery"] if mpiexec_is_open_mpi() else ["-disable-auto-cleanup"]
    assert fault_tolerance_options(mpiexec()) == expected
    assert fault_tolerance_options("/bin/true") is None  # says nothing of itself


def test_conveyor_run_refuses_fault_tolerance_with_an_unknown_mpiexec(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("")
    cmd = [sys.executable, "-m", "conveyor", "run", "--fault-tolerant", "--mpiexec", "/bin/true"]
    proc = run_command([*cmd, "-n", "2", str(script)], timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is neither MPICH's nor Open MPI's mpiexec" in proc.stderr, proc.stderr
