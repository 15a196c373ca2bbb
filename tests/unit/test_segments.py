"""A rowwise task's chunk computed a segment at a time over its arguments'
pieces (`conveyor._segments.by_segments`): numpy's values, and no piece copied."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from conveyor._darray.elementwise import Rowwise
from conveyor._segments import Segments, by_segments, by_segments_fits


def pieces(rows, sizes):
    """`rows` cut into read-only pieces of `sizes` rows, as fetched chunk rows arrive."""
    parts = np.split(rows, np.cumsum(sizes)[:-1])
    for part in parts:
        part.flags.writeable = False
    return parts


class Recorded:
    """A rowwise function that remembers every call's arguments."""

    rowwise = True

    def __init__(self, f):
        self.f, self.calls = f, []

    def __call__(self, *rows, out=None):
        self.calls.append(rows)
        return Rowwise(self.f, list(range(len(rows))), [], {})(*rows, out=out)


sizes = st.lists(st.integers(1, 9), min_size=2, max_size=6)


@given(x_sizes=sizes, y_cut=st.integers(0, 40), columns=st.sampled_from([None, 3]))
def test_values_as_numpy_and_every_call_reads_the_pieces_in_place(x_sizes, y_cut, columns):
    n = sum(x_sizes)
    shape = (n,) if columns is None else (n, columns)
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    y = np.arange(np.prod(shape), dtype=np.int32).reshape(shape) * 3
    cut = y_cut % n
    y_sizes = [s for s in (cut, n - cut) if s]
    x_parts, y_parts = pieces(x, x_sizes), pieces(y, y_sizes)
    values = [Segments(x_parts), Segments(y_parts) if len(y_parts) > 1 else y_parts[0]]
    f = Recorded(np.add)
    assert by_segments_fits(f, values, [], n)
    result = by_segments(f, values, n, np.empty)
    np.testing.assert_array_equal(result, x + y)
    assert result.dtype == np.result_type(x, y) and result.flags.c_contiguous
    for rows in f.calls[1:]:  # the first call, on no rows, learns the dtype
        assert len(rows[0])
        assert any(np.shares_memory(rows[0], part) for part in x_parts)
        assert any(np.shares_memory(rows[1], part) for part in y_parts)


def test_a_function_without_out_and_constants():
    x_parts = pieces(np.linspace(-2, 2, 11), [4, 7])
    clipped = Rowwise(np.clip, [0, -1, -2], [-0.5, 1.0], {})  # np.clip(rows, -0.5, 1.0)
    np.testing.assert_array_equal(
        by_segments(clipped, [Segments(x_parts)], 11, np.empty),
        np.clip(np.linspace(-2, 2, 11), -0.5, 1.0),
    )


def test_rows_are_joined_unless_the_task_can_take_them_a_segment_at_a_time():
    parts = Segments(pieces(np.arange(6.0), [2, 4]))
    whole = np.ones(6)
    assert by_segments_fits(Rowwise(np.add, [0, 1], [], {}), [parts, whole], [], 6)
    assert not by_segments_fits(np.add, [parts, whole], [], 6)  # not marked rowwise
    assert not by_segments_fits(Rowwise(np.add, [0, 1], [], {}), [parts, whole], ["y"], 6)
    assert not by_segments_fits(Rowwise(np.add, [0, 1], [], {}), [parts, np.ones(5)], [], 6)
    assert not by_segments_fits(Rowwise(np.add, [0, 1], [], {}), [parts, 2.0], [], 6)
    assert by_segments_fits(Rowwise(np.add, [0], [], {}), [whole], [], 6)  # in one segment
    np.testing.assert_array_equal(parts.joined(np.empty), np.arange(6.0))
    mixed = Segments([np.arange(2, dtype=np.int8), np.arange(3.0)])  # numpy's promotion
    np.testing.assert_array_equal(mixed.joined(np.empty), np.concatenate(mixed.parts))
    assert mixed.joined(np.empty).dtype == np.float64
