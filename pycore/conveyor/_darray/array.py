"""DistArray, the public distributed array, and dcall, dmap and dreduce.

`DistArray` adds to `Chunked` what a user calls, as numpy names it: the
operators and numpy's ufuncs, indexing, the reductions, the layout, ``@``
and numpy's functions, each done by the module of its own below; and
`rebalance`. dcall, dmap and dreduce are the public faces of the tasks in
`calls`.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Literal,
    SupportsIndex,
    Union,
    cast,
    overload,
)

import numpy as np
import numpy.typing as npt

from . import calls, functions, indexing, io, layout, reductions
from .chunked import Chunked, split_sizes
from .elementwise import elementwise
from .matmul import matmul

if TYPE_CHECKING:
    from .._messenger import Messenger

__all__ = ["DistArray", "dcall", "dmap", "dreduce"]

# The axes a reduction takes: None (all), 0, 1, negative ones, or a tuple of them.
Axis = Union[int, tuple[int, ...], None]


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
        def __matmul__(self, other: Any) -> Any: ...
        def __rmatmul__(self, other: Any) -> Any: ...
        def __neg__(self) -> DistArray: ...
        def __pos__(self) -> DistArray: ...
        def __abs__(self) -> DistArray: ...
        def __invert__(self) -> DistArray: ...

        __hash__: ClassVar[None]  # type: ignore[assignment]

    def rebalance(self, chunks: int | Sequence[int] | None = None) -> DistArray:
        """Return the same rows in new chunks, chunk i on rank ``i % size``.

        Each new chunk's rank fetches just the rows it needs.

        Parameters
        ----------
        chunks : int or sequence of int, optional
            How many near-equal chunks (one per rank by default), or the
            rows of each, as for `Messenger.array`.

        Returns
        -------
        DistArray
            A new array, not computed yet.

        Raises
        ------
        ValueError
            If the sizes are negative or do not add up to the rows.
        """
        m = self._layer.m
        total = len(self)
        if chunks is None or not isinstance(chunks, Iterable):
            sizes = split_sizes(total, m.size if chunks is None else operator.index(chunks))
        else:
            sizes = [operator.index(n) for n in chunks]
            if any(n < 0 for n in sizes) or sum(sizes) != total:
                raise ValueError(f"chunk sizes {sizes} must be >= 0 and add up to {total} rows")
        owners = [k % m.size for k in range(len(sizes))]
        if total == 0:
            # No rows to fetch, and no chunk for the tasks' aligned reads to
            # take the dtype from (they failed with StopIteration): made here.
            dtype, row_shape = self._learn_type()
            return m.array(np.empty((0,) + row_shape, dtype), chunks=sizes, ranks=owners)
        return calls.aligned_call(
            DistArray, self._layer, None, [self], {}, sizes, owners, self._dtype, self._row_shape
        )

    # -- saving and loading ----------------------------------------------------

    def to_npy(self, directory: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Save the array as one ``.npy`` file per chunk and a manifest (collective).

        Every rank calls it with the same array. Each rank writes the chunks
        it owns, as ``chunk-<index>.npy`` in numpy's format (C order), so no
        chunk's rows travel; rank 0 then writes ``manifest.json`` (the
        format version, the dtype, the shape, and each chunk's file, offset
        and rows). ``directory`` must be the same directory on every rank:
        a shared file system, on a cluster. `from_npy` reads it back.

        Parameters
        ----------
        directory : str or os.PathLike
            Where the files go; made if missing.
        overwrite : bool, default False
            Replace an array saved there (its manifest and every chunk file).

        Raises
        ------
        FileExistsError
            If ``directory`` holds a saved array and ``overwrite`` is False.
        NotADirectoryError
            If ``directory`` is a file.
        ValueError
            If the ranks passed arrays of different layouts, or the array
            has no chunks.
        OSError
            If a file cannot be written.
        conveyor.RemoteError
            From a driver: the error of the first chunk that failed.

        Notes
        -----
        An error on any rank is raised on every rank, as the same type
        (its message names the rank), so no rank waits for another that
        failed. Inside a driver block (``with m.driver() as d``) the root
        calls it alone, while the others serve: each owner writes its
        chunks in a task, and the root prepares the directory and writes
        the manifest.
        """
        io.to_npy(self, directory, overwrite)

    @classmethod
    def from_npy(cls, messenger: Messenger, directory: str | os.PathLike[str]) -> DistArray:
        """Load an array saved by `to_npy`, with the same chunks (collective).

        Chunk ``i`` goes to rank ``i % size``, as `Messenger.array` places
        chunks, on any number of ranks (not only the number that saved it);
        each rank reads the files of the chunks it will own, which must be
        there for it: a shared file system, on a cluster.

        Parameters
        ----------
        messenger : Messenger
            The messenger of every rank.
        directory : str or os.PathLike
            Where `to_npy` saved the array.

        Returns
        -------
        DistArray
            The array, its chunks already on their ranks.

        Raises
        ------
        FileNotFoundError
            If the directory, its manifest or a chunk file is missing.
        ValueError
            If the manifest is of another format version, or malformed, or
            a chunk file's shape or dtype is not the manifest's.
        conveyor.RemoteError
            From a driver, for a chunk file: its owner's error.

        Notes
        -----
        Inside a driver block the root calls it alone, and each owner reads
        its chunks in a task, as `to_npy`.
        """
        return io.from_npy(cls, messenger, directory)

    def to_hdf5(self, path: str | os.PathLike[str], dataset: str, overwrite: bool = False) -> None:
        """Save the array as a dataset of an HDF5 file, through h5py (collective).

        Every rank calls it with the same array. Rank 0 creates the file if
        needed and the dataset; then each rank writes the rows of the chunks
        it owns. With a parallel build of h5py (``h5py.get_config().mpi``)
        every rank writes through MPI-IO at once; otherwise the owners write
        one at a time, in rank order, between barriers of the messenger
        (which serve messages while they wait), as HDF5 without MPI-IO
        allows a single writer. ``path`` must be the same file on every rank.

        Parameters
        ----------
        path : str or os.PathLike
            The HDF5 file; created if missing, else added to.
        dataset : str
            The dataset's name (a path within the file, such as ``"run/x"``).
        overwrite : bool, default False
            Replace a dataset of that name.

        Raises
        ------
        ImportError
            If h5py is not installed (``pip install 'conveyor-mpi[hdf5]'``).
        ValueError
            If the dataset exists and ``overwrite`` is False, or the ranks
            passed arrays of different layouts.
        OSError
            If the file cannot be written (or is not an HDF5 file).
        conveyor.RemoteError
            From a driver: the error of the first chunk that failed.

        Notes
        -----
        An error on any rank is raised on every rank, as `to_npy`'s are.
        Inside a driver block the root calls it alone, and the owners write
        their chunks in tasks chained one after the other, in chunk order
        (one writer at a time, whatever the build of h5py).
        """
        io.to_hdf5(self, path, dataset, overwrite)

    @classmethod
    def from_hdf5(
        cls,
        messenger: Messenger,
        path: str | os.PathLike[str],
        dataset: str,
        chunks: SupportsIndex | Iterable[SupportsIndex] | None = None,
    ) -> DistArray:
        """Load a 1-D or 2-D dataset of an HDF5 file as a DistArray (collective).

        Chunk ``i`` goes to rank ``i % size``, and each rank reads its
        chunks' rows from the file (HDF5 allows many readers while nobody
        writes).

        Parameters
        ----------
        messenger : Messenger
            The messenger of every rank.
        path : str or os.PathLike
            The HDF5 file, the same on every rank.
        dataset : str
            The dataset's name.
        chunks : int or sequence of int, optional
            How many near-equal chunks (one per rank by default), or the
            rows of each, as for `Messenger.array`.

        Returns
        -------
        DistArray
            The array, its chunks already on their ranks.

        Raises
        ------
        ImportError
            If h5py is not installed (``pip install 'conveyor-mpi[hdf5]'``).
        FileNotFoundError
            If the file is missing.
        KeyError
            If the file has no such dataset.
        ValueError
            If the dataset is not 1-D or 2-D, or ``chunks`` does not fit it.
        TypeError
            If the dataset is not numeric.
        conveyor.RemoteError
            From a driver, for a chunk's rows: its owner's error.

        Notes
        -----
        Inside a driver block the root calls it alone, and each owner reads
        its chunks' rows in a task, as `to_npy`.
        """
        return io.from_hdf5(cls, messenger, path, dataset, chunks)

    # -- reductions ------------------------------------------------------------
    # Their docstrings are filled in below the class, from one template.

    def sum(
        self,
        axis: Axis = None,
        dtype: npt.DTypeLike | None = None,
        out: None = None,
        keepdims: bool = False,
    ) -> Any:
        return reductions.reduce(self, "sum", axis, out, keepdims, dtype=dtype)

    def prod(
        self,
        axis: Axis = None,
        dtype: npt.DTypeLike | None = None,
        out: None = None,
        keepdims: bool = False,
    ) -> Any:
        return reductions.reduce(self, "prod", axis, out, keepdims, dtype=dtype)

    def min(self, axis: Axis = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.reduce(self, "min", axis, out, keepdims)

    def max(self, axis: Axis = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.reduce(self, "max", axis, out, keepdims)

    def any(self, axis: Axis = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.reduce(self, "any", axis, out, keepdims)

    def all(self, axis: Axis = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.reduce(self, "all", axis, out, keepdims)

    def mean(
        self,
        axis: Axis = None,
        dtype: npt.DTypeLike | None = None,
        out: None = None,
        keepdims: bool = False,
    ) -> Any:
        return reductions.mean(self, axis, dtype, out, keepdims)

    def var(
        self,
        axis: Axis = None,
        dtype: npt.DTypeLike | None = None,
        out: None = None,
        ddof: int = 0,
        keepdims: bool = False,
    ) -> Any:
        return reductions.var(self, axis, dtype, out, ddof, keepdims)

    def std(
        self,
        axis: Axis = None,
        dtype: npt.DTypeLike | None = None,
        out: None = None,
        ddof: int = 0,
        keepdims: bool = False,
    ) -> Any:
        return reductions.var(self, axis, dtype, out, ddof, keepdims, root=True)

    def argmin(self, axis: int | None = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.arg(self, "argmin", axis, out, keepdims)

    def argmax(self, axis: int | None = None, out: None = None, keepdims: bool = False) -> Any:
        return reductions.arg(self, "argmax", axis, out, keepdims)

    def cumsum(
        self, axis: int | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> DistArray:
        return reductions.accumulate(self, "cumsum", axis, dtype, out)

    def cumprod(
        self, axis: int | None = None, dtype: npt.DTypeLike | None = None, out: None = None
    ) -> DistArray:
        return reductions.accumulate(self, "cumprod", axis, dtype, out)

    # -- layout ----------------------------------------------------------------

    def astype(self, dtype: npt.DTypeLike, casting: Any = "unsafe", copy: bool = True) -> DistArray:
        """Return the array cast to ``dtype``, each chunk where it is.

        Parameters
        ----------
        dtype : data-type
            The new dtype (numeric or bool).
        casting : {'no', 'equiv', 'safe', 'same_kind', 'unsafe'}, default 'unsafe'
            The casts allowed, as for `numpy.ndarray.astype`.
        copy : bool, default True
            False: return this array itself if it has that dtype already.

        Returns
        -------
        DistArray
            Returned at once, of the same chunking.

        Raises
        ------
        TypeError
            If ``casting`` does not allow the cast, or ``dtype`` is not numeric.
        """
        return layout.astype(self, dtype, casting, copy)

    def reshape(self, *shape: Any, order: str = "C") -> DistArray:
        """Return the array in another shape, where that relabels the rows of each chunk.

        As `numpy.reshape`, in C order: a 2-D array flattens to 1-D, a 1-D
        array becomes a column (``x.reshape(-1, 1)``) or rows of ``k``
        elements when every chunk holds a multiple of ``k``. Each chunk is
        reshaped where it is; nothing moves between ranks.

        Parameters
        ----------
        *shape : int or tuple of int
            The new shape, 1-D or 2-D; one dimension may be -1.
        order : {'C'}, default 'C'
            Only C order relabels rows.

        Returns
        -------
        DistArray
            Returned at once (this array itself for its own shape).

        Raises
        ------
        ValueError
            numpy's error if the sizes differ; if a chunk would not hold
            whole rows of the new shape (`rebalance` first), or the shape
            is not 1-D or 2-D.
        """
        return layout.reshape(self, shape[0] if len(shape) == 1 else shape, order)

    def ravel(self, order: str = "C") -> DistArray:
        """Return the array flattened to 1-D, as `numpy.ravel`: each chunk's rows relabelled.

        Parameters
        ----------
        order : {'C'}, default 'C'
            Only C order relabels rows.

        Returns
        -------
        DistArray
            Returned at once, of the same chunks (this array itself if 1-D).
        """
        return layout.reshape(self, -1, order)

    def flatten(self, order: str = "C") -> DistArray:
        """Return the array flattened to 1-D, as `numpy.ndarray.flatten`; the same as `ravel`.

        Parameters
        ----------
        order : {'C'}, default 'C'
            Only C order relabels rows.

        Returns
        -------
        DistArray
            Returned at once, of the same chunks. A DistArray is never
            changed in place, so sharing its chunks is as good as a copy.
        """
        return layout.reshape(self, -1, order)

    def squeeze(self, axis: int | tuple[int, ...] | None = None) -> DistArray:
        """Return the array without its axes of length 1, as `numpy.squeeze`.

        A reshape (a column ``(n, 1)`` becomes ``(n,)``, one row ``(1, k)``
        becomes ``(k,)``): nothing moves between ranks.

        Parameters
        ----------
        axis : int or tuple of int, optional
            The axes to remove; all those of length 1 by default.

        Returns
        -------
        DistArray
            Returned at once.

        Raises
        ------
        ValueError
            If an axis given is not of length 1, or the result would be 0-d.
        """
        return layout.squeeze(self, axis)

    def copy(self) -> DistArray:
        """Return a copy of the array, each chunk copied where it is.

        Returns
        -------
        DistArray
            Returned at once, of the same chunking and ranks.
        """
        return layout.copy(self)

    def transpose(self, *axes: Any) -> DistArray:
        """Return the transpose: a 1-D array itself, the columns of a 2-D array as its rows.

        The rows of the result are cut into as many groups as this array has
        chunks (at most one per column); each chunk's columns of a group are
        taken where the chunk is, and each group is put together on the
        rank of one chunk.

        Parameters
        ----------
        *axes : int or tuple of int, optional
            numpy's permutation of the axes.

        Returns
        -------
        DistArray
            Returned at once.

        Raises
        ------
        ValueError
            If ``axes`` is not a permutation of the axes.
        """
        return layout.transpose(self, axes[0] if len(axes) == 1 else (axes or None))

    @property
    def T(self) -> DistArray:
        """The transpose, as `transpose`."""
        return self.transpose()

    def nonzero(self) -> tuple[DistArray, ...]:
        """Return, for each dimension, the places of the elements that are not zero.

        As `numpy.nonzero`; ``np.where(x)`` is the same.

        Returns
        -------
        tuple of DistArray
            One 1-D DistArray of places per dimension, each chunk computed
            where the rows are (its length known once computed).
        """
        return layout.nonzero(self)

    # -- numpy -----------------------------------------------------------------

    def __array_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        make = functions.created(func)
        if make is not None:  # np.ones(..., like=self): numpy passes no array but `like`
            return make(self, *args, **kwargs)
        implementation = functions.supported(func)
        if implementation is None:
            raise TypeError(
                f"numpy.{func.__name__} is not supported on a DistArray: it would gather the "
                "whole array on one rank; if that is what you want, call it on .collect()"
            )
        if not all(issubclass(t, (DistArray, np.ndarray)) for t in types):
            return NotImplemented
        return implementation(*args, **kwargs)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if kwargs.get("out") is not None:
            raise TypeError(f"{ufunc.__name__}: out= is not supported: a DistArray is a new array")
        kwargs.pop("out", None)
        if method == "__call__":
            if ufunc is np.matmul and not kwargs:
                return matmul(*inputs)
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
        if (
            method == "accumulate"
            and ufunc in reductions.ACCUMULATORS
            and set(kwargs) <= {"axis", "dtype"}
            and inputs[0] is self
        ):
            name = reductions.ACCUMULATORS[ufunc]
            return reductions.accumulate(self, name, kwargs.get("axis", 0), kwargs.get("dtype"))
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
_AXIS = """axis : {{None, 0, 1}} or tuple of int, optional
    None: over all elements; 0 (or -2 of a 2-D array): over the rows, per
    column; 1 (or -1) of a 2-D array: along each row.
"""
_DTYPE = """dtype : data-type, optional
    The type to accumulate in and return, as for `numpy.{name}`.
"""
_OUT = """out : None
    Only None: the result is a new value.
"""
_DDOF = """ddof : int, default 0
    The divisor is the count of elements less ``ddof``, as for `numpy.{name}`.
"""
_KEEPDIMS = """keepdims : bool, default False
    Keep the reduced axes, of length 1, as numpy does.
"""
_REDUCED = """numpy scalar, numpy.ndarray or DistArray
    {returns} A numpy value over all elements or the rows (map-reduce: each
    chunk is reduced where it is); along each row (``axis=1``), a DistArray
    of the same chunking, computed where the rows are, returned at once.
"""
_RAISES = """numpy.exceptions.AxisError
    If ``axis`` is not an axis of the array (a ValueError and an
    IndexError).
TypeError
    If ``out`` is given.
conveyor.RemoteError
    As `resolve`.
"""
_ACCUMULATED = """DistArray
    Returned at once, of the chunking of the rows it runs along (with
    ``axis=None``, of a 2-D array flattened chunk by chunk); each chunk is
    computed where it is, after the totals of the chunks before it.
"""


def _document(name: str, summary: str, sections: list[str], returns: str, raises: str) -> None:
    text = "".join(section.format(name=name) for section in sections)
    getattr(DistArray, name).__doc__ = (
        f"{summary}\n\nParameters\n----------\n{text}\nReturns\n-------\n{returns}\n"
        f"Raises\n------\n{raises}"
    )


for _name, _summary, _returns in [
    ("sum", "Sum the elements, as `numpy.sum`.", "The sum."),
    ("prod", "Multiply the elements, as `numpy.prod`.", "The product."),
    ("mean", "Average the elements, as `numpy.mean`.", "The mean."),
]:
    _document(
        _name,
        _summary,
        [_AXIS, _DTYPE, _OUT, _KEEPDIMS],
        _REDUCED.format(returns=_returns),
        _RAISES,
    )
for _name, _summary, _returns in [
    ("min", "Find the smallest element, as `numpy.min`.", "The minimum."),
    ("max", "Find the largest element, as `numpy.max`.", "The maximum."),
    ("any", "Tell whether any element is true, as `numpy.any`.", "Bools."),
    ("all", "Tell whether every element is true, as `numpy.all`.", "Bools."),
]:
    _document(_name, _summary, [_AXIS, _OUT, _KEEPDIMS], _REDUCED.format(returns=_returns), _RAISES)
for _name, _summary, _returns in [
    (
        "var",
        "Compute the variance, as `numpy.var`: the mean, then the squared deviations from it.",
        "The variance.",
    ),
    (
        "std",
        "Compute the standard deviation, as `numpy.std`: the square root of `var`.",
        "The standard deviation.",
    ),
]:
    _document(
        _name,
        _summary,
        [_AXIS, _DTYPE, _OUT, _DDOF, _KEEPDIMS],
        _REDUCED.format(returns=_returns),
        _RAISES,
    )
for _name, _summary in [
    ("argmin", "Find where the smallest element is, as `numpy.argmin` (the first, for ties)."),
    ("argmax", "Find where the largest element is, as `numpy.argmax` (the first, for ties)."),
]:
    _document(
        _name,
        _summary,
        [_AXIS.replace(" or tuple of int", ""), _OUT, _KEEPDIMS],
        _REDUCED.format(returns="Places: over all elements, in the flattened array."),
        "ValueError\n    If the array is empty.\n" + _RAISES,
    )
for _name, _summary in [
    ("cumsum", "Return the running sums, as `numpy.cumsum`."),
    ("cumprod", "Return the running products, as `numpy.cumprod`."),
]:
    _document(
        _name,
        _summary,
        [_AXIS.replace(" or tuple of int", ""), _DTYPE, _OUT],
        _ACCUMULATED,
        _RAISES,
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
DistArray.__matmul__ = lambda self, other: matmul(self, other)  # type: ignore[method-assign]
DistArray.__rmatmul__ = lambda self, other: matmul(other, self)  # type: ignore[method-assign]
DistArray.__hash__ = None  # == is elementwise


# -- aligned calls -----------------------------------------------------------


@overload
def dcall(
    f: Callable[..., Any],
    *args: Any,
    assign: Literal[True] = True,
    cache: bool = False,
    **kwargs: Any,
) -> DistArray: ...
@overload
def dcall(
    f: Callable[..., Any], *args: Any, assign: Literal[False], cache: bool = False, **kwargs: Any
) -> np.ndarray: ...
def dcall(
    f: Callable[..., Any], *args: Any, assign: bool = True, cache: bool = False, **kwargs: Any
) -> DistArray | np.ndarray:
    """Call ``f`` elementwise on distributed arguments, aligned and recycled as in R.

    The target is the longest argument (ties: the one with most chunks,
    then the first); the result has its length and chunking. For each
    target chunk, its owner calls ``f`` on the rows of every argument at
    the same indices: shorter arguments are recycled (row ``i`` of an
    argument of length ``L`` serves result row ``i mod L``), numpy arrays
    are split likewise, and other values are passed whole. Returns at once.

    An argument whose chunk lengths are not known yet (a result of `dmap`)
    is not waited for: the result then has the chunk count and ranks of
    the argument with most chunks, and each chunk's owner aligns the
    arguments once their owners publish the lengths. That argument's
    chunking is kept if it is the longest; otherwise the longest length
    is split evenly over as many chunks.

    Parameters
    ----------
    f : callable
        Called with numpy arrays of equal length (rows); must return one
        row per input row. Sent with cloudpickle, so lambdas work.
    *args
        At least one `DistArray` among them and ``kwargs``; numpy arrays;
        anything else is passed as is.
    assign : bool, default True
        False: wait, and return the whole result as a numpy array on this
        rank instead of a distributed one (`DistArray.collect`), as R's
        ``do.call(..., assign = FALSE)``.
    cache : bool, default False
        Return the result of an identical earlier call (the same function,
        pickled to the same bytes; the same chunks; equal other arguments)
        while that result is still referenced, instead of computing it
        again. ``f`` must then be a pure function of its arguments.
    **kwargs
        Passed to ``f`` by name, aligned as ``args`` (``assign`` and
        ``cache`` are dcall's own).

    Returns
    -------
    DistArray or numpy.ndarray
        Not computed yet: `DistArray.collect` or `DistArray.resolve` wait.
        A function that raises makes its chunks errors, raised there as
        `conveyor.RemoteError`. With ``assign=False``, the collected array.

    Raises
    ------
    TypeError
        If no argument is a DistArray.

    Warns
    -----
    RecyclingWarning
        Once, when the longest length is not a multiple of a shorter one.
        When some lengths were not known at the call, on the rank that
        computes the result's first chunk, once they are.
    """
    result = calls.call(DistArray, f, args, kwargs, cache=cache)
    return result if assign else result.collect()


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
