"""bench/blas_threads.py: both launches run, and only conveyor run sizes the ranks' BLAS."""

import os
import sys

from conftest import ROOT, run_command

SCRIPT = ROOT / "bench" / "blas_threads.py"


def test_a_small_run():
    cmd = [sys.executable, str(SCRIPT), "--ranks", "2", "--runs", "1"]
    result = run_command(cmd + ["--size", "100", "--products", "50"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    # ranks, launch, the threads its BLAS was given, seconds, (range), ratio
    assert [row[:-3] for row in rows] == [
        ["2", "mpiexec", "default"],
        ["2", "conveyor", "run", share],
    ]
    assert all(float(row[-3]) > 0 for row in rows)
