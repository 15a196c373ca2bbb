"""Distributed arrays: DistArray, the driver, and aligned calls with R's recycling.

A `DistArray` is an ordered list of chunk references (`ChunkRef`): 1-D
arrays, or 2-D arrays chunked by rows. `dcall` calls a function elementwise
on several of them: the longest argument is the target, whose chunking the
result keeps; the owner of each target chunk fetches, from every other
argument, only the rows that chunk needs (the native `align` kernel lists
them, recycling shorter arguments as R does) and computes its chunk. `dmap`
pairs chunk i with chunk i (R's ``mapply``). Both return at once; chunks
compute as soon as their inputs are there, and no handler ever waits.
"""

from __future__ import annotations

import functools
import numbers
import operator
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, SupportsIndex, cast

import numpy as np
import numpy.typing as npt

from . import _pickling
from ._checks import check_rank
from ._chunks import ERROR as _ERROR
from ._chunks import layer_of, remote_error
from ._errors import ConveyorError, RecyclingWarning
from ._native import core
from ._tags import CHUNK_STATES, DRIVER_DONE

if TYPE_CHECKING:
    from ._chunks import ChunkLayer, ChunkRef, Spec
    from ._messenger import Messenger

__all__ = ["DistArray", "Driver", "dcall", "dmap", "dreduce"]

# How long a serving rank's wait lasts before it checks for Ctrl-C.
_SERVE_SLICE = 0.1
# How long from_local waits for messages between checks that every rank arrived.
_ARRIVAL_SLICE = 0.001
_RECYCLING = "longer object length is not a multiple of shorter object length"
_PACKAGE = os.path.dirname(__file__)


class _Gathered:
    """Values that arrive through callbacks, waited for by the messenger's loop.

    A failure counts as an arrival: all are waited for, so that the error
    raised is the first in order (as `DistArray.resolve`), not the first
    to come back.
    """

    def __init__(self, count: int) -> None:
        self.values: list[Any] = [None] * count
        self.missing = count
        self.errors: dict[int, bytes] = {}  # index -> a failed chunk's error bytes

    def put(self, index: int, value: Any) -> None:
        self.values[index] = value
        self.missing -= 1

    def fail(self, index: int, error: bytes) -> None:
        self.errors[index] = error
        self.missing -= 1

    def _ready(self) -> bool:
        return self.missing == 0

    def wait(self, layer: ChunkLayer) -> list[Any]:
        layer.transport.wait_for(self, None)
        if self.errors:
            raise remote_error(self.errors[min(self.errors)])
        return self.values


