"""Reductions, as numpy has them: over all elements, the rows (axis 0) or each row (axis 1).

Over all elements or over the rows, a reduction is map-reduce: one task per
chunk, run where the chunk is, answers one row (none for an empty chunk),
and the caller combines those rows with the same numpy function; the
result is a numpy value. Along each row (``axis=1`` of a 2-D array) every
chunk reduces its own rows where it is, and the result is a DistArray of
the same chunking. ``var`` and ``std`` of float64 over all elements take
one round (each chunk's count, mean and squared deviations, merged);
otherwise two (the mean, then the squared deviations from it), as numpy
computes them. ``argmin`` and ``argmax`` answer each chunk's extreme and
its place, and the caller picks the first extreme over all. ``cumsum`` and
``cumprod`` stay distributed and never wait: each chunk's total goes to the
next chunk's rank, where the running total before it is added up and then
applied to its own running sums.
"""

from __future__ import annotations

import functools
import operator
import warnings
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import _pickling
from .calls import tasks
from .chunked import C, Chunked

if TYPE_CHECKING:
    from .._chunks import Spec

try:
    from numpy.exceptions import AxisError
except ImportError:  # numpy < 1.25
    from numpy import AxisError  # type: ignore[attr-defined,no-redef]

# numpy's ufuncs whose ``reduce`` is one of the reductions (np.add.reduce(x)),
# and whose ``accumulate`` is one of the running ones (np.add.accumulate(x)).
REDUCERS = {
    np.add: "sum",
    np.multiply: "prod",
    np.minimum: "min",
    np.maximum: "max",
    np.logical_or: "any",
    np.logical_and: "all",
}
ACCUMULATORS = {np.add: "cumsum", np.multiply: "cumprod"}


def normalized_axis(axis: Any, ndim: int) -> int | None:
    """``axis`` as None (all elements), 0 or 1, or numpy's error."""
    if axis is None:
        return None
    axes = axis if isinstance(axis, tuple) else (axis,)
    chosen = []
    for one in axes:
        one = operator.index(one)
        if not -ndim <= one < ndim:
            raise AxisError(one, ndim)
        chosen.append(one % ndim)
    if len(set(chosen)) != len(chosen):
        raise ValueError("duplicate value in 'axis'")
    if not chosen:
        raise ValueError("axis=() reduces nothing: not supported on a DistArray")
    if len(chosen) == ndim and ndim > 1:
        return None
    (only,) = chosen
    return only


def reduce(
    x: C,
    name: str,
    axis: Any = None,
    out: None = None,
    keepdims: bool = False,
    **options: Any,
) -> Any:
    """numpy's ``name`` (sum, min, ...) of ``x``."""
    _no_out(name, out)
    axis = normalized_axis(axis, x.ndim)
    function = getattr(np, name)
    if axis == 1:
        return _along_rows(x, functools.partial(function, axis=1, keepdims=keepdims, **options))
    part = functools.partial(_partial_reduce, function, axis, options)
    return _combined(x, part, function, axis, keepdims, options)


def mean(
    x: C, axis: Any = None, dtype: Any = None, out: None = None, keepdims: bool = False
) -> Any:
    """numpy's mean: the sum, divided by the count, in numpy's dtype."""
    _no_out("mean", out)
    axis = normalized_axis(axis, x.ndim)
    if axis == 1:
        return _along_rows(x, functools.partial(np.mean, axis=1, dtype=dtype, keepdims=keepdims))
    total = reduce(x, "sum", axis, None, keepdims, dtype=dtype)
    return np.true_divide(total, _count(x, axis), dtype=dtype)


