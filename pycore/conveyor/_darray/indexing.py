"""Indexing as numpy indexes: ``x[3]``, ``x[2:9:3]``, ``x[mask]``, ``x[[4, 1]]``, ``y[:, 0]``.

A key is split into the row index (the first axis, along which the chunks
lie) and the rest, which each chunk applies to the rows it selected. Which
rows of which chunks the row index selects follows from the chunk lengths
alone; the owners select them, and the result stays distributed:

- an integer: the one row, fetched from its chunk alone (a numpy scalar, or
  a row of a 2-D array);
- a slice: each chunk's part of it, selected where the chunk is (with a
  negative step the chunks come in reverse order);
- integers (a list or numpy array; a numpy boolean mask, as the rows it
  selects): in increasing or decreasing order, one result chunk for each
  source chunk's run of rows; in any other order, the result is cut into
  as many chunks as the source has, and each is put in order on the rank
  that holds most of its rows, from the pieces taken where they are;
- a DistArray of bools: aligned with each chunk as `dcall` aligns its
  arguments; the result's lengths are known once its chunks are computed;
- a DistArray of integers: each chunk of the index goes to every chunk's
  rank, which takes the rows it holds; the index's rank puts them in order.

The key is checked before any task is sent: bad indices raise numpy's
IndexError, with numpy's message. What does not stay a 1-D or 2-D array
chunked by rows (a new first axis, indices of more than one dimension)
raises an IndexError that says so.
"""

from __future__ import annotations

import functools
import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _pickling
from .calls import aligned_pieces, tasks
from .chunked import C, Chunked
from .elementwise import shape_text

if TYPE_CHECKING:
    from .._chunks import Spec

_VALID = (
    "only integers, slices (`:`), ellipsis (`...`), numpy.newaxis (`None`) and "
    "integer or boolean arrays are valid indices"
)


def getitem(x: C, key: Any) -> Any:
    """``x[key]``: a DistArray, or a numpy scalar or row for an integer row index."""
    key = key if isinstance(key, tuple) else (key,)
    parts = _parts(x, key)
    row, rest = parts[0], tuple(parts[1:])
    while rest and _whole(rest[-1]):  # numpy: trailing whole slices change nothing
        rest = rest[:-1]
    if any(isinstance(part, Chunked) for part in rest):
        raise IndexError(
            "a DistArray index selects rows only; index the columns with numpy "
            "arrays, or with the index's .collect()"
        )
    if row is None:
        raise IndexError(
            "a new first axis (None) would turn the rows into columns: a DistArray is "
            "chunked by rows; index its .collect(), or reshape it"
        )
    lengths = x._lengths()
    n = sum(lengths)
    _check_parts(x, row, rest, n)
    if isinstance(row, int):
        _result_type(x, row, rest, None)  # numpy's IndexError for a bad column
        if any(part is Ellipsis for part in key):  # numpy: an array, even of 0-d
            rest += (Ellipsis,)
        return _one_row(x, row % n, rest, lengths)
    cols = None  # per result row, a column: numpy pairs two index arrays
    if isinstance(row, np.ndarray):
        row, cols, rest = _paired(x, row, rest)
        if row.dtype != np.bool_:
            row = _in_bounds(row, n, 0)
        if cols is not None:
            cols = _in_bounds(cols, x._learn_type()[1][0], 1)
    dtype, row_shape = _result_type(x, row, rest, cols)
    finish = functools.partial(_finish, rest)
    if isinstance(row, slice):
        if _whole(row) and not rest:
            return x
        return _from_slice(x, row, lengths, finish, dtype, row_shape)
    if isinstance(row, Chunked):
        if any(isinstance(part, np.ndarray) for part in rest):
            raise IndexError(
                "numpy would pair the rows of a DistArray index with a column index array: "
                "not supported; index with the index's .collect()"
            )
        if row.dtype == np.bool_:
            return _from_mask(x, row, lengths, finish, dtype, row_shape)
        return _from_index(x, row, lengths, finish, dtype, row_shape)
    if row.dtype == np.bool_:
        if row.ndim == 2:  # a mask of every element: each chunk's selected elements
            return _from_mask_2d(x, row, lengths, finish, dtype, row_shape)
        row = np.flatnonzero(row)
    return _from_rows(x, row, cols, lengths, finish, dtype, row_shape)