class DistArray:
    """A distributed array: an ordered list of chunks living on different ranks.

    1-D, or 2-D chunked by rows. Make one with `Messenger.array` (or a
    driver's `Driver.array`) from a numpy array, or with `from_local` from
    each rank's piece; `dcall`, `dmap`, the arithmetic and comparison
    operators and numpy's ufuncs make new ones without waiting for their
    chunks to be computed. `DistArray.collect` and `DistArray.resolve` wait.

    Chunks are freed once no `DistArray` (or `ChunkRef`) on any rank refers
    to them any more.
    """

    __array_priority__ = 1000  # numpy defers its binary operators to ours

    if TYPE_CHECKING:  # the operators, made from numpy's ufuncs below the class

        def __add__(self, other: Any) -> DistArray: ...
        def __radd__(self, other: Any) -> DistArray: ...
        def __sub__(self, other: Any) -> DistArray: ...
        def __rsub__(self, other: Any) -> DistArray: ...
        def __mul__(self, other: Any) -> DistArray: ...
        def __rmul__(self, other: Any) -> DistArray: ...
        def __truediv__(self, other: Any) -> DistArray: ...
        def __rtruediv__(self, other: Any) -> DistArray: ...
        def __floordiv__(self, other: Any) -> DistArray: ...
        def __rfloordiv__(self, other: Any) -> DistArray: ...
        def __mod__(self, other: Any) -> DistArray: ...
        def __rmod__(self, other: Any) -> DistArray: ...
        def __pow__(self, other: Any) -> DistArray: ...
        def __rpow__(self, other: Any) -> DistArray: ...
        def __and__(self, other: Any) -> DistArray: ...
        def __rand__(self, other: Any) -> DistArray: ...
        def __or__(self, other: Any) -> DistArray: ...
        def __ror__(self, other: Any) -> DistArray: ...
        def __eq__(self, other: Any) -> DistArray: ...  # type: ignore[override]
        def __ne__(self, other: Any) -> DistArray: ...  # type: ignore[override]
        def __lt__(self, other: Any) -> DistArray: ...
        def __le__(self, other: Any) -> DistArray: ...
        def __gt__(self, other: Any) -> DistArray: ...
        def __ge__(self, other: Any) -> DistArray: ...
        def __neg__(self) -> DistArray: ...
        def __abs__(self) -> DistArray: ...

        __hash__: ClassVar[None]  # type: ignore[assignment]

    def __init__(
        self,
        layer: ChunkLayer,
        refs: Sequence[ChunkRef],
        dtype: npt.DTypeLike | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> None:
        self._layer = layer
        self._refs = list(refs)
        self._dtype = None if dtype is None else np.dtype(dtype)
        self._row_shape = None if shape is None else tuple(shape[1:])

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_local(cls, messenger: Messenger, local: npt.ArrayLike) -> DistArray:
        """Make a DistArray of every rank's ``local`` piece, in rank order (collective).

        Each piece stays on its rank as one chunk (copied once, so that
        later changes to ``local`` do not show); all pieces must have the same
        dtype and, if 2-D, the same number of columns.

        Parameters
        ----------
        messenger : Messenger
            The messenger of every rank.
        local : array_like
            This rank's rows: 1-D, or 2-D; numeric; may be empty.

        Returns
        -------
        DistArray
            The array of every rank's rows.

        Raises
        ------
        ValueError
            If the pieces differ in dtype or row shape, or one is not 1-D or 2-D.
        TypeError
            If ``local`` is not numeric.
        """
        layer = layer_of(messenger)
        local = _checked_array(local, "from_local")
        ref, _ = layer.mint(layer.rank, len(local))
        layer.resolve(ref, local.copy())
        # Each rank lends every other rank a reference to its chunk.
        lent = [
            0 if rank == layer.rank else layer.table.lend(ref.id)[0]
            for rank in range(messenger.size)
        ]
        # The allgather blocks without serving messages: a rank already here
        # would never answer another that still waits for one of its chunks
        # (collect or sum before its own from_local). Serve until all are here.
        comm = layer.collectives()
        arrived = comm.Ibarrier()
        while not arrived.Test():
            messenger.progress(_ARRIVAL_SLICE)
        entries = comm.allgather((ref.id, len(local), local.dtype.str, local.shape[1:], lent))
        kinds = {(dtype, shape) for _, _, dtype, shape, _ in entries}
        if len(kinds) != 1:
            # Nobody adopts what this rank lent: take it back, so that the
            # chunk (and its published state) goes with `ref`.
            layer.take_back(ref.id, layer.rank, layer.rank, sum(lent))
            raise ValueError(
                f"from_local: the pieces differ in dtype or row shape: {sorted(kinds)}"
            )
        ((dtype, shape),) = kinds
        refs, offset = [], 0
        for owner, (id, length, _, _, weights) in enumerate(entries):
            if owner == layer.rank:
                refs.append(ref)
            else:
                refs.append(layer.adopt(id, owner, owner, weights[layer.rank], length))
            refs[-1].offset = offset
            offset += length
        return cls(layer, refs, dtype, (offset,) + tuple(shape))

    # -- shape -----------------------------------------------------------------

    @property
    def chunks(self) -> list[ChunkRef]:
        """The chunk references, in order (`ChunkRef`)."""
        return list(self._refs)

    @property
    def messenger(self) -> Messenger:
        """The `Messenger` the chunks belong to."""
        return self._layer.m

    def _lengths(self) -> list[int]:
        # Lengths not known yet (dmap's results) are learned from what the
        # owners publish once the chunks are computed.
        unknown = [ref for ref in self._refs if ref.length is None]
        if unknown:
            self._facts(unknown)
        return cast("list[int]", [ref.length for ref in self._refs])  # all known now

    def _facts(self, refs: list[ChunkRef]) -> list[dict[str, Any]]:
        # What the owners published about `refs` once computed; raises the
        # first chunk's error, in order. Learns the lengths not known yet,
        # and the offsets once every length is known.
        table = self._layer.m.table(CHUNK_STATES)
        futures = [table.wait(ref.id) for ref in refs]
        facts = [future.result() for future in futures]
        learned = False
        for ref, fact in zip(refs, facts):
            ref._state = fact["state"]
            if fact["state"] == _ERROR:
                raise remote_error(fact["error"])
            if fact["length"] is None:
                raise TypeError(
                    "a chunk of a DistArray is a 0-d array: use dreduce for single values"
                )
            if ref.length is None:
                ref.length = fact["length"]
                learned = True
        if learned and all(ref.length is not None for ref in self._refs):
            offset = 0
            for ref in self._refs:
                ref.offset = offset
                offset += cast(int, ref.length)
        return facts

    def _learn_type(self) -> tuple[np.dtype[Any], tuple[int, ...]]:
        # The dtype and the shape of a row, from the first chunk's facts if not known yet.
        if self._dtype is None or self._row_shape is None:
            if not self._refs:
                raise ValueError("a DistArray without chunks has no dtype")
            fact = self._facts(self._refs[:1])[0]
            self._dtype = np.dtype(fact["dtype"])
            self._row_shape = tuple(fact["shape"][1:])
        return self._dtype, self._row_shape

    def __len__(self) -> int:
        return sum(self._lengths())

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows,)`` or ``(rows, columns)``; waits for chunks of unknown length."""
        _, row_shape = self._learn_type()
        return (len(self),) + row_shape

    @property
    def ndim(self) -> int:
        _, row_shape = self._learn_type()
        return 1 + len(row_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype; for a result of `dcall`, known once its first chunk is computed."""
        dtype, _ = self._learn_type()
        return dtype

    # -- waiting ---------------------------------------------------------------

    def resolve(self) -> DistArray:
        """Wait until every chunk is computed; return self.

        Returns
        -------
        DistArray
            This array, every chunk computed.

        Raises
        ------
        conveyor.RemoteError
            The error of the first chunk (in order) whose function raised.
        """
        self._facts(self._refs)
        return self

    def collect(self) -> np.ndarray:
        """Gather the whole array into one numpy array on this rank, in order.

        Returns
        -------
        numpy.ndarray
            Every row, in order.

        Raises
        ------
        conveyor.RemoteError
            As `resolve`.
        """
        dtype, row_shape = self._learn_type()
        values = self._gather(self._refs)
        if not values:
            return np.empty((0,) + row_shape, dtype)
        return np.concatenate(values)

    def _gather(self, refs: list[ChunkRef]) -> list[Any]:
        layer = self._layer
        gathered = _Gathered(len(refs))
        for index, ref in enumerate(refs):
            layer.rows(
                ref,
                0,
                None,
                functools.partial(gathered.put, index),
                functools.partial(gathered.fail, index),
            )
        return gathered.wait(layer)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        value = self.collect()
        return value if dtype is None else value.astype(dtype, copy=False)

    def rebalance(self, chunks: int | None = None) -> DistArray:
        """Return the same rows in ``chunks`` near-equal chunks, chunk i on rank ``i % size``.

        Each new chunk's rank fetches just the rows it needs.

        Parameters
        ----------
        chunks : int, optional
            How many chunks; one per rank by default.

        Returns
        -------
        DistArray
            A new array, not computed yet.
        """
        m = self._layer.m
        total = len(self)
        sizes = _split_sizes(total, m.size if chunks is None else chunks)
        owners = [k % m.size for k in range(len(sizes))]
        if total == 0:
            # No rows to fetch, and no chunk for the tasks' aligned reads to
            # take the dtype from (they failed with StopIteration): made here.
            dtype, row_shape = self._learn_type()
            return m.array(np.empty((0,) + row_shape, dtype), chunks=sizes, ranks=owners)
        return _aligned_call(
            self._layer, None, [self], {}, sizes, owners, self._dtype, self._row_shape
        )

    # -- reductions ------------------------------------------------------------

    def _reduce(self, name: str, axis: int | None, out: None = None, **options: Any) -> Any:
        # numpy's functions (np.sum(x), np.min(x)) call these methods with
        # out=None and, for sum, prod and mean, dtype=.
        if out is not None:
            raise TypeError(f"{name}: out= is not supported: the result is a new numpy value")
        if axis not in (None, 0):
            raise ValueError(f"{name}: axis must be None or 0 (rows), not {axis!r}")
        layer = self._layer
        partial = _pickling.dumps(functools.partial(_partial_reduce, name, axis, options))
        refs = [
            layer.submit(ref.owner, None, None, partial, [("whole", ref)]) for ref in self._refs
        ]
        dtype, row_shape = self._learn_type()
        parts = [part for part in self._gather(refs) if part.shape[0]]
        if not parts:  # numpy's answer for no rows: an identity, or its error
            return getattr(np, name)(np.empty((0,) + row_shape, dtype), axis=axis, **options)
        return getattr(np, name)(np.concatenate(parts), axis=0, **options)

    def sum(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        return self._reduce("sum", axis, out, dtype=dtype)

    def prod(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        return self._reduce("prod", axis, out, dtype=dtype)

    def min(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return self._reduce("min", axis, out)

    def max(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return self._reduce("max", axis, out)

    def any(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return self._reduce("any", axis, out)

    def all(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return self._reduce("all", axis, out)

    def mean(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        total = self.sum(axis, dtype, out)
        _, row_shape = self._learn_type()  # known: the sum learned it
        count = len(self) if axis == 0 else len(self) * int(np.prod(row_shape))
        return np.true_divide(total, count, dtype=dtype)

    # -- numpy -----------------------------------------------------------------

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method == "__call__" and "out" not in kwargs:
            return dcall(ufunc, *inputs, **kwargs)
        if (
            method == "reduce"
            and ufunc in _REDUCERS
            and set(kwargs) <= {"axis"}
            and inputs[0] is self
        ):
            return self._reduce(_REDUCERS[ufunc], kwargs.get("axis", 0))
        return NotImplemented

    def __repr__(self) -> str:
        lengths = ", ".join("?" if ref.length is None else str(ref.length) for ref in self._refs)
        dtype = "" if self._dtype is None else f", dtype={self._dtype}"
        return f"<conveyor.DistArray chunks=[{lengths}]{dtype}>"


# The reductions share their parameters and errors: one docstring template
# (as numpy's own reductions share theirs), filled per method.
_REDUCTION_DOC = """{summary}

Parameters
----------
axis : {{None, 0}}, optional
    None: over all elements; 0: over the rows.
{dtype}out : None
    Only None: the result is a new value.

Returns
-------
numpy scalar or numpy.ndarray
    {returns}

Raises
------
ValueError
    If ``axis`` is not None or 0.
TypeError
    If ``out`` is given.
conveyor.RemoteError
    As `resolve`.
"""
_REDUCTION_DTYPE = """dtype : data-type, optional
    The type to accumulate in and return, as for `numpy.{name}`.
"""
for _name, _summary, _returns in [
    ("sum", "Sum all elements (or, with ``axis=0``, the rows).", "The sum."),
    ("prod", "Multiply all elements (or, with ``axis=0``, the rows).", "The product."),
    ("min", "Find the smallest element (or, with ``axis=0``, per column).", "The minimum."),
    ("max", "Find the largest element (or, with ``axis=0``, per column).", "The maximum."),
    (
        "any",
        "Tell whether any element is true (or, with ``axis=0``, per column).",
        "A bool, or one per column.",
    ),
    (
        "all",
        "Tell whether every element is true (or, with ``axis=0``, per column).",
        "A bool, or one per column.",
    ),
    ("mean", "Average all elements (or, with ``axis=0``, the rows).", "The mean."),
]:
    getattr(DistArray, _name).__doc__ = _REDUCTION_DOC.format(
        summary=_summary,
        returns=_returns,
        dtype=_REDUCTION_DTYPE.format(name=_name) if _name in ("sum", "prod", "mean") else "",
    )


def _operator(ufunc: np.ufunc, reflected: bool = False) -> Callable[[DistArray, Any], DistArray]:
    if reflected:
        return lambda self, other: dcall(ufunc, other, self)
    return lambda self, other: dcall(ufunc, self, other)


for _name, _ufunc in [
    ("add", np.add),
    ("sub", np.subtract),
    ("mul", np.multiply),
    ("truediv", np.true_divide),
    ("floordiv", np.floor_divide),
    ("mod", np.remainder),
    ("pow", np.power),
    ("and", np.logical_and),
    ("or", np.logical_or),
]:
    setattr(DistArray, f"__{_name}__", _operator(_ufunc))
    setattr(DistArray, f"__r{_name}__", _operator(_ufunc, reflected=True))
for _name, _ufunc in [
    ("eq", np.equal),
    ("ne", np.not_equal),
    ("lt", np.less),
    ("le", np.less_equal),
    ("gt", np.greater),
    ("ge", np.greater_equal),
]:
    setattr(DistArray, f"__{_name}__", _operator(_ufunc))
DistArray.__neg__ = lambda self: dcall(np.negative, self)  # type: ignore[method-assign]
DistArray.__abs__ = lambda self: dcall(np.absolute, self)  # type: ignore[method-assign]
DistArray.__hash__ = None  # == is elementwise

_REDUCERS = {
    np.add: "sum",
    np.multiply: "prod",
    np.minimum: "min",
    np.maximum: "max",
    np.logical_or: "any",
    np.logical_and: "all",
}


def _partial_reduce(
    name: str, axis: int | None, options: dict[str, Any], chunk: np.ndarray
) -> np.ndarray:
    # One chunk's part of a reduction: one row (none for an empty chunk,
    # which min and max could not reduce).
    if chunk.shape[0] == 0:
        return chunk[:0] if axis == 0 else chunk.reshape(-1)[:0]
    reduced: np.ndarray = getattr(np, name)(chunk, axis=axis, keepdims=True, **options)
    return reduced.reshape((1,) + (chunk.shape[1:] if axis == 0 else ()))


# -- aligned calls -----------------------------------------------------------


def dcall(f: Callable[..., Any], *args: Any, **kwargs: Any) -> DistArray:
    """Call ``f`` elementwise on distributed arguments, aligned and recycled as in R.

    The target is the longest argument (ties: the one with most chunks,
    then the first); the result has its length and chunking. For each
    target chunk, its owner calls ``f`` on the rows of every argument at
    the same indices: shorter arguments are recycled (row ``i`` of an
    argument of length ``L`` serves result row ``i mod L``), numpy arrays
    are split likewise, and other values are passed whole. Returns at once.

    Parameters
    ----------
    f : callable
        Called with numpy arrays of equal length (rows); must return one
        row per input row. Sent with cloudpickle, so lambdas work.
    *args, **kwargs
        At least one `DistArray`; numpy arrays; anything else is passed as is.

    Returns
    -------
    DistArray
        Not computed yet: `DistArray.collect` or `DistArray.resolve` wait.
        A function that raises makes its chunks errors, raised there as
        `conveyor.RemoteError`.

    Raises
    ------
    TypeError
        If no argument is a DistArray.

    Warns
    -----
    RecyclingWarning
        Once, when the longest length is not a multiple of a shorter one.
    """
    layer = _layer_of_operands(args, kwargs, "dcall")
    operands = list(args) + list(kwargs.values())
    lengths = [_length(x) for x in operands]
    known = [n for n in lengths if n is not None]
    if 0 in known:  # R: a zero-length operand gives a zero-length result
        # One empty chunk, computed by a task as any other: the function's
        # errors (and a result that is not empty) come at collect, not here.
        specs = [_value_spec(_empty_like(x)) for x in operands]
        n = len(args)
        ref = layer.submit(
            layer.rank, 0, 0, _pickling.dumps(f), specs[:n], dict(zip(kwargs, specs[n:]))
        )
        return DistArray(layer, [ref])
    longest = max(known)
    if any(longest % n for n in known):
        _warn_recycling()
    dist = [
        (i, x) for i, x in enumerate(operands) if isinstance(x, DistArray) and lengths[i] == longest
    ]
    if dist:
        target_index = max(dist, key=lambda item: (len(item[1]._refs), -item[0]))[0]
    else:  # a numpy array is longest: it is scattered first
        target_index = lengths.index(longest)
        operands[target_index] = layer.m.array(operands[target_index])
    target = operands[target_index]
    sizes = target._lengths()
    owners = [ref.owner for ref in target._refs]
    n = len(args)
    return _aligned_call(
        layer, f, operands[:n], dict(zip(kwargs, operands[n:])), sizes, owners, target=target
    )


def _aligned_call(
    layer: ChunkLayer,
    f: Callable[..., Any] | None,
    args: list[Any],
    kwargs: dict[str, Any],
    sizes: list[int],
    owners: list[int],
    dtype: np.dtype[Any] | None = None,
    row_shape: tuple[int, ...] | None = None,
    target: DistArray | None = None,
) -> DistArray:
    # One task per chunk of the result (rows `sizes`, on `owners`): each
    # argument as its aligned rows, the target's own chunk whole.
    function = None if f is None else _pickling.dumps(f)
    refs, offset = [], 0
    for k, (length, owner) in enumerate(zip(sizes, owners)):

        def spec(x: Any) -> Spec:
            if x is target:
                return ("whole", target._refs[k])
            if isinstance(x, DistArray):
                return ("pieces", _aligned_pieces(x, offset, length))
            if isinstance(x, np.ndarray) and x.ndim:
                return ("value", _recycled_rows(x, offset, length))
            return _value_spec(x)

        task_args = [spec(x) for x in args]
        task_kwargs = {name: spec(x) for name, x in kwargs.items()}
        refs.append(layer.submit(owner, length, offset, function, task_args, task_kwargs))
        offset += length
    shape = None if row_shape is None else (offset,) + row_shape
    return DistArray(layer, refs, dtype, shape)


def _warn_recycling() -> None:
    # Attributed to the first caller outside conveyor: operators and numpy's
    # ufuncs call dcall from inside it, and with Python's default filter (once
    # per place) all of a program's `x + y` would share one place in here.
    frame: FrameType | None
    frame, level = sys._getframe(0), 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE:
        frame, level = frame.f_back, level + 1
    warnings.warn(_RECYCLING, RecyclingWarning, stacklevel=level)


def _aligned_pieces(x: DistArray, begin: int, length: int) -> list[tuple[ChunkRef, int, int]]:
    # The rows of `x` that result rows begin .. begin + length take, as the
    # native kernel lists them: one period at most, wrapping round (R's
    # recycling). Only the chunks these touch travel with the task.
    sizes = x._lengths()
    pieces = core.chunks.align(sizes, begin, begin + length).tolist()
    if not pieces:  # an empty result chunk: no rows, but of the argument's dtype
        pieces = [[next(k for k, size in enumerate(sizes) if size), 0, 0]]
    return [(x._refs[k], start, stop) for k, start, stop in pieces]


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


def dmap(f: Callable[..., Any], *args: Any, **kwargs: Any) -> DistArray:
    """Call ``f`` on chunk i of every distributed argument, for every i (R's ``mapply``).

    Shorter lists of chunks are recycled; lists and tuples count as lists
    (item i goes with chunk i), anything else is passed to every call.
    Chunk i of the result is computed on the rank of chunk i of the
    argument with most chunks, and may have any length. Returns at once.

    Parameters
    ----------
    f : callable
        Called with chunk i of every argument (numpy arrays), item i of
        every list or tuple, and the other arguments whole; returns the
        rows of chunk i of the result. Sent with cloudpickle.
    *args, **kwargs
        At least one `DistArray`; lists and tuples; anything else.

    Returns
    -------
    DistArray
        Not computed yet, as for `dcall`.

    Raises
    ------
    ValueError
        If zero-length and non-zero-length lists are mixed.

    Warns
    -----
    RecyclingWarning
        When the most chunks is not a multiple of a shorter list's count.
    """
    layer = _layer_of_operands(args, kwargs, "dmap")
    operands = list(args) + list(kwargs.values())
    counts = [
        len(x._refs) if isinstance(x, DistArray) else len(x)
        for x in operands
        if isinstance(x, (DistArray, list, tuple))
    ]
    if 0 in counts:
        if any(counts):
            raise ValueError(
                "dmap: zero-length inputs cannot be mixed with those of non-zero length"
            )
        return DistArray(layer, [])
    count = max(counts)
    if any(count % n for n in counts):
        _warn_recycling()
    widest = (
        next(x for x in operands if isinstance(x, DistArray) and len(x._refs) == count)
        if any(isinstance(x, DistArray) and len(x._refs) == count for x in operands)
        else next(x for x in operands if isinstance(x, DistArray))
    )
    function = _pickling.dumps(f)
    n = len(args)
    refs = []
    for i in range(count):

        def spec(x: Any) -> Spec:
            if isinstance(x, DistArray):
                return ("whole", x._refs[i % len(x._refs)])
            if isinstance(x, (list, tuple)):
                return _value_spec(x[i % len(x)])
            return _value_spec(x)

        specs = [spec(x) for x in operands]
        owner = widest._refs[i % len(widest._refs)].owner
        refs.append(
            layer.submit(owner, None, None, function, specs[:n], dict(zip(kwargs, specs[n:])))
        )
    return DistArray(layer, refs)


def dreduce(f: Callable[[Any, Any], Any], x: DistArray) -> Any:
    """Fold the chunks of ``x`` in order: ``f(f(c0, c1), c2) ...``; return the result.

    Each step runs on the rank of the chunk it folds in, so only the
    running value travels. A single chunk is returned as it is.

    Parameters
    ----------
    f : callable
        Called with the running value and the next chunk; returns the new
        running value. Sent with cloudpickle.
    x : DistArray
        The chunks to fold.

    Returns
    -------
    object
        The last running value (a numpy scalar for a 0-d result).

    Raises
    ------
    TypeError
        If ``x`` is not a DistArray.
    ValueError
        If ``x`` has no chunks.
    conveyor.RemoteError
        If ``f`` raised, or a chunk is an error.
    """
    if not isinstance(x, DistArray):
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


# -- the driver ----------------------------------------------------------------


class Driver:
    """What the root rank gets from ``with m.driver() as d``: make and call on DistArrays.

    The other ranks serve inside their ``with`` (they get None) until the
    root leaves its own, as with mpi4py's ``MPICommExecutor``.
    """

    def __init__(self, messenger: Messenger) -> None:
        self.messenger = messenger

    def array(
        self,
        a: npt.ArrayLike,
        chunks: SupportsIndex | Iterable[SupportsIndex] | None = None,
        ranks: Iterable[SupportsIndex] | None = None,
    ) -> DistArray:
        """Return a DistArray of ``a``, as `Messenger.array` does.

        Parameters
        ----------
        a : array_like
            As for `Messenger.array`.
        chunks : int or sequence of int, optional
            As for `Messenger.array`.
        ranks : sequence of int, optional
            As for `Messenger.array`.

        Returns
        -------
        DistArray
            The array.
        """
        return self.messenger.array(a, chunks=chunks, ranks=ranks)

    dcall = staticmethod(dcall)
    dmap = staticmethod(dmap)
    dreduce = staticmethod(dreduce)

    def __repr__(self) -> str:
        return f"<conveyor.Driver on rank {self.messenger.rank} of {self.messenger.size}>"


class DriverScope:
    """``with m.driver(root) as d``: the root gets a `Driver`, the others serve.

    The other ranks handle messages in ``__enter__`` until the root has
    left its block, then get None (so the same code runs on every rank:
    ``if d is not None: ...``).
    """

    def __init__(self, messenger: Messenger, layer: ChunkLayer, root: int) -> None:
        self.m = messenger
        self.layer = layer
        self.root = check_rank(root, messenger.size, "the root rank")

    def __enter__(self) -> Driver | None:
        m = self.m
        layer = self.layer
        if m.rank == self.root:
            return Driver(m)
        if layer.transport.in_handler():
            raise ConveyorError("a rank cannot serve a driver from inside a handler")
        seen = layer.drivers_seen
        while layer.drivers_done == seen:
            m.progress(_SERVE_SLICE)
        layer.drivers_seen += 1
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        m = self.m
        if m.rank == self.root and not m.closed:
            for rank in range(m.size):
                if rank != self.root:
                    self.layer.transport.send(rank, DRIVER_DONE)
        return False


# -- helpers -----------------------------------------------------------------


def scatter(
    layer: ChunkLayer,
    a: npt.ArrayLike,
    chunks: SupportsIndex | Iterable[SupportsIndex] | None,
    ranks: Iterable[SupportsIndex] | None,
) -> DistArray:
    """Messenger.array: split ``a`` into chunks on their ranks."""
    a = _checked_array(a, "array")
    size = layer.m.size
    if chunks is None:
        sizes = _split_sizes(len(a), size)
    elif isinstance(chunks, numbers.Integral):
        sizes = _split_sizes(len(a), int(chunks))
    else:
        # operator.index: int() would truncate sizes such as 3.9 silently.
        sizes = [operator.index(n) for n in chunks]  # type: ignore[union-attr]  # not Integral
        if any(n < 0 for n in sizes) or sum(sizes) != len(a):
            raise ValueError(f"chunk sizes {sizes} must be >= 0 and add up to {len(a)} rows")
    if ranks is None:
        owners = [k % size for k in range(len(sizes))]
    else:
        owners = [operator.index(r) for r in ranks]
        if len(owners) != len(sizes) or any(not 0 <= r < size for r in owners):
            raise ValueError(
                f"ranks must give one rank in 0..{size - 1} for each of the {len(sizes)} chunks"
            )
    refs, offset = [], 0
    for length, owner in zip(sizes, owners):
        piece = a[offset : offset + length]
        if owner == layer.rank:
            ref, _ = layer.mint(owner, length, offset)
            layer.resolve(ref, piece.copy())  # later changes to `a` must not show
        else:
            ref = layer.submit(
                owner, length, offset, None, [("value", np.ascontiguousarray(piece))]
            )
        refs.append(ref)
        offset += length
    return DistArray(layer, refs, a.dtype, a.shape)


def _split_sizes(total: int, chunks: int) -> list[int]:
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, not {chunks}")
    base, extra = divmod(total, chunks)
    return [base + (k < extra) for k in range(chunks)]


def _checked_array(a: npt.ArrayLike, verb: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in (1, 2):
        raise ValueError(f"{verb}: a DistArray is 1-D or 2-D (chunked by rows), not {a.ndim}-D")
    if a.dtype.hasobject or a.dtype.names is not None:
        raise TypeError(f"{verb}: a DistArray holds numeric numpy data, not dtype {a.dtype}")
    return a


def _layer_of_operands(args: tuple[Any, ...], kwargs: dict[str, Any], verb: str) -> ChunkLayer:
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, DistArray):
            return x._layer
    raise TypeError(f"{verb} needs at least one DistArray argument")


def _length(x: Any) -> int | None:
    if isinstance(x, DistArray):
        return len(x)
    if isinstance(x, np.ndarray) and x.ndim:
        return len(x)
    return None


def _empty_like(x: Any) -> Any:
    if isinstance(x, DistArray):
        dtype, row_shape = x._learn_type()
        return np.empty((0,) + row_shape, dtype)
    if isinstance(x, np.ndarray) and x.ndim:
        return x[:0]
    return x