def var(
    x: C,
    axis: Any = None,
    dtype: Any = None,
    out: None = None,
    ddof: int = 0,
    keepdims: bool = False,
    root: bool = False,
) -> Any:
    """numpy's var (or, with ``root``, std): the mean, then the squared deviations."""
    name = "std" if root else "var"
    _no_out(name, out)
    axis = normalized_axis(axis, x.ndim)
    if axis == 1:
        function = functools.partial(
            getattr(np, name), axis=1, dtype=dtype, ddof=ddof, keepdims=keepdims
        )
        return _along_rows(x, function)
    if not len(x):  # numpy's answer for no elements (nan, and its warnings)
        empty = np.empty((0,) + x._learn_type()[1], x.dtype)
        return getattr(np, name)(empty, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)
    if axis is None and dtype is None and x.dtype == np.float64:
        # One pass over memory: each chunk's count, mean and squared
        # deviations, merged here (no round for the mean first).
        moments = _combined(x, _moments, _merged_moments, None, False, {})
        squares = np.reshape(moments[3], (1,) * x.ndim if keepdims else ())
    else:
        centre = mean(x, axis, dtype, keepdims=True)
        part = functools.partial(_partial_squares, centre, axis, dtype)
        squares = _combined(x, part, np.sum, axis, keepdims, {"dtype": dtype})
    count = max(_count(x, axis) - ddof, 0)
    if count == 0:
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=3)
    result = np.true_divide(squares, count, dtype=squares.dtype)
    return np.sqrt(result) if root else result


def arg(x: C, name: str, axis: Any = None, out: None = None, keepdims: bool = False) -> Any:
    """numpy's argmin or argmax: each chunk's extreme and its place; the first over all."""
    _no_out(name, out)
    ndim = x.ndim
    axis = normalized_axis(axis, ndim)
    function = getattr(np, name)
    if axis == 1:
        return _along_rows(x, functools.partial(function, axis=1, keepdims=keepdims))
    dtype, row_shape = x._learn_type()
    lengths = x._lengths()
    extreme = getattr(np, "min" if name == "argmin" else "max")
    held = [k for k, length in enumerate(lengths) if length]
    if not held:  # numpy's error for no elements
        return function(np.empty((0,) + row_shape, dtype), axis=axis, keepdims=keepdims)
    layer = x._layer
    places = _pickling.dumps(functools.partial(_partial_reduce, function, axis, {}))
    values = _pickling.dumps(functools.partial(_partial_reduce, extreme, axis, {}))
    refs = [
        layer.submit(x._refs[k].owner, 1, None, f, [("whole", x._refs[k])])
        for f in (places, values)
        for k in held
    ]
    parts = x._gather(refs)
    place, value = np.concatenate(parts[: len(held)]), np.concatenate(parts[len(held) :])
    best = function(value, axis=0)  # which chunk (for axis 0, per column)
    starts = np.cumsum([0] + lengths)[held]
    if place.ndim == 1:
        chosen = place[best]
    else:
        chosen = place[best, np.arange(place.shape[1])]
    if axis is None:  # a place in the flattened array
        result = starts[best] * int(np.prod(row_shape, dtype=np.int64)) + chosen
    else:
        result = starts[best] + chosen
    result = np.intp(result) if np.ndim(result) == 0 else result.astype(np.intp)
    if keepdims:
        return np.reshape(result, (1,) * ndim if axis is None else (1,) + np.shape(result))
    return result


def accumulate(x: C, name: str, axis: Any = None, dtype: Any = None, out: None = None) -> C:
    """numpy's cumsum or cumprod, distributed; returns at once, even before x's chunks are known."""
    _no_out(name, out)
    if axis not in (None, 0):
        axis = normalized_axis(axis, x.ndim)
    function = getattr(np, name)
    if axis == 1:
        return _along_rows(x, functools.partial(function, axis=1, dtype=dtype))
    layer = x._layer
    step = np.add if name == "cumsum" else np.multiply
    total = _pickling.dumps(
        functools.partial(_total, np.sum if name == "cumsum" else np.prod, axis, dtype)
    )
    add = _pickling.dumps(step)
    # The running total before each chunk, as one row: none before the
    # first, then the one before plus the previous chunk's total, each on
    # the rank of the chunk it is for. (numpy's sums take the dtype its
    # running sums take.)
    carries: list[list[Spec]] = [[]]
    for before, ref in zip(x._refs, x._refs[1:]):
        carry: Spec = ("whole", layer.submit(before.owner, 1, None, total, [("whole", before)]))
        if carries[-1]:
            carry = ("whole", layer.submit(ref.owner, 1, None, add, carries[-1] + [carry]))
        carries.append([carry])
    dtype_known, row_shape = x._dtype, x._row_shape
    result_dtype, result_row = None, None
    if dtype_known is not None and row_shape is not None:
        probe = function(np.empty((0,) + row_shape, dtype_known), axis=axis, dtype=dtype)
        result_dtype, result_row = probe.dtype, probe.shape[1:]
    elif axis is None:
        result_row = ()
    columns = None if row_shape is None else int(np.prod(row_shape, dtype=np.int64))

    def rows(length: int | None) -> int | None:
        # A chunk's rows of the result: along the rows, its own; flattened, all its elements.
        if axis == 0 or length is None:
            return length
        return None if columns is None else length * columns

    return tasks(
        type(x),
        layer,
        functools.partial(_running, function, step, axis, dtype),
        [[("whole", ref)] + carry for ref, carry in zip(x._refs, carries)],
        [ref.owner for ref in x._refs],
        [rows(ref.length) for ref in x._refs],
        result_dtype,
        result_row,
    )


