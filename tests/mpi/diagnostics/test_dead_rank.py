"""A rank that leaves a job early ends it, with a non-zero status and its name in the output.

Each case runs a script on 3 ranks under mpiexec: the other ranks wait for
the leaving one without a timeout (a request it never answers, or
wait_quiet), so a job that does not end is a hang, which fails the test.
"""

import sys

import pytest

from conftest import mpiexec, run_command

SCRIPT = """
import os, signal, sys
import conveyor as cv

how = sys.argv[1]
m = cv.Messenger(abort_on_error=how != "uncaught, abort_on_error=False")
with m:
    m.on("echo")(lambda msg: msg.payload)
    peer = (m.rank + 1) % m.size
    for i in range(50):
        m.request(peer, "echo", i).result(timeout=30)
    if m.rank == 2:
        if how.startswith("uncaught"):
            raise RuntimeError("rank 2 failed on purpose")
        if how.startswith("sys.exit"):
            sys.exit(int(how[-2]))
        if how == "kill -9":
            os.kill(os.getpid(), signal.SIGKILL)
    m.request(peer, "echo", "never answered by rank 2").result()
    m.wait_quiet()
"""

NAMED = "conveyor: rank 2 of 3 "


@pytest.mark.parametrize(
    "how, why",
    [
        ("uncaught", "raised an uncaught RuntimeError"),
        # With abort_on_error=False the exception was Python's to print; the
        # rank still ends the job when it exits (it took 30 s: the others'
        # timeouts).
        ("uncaught, abort_on_error=False", "raised an uncaught RuntimeError"),
        # A SystemExit out of the messenger's block: the rank finalized and
        # left, and the others waited for ever (no excepthook sees it).
        ("sys.exit(0)", "left a messenger's block by SystemExit(0)"),
        ("sys.exit(3)", "left a messenger's block by SystemExit(3)"),
    ],
)
def test_a_rank_leaving_early_ends_the_job_and_is_named(how, why):
    cmd = [mpiexec(), "-n", "3", sys.executable, "-c", SCRIPT, how]
    proc = run_command(cmd, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert NAMED + why + ": aborting the job" in output, output
    code = 3 if how == "sys.exit(3)" else 1
    assert f"(exit status {code})" in output, output


def test_a_killed_rank_ends_the_job():
    # MPICH's mpiexec kills the other ranks (with SIGKILL: they run no code
    # after it) as soon as one exits without MPI_Finalize: nothing of
    # conveyor's can name it, and the status is mpiexec's.
    cmd = [mpiexec(), "-n", "3", sys.executable, "-c", SCRIPT, "kill -9"]
    proc = run_command(cmd, timeout=60)
    assert proc.returncode != 0, proc.stdout + proc.stderr
