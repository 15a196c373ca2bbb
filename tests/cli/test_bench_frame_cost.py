"""bench/frame_cost.py: mpi4py receivers that need a header per array, beside osu_bw.

Structure only, never speed: a small run on 2 ranks under a timeout must
report every contestant with a positive ratio, and the script refuses a
rank count it cannot use and options that are not sizes or counts.
"""

import sys

import pytest

from conftest import ROOT, mpiexec, run_command

SCRIPT = ROOT / "bench" / "frame_cost.py"


def test_a_small_run():
    cmd = [mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "--sizes", "65536,262144"]
    result = run_command([*cmd, "--mib", "8", "--reps", "2"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["64", "KiB"], ["256", "KiB"]]
    for line in lines:
        ratios = line.split("MB/s", 1)[1]
        for name in ("probed", "header message", "one message"):
            assert f" {name} " in ratios, line
        values = [float(word[:-1]) for word in ratios.split() if word.endswith("x")]
        assert len(values) == 3 and all(v > 0 for v in values), line


def test_it_needs_two_ranks():
    result = run_command([mpiexec(), "-n", "1", sys.executable, str(SCRIPT)], timeout=60)
    assert result.returncode != 0
    assert "runs on 2 ranks" in result.stdout + result.stderr


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("--sizes", "64K,lots", "not a size: 'lots'"),
        ("--sizes", "0", "at least 1 byte"),
        ("--mib", "0", "must be at least 1"),
        ("--reps", "two", "not an integer: 'two'"),
    ],
)
def test_bad_options_are_refused(option, value, says):
    cmd = [mpiexec(), "-n", "2", sys.executable, str(SCRIPT), option, value]
    result = run_command(cmd, timeout=60)
    assert result.returncode != 0
    assert says in result.stderr, result.stderr