# -- on the caller ------------------------------------------------------------------


def _no_out(name: str, out: Any) -> None:
    # numpy's functions (np.sum(x), np.min(x)) pass out=None.
    if out is not None:
        raise TypeError(f"{name}: out= is not supported: the result is a new value")


def _count(x: Chunked, axis: int | None) -> int:
    # How many elements each result element reduces.
    _, row_shape = x._learn_type()
    return len(x) * (1 if axis == 0 else int(np.prod(row_shape, dtype=np.int64)))


def _along_rows(x: C, function: Callable[..., Any]) -> C:
    # Each chunk reduces its own rows, where it is: a DistArray of the same chunking.
    dtype, row_shape = x._learn_type()
    probe = np.asarray(function(np.empty((0,) + row_shape, dtype)))
    return tasks(
        type(x),
        x._layer,
        function,
        [[("whole", ref)] for ref in x._refs],
        [ref.owner for ref in x._refs],
        [ref.length for ref in x._refs],
        probe.dtype,
        probe.shape[1:],
    )


def _combined(
    x: Chunked,
    part: Callable[[np.ndarray], np.ndarray],
    function: Callable[..., Any],
    axis: int | None,
    keepdims: bool,
    options: dict[str, Any],
) -> Any:
    # Map-reduce: `part` of every chunk where it is, combined here by `function`.
    layer = x._layer
    data = _pickling.dumps(part)
    refs = [layer.submit(ref.owner, None, None, data, [("whole", ref)]) for ref in x._refs]
    dtype, row_shape = x._learn_type()
    parts = [value for value in x._gather(refs) if value.shape[0]]
    if not parts:  # numpy's answer for no rows: an identity, or its error
        return function(np.empty((0,) + row_shape, dtype), axis=axis, keepdims=keepdims, **options)
    result = function(np.concatenate(parts), axis=0, keepdims=keepdims, **options)
    if keepdims and axis is None:
        return np.reshape(result, (1,) * (1 + len(row_shape)))
    return result


# -- where the chunks are -------------------------------------------------------------


def _partial_reduce(
    function: Callable[..., Any], axis: int | None, options: dict[str, Any], chunk: np.ndarray
) -> np.ndarray:
    # One chunk's part of a reduction: one row (none for an empty chunk,
    # which min and max could not reduce).
    if chunk.shape[0] == 0:
        return chunk[:0] if axis == 0 else chunk.reshape(-1)[:0]
    reduced: np.ndarray = function(chunk, axis=axis, keepdims=True, **options)
    return reduced.reshape((1,) + (chunk.shape[1:] if axis == 0 else ()))


def _partial_squares(centre: Any, axis: int | None, dtype: Any, chunk: np.ndarray) -> np.ndarray:
    # One chunk's sum of squared deviations from the mean, as numpy's var computes them.
    deviations = np.asarray(chunk - centre)
    if deviations.dtype.kind == "c":
        squares = deviations.real**2 + deviations.imag**2
    else:
        squares = deviations * deviations
    return _partial_reduce(np.sum, axis, {"dtype": dtype}, squares)


# `_moments` reads a float64 chunk in rows of ROW elements, ROWS_AT_ONCE rows
# (1 MiB, a core's L2 cache here) a step. A row's dot product stays on one
# thread: OpenBLAS splits a dot of more than 10,000 elements over its
# threads, which made it 100 times slower on ranks that share the cores.
ROW = 8192
ROWS_AT_ONCE = 16
# How many times the squared deviations' sum the sum of squares may be,
# when the one is found by taking the sum's square from the other: the
# cancellation costs at most log2(2 * CANCELLATION) bits (measured: the
# last digit or two, as numpy's two passes).
CANCELLATION = 10


