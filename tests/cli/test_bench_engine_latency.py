"""bench/engine_latency.py: the C++ ping-pong builds, runs and reports; bad options are refused."""

import sys

import pytest

from conftest import ROOT, run_command

SCRIPT = ROOT / "bench" / "engine_latency.py"


def test_a_small_run():
    cmd = [sys.executable, str(SCRIPT), "--iters", "200", "--reps", "3", "--runs", "1"]
    result = run_command(cmd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [" ".join(row[:-2]) for row in rows] == [
        "C MPI_Send/MPI_Recv",
        "engine post/wait/pop (C++)",
        "engine post_aggregated (C++)",
    ]
    assert all(float(row[-2]) > 0 for row in rows)


@pytest.mark.parametrize("option", ["--iters", "--reps", "--runs"])
@pytest.mark.parametrize("value, says", [("0", "must be at least 1"), ("x", "not an integer")])
def test_bad_options_are_refused(option, value, says):
    result = run_command([sys.executable, str(SCRIPT), option, value], timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr, result.stderr