# -- the key ------------------------------------------------------------------------


def _parts(x: Chunked, key: tuple[Any, ...]) -> list[Any]:
    # The key's parts as ints, slices, None, numpy integer or bool arrays and
    # DistArrays, with the ellipsis (or the end) filled with whole slices.
    parts = [_part(part) for part in key]
    ellipses = [i for i, part in enumerate(parts) if part is Ellipsis]
    if len(ellipses) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(_dimensions(part) for part in parts)
    if len(parts) > 1 or ellipses or used > 1:
        ndim = x.ndim
        if used > ndim:
            raise IndexError(
                f"too many indices for array: array is {ndim}-dimensional, but {used} were indexed"
            )
        at = ellipses[0] if ellipses else len(parts)
        parts[at : at + 1] = [slice(None)] * (ndim - used)
    return parts or [slice(None)]


def _whole(part: Any) -> bool:
    return isinstance(part, slice) and part == slice(None)


def _part(part: Any) -> Any:
    if part is None or part is Ellipsis or isinstance(part, (slice, Chunked)):
        if isinstance(part, Chunked) and part.dtype != np.bool_ and part.dtype.kind not in "iu":
            raise IndexError("arrays used as indices must be of integer (or boolean) type")
        return part
    if isinstance(part, (bool, np.bool_)):
        raise IndexError(
            "a boolean scalar index adds an axis in numpy: a DistArray has no such axis; "
            "index its .collect()"
        )
    if not isinstance(part, np.ndarray) and hasattr(part, "__index__"):
        return operator.index(part)
    if isinstance(part, list) and not part:
        return np.empty(0, np.intp)  # numpy: an empty list selects no rows
    array = np.asarray(part)
    if array.dtype != np.bool_ and array.dtype.kind not in "iu":
        if isinstance(part, np.ndarray):
            raise IndexError("arrays used as indices must be of integer (or boolean) type")
        raise IndexError(_VALID)
    if array.ndim == 0:
        return _part(array.item())
    return array


def _dimensions(part: Any) -> int:
    # How many of the array's dimensions a part of the key uses.
    if part is None or part is Ellipsis:
        return 0
    if isinstance(part, (np.ndarray, Chunked)) and part.dtype == np.bool_:
        return part.ndim
    return 1


def _check_parts(x: Chunked, row: Any, rest: tuple[Any, ...], n: int) -> None:
    # numpy's errors in numpy's order: masks of another shape, then
    # integers out of bounds and slices of step zero, in the key's order
    # (then, later, paired arrays that do not broadcast and index arrays
    # out of bounds).
    parts, axes = (row,) + rest, [0]
    for part in parts:
        axes.append(axes[-1] + _dimensions(part))
    for part, axis in zip(parts, axes):
        if isinstance(part, (np.ndarray, Chunked)) and part.dtype == np.bool_:
            _check_mask_shape(x, part.shape, n, axis)
    for part, axis in zip(parts, axes):
        if isinstance(part, slice) and part.step == 0:
            raise ValueError("slice step cannot be zero")
        if isinstance(part, int):
            size = n if axis == 0 else x._learn_type()[1][axis - 1]
            if not -size <= part < size:
                raise IndexError(f"index {part} is out of bounds for axis {axis} with size {size}")


def _check_mask_shape(x: Chunked, shape: tuple[int, ...], n: int, first: int) -> None:
    # numpy's IndexError for a mask whose shape is not that of the axes it
    # indexes, from axis `first` on (`n` rows).
    sizes = ((n,) + x._learn_type()[1] if first or len(shape) > 1 else (n,))[first:]
    for axis, (size, mask_size) in enumerate(zip(sizes, shape), start=first):
        if size != mask_size:
            raise IndexError(
                f"boolean index did not match indexed array along axis {axis}; size of "
                f"axis is {size} but size of corresponding boolean axis is {mask_size}"
            )