def _moments(chunk: np.ndarray) -> np.ndarray:
    # A float64 chunk's count, mean (a shift and the rest) and sum of
    # squared deviations from it, as a row (none if empty), in one read of
    # memory: the sum and the sum of squares of its values less the shift,
    # and the sum's square over the count taken from the sum of squares.
    # The shift is the first row's mean, so that little cancels for data
    # around 1e8 as around 0; values near 0 compared with their spread (in
    # the first row: the sum of squares at most half CANCELLATION times the
    # squared deviations') take none, and skip the subtraction, a write of
    # every value. When too much would cancel (the values move away from the
    # first row's), the sums are taken again, less the chunk's mean.
    values = chunk.reshape(-1)
    count = len(values)
    if not count:
        return np.empty((0, 4))
    first = values[:ROW]
    shift = np.add.reduce(first) / len(first)
    spread = first - shift
    if 2 * len(first) * shift * shift <= (CANCELLATION - 2) * np.add.reduce(spread * spread):
        shift = 0.0
    total, squares = _shifted_sums(values, shift)
    deviations = squares - total * (total / count)
    if squares > CANCELLATION * deviations:
        shift += total / count
        total, squares = _shifted_sums(values, shift)
        deviations = squares - total * (total / count)
    # max: rounding must not make a constant chunk's sum negative.
    return np.array([[count, shift, total / count, max(deviations, 0.0)]])


def _shifted_sums(values: np.ndarray, shift: float) -> tuple[float, float]:
    # The sum and the sum of squares of `values` less `shift`, a step of
    # rows at a time, each step's shifted values in a buffer in the cache.
    whole = len(values) - len(values) % ROW
    step = ROWS_AT_ONCE * ROW
    pieces: list[np.ndarray] = [
        values[start : min(start + step, whole)].reshape(-1, ROW) for start in range(0, whole, step)
    ]
    if whole < len(values):
        pieces.append(values[whole:].reshape(1, -1))
    buffer = np.empty(min(len(values), step) if shift else 0)
    sums, squares = [], []
    for rows in pieces:
        if shift:
            rows = np.subtract(rows, shift, out=buffer[: rows.size].reshape(rows.shape))
        sums.append(np.add.reduce(rows, axis=1))
        # Each row times itself, one BLAS dot a row (np.einsum's products
        # took three times as long).
        squares.append(np.matmul(rows[:, None, :], rows[:, :, None]).reshape(-1))
    return float(np.add.reduce(np.concatenate(sums))), float(np.add.reduce(np.concatenate(squares)))


def _merged_moments(rows: np.ndarray, axis: int, keepdims: bool) -> np.ndarray:
    # The chunks' moments (one row each, in order) merged as in Chan, Golub
    # and LeVeque's pairwise update, as _combined calls it. A mean is kept
    # as its shift plus the rest: around 1e8, a mean rounded to a float64 is
    # off by 1e-8, which the squared difference of two means would carry.
    count, shift, rest, deviations = rows[0]
    for other_count, other_shift, other_rest, other_deviations in rows[1:]:
        delta = (other_shift - shift) + (other_rest - rest)
        both = count + other_count
        rest += delta * (other_count / both)
        deviations += other_deviations + delta * delta * (count * other_count / both)
        count = both
    return np.array([count, shift, rest, deviations])


def _total(
    function: Callable[..., Any], axis: int | None, dtype: Any, chunk: np.ndarray
) -> np.ndarray:
    # A chunk's sum (or product) as one row: the identity for an empty chunk.
    total: np.ndarray = function(chunk, axis=axis, dtype=dtype, keepdims=True)
    return total.reshape((1,) + (chunk.shape[1:] if axis == 0 else ()))


def _running(
    function: Callable[..., Any],
    step: np.ufunc,
    axis: int | None,
    dtype: Any,
    chunk: np.ndarray,
    *before: np.ndarray,
) -> Any:
    # A chunk's running sums (or products), after the total of the chunks
    # before it (none before the first).
    running = function(chunk, axis=axis, dtype=dtype)
    return step(running, before[0][0], dtype=running.dtype) if before else running
