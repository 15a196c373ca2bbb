"""Rowwise computing over the pieces of chunks an argument's rows lie in, never joined.

A task's argument aligned to its result's rows arrives as pieces of the
chunks they lie in (`Segments`). A function that computes each row from
the same row of each argument alone (`ROWWISE`: the DistArray's
elementwise operations) runs a segment at a time over them, writing into
one result (`by_segments`); any other function gets them joined.
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    # Makes an uninitialised array of a shape and dtype (`_pool.Pool.empty`).
    Empty = Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray]

__all__ = ["ROWWISE", "Segments", "by_segments", "by_segments_fits"]


class Segments:
    """An argument's rows for one task as the pieces of chunks they came in.

    A task whose function is rowwise (`ROWWISE`) computes its chunk a
    segment at a time, each segment's rows read where they lie, so the
    pieces are never joined: joining copies them, which for an aligned
    operand is most of its rows (in ``x + y`` with misaligned chunks, the
    rows of x that span two of x's chunks).
    """

    __slots__ = ("parts", "ends")

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.ends = list(itertools.accumulate(len(part) for part in parts))

    def joined(self, empty: Empty) -> np.ndarray:
        """The rows in one array, made by ``empty(shape, dtype)``."""
        dtype = np.result_type(*self.parts)
        out = empty((self.ends[-1],) + self.parts[0].shape[1:], dtype)
        return np.concatenate(self.parts, out=out)

    def rows(self, begin: int, end: int) -> np.ndarray:
        """Rows begin .. end, which lie in one part (a segment of `by_segments`)."""
        k = min(bisect.bisect_right(self.ends, begin), len(self.parts) - 1)
        first = self.ends[k] - len(self.parts[k])
        return self.parts[k][begin - first : end - first]


# The attribute that marks a task's function as rowwise: each row of its
# result depends on the same row of each argument alone, and it takes
# ``out=``, an array of its result's rows to fill (the DistArray's
# elementwise operations, `_darray.elementwise.Rowwise`).
ROWWISE = "rowwise"


def by_segments_fits(
    function: Callable[..., Any] | None, values: list[Any], names: list[str], length: int
) -> bool:
    """Whether `by_segments` can compute `function` over `values`: it is
    rowwise, and its arguments are positional, each with a row per result
    row (some perhaps in `Segments`)."""
    return (
        getattr(function, ROWWISE, False) is True
        and not names
        and all(
            isinstance(v, Segments)
            or (isinstance(v, np.ndarray) and v.ndim and v.shape[0] == length)
            for v in values
        )
    )


def by_segments(function: Any, values: list[Any], length: int, empty: Empty) -> np.ndarray:
    """`function` over `values` (`by_segments_fits`), `length` rows: the
    result made once by `empty` (its dtype and row shape from the function
    on no rows), then filled between every two places where a piece of some
    argument ends; in one call where no argument has pieces."""

    def rows(v: Any, begin: int, end: int) -> np.ndarray:
        return v.rows(begin, end) if isinstance(v, Segments) else v[begin:end]

    bounds = sorted({0, length}.union(*(v.ends for v in values if isinstance(v, Segments))))
    probe = np.asarray(function(*(rows(v, 0, 0) for v in values)))
    out = empty((length,) + probe.shape[1:], probe.dtype)
    for begin, end in zip(bounds, bounds[1:]):
        function(*(rows(v, begin, end) for v in values), out=out[begin:end])
    return out
