"""The layout of a DistArray: astype, copy, reshape, squeeze, transpose, concatenate, stack, block, nonzero.

Each stays distributed. ``astype``, ``copy`` and ``reshape`` work chunk by
chunk where the chunks are; a reshape must be a relabelling (each chunk holds
whole rows of the new shape), or it says so; ``squeeze`` is such a reshape. ``concatenate`` along the
rows moves nothing: the result is the operands' chunks one after the
other; along the columns the operands are aligned as `dcall` aligns them.
The transpose of a 2-D array (n rows, k columns) has k rows of n elements:
its rows are cut into as many groups as the array has chunks (at most k),
each chunk's columns of a group are taken where the chunk is, and each
group is put together on one rank. ``stack`` of 1-D arrays along axis 0 is
the transpose of their stack along the columns. ``block`` concatenates its
innermost lists along the last axis, the lists of those along the axis
before, as numpy does.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from .. import _pickling
from .calls import call, layer_of_operands, tasks
from .chunked import C, Chunked, checked_array, scatter, split_sizes
from .elementwise import shape_text
from .reductions import normalized_axis


def astype(x: C, dtype: npt.DTypeLike, casting: Any = "unsafe", copy: bool = True) -> C:
    """``x`` with every chunk cast to ``dtype`` where it is."""
    dtype = np.dtype(dtype)
    checked_array(np.empty(0, dtype), "astype")
    if x._dtype is not None and not np.can_cast(x._dtype, dtype, casting):
        raise TypeError(
            f"Cannot cast array data from {x._dtype!r} to {dtype!r} according to the rule "
            f"{casting!r}"
        )
    if not copy and x._dtype == dtype:
        return x
    return tasks(
        type(x),
        x._layer,
        functools.partial(_cast, dtype, casting),
        [[("whole", ref)] for ref in x._refs],
        [ref.owner for ref in x._refs],
        [ref.length for ref in x._refs],
        dtype,
        x._row_shape,
    )


def copy(x: C) -> C:
    """A copy of ``x``, each chunk copied where it is."""
    return tasks(
        type(x),
        x._layer,
        np.copy,
        [[("whole", ref)] for ref in x._refs],
        [ref.owner for ref in x._refs],
        [ref.length for ref in x._refs],
        x._dtype,
        x._row_shape,
    )


def reshape(x: C, shape: Any, order: str = "C") -> C:
    """``x`` in ``shape``, where that only relabels the rows of each chunk."""
    if order not in ("C", "A"):
        raise ValueError(
            f"reshape: order={order!r} would move elements between chunks: a DistArray "
            "reshapes in C order only; reshape its .collect()"
        )
    wanted = tuple(operator.index(n) for n in (shape if isinstance(shape, tuple) else (shape,)))
    dtype, row_shape = x._learn_type()
    lengths = x._lengths()
    size = sum(lengths) * int(np.prod(row_shape, dtype=np.int64))
    new = _resolved_shape(wanted, size)
    if len(new) not in (1, 2):
        raise ValueError(
            f"reshape to {shape_text(new)}: a DistArray is 1-D or 2-D; reshape its .collect()"
        )
    if new == (sum(lengths),) + row_shape:
        return x
    old_row = int(np.prod(row_shape, dtype=np.int64))
    new_row = int(np.prod(new[1:], dtype=np.int64))
    for k, length in enumerate(lengths):
        if new_row == 0 or length * old_row % new_row:
            raise ValueError(
                f"reshape to {shape_text(new)} is not a relabelling of the chunks: chunk {k} "
                f"holds {length * old_row} elements, not whole rows of {new_row}; "
                "rebalance() into chunks that do, or reshape the .collect()"
            )
    return tasks(
        type(x),
        x._layer,
        functools.partial(_reshaped, new[1:]),
        [[("whole", ref)] for ref in x._refs],
        [ref.owner for ref in x._refs],
        [length * old_row // new_row for length in lengths],
        dtype,
        new[1:],
    )


def squeeze(x: C, axis: Any = None) -> C:
    """numpy's squeeze: ``x`` without its axes of length 1, as a reshape."""
    shape = x.shape
    if axis is None:
        axes = {i for i, n in enumerate(shape) if n == 1}
    else:
        # One axis at a time: each comes back as an int, never None.
        axes = {
            cast(int, normalized_axis(one, len(shape)))
            for one in (axis if isinstance(axis, tuple) else (axis,))
        }
        if any(shape[i] != 1 for i in axes):
            raise ValueError("cannot select an axis to squeeze out which has size not equal to one")
    new = tuple(n for i, n in enumerate(shape) if i not in axes)
    if not new:
        raise ValueError(
            f"squeezing an array of shape {shape_text(shape)} would leave a 0-d array: a "
            "DistArray is 1-D or 2-D; squeeze its .collect()"
        )
    return reshape(x, new)


