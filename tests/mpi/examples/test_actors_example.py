"""examples/actors.py, Factor's process1 and logger, run as a user would at 1, 2 and 4 ranks."""

import re

import pytest

from conftest import run_example


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_factor_process1_and_logger(nranks):
    result = run_example("actors", nranks)
    assert result.returncode == 0, result.stdout + result.stderr
    # The logger prints on the last rank and rank 0 prints the count: mpiexec
    # forwards each rank's writes as they come, and print() under the suite's
    # PYTHONUNBUFFERED writes a line's text and its newline apart, so the other
    # rank's line can land between the two (seen in CI). Read the output as
    # text, not as lines.
    told = sorted(re.findall(r"\[logger\] rank \d+ was told '[^']*'", result.stdout))
    assert told == sorted(
        f"[logger] rank {r} was told 'Message Received!'" for r in range(nranks)
    ), result.stdout
    assert re.search(rf"lines logged: {nranks}(?!\d)", result.stdout), result.stdout
