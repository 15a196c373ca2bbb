"""examples/actors.py, Factor's process1 and logger, run as a user would at 1, 2 and 4 ranks."""

import pytest

from conftest import run_example


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_factor_process1_and_logger(nranks):
    result = run_example("actors", nranks)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    told = sorted(line for line in lines if line.startswith("[logger]"))
    assert told == sorted(
        f"[logger] rank {r} was told 'Message Received!'" for r in range(nranks)
    ), result.stdout
    assert f"lines logged: {nranks}" in lines