def _in_bounds(rows: np.ndarray, n: int, axis: int) -> np.ndarray:
    # Integer indices, negative ones counted from the end, or numpy's IndexError.
    if rows.ndim != 1:
        raise IndexError(
            f"an index array of {rows.ndim} dimensions would not give rows: a DistArray "
            "takes 1-D index arrays; index its .collect()"
        )
    bad = (rows < -n) | (rows >= n)
    if bad.any():
        raise IndexError(f"index {rows[bad][0]} is out of bounds for axis {axis} with size {n}")
    return np.where(rows < 0, rows + n, rows).astype(np.intp, copy=False)


def _paired(
    x: Chunked, row: np.ndarray, rest: tuple[Any, ...]
) -> tuple[np.ndarray, np.ndarray | None, tuple[Any, ...]]:
    # numpy pairs a row index array with a column index array: result row
    # i is x[row[i], cols[i]]. Anything else in `rest` applies to every row.
    arrays = [i for i, part in enumerate(rest) if isinstance(part, np.ndarray)]
    if not arrays:
        return row, None, rest
    if len(rest) != 1 or row.dtype == np.bool_ and row.ndim != 1:
        raise IndexError(
            "a DistArray pairs a row index array with one column index array only; "
            "index its .collect()"
        )
    cols = rest[0]
    if cols.dtype == np.bool_:
        cols = np.flatnonzero(cols)
    if row.dtype == np.bool_:
        row = np.flatnonzero(row)
    try:
        shape = np.broadcast_shapes(row.shape, cols.shape)
    except ValueError:
        raise IndexError(
            "shape mismatch: indexing arrays could not be broadcast together with shapes "
            f"{shape_text(row.shape)} {shape_text(cols.shape)}"
        ) from None
    if len(shape) != 1:
        raise IndexError(
            f"paired index arrays of shape {shape_text(shape)} would not give rows: "
            "index the DistArray's .collect()"
        )
    return np.broadcast_to(row, shape), np.broadcast_to(cols, shape), ()


def _result_type(
    x: Chunked, row: Any, rest: tuple[Any, ...], cols: np.ndarray | None
) -> tuple[np.dtype[Any] | None, tuple[int, ...] | None]:
    # The result's dtype and row shape, numpy's answer for the same key on
    # an array without rows (which raises numpy's IndexError for a bad
    # column index). A key of rows only needs neither: nothing waits for them.
    two_d_mask = isinstance(row, (np.ndarray, Chunked)) and row.dtype == np.bool_ and row.ndim == 2
    if not rest and cols is None and not two_d_mask:
        return x._dtype, x._row_shape
    dtype, row_shape = x._learn_type()
    if cols is not None:
        return dtype, ()
    rows = np.empty((0,) if two_d_mask else (0,) + row_shape, dtype)
    shape = rows[(slice(None),) + rest].shape
    if len(shape) > 2:
        raise IndexError(
            f"the result would be {len(shape)}-D: a DistArray is 1-D or 2-D; index its .collect()"
        )
    return dtype, shape[1:]


# -- the selections ------------------------------------------------------------------


def _one_row(x: Chunked, row: int, rest: tuple[Any, ...], lengths: list[int]) -> Any:
    # One row, fetched from the one chunk that holds it.
    k, start = _chunk_of(lengths, row)
    (value,) = x._fetch([(x._refs[k], row - start, row - start + 1)])
    return value[0][rest] if rest else value[0]


def _chunk_of(lengths: list[int], row: int) -> tuple[int, int]:
    # The chunk that holds `row`, and its first row.
    starts = np.cumsum([0] + lengths)
    k = int(np.searchsorted(starts, row, side="right")) - 1
    return k, int(starts[k])