def transpose(x: C, axes: Any = None) -> C:
    """numpy's transpose: a 1-D array itself; a 2-D array's columns as rows."""
    dtype, row_shape = x._learn_type()
    ndim = 1 + len(row_shape)
    if axes is not None:
        order = [normalized_axis(axis, ndim) for axis in axes]
        if len(order) != ndim:
            raise ValueError("axes don't match array")
        if len(set(order)) != ndim:
            raise ValueError("repeated axis in transpose")
        if order == list(range(ndim)):
            return x
    if ndim == 1:
        return x
    (columns,) = row_shape
    lengths = x._lengths()
    rows = sum(lengths)
    if not x._refs or not columns:  # nothing to move: made here, empty
        return _empty(x, (columns, rows), dtype)
    layer = x._layer
    groups = split_sizes(columns, min(columns, len(x._refs)))
    inputs, owners, start = [], [], 0
    for j, width in enumerate(groups):
        # The group's columns of every chunk, taken where the chunk is.
        take = _pickling.dumps(functools.partial(_columns, start, start + width))
        pieces = [
            (layer.submit(ref.owner, length, None, take, [("whole", ref)]), 0, length)
            for ref, length in zip(x._refs, lengths)
        ]
        inputs.append([("pieces", pieces, rows)])
        owners.append(x._refs[j].owner)
        start += width
    return tasks(type(x), layer, np.transpose, inputs, owners, groups, dtype, (rows,))


def concatenate(
    arrays: Sequence[Any], axis: Any = 0, dtype: Any = None, casting: Any = "same_kind"
) -> Any:
    """numpy's concatenate of DistArrays (and numpy arrays), distributed."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("need at least one array to concatenate")
    layer = layer_of_operands(tuple(arrays), {}, "concatenate")
    cls = next(type(a) for a in arrays if isinstance(a, Chunked))
    arrays = [_distributed(a, layer, cls) for a in arrays]
    if axis is None:  # numpy flattens every array first
        arrays = [reshape(a, -1) for a in arrays]
        axis = 0
    shapes = [a.shape for a in arrays]
    # numpy's checks and dtype, on the same arrays without rows.
    empties = [np.empty((0,) + shape[1:], a.dtype) for a, shape in zip(arrays, shapes)]
    axis = normalized_axis(axis, len(shapes[0]))
    probe = np.concatenate(empties, axis=axis, dtype=dtype, casting=casting)
    if axis == 1:
        for i, shape in enumerate(shapes):
            if shape[0] != shapes[0][0]:
                raise ValueError(
                    "all the input array dimensions except for the concatenation axis must "
                    "match exactly, but along dimension 0, the array at index 0 has size "
                    f"{shapes[0][0]} and the array at index {i} has size {shape[0]}"
                )
        joined = functools.partial(_joined, 1, probe.dtype)
        return call(cls, joined, tuple(arrays), {}, probe.dtype, probe.shape[1:])
    # Along the rows: the chunks one after the other, cast where needed.
    refs, offset = [], 0
    for a in arrays:
        if a.dtype != probe.dtype:
            a = astype(a, probe.dtype)
        for ref, length in zip(a._refs, a._lengths()):
            refs.append(ref.at(offset))
            offset += length
    return cls(layer, refs, probe.dtype, probe.shape[1:])


def stack(
    arrays: Sequence[Any], axis: Any = 0, dtype: Any = None, casting: Any = "same_kind"
) -> Any:
    """numpy's stack of 1-D DistArrays (and numpy arrays), distributed."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("need at least one array to stack")
    layer = layer_of_operands(tuple(arrays), {}, "stack")
    cls = next(type(a) for a in arrays if isinstance(a, Chunked))
    arrays = [_distributed(a, layer, cls) for a in arrays]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError("all input arrays must have the same shape")
    (shape,) = shapes
    axis = normalized_axis(axis, len(shape) + 1)
    if len(shape) != 1:
        raise ValueError(
            f"stacking arrays of shape {shape_text(shape)} would make a "
            f"{len(shape) + 1}-D array: a DistArray is 1-D or 2-D; stack their .collect()"
        )
    columns = concatenate([reshape(a, (-1, 1)) for a in arrays], 1, dtype, casting)
    return columns if axis == 1 else transpose(columns)


