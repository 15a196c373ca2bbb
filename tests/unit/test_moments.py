"""The moments behind a float64 DistArray's var and std: each chunk's, and the chunks' merged.

numpy's var takes two passes over the values; the chunks' moments take one,
a sum of squares less the sum's square, which keeps every digit only if the
values are shifted near their mean first. Rows of 8 elements (not 8192) make
a chunk many rows long with few values, so that a first row unlike the rest
would cost digits if nothing took the sums again.
"""

import numpy as np
import pytest

from conveyor._darray import reductions

RNG = np.random.default_rng(17)
N = 100_003
CASES = {
    "around 1e8, spread 1": 1e8 + RNG.random(N),
    "around 0.5 (no shift)": RNG.random(N),
    "around 0, spread 1e3": RNG.normal(0, 1e3, N),
    "a first row of zeros, then around 1e8": np.concatenate([np.zeros(8), 1e8 + RNG.random(N)]),
    "sorted, around 1e8": np.sort(1e8 + RNG.normal(0, 1, N)),
    "a constant": np.full(N, 0.1),
    "strided": (1e8 + RNG.random(3 * N))[::3],
    "one value": np.array([3.5]),
}


@pytest.fixture(autouse=True)
def short_rows(monkeypatch):
    monkeypatch.setattr(reductions, "ROW", 8)
    monkeypatch.setattr(reductions, "ROWS_AT_ONCE", 4)


def check(moments, values):
    count, shift, rest, deviations = moments
    assert count == len(values)
    np.testing.assert_allclose(shift + rest, np.mean(values), rtol=1e-14)
    np.testing.assert_allclose(deviations / count, np.var(values), rtol=1e-13, atol=1e-30)


@pytest.mark.parametrize("name", CASES)
def test_chunk_moments_are_numpys(name):
    values = CASES[name]
    moments = reductions._moments(values)
    assert moments.shape == (1, 4) and moments.dtype == np.float64
    check(moments[0], values)


@pytest.mark.parametrize("name", CASES)
def test_merged_chunks_are_numpys(name):
    # Means around 1e8 rounded to float64 would be 1e-8 apart, whose square
    # the merge would add: they travel as a shift and the rest.
    values = CASES[name]
    chunks = np.array_split(values, [len(values) // 7, len(values) // 2])
    rows = np.concatenate([reductions._moments(c) for c in chunks if len(c)])
    check(reductions._merged_moments(rows, 0, False), values)


def test_empty_chunk_has_no_row():
    assert reductions._moments(np.empty(0)).shape == (0, 4)