def _from_slice(
    x: C,
    key: slice,
    lengths: list[int],
    finish: functools.partial[Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # Each chunk's part of the slice, on its rank: (chunk, first row, step, count).
    start, stop, step = key.indices(sum(lengths))
    count = len(range(start, stop, step))
    last = start + (count - 1) * step
    low, high, stride = min(start, last), max(start, last), abs(step)
    picks = []
    offset = 0
    for k, length in enumerate(lengths):
        begin, end = max(low, offset), min(high, offset + length - 1)
        first = begin + (start - begin) % stride  # the first selected row >= begin
        final = end - (end - start) % stride  # the last one <= end
        if count and first <= final:
            chosen = (final - first) // stride + 1
            picks.append((k, (first if step > 0 else final) - offset, chosen))
        offset += length
    if step < 0:
        picks.reverse()
    if not picks:
        picks = _nothing(x)
    return tasks(
        type(x),
        x._layer,
        functools.partial(_slice_rows, finish),
        [
            [("whole", x._refs[k]), ("value", first), ("value", step), ("value", chosen)]
            for k, first, chosen in picks
        ],
        [x._refs[k].owner for k, _, _ in picks],
        [chosen for _, _, chosen in picks],
        dtype,
        row_shape,
    )


def _nothing(x: Chunked) -> list[tuple[int, int, int]]:
    # No row selected: one empty chunk of the first chunk's, which gives the dtype.
    if not x._refs:
        raise ValueError("a DistArray without chunks cannot be indexed")
    return [(0, 0, 0)]


def _from_rows(
    x: C,
    rows: np.ndarray,
    cols: np.ndarray | None,
    lengths: list[int],
    finish: functools.partial[Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # Rows by number, in the index's order (and, paired, one column each).
    starts = np.cumsum([0] + lengths)
    chunk = np.searchsorted(starts, rows, side="right") - 1
    steps = np.diff(rows)
    if not len(rows):  # none, from the first chunk, which gives the dtype
        chunk = np.full(1, _nothing(x)[0][0])
        bounds = [(0, 0)]
    elif (steps >= 0).all() or (steps <= 0).all():
        # In order: each run of rows in one chunk is taken where that chunk is.
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        bounds = list(zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)]))
    else:
        count = min(len(rows), max(1, sum(1 for n in lengths if n)))
        ends = np.cumsum([0] + [len(rows) // count + (k < len(rows) % count) for k in range(count)])
        bounds = list(zip(ends[:-1].tolist(), ends[1:].tolist()))
    layer = x._layer
    inputs: list[list[Spec]] = []
    owners = []
    for begin, end in bounds:
        here, sources = rows[begin:end], chunk[begin : max(end, 1)]
        paired = None if cols is None else cols[begin:end]
        if (sources == sources[0]).all():  # taken where that one chunk is
            k = int(sources[0])
            inputs.append([("whole", x._refs[k]), ("value", here - starts[k]), ("value", paired)])
            owners.append(x._refs[k].owner)
            continue
        # Taken piece by piece where the pieces are, put in order on the
        # rank that holds most of the rows.
        order = np.argsort(sources, kind="stable")
        pieces = []
        for k in np.unique(sources).tolist():
            wanted = here[order][sources[order] == k] - starts[k]
            piece = layer.submit(
                x._refs[k].owner,
                len(wanted),
                None,
                _pickling.dumps(_take),
                [("whole", x._refs[k]), ("value", wanted)],
            )
            pieces.append((piece, 0, len(wanted)))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        inputs.append([("pieces", pieces, len(here)), ("value", inverse), ("value", paired)])
        owners.append(x._refs[int(np.argmax(np.bincount(sources)))].owner)
    return tasks(
        type(x),
        layer,
        functools.partial(_take_rows, finish),
        inputs,
        owners,
        [end - begin for begin, end in bounds],
        dtype,
        row_shape,
    )


def _from_mask(
    x: C,
    mask: Chunked,
    lengths: list[int],
    finish: functools.partial[Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # The mask aligned with each chunk: the rows each chunk keeps, known once computed.
    if not sum(lengths):
        return _from_slice(x, slice(0, 0), lengths, finish, dtype, row_shape)
    chosen, offset = [], 0
    for k, length in enumerate(lengths):
        if length:
            chosen.append((k, aligned_pieces(mask, offset, length), length))
        offset += length
    return tasks(
        type(x),
        x._layer,
        functools.partial(_masked, finish),
        [[("whole", x._refs[k]), ("pieces", pieces, length)] for k, pieces, length in chosen],
        [x._refs[k].owner for k, _, _ in chosen],
        [None] * len(chosen),
        dtype,
        row_shape,
    )


def _from_mask_2d(
    x: C,
    mask: np.ndarray,
    lengths: list[int],
    finish: functools.partial[Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # A numpy mask of every element: each chunk gets its rows of the mask.
    offset, chosen = 0, []
    for k, length in enumerate(lengths):
        if length:
            chosen.append((k, mask[offset : offset + length]))
        offset += length
    if not chosen:  # an empty mask of the first chunk, which gives the dtype
        chosen = [(_nothing(x)[0][0], mask[:0])]
    return tasks(
        type(x),
        x._layer,
        functools.partial(_masked, finish),
        [[("whole", x._refs[k]), ("value", rows)] for k, rows in chosen],
        [x._refs[k].owner for k, _ in chosen],
        [int(rows.sum()) for _, rows in chosen],
        dtype,
        row_shape,
    )


def _from_index(
    x: C,
    index: Chunked,
    lengths: list[int],
    finish: functools.partial[Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # Integers known only once computed: each index chunk meets every
    # chunk of `x` where it is, and is put in order where it came from.
    if index.ndim != 1:
        raise IndexError(
            f"an index array of {index.ndim} dimensions would not give rows: a DistArray "
            "takes 1-D index arrays; index its .collect()"
        )
    n = sum(lengths)
    sizes = index._lengths()
    if not sum(sizes):
        return _from_slice(x, slice(0, 0), lengths, finish, dtype, row_shape)
    if not n:
        raise IndexError("index is out of bounds for axis 0 with size 0")
    layer = x._layer
    starts = np.cumsum([0] + lengths)[:-1]
    held = [k for k, length in enumerate(lengths) if length]
    inputs = []
    for ref in index._refs:
        parts = [
            (
                "whole",
                layer.submit(
                    x._refs[k].owner,
                    None,
                    None,
                    _pickling.dumps(_rows_in),
                    [
                        ("whole", ref),
                        ("whole", x._refs[k]),
                        ("value", int(starts[k])),
                        ("value", n),
                    ],
                ),
            )
            for k in held
        ]
        inputs.append([("whole", ref), ("value", starts[held]), ("value", n), *parts])
    return tasks(
        type(x),
        layer,
        functools.partial(_merged, finish),
        inputs,
        [ref.owner for ref in index._refs],
        list(sizes),
        dtype,
        row_shape,
    )


# -- what runs where the chunks are ----------------------------------------------------


def _finish(rest: tuple[Any, ...], rows: np.ndarray, cols: np.ndarray | None = None) -> Any:
    # The selected rows, with the rest of the key applied to each.
    if cols is not None:
        return rows[np.arange(len(rows)), cols]
    return rows[(slice(None),) + rest] if rest else rows


def _slice_rows(finish: Any, chunk: np.ndarray, first: int, step: int, count: int) -> Any:
    return finish(chunk[first::step][:count])


def _take_rows(finish: Any, rows: np.ndarray, which: np.ndarray, cols: np.ndarray | None) -> Any:
    # Rows of one chunk by number, or the pieces of several put back in order.
    return finish(rows[which], cols)


def _take(chunk: np.ndarray, rows: np.ndarray) -> Any:
    return chunk[rows]


def _masked(finish: Any, chunk: np.ndarray, mask: np.ndarray) -> Any:
    # chunk[mask]; for a mask of rows, as np.compress computes it: numpy's
    # boolean indexing took 2.7 times as long for 25 M float64 (120 against
    # 45 ms, bench/arrays.py's x[x > 0.5]).
    if mask.ndim == 1:
        return finish(np.compress(mask, chunk, axis=0))
    return finish(chunk[mask])


def _rows_in(index: np.ndarray, chunk: np.ndarray, start: int, n: int) -> Any:
    # The rows of this chunk (rows start .. start + len(chunk)) that `index` names, in order.
    rows = np.where(index < 0, index + n, index)
    here = (rows >= start) & (rows < start + len(chunk))
    return chunk[rows[here] - start]


def _merged(finish: Any, index: np.ndarray, starts: np.ndarray, n: int, *parts: np.ndarray) -> Any:
    # The rows every chunk took, put in the index's order.
    bad = (index < -n) | (index >= n)
    if bad.any():
        raise IndexError(f"index {index[bad][0]} is out of bounds for axis 0 with size {n}")
    rows = np.where(index < 0, index + n, index)
    chunk = np.searchsorted(starts, rows, side="right") - 1
    out = np.empty((len(index),) + parts[0].shape[1:], parts[0].dtype)
    for k, part in enumerate(parts):
        out[chunk == k] = part
    return finish(out)
