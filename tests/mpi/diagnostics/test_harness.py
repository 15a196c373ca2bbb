"""The suite's own harness: a command that hangs is explained, then killed.

`conftest.run_command` fails a test whose command outlives its timeout;
before it kills the command, every rank logs its messenger's state
(SIGUSR1) and every Python process prints its stacks (SIGABRT), so a
hang in CI says where it was.
"""

import resource
import sys

import pytest

from conftest import mpiexec, run_command

HANG = """
import sys, time
import conveyor as cv

with cv.Messenger() as m:
    if m.rank == 0:
        m.request(1, "never_answered").result()
    else:
        time.sleep(1000)
"""


def test_a_hung_job_says_where_each_rank_waits():
    with pytest.raises(pytest.fail.Exception) as failed:
        run_command([mpiexec(), "-n", "2", sys.executable, "-c", HANG], timeout=10)
    report = str(failed.value)
    assert "hung (killed after 10 s)" in report
    # Each rank's state, from its messenger; MPICH's proxy starts each rank
    # in a session of its own, so they are found by their parents.
    assert "conveyor: rank 0 of 2" in report and "conveyor: rank 1 of 2" in report
    assert "#1 to rank 1, tag 'never_answered'" in report
    # Each rank's stack, from the fault handler.
    assert report.count("Fatal Python error: Aborted") == 2
    assert "in result" in report and "in <module>" in report


def test_a_hung_python_without_a_messenger_prints_its_stack():
    code = "import time\ndef stuck():\n    time.sleep(1000)\nstuck()\n"
    with pytest.raises(pytest.fail.Exception) as failed:
        run_command([sys.executable, "-c", code], timeout=3)
    report = str(failed.value)
    assert "conveyor: rank" not in report
    assert "Fatal Python error: Aborted" in report
    assert 'File "<string>", line 3 in stuck' in report


def test_the_aborted_commands_write_no_core_file():
    # SIGABRT dumps core where core files are on: the command runs with
    # none, whatever this process allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    allowed = hard if hard != resource.RLIM_INFINITY else resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_CORE, (allowed, hard))
    try:
        result = run_command(["bash", "-c", "ulimit -c"], timeout=30)
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))
    assert result.returncode == 0 and result.stdout.strip() == "0"
