"""bench/engine_bandwidth.py: the C++ osu_bw windows build, run and report; bad options are refused."""

import sys

import pytest

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


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--sizes", "64K,lots", "not a size: 'lots'"),
        ("--sizes", "0", "at least 1 byte"),
        ("--mib", "0", "must be at least 1"),
        ("--runs", "two", "not an integer: 'two'"),
    ],
)
def test_bad_options_are_refused(option, value, says):
    result = run_command([sys.executable, str(SCRIPT), option, value], timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert says in result.stderr, result.stderr
