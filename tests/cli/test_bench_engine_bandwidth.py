"""bench/engine_bandwidth.py: the engine's osu_bw windows in C++ build, run, and report every contestant."""

import sys

from conftest import ROOT, run_command

SCRIPT = ROOT / "bench" / "engine_bandwidth.py"


def test_a_small_run():
    cmd = [sys.executable, str(SCRIPT), "--sizes", "65536", "--mib", "8", "--reps", "2"]
    result = run_command([*cmd, "--runs", "1"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("65536 bytes, MB/s")
    rows = [line.split() for line in lines[1:]]
    assert [" ".join(row[:-2]) for row in rows] == [
        "C MPI_Isend window, one buffer",
        "the same, a buffer per message",
        "engine post/wait/pop (C++)",
        "engine / mpi",
        "engine / mpi-distinct",
    ]
    assert all(float(row[-2]) > 0 for row in rows)
