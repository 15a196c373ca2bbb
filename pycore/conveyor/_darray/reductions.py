"""Reductions as map-reduce: each chunk reduced on its owner, the parts combined here.

A reduction over all elements or over the rows (``axis=0``) submits one
task per chunk, run where the chunk is; each answers one row (none for an
empty chunk), and the caller combines those rows with the same numpy function.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import _pickling
from .chunked import Chunked

# numpy's ufuncs whose ``reduce`` is one of the reductions (np.add.reduce(x)).
REDUCERS = {
    np.add: "sum",
    np.multiply: "prod",
    np.minimum: "min",
    np.maximum: "max",
    np.logical_or: "any",
    np.logical_and: "all",
}


def reduce(x: Chunked, name: str, axis: int | None, out: None = None, **options: Any) -> Any:
    """numpy's ``name`` (sum, min, ...) over ``x``: over all elements, or the rows."""
    # numpy's functions (np.sum(x), np.min(x)) call the methods with
    # out=None and, for sum, prod and mean, dtype=.
    if out is not None:
        raise TypeError(f"{name}: out= is not supported: the result is a new numpy value")
    if axis not in (None, 0):
        raise ValueError(f"{name}: axis must be None or 0 (rows), not {axis!r}")
    layer = x._layer
    partial = _pickling.dumps(functools.partial(_partial_reduce, name, axis, options))
    refs = [layer.submit(ref.owner, None, None, partial, [("whole", ref)]) for ref in x._refs]
    dtype, row_shape = x._learn_type()
    parts = [part for part in x._gather(refs) if part.shape[0]]
    if not parts:  # numpy's answer for no rows: an identity, or its error
        return getattr(np, name)(np.empty((0,) + row_shape, dtype), axis=axis, **options)
    return getattr(np, name)(np.concatenate(parts), axis=0, **options)


def _partial_reduce(
    name: str, axis: int | None, options: dict[str, Any], chunk: np.ndarray
) -> np.ndarray:
    # One chunk's part of a reduction: one row (none for an empty chunk,
    # which min and max could not reduce).
    if chunk.shape[0] == 0:
        return chunk[:0] if axis == 0 else chunk.reshape(-1)[:0]
    reduced: np.ndarray = getattr(np, name)(chunk, axis=axis, keepdims=True, **options)
    return reduced.reshape((1,) + (chunk.shape[1:] if axis == 0 else ()))
