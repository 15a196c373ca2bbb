"""DistArray, the public distributed array, and dcall, dmap and dreduce.

`DistArray` adds to `Chunked` what a user calls: the operators and numpy's
ufuncs (through `dcall`), the reductions, `rebalance`. The functions here
are the public faces of the tasks in `calls`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, cast

import numpy as np
import numpy.typing as npt

from . import calls, indexing, reductions
from .chunked import Chunked, split_sizes
from .elementwise import elementwise

__all__ = ["DistArray", "dcall", "dmap", "dreduce"]


class DistArray(Chunked):
    """A distributed array: an ordered list of chunks living on different ranks.

    1-D, or 2-D chunked by rows. Make one with `Messenger.array` (or a
    driver's `Driver.array`) from a numpy array, or with `from_local` from
    each rank's piece; `dcall`, `dmap`, the operators and numpy's ufuncs
    make new ones without waiting for their chunks to be computed.
    `DistArray.collect` and `DistArray.resolve` wait. It follows numpy's
    semantics (broadcasting, bitwise ``&`` and ``|``, the truth value of
    one element only, indexing with ``x[key]``); what cannot stay
    distributed raises an error that names `collect`, rather than gathering
    the array on one rank.

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
        def __xor__(self, other: Any) -> DistArray: ...
        def __rxor__(self, other: Any) -> DistArray: ...
        def __lshift__(self, other: Any) -> DistArray: ...
        def __rlshift__(self, other: Any) -> DistArray: ...
        def __rshift__(self, other: Any) -> DistArray: ...
        def __rrshift__(self, other: Any) -> DistArray: ...
        def __eq__(self, other: Any) -> DistArray: ...  # type: ignore[override]
        def __ne__(self, other: Any) -> DistArray: ...  # type: ignore[override]
        def __lt__(self, other: Any) -> DistArray: ...
        def __le__(self, other: Any) -> DistArray: ...
        def __gt__(self, other: Any) -> DistArray: ...
        def __ge__(self, other: Any) -> DistArray: ...
        def __neg__(self) -> DistArray: ...
        def __pos__(self) -> DistArray: ...
        def __abs__(self) -> DistArray: ...
        def __invert__(self) -> DistArray: ...

        __hash__: ClassVar[None]  # type: ignore[assignment]

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
        sizes = split_sizes(total, m.size if chunks is None else chunks)
        owners = [k % m.size for k in range(len(sizes))]
        if total == 0:
            # No rows to fetch, and no chunk for the tasks' aligned reads to
            # take the dtype from (they failed with StopIteration): made here.
            dtype, row_shape = self._learn_type()
            return m.array(np.empty((0,) + row_shape, dtype), chunks=sizes, ranks=owners)
        return calls.aligned_call(
            DistArray, self._layer, None, [self], {}, sizes, owners, self._dtype, self._row_shape
        )

    # -- reductions ------------------------------------------------------------

    def sum(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        return reductions.reduce(self, "sum", axis, out, dtype=dtype)

    def prod(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        return reductions.reduce(self, "prod", axis, out, dtype=dtype)

    def min(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return reductions.reduce(self, "min", axis, out)

    def max(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return reductions.reduce(self, "max", axis, out)

    def any(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return reductions.reduce(self, "any", axis, out)

    def all(self, axis: Literal[0] | None = None, out: None = None) -> Any:
        return reductions.reduce(self, "all", axis, out)

    def mean(
        self, axis: Literal[0] | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> Any:
        total = self.sum(axis, dtype, out)
        _, row_shape = self._learn_type()  # known: the sum learned it
        count = len(self) if axis == 0 else len(self) * int(np.prod(row_shape))
        return np.true_divide(total, count, dtype=dtype)

    # -- numpy -----------------------------------------------------------------

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if kwargs.get("out") is not None:
            raise TypeError(f"{ufunc.__name__}: out= is not supported: a DistArray is a new array")
        kwargs.pop("out", None)
        if method == "__call__":
            if ufunc.nout != 1 or ufunc.signature is not None:
                raise TypeError(
                    f"numpy.{ufunc.__name__} is not supported on a DistArray "
                    "(it returns more than one array, or works on whole rows): "
                    "call it on .collect(), or through dcall"
                )
            if kwargs.get("where", True) is not True:
                raise TypeError(
                    f"{ufunc.__name__}: where= is not supported on a DistArray: use numpy.where"
                )
            kwargs.pop("where", None)
            return elementwise(DistArray, ufunc, inputs, kwargs)
        if (
            method == "reduce"
            and ufunc in reductions.REDUCERS
            and set(kwargs) <= {"axis"}
            and inputs[0] is self
        ):
            return reductions.reduce(self, reductions.REDUCERS[ufunc], kwargs.get("axis", 0))
        return NotImplemented

    # -- Python's protocols, as numpy has them ---------------------------------------

    def __getitem__(self, key: Any) -> Any:
        return indexing.getitem(self, key)

    def __bool__(self) -> bool:
        # numpy's answer: the one element's truth, else its error.
        size = self.size
        if size == 1:
            return bool(self.collect().reshape(()))
        return bool(np.zeros(min(size, 2), bool))  # raises numpy's ValueError

    def __iter__(self) -> Iterator[Any]:
        # Row by row, one chunk fetched at a time: as much memory as the largest chunk.
        for ref in self._refs:
            (rows,) = self._gather([ref])
            yield from rows

    def __contains__(self, value: object) -> bool:
        return bool((self == value).any())

    def __repr__(self) -> str:
        lengths = [ref.length for ref in self._refs]
        rows = "?" if None in lengths else str(sum(cast("list[int]", lengths)))
        if self._row_shape is None:
            shape = "?"
        else:
            shape = "(" + ", ".join([rows] + [str(n) for n in self._row_shape])
            shape += ",)" if not self._row_shape else ")"
        chunks = ", ".join("?" if n is None else str(n) for n in lengths)
        ranks = ", ".join(str(ref.owner) for ref in self._refs)
        dtype = "?" if self._dtype is None else str(self._dtype)
        return f"<conveyor.DistArray shape={shape} dtype={dtype} chunks=[{chunks}] ranks=[{ranks}]>"


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
        return lambda self, other: elementwise(DistArray, ufunc, (other, self), {})
    return lambda self, other: elementwise(DistArray, ufunc, (self, other), {})


def _unary(ufunc: np.ufunc) -> Callable[[DistArray], DistArray]:
    return lambda self: elementwise(DistArray, ufunc, (self,), {})


# numpy's operators, with numpy's broadcasting: `&`, `|` and `^` are bitwise
# (logical for bools), as in numpy; R's logical `&` and `|` are
# numpy.logical_and and numpy.logical_or, and R's recycling is dcall's.
for _name, _ufunc in [
    ("add", np.add),
    ("sub", np.subtract),
    ("mul", np.multiply),
    ("truediv", np.true_divide),
    ("floordiv", np.floor_divide),
    ("mod", np.remainder),
    ("pow", np.power),
    ("and", np.bitwise_and),
    ("or", np.bitwise_or),
    ("xor", np.bitwise_xor),
    ("lshift", np.left_shift),
    ("rshift", np.right_shift),
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
for _name, _one in [
    ("neg", np.negative),
    ("pos", np.positive),
    ("abs", np.absolute),
    ("invert", np.invert),
]:
    setattr(DistArray, f"__{_name}__", _unary(_one))
DistArray.__hash__ = None  # == is elementwise


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
    return calls.call(DistArray, f, args, kwargs)


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
    return calls.map_chunks(DistArray, f, args, kwargs)


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
    return calls.fold(f, x)
