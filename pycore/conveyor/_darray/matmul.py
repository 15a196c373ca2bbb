"""Matrix products, ``x @ y``, as numpy's matmul, where they can be computed where the rows are.

- A DistArray's rows times a numpy array (``y @ w``, a 2-D DistArray):
  each chunk's rows are multiplied where the chunk is; the result is a
  DistArray of the same chunking.
- A product that sums over the rows (``x @ y`` of 1-D DistArrays, ``x @
  w`` of a 1-D DistArray and a numpy array, ``a @ y`` of a numpy array and
  a DistArray): each chunk computes its part where it is, with the other
  operand's rows for that chunk (a DistArray's aligned as `dcall` aligns
  them), and the caller adds the parts up; the result is a numpy value.
- A 2-D DistArray times a DistArray: the rows of the right operand meet the
  columns of the left, so every rank would need all of it: a TypeError
  names ``.collect()``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _pickling
from .calls import aligned_pieces, tasks
from .chunked import Chunked

if TYPE_CHECKING:
    from .._chunks import Spec


def matmul(a: Any, b: Any) -> Any:
    """numpy's ``a @ b``, with at least one DistArray."""
    a = a if isinstance(a, Chunked) else np.asarray(a)
    b = b if isinstance(b, Chunked) else np.asarray(b)
    _check(a, b)
    dtype = _dtype(a, b)
    if isinstance(a, Chunked) and a.ndim == 2:
        if isinstance(b, Chunked):
            raise TypeError(
                f"a DistArray of shape {a.shape} @ a DistArray: the rows of the right operand "
                "meet the columns of the left, so every rank would need all of it; "
                "use x @ y.collect()"
            )
        if b.ndim > 2:
            raise TypeError(
                f"a DistArray @ an array of shape {b.shape} would not give rows: "
                "use x.collect() @ y"
            )
        return tasks(
            type(a),
            a._layer,
            functools.partial(_times, b),
            [[("whole", ref)] for ref in a._refs],
            [ref.owner for ref in a._refs],
            [ref.length for ref in a._refs],
            dtype,
            b.shape[1:],
        )
    if isinstance(a, Chunked):  # 1-D: it sums over a's rows, which b's rows meet
        shape = np.shape(b)[:-2] + np.shape(b)[-1:] if np.ndim(b) > 1 else ()
        if not isinstance(b, Chunked) and b.ndim > 2:  # numpy's stack of matrices
            b = np.moveaxis(b, -2, 0)
        return _summed(a, b, _pairs, dtype, shape)
    # numpy @ DistArray: it sums over b's rows, which a's last axis meets.
    return _summed(b, np.moveaxis(a, -1, 0), _pairs_reversed, dtype, a.shape[:-1] + b.shape[1:])


def _check(a: Any, b: Any) -> None:
    # numpy's errors for shapes matmul refuses, from numpy itself on
    # arrays of those shapes that hold no memory.
    a_shape, b_shape = np.shape(a), np.shape(b)
    inner = None if not a_shape else a_shape[-1]
    other = None if not b_shape else b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if inner is None or other is None or inner != other:
        np.matmul(
            np.broadcast_to(np.zeros((), a.dtype), a_shape),
            np.broadcast_to(np.zeros((), b.dtype), b_shape),
        )


def _dtype(a: Any, b: Any) -> np.dtype[Any]:
    # numpy's result dtype, from operands of one element along every axis.
    ones_a = np.zeros((1,) * np.ndim(a), a.dtype)
    ones_b = np.zeros((1,) * np.ndim(b), b.dtype)
    return np.asarray(np.matmul(ones_a, ones_b)).dtype


def _summed(
    x: Chunked, other: Any, kernel: Any, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> Any:
    # Map-reduce over the rows of `x`: each chunk's part where it is, with
    # the rows of `other` that meet it; the parts added up here.
    lengths = x._lengths()
    layer = x._layer
    function = _pickling.dumps(kernel)
    refs, offset = [], 0
    for ref, length in zip(x._refs, lengths):
        rows: Spec
        if isinstance(other, Chunked):
            rows = ("pieces", aligned_pieces(other, offset, length), length)
        else:
            rows = ("value", np.ascontiguousarray(other[offset : offset + length]))
        refs.append(layer.submit(ref.owner, None, None, function, [("whole", ref), rows]))
        offset += length
    parts = x._gather(refs) if sum(lengths) else []
    total = functools.reduce(np.add, parts, np.zeros(shape, dtype))
    return total.astype(dtype, copy=False)[()]


def _times(b: np.ndarray, chunk: np.ndarray) -> Any:
    return np.matmul(chunk, b)


def _pairs(chunk: np.ndarray, rows: np.ndarray) -> Any:
    # A 1-D chunk times the rows of the right operand that meet it (of a
    # stack of matrices, moved to the front).
    return np.matmul(chunk, rows if rows.ndim <= 2 else np.moveaxis(rows, 0, -2))


def _pairs_reversed(chunk: np.ndarray, rows: np.ndarray) -> Any:
    # The left operand's columns that meet a chunk (as rows), times it.
    return np.matmul(np.moveaxis(rows, 0, -1), chunk)