def block(arrays: Any) -> Any:
    """numpy's block of DistArrays (and numpy arrays): nested concatenations, distributed."""
    # numpy's errors for the nesting (tuples, empty lists, mismatched
    # depths), from numpy's block of the same lists of zeros.
    np.block(_skeleton(arrays))
    depth = _depth(arrays)
    leaves = list(_leaves(arrays))
    ndim = max([depth] + [np.ndim(leaf) for leaf in leaves])
    for leaf in leaves:
        if isinstance(leaf, Chunked) and leaf.ndim != ndim:
            raise ValueError(
                f"block would give a DistArray of shape {shape_text(leaf.shape)} a new "
                f"first axis (the result is {ndim}-D), which would turn its rows into "
                "columns; block its .collect()"
            )
    if ndim > 2:
        raise ValueError(f"block would make a {ndim}-D array: a DistArray is 1-D or 2-D")

    def joined(part: Any, level: int) -> Any:
        if not isinstance(part, list):
            if isinstance(part, Chunked):
                return part
            part = np.asarray(part)
            return part.reshape((1,) * (ndim - part.ndim) + part.shape)
        parts = [joined(inner, level + 1) for inner in part]
        axis = level - depth  # the innermost lists along the last axis
        if any(isinstance(one, Chunked) for one in parts):
            return concatenate(parts, axis)
        return np.concatenate(parts, axis=axis)

    return joined(arrays, 0)


def nonzero(x: C) -> tuple[C, ...]:
    """numpy's nonzero: for each dimension, the places of the elements that are not zero."""
    dtype, row_shape = x._learn_type()
    starts = np.cumsum([0] + x._lengths())
    return tuple(
        tasks(
            type(x),
            x._layer,
            functools.partial(_nonzero, dimension),
            [[("whole", ref), ("value", int(start))] for ref, start in zip(x._refs, starts)],
            [ref.owner for ref in x._refs],
            [None] * len(x._refs),
            np.dtype(np.intp),
            (),
        )
        for dimension in range(1 + len(row_shape))
    )


# -- on the caller ----------------------------------------------------------------------


def _resolved_shape(wanted: tuple[int, ...], size: int) -> tuple[int, ...]:
    # `wanted` with its -1 worked out, or numpy's error.
    unknown = [i for i, n in enumerate(wanted) if n < 0]
    if len(unknown) > 1:
        raise ValueError("can only specify one unknown dimension")
    known = int(np.prod([n for n in wanted if n >= 0], dtype=np.int64))
    if unknown and known and size % known == 0:
        new = list(wanted)
        new[unknown[0]] = size // known
        return tuple(new)
    if unknown or known != size:
        text = "(" + ",".join("newaxis" if n < 0 else str(n) for n in wanted)
        text += ",)" if len(wanted) == 1 else ")"
        raise ValueError(f"cannot reshape array of size {size} into shape {text}")
    return wanted


def _depth(arrays: Any) -> int:
    # How deep block's lists are (numpy has checked that every leaf is as deep).
    return 1 + _depth(arrays[0]) if isinstance(arrays, list) else 0


def _skeleton(arrays: Any) -> Any:
    if isinstance(arrays, (list, tuple)):
        return type(arrays)(_skeleton(inner) for inner in arrays)
    return 0


def _leaves(arrays: Any) -> Iterator[Any]:
    if isinstance(arrays, list):
        for inner in arrays:
            yield from _leaves(inner)
    else:
        yield arrays


def _distributed(a: Any, layer: Any, cls: type[Chunked]) -> Chunked:
    # An operand of concatenate or stack as a DistArray: numpy arrays are scattered.
    if isinstance(a, Chunked):
        if a._layer is not layer:
            raise ValueError("the arrays belong to different Messengers")
        return a
    return scatter(cls, layer, a, None, None)


def _empty(x: C, shape: tuple[int, ...], dtype: np.dtype[Any]) -> C:
    return scatter(type(x), x._layer, np.empty(shape, dtype), None, None)


# -- where the chunks are --------------------------------------------------------------


def _cast(dtype: np.dtype[Any], casting: Any, chunk: np.ndarray) -> np.ndarray:
    return chunk.astype(dtype, casting=casting)


def _reshaped(row_shape: tuple[int, ...], chunk: np.ndarray) -> np.ndarray:
    return chunk.reshape((-1,) + row_shape)


def _columns(start: int, stop: int, chunk: np.ndarray) -> np.ndarray:
    return chunk[:, start:stop]


def _joined(axis: int, dtype: np.dtype[Any], *parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts, axis=axis, dtype=dtype, casting="unsafe")


def _nonzero(dimension: int, chunk: np.ndarray, start: int) -> Any:
    places = np.nonzero(chunk)[dimension]
    return places + start if dimension == 0 else places
