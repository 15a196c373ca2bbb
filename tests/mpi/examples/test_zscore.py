"""The zscore example (distributed arrays in the driver model), run as a user would run it."""

import pytest

from conftest import run_example


@pytest.mark.parametrize("nranks", [None, 1, 2, 4], ids=["python", "np1", "np2", "np4"])
def test_zscore_example(nranks):
    result = run_example("zscore", nranks, "--samples", 100_003, "--chunks", 6)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout and "WRONG" not in result.stdout, result.stdout


def test_zscore_example_without_recycling_warning():
    # 3 divides the length: the weights recycle evenly, and no warning may come.
    result = run_example("zscore", 2, "--samples", 99_999, "--chunks", 4)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "recycling warning: ok" in result.stdout, result.stdout
