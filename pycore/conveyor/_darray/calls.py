"""The tasks behind dcall, dmap and dreduce: alignment with R's recycling.

`call` (dcall) calls a function elementwise on several distributed arrays:
the longest argument is the target, whose chunking the result keeps; the
owner of each target chunk fetches, from every other argument, only the
rows that chunk needs (the native `align` kernel lists them, recycling
shorter arguments as R does) and computes its chunk. `map_chunks` (dmap)
pairs chunk i with chunk i (R's ``mapply``), and `fold` (dreduce) folds the
chunks in order. All of them submit tasks and return at once; chunks compute
as soon as their inputs are there, and no handler ever waits. Arguments
whose lengths are not known yet (dmap's results) are aligned by the tasks
themselves, on their owners, once the lengths are published
(`ChunkLayer._planned`): dcall never waits for them either.

Results are made as the caller's class ``cls`` (the public `DistArray`,
defined above this module).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import struct
import sys
import warnings
import weakref
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, cast

import numpy as np

from .. import _chunks, _pickling
from .._errors import RECYCLING, RecyclingWarning
from .chunked import C, Chunked

if TYPE_CHECKING:
    from .._chunks import ChunkLayer, ChunkRef, Spec

# conveyor's own files: a warning names the first caller outside them.
_PACKAGE = os.path.dirname(os.path.dirname(__file__))


def call(
    cls: type[C],
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dtype: np.dtype[Any] | None = None,
    row_shape: tuple[int, ...] | None = None,
    cache: bool = False,
) -> C:
    """dcall: ``f`` elementwise on the arguments, aligned and recycled as in R.

    ``dtype`` and ``row_shape`` are those of the result, when the caller
    knows them. With ``cache``, an identical call whose result is still
    referenced returns that result.
    """
    layer = layer_of_operands(args, kwargs, "dcall")
    function = _pickling.dumps(f)
    if not cache:
        return _call(cls, layer, function, args, kwargs, dtype, row_shape)
    key = _call_key(function, args, kwargs)
    memo = _memos.setdefault(layer, weakref.WeakValueDictionary())
    result = memo.get(key)
    if result is None:
        result = memo[key] = _call(cls, layer, function, args, kwargs, dtype, row_shape)
    return cast(C, result)


def _call(
    cls: type[C],
    layer: ChunkLayer,
    function: bytes,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    operands = list(args) + list(kwargs.values())
    n = len(args)
    lengths = [_known_length(x) for x in operands]
    known = [length for length in lengths if length is not None]
    if 0 in known:  # R: a zero-length operand gives a zero-length result
        # One empty chunk, computed by a task as any other: the function's
        # errors (and a result that is not empty) come at collect, not here.
        specs = [_empty_spec(x) for x in operands]
        ref = layer.submit(layer.rank, 0, 0, function, specs[:n], dict(zip(kwargs, specs[n:])))
        return cls(layer, [ref], dtype, row_shape)
    if any(isinstance(x, Chunked) and length is None for x, length in zip(operands, lengths)):
        return _planned_call(cls, layer, function, operands, list(kwargs), dtype, row_shape)
    longest = max(known)
    if any(longest % length for length in known):
        _warn_recycling()
    dist = [
        (i, x) for i, x in enumerate(operands) if isinstance(x, Chunked) and lengths[i] == longest
    ]
    if dist:
        target_index = max(dist, key=lambda item: (len(item[1]._refs), -item[0]))[0]
    else:  # a numpy array is longest: it is scattered first
        target_index = lengths.index(longest)
        operands[target_index] = layer.m.array(operands[target_index])
    target = operands[target_index]
    sizes = target._lengths()
    owners = [ref.owner for ref in target._refs]
    return aligned_call(
        cls,
        layer,
        function,
        operands[:n],
        dict(zip(kwargs, operands[n:])),
        sizes,
        owners,
        dtype,
        row_shape,
        target,
    )


# Per chunk layer, the results of dcall(..., cache=True) still referenced, by _call_key.
_memos: weakref.WeakKeyDictionary[ChunkLayer, weakref.WeakValueDictionary[bytes, Chunked]] = (
    weakref.WeakKeyDictionary()
)


def _call_key(function: bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    # An identical call: the same function's pickle, the same chunks (a
    # chunk's id is never reused in a job, and chunks never change) and
    # equal pickles of every other argument.
    digest = hashlib.blake2b(function, digest_size=16)
    for name, x in [(None, x) for x in args] + list(kwargs.items()):
        digest.update(repr(name).encode())
        if isinstance(x, Chunked):
            digest.update(b"chunks" + struct.pack(f"<{len(x._refs)}Q", *(r.id for r in x._refs)))
        else:
            digest.update(hashlib.blake2b(_pickling.dumps(x), digest_size=16).digest())
    return digest.digest()


def _planned_call(
    cls: type[C],
    layer: ChunkLayer,
    function: bytes,
    operands: list[Any],
    names: list[str],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    # Some lengths are not known yet (results of dmap): nothing waits for
    # them here. The result takes the chunk count and ranks of the argument
    # with most chunks (the target), and each chunk's owner aligns the
    # arguments once their owners have published the lengths (see
    # ChunkLayer._planned). numpy arrays with rows are scattered first, so
    # that every argument with rows is chunks.
    operands = [layer.m.array(x) if isinstance(x, np.ndarray) and x.ndim else x for x in operands]
    target = max(
        (i for i, x in enumerate(operands) if isinstance(x, Chunked)),
        key=lambda i: (len(operands[i]._refs), -i),
    )
    specs = [("aligned", x._refs) if isinstance(x, Chunked) else _value_spec(x) for x in operands]
    n = len(operands) - len(names)
    refs = [
        layer.submit(
            ref.owner, None, None, function, specs[:n], dict(zip(names, specs[n:])), (k, target)
        )
        for k, ref in enumerate(operands[target]._refs)
    ]
    return cls(layer, refs, dtype, row_shape)


def aligned_call(
    cls: type[C],
    layer: ChunkLayer,
    function: bytes | None,
    args: list[Any],
    kwargs: dict[str, Any],
    sizes: list[int],
    owners: list[int],
    dtype: np.dtype[Any] | None = None,
    row_shape: tuple[int, ...] | None = None,
    target: Chunked | None = None,
) -> C:
    """One task per chunk of the result (rows `sizes`, on `owners`): each
    argument as its aligned rows, the target's own chunk whole. `function`
    is pickled (``_pickling.dumps``); None passes the single argument on."""
    refs, offset = [], 0
    for k, (length, owner) in enumerate(zip(sizes, owners)):

        def spec(x: Any) -> Spec:
            if x is target:
                return ("whole", target._refs[k])
            if isinstance(x, Chunked):
                return ("pieces", aligned_pieces(x, offset, length), length)
            if isinstance(x, np.ndarray) and x.ndim:
                return ("value", _recycled_rows(x, offset, length))
            return _value_spec(x)

        task_args = [spec(x) for x in args]
        task_kwargs = {name: spec(x) for name, x in kwargs.items()}
        refs.append(layer.submit(owner, length, offset, function, task_args, task_kwargs))
        offset += length
    return cls(layer, refs, dtype, row_shape)


def tasks(
    cls: type[C],
    layer: ChunkLayer,
    f: Callable[..., Any],
    inputs: list[list[Spec]],
    owners: Sequence[int],
    lengths: Sequence[int | None],
    dtype: np.dtype[Any] | None,
    row_shape: tuple[int, ...] | None,
) -> C:
    """One task a result chunk: chunk k computed on ``owners[k]`` as
    ``f(*inputs[k])``, of ``lengths[k]`` rows (None: known once computed)."""
    function = _pickling.dumps(f)
    refs: list[ChunkRef] = []
    offset: int | None = 0
    for specs, owner, length in zip(inputs, owners, lengths):
        refs.append(layer.submit(owner, length, offset, function, specs))
        offset = None if offset is None or length is None else offset + length
    return cls(layer, refs, dtype, row_shape)


def _warn_recycling() -> None:
    # Attributed to the first caller outside conveyor: dcall and dmap get
    # here through frames of conveyor's own (a Driver's too), and with
    # Python's default filter (once per place) all of a program's calls
    # would share one place in here.
    frame: FrameType | None
    frame, level = sys._getframe(0), 1
    while frame is not None and _in_package(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(RECYCLING, RecyclingWarning, stacklevel=level)


def _in_package(filename: str) -> bool:
    folder = os.path.dirname(filename)
    return folder == _PACKAGE or folder.startswith(_PACKAGE + os.sep)


def aligned_pieces(x: Chunked, begin: int, length: int) -> list[tuple[ChunkRef, int, int]]:
    """The rows of `x` that result rows begin .. begin + length take (`_chunks.aligned_pieces`)."""
    return _chunks.aligned_pieces(x._refs, x._lengths(), begin, length)


def _recycled_rows(array: np.ndarray, begin: int, length: int) -> np.ndarray:
    # Rows begin .. begin + length of `array` recycled: a view when no row repeats.
    n = len(array)
    start = begin % n
    if start + length <= n:
        return np.ascontiguousarray(array[start : start + length])
    return np.take(array, np.arange(begin, begin + length) % n, axis=0)


def _value_spec(x: Any) -> Spec:
    if x is None or isinstance(x, (numbers.Number, np.generic, str, bytes, np.ndarray)):
        return ("value", x)
    return ("pickled", _pickling.dumps(x))


def map_chunks(
    cls: type[C], f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> C:
    """dmap: ``f`` on chunk i of every distributed argument, for every i (R's ``mapply``)."""
    layer = layer_of_operands(args, kwargs, "dmap")
    operands = list(args) + list(kwargs.values())
    counts = [
        len(x._refs) if isinstance(x, Chunked) else len(x)
        for x in operands
        if isinstance(x, (Chunked, list, tuple))
    ]
    if 0 in counts:
        if any(counts):
            raise ValueError(
                "dmap: zero-length inputs cannot be mixed with those of non-zero length"
            )
        return cls(layer, [])
    count = max(counts)
    if any(count % n for n in counts):
        _warn_recycling()
    widest = (
        next(x for x in operands if isinstance(x, Chunked) and len(x._refs) == count)
        if any(isinstance(x, Chunked) and len(x._refs) == count for x in operands)
        else next(x for x in operands if isinstance(x, Chunked))
    )
    function = _pickling.dumps(f)
    n = len(args)
    refs = []
    for i in range(count):

        def spec(x: Any) -> Spec:
            if isinstance(x, Chunked):
                return ("whole", x._refs[i % len(x._refs)])
            if isinstance(x, (list, tuple)):
                return _value_spec(x[i % len(x)])
            return _value_spec(x)

        specs = [spec(x) for x in operands]
        owner = widest._refs[i % len(widest._refs)].owner
        refs.append(
            layer.submit(owner, None, None, function, specs[:n], dict(zip(kwargs, specs[n:])))
        )
    return cls(layer, refs)


def fold(f: Callable[[Any, Any], Any], x: Chunked) -> Any:
    """dreduce: ``f(f(c0, c1), c2) ...``, each step on the rank of the chunk it folds in."""
    if not isinstance(x, Chunked):
        raise TypeError(f"dreduce folds a DistArray, not {type(x).__name__}")
    if not x._refs:
        raise ValueError("dreduce of a DistArray without chunks")
    layer = x._layer
    function = _pickling.dumps(f)
    acc = x._refs[0]
    for ref in x._refs[1:]:
        acc = layer.submit(ref.owner, None, None, function, [("whole", acc), ("whole", ref)])
    (value,) = x._gather([acc])
    return value[()] if value.ndim == 0 else value


def layer_of_operands(args: tuple[Any, ...], kwargs: dict[str, Any], verb: str) -> ChunkLayer:
    """The chunk layer of the first distributed operand; a TypeError if there is none."""
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, Chunked):
            return x._layer
    raise TypeError(f"{verb} needs at least one DistArray argument")


def _known_length(x: Any) -> int | None:
    # None for an argument without rows, and for one whose lengths are not known yet.
    if isinstance(x, Chunked):
        return None if any(ref.length is None for ref in x._refs) else len(x)
    if isinstance(x, np.ndarray) and x.ndim:
        return len(x)
    return None


def _empty_spec(x: Any) -> Spec:
    # An argument's input for the empty result: no rows, of its dtype.
    if isinstance(x, Chunked) and x._refs:  # read from its first chunk, when computed
        return ("pieces", [(x._refs[0], 0, 0)], 0)
    return _value_spec(_empty_like(x))


def _empty_like(x: Any) -> Any:
    if isinstance(x, Chunked):
        dtype, row_shape = x._learn_type()
        return np.empty((0,) + row_shape, dtype)
    if isinstance(x, np.ndarray) and x.ndim:
        return x[:0]
    return x
