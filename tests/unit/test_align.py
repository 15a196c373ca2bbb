"""conveyor._core.chunks.align: the pieces of an argument that one target chunk needs (R's recycling)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor._native import core as _core


def recycled(sizes, begin, end):
    """Rows [begin, end) of the target, built from the pieces align() names."""
    pieces = _core.chunks.align(sizes, begin, end)
    assert pieces.dtype == np.int64 and pieces.shape == (len(pieces), 3)
    argument = np.arange(sum(sizes))
    chunks = np.split(argument, np.cumsum(sizes)[:-1]) if sizes else []
    period = [chunks[c][start:stop] for c, start, stop in pieces]
    assert all(len(p) > 0 for p in period)
    period = np.concatenate(period) if period else argument[:0]
    assert len(period) == min(end - begin, len(argument))  # one period, never more
    return np.resize(period, end - begin)


@given(
    sizes=st.lists(st.integers(0, 12), max_size=8),
    begin=st.integers(0, 300),
    length=st.integers(0, 80),
)
def test_pieces_tile_to_the_recycled_rows(sizes, begin, length):
    end = begin + length
    total = sum(sizes)
    if total == 0:
        assert _core.chunks.align(sizes, begin, end).shape == (0, 3)
        return
    np.testing.assert_array_equal(recycled(sizes, begin, end), np.arange(begin, end) % total)


def test_wraps_around_and_rotates_a_long_target():
    np.testing.assert_array_equal(_core.chunks.align([3, 0, 4, 2], 7, 11), [[3, 0, 2], [0, 0, 2]])
    np.testing.assert_array_equal(
        _core.chunks.align([3, 0, 4, 2], 5, 100), [[2, 2, 4], [3, 0, 2], [0, 0, 3], [2, 0, 2]]
    )


def test_begin_far_beyond_the_argument():
    begin = 2**62 + 1  # row 1 of 8
    np.testing.assert_array_equal(_core.chunks.align([4, 4], begin, begin + 2), [[0, 1, 3]])


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int64, np.uint64])
def test_sizes_of_any_integer_dtype(dtype):
    np.testing.assert_array_equal(
        _core.chunks.align(np.array([2, 3], dtype=dtype), 1, 4), [[0, 1, 2], [1, 0, 2]]
    )


@pytest.mark.parametrize(
    "sizes, begin, end, error, match",
    [
        ([1, -2], 0, 1, ValueError, "index 1 is negative"),
        ([[1, 2]], 0, 1, ValueError, "1-D"),
        ([[1], [1, 2]], 0, 1, ValueError, "inhomogeneous"),
        ([1.0, 2.0], 0, 1, TypeError, "integers"),
        (np.array([2**63], dtype=np.uint64), 0, 1, ValueError, "larger than"),
        ([2**62, 2**62, 2**62, 2**62], 0, 1, ValueError, "add up to more"),
        ([3], 2, 1, ValueError, "end before they begin"),
        ([3], -1, 1, ValueError, "negative"),
    ],
)
def test_bad_arguments(sizes, begin, end, error, match):
    with pytest.raises(error, match=match):
        _core.chunks.align(sizes, begin, end)
