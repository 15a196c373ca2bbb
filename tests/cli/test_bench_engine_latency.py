"""bench/engine_latency.py: the engine's ping-pong in C++ builds, runs, and reports every contestant."""

import sys

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
