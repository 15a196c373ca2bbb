"""numpy's functions on DistArrays (``__array_function__``): the ones that stay distributed.

``np.sum(x)``, ``np.concatenate([x, y])``, ``np.where(x > 0, x, 0)`` and
the others below reach the DistArray's own implementation. Any other numpy
function raises a TypeError that says it is not supported and names
``.collect()``, rather than gathering the whole array on one rank.

numpy's creation functions given ``like=x`` (``np.ones(10, like=x)``,
``np.arange(n, like=x)``; NEP 35) make a DistArray of x's messenger: one
near-equal chunk a rank, each made on its rank, so that nothing travels
but the order. ``np.asarray(a, like=x)`` scatters a numpy array, as
`Messenger.array` does.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable

import numpy as np

from . import layout, reductions
from .calls import tasks
from .chunked import Chunked, scatter, split_sizes
from .elementwise import elementwise
from .matmul import matmul

_NOTHING = object()  # numpy's "not given" (its own _NoValue)


def supported(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """The implementation of numpy function ``func`` on DistArrays, or None."""
    return _FUNCTIONS.get(func)


def created(func: Callable[..., Any]) -> Callable[..., Any] | None:
    """The implementation of numpy creation function ``func`` given ``like=``, or None.

    It takes the ``like`` array first, then ``func``'s arguments.
    """
    return _CREATION.get(func)


def _method(name: str) -> Callable[..., Any]:
    # np.sum(x, ...) is x.sum(...): numpy's functions and methods share their parameters.
    return lambda a, *args, **kwargs: getattr(a, name)(*args, **kwargs)


def _where(condition: Any, x: Any = _NOTHING, y: Any = _NOTHING) -> Any:
    if x is _NOTHING and y is _NOTHING:
        return _nonzero(condition)
    if x is _NOTHING or y is _NOTHING:
        raise ValueError("either both or neither of x and y should be given")
    return elementwise(_class_of(condition, x, y), np.where, (condition, x, y), {})


def _nonzero(a: Any) -> Any:
    return layout.nonzero(a)


def _class_of(*operands: Any) -> type[Chunked]:
    return next(type(a) for a in operands if isinstance(a, Chunked))


def _elementwise(function: Callable[..., Any], count: int) -> Callable[..., Any]:
    # A numpy function that broadcasts its first `count` arguments, the
    # others being options.
    def run(*args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("out", None) is not None:
            _no_out(True)
        operands, options = args[:count], args[count:]
        return elementwise(_class_of(*operands), function, operands + options, kwargs)

    return run


def _allclose(a: Any, b: Any, *args: Any, **kwargs: Any) -> bool:
    close = elementwise(_class_of(a, b), np.isclose, (a, b) + args, kwargs)
    return bool(reductions.reduce(close, "all"))


def _array_equal(a1: Any, a2: Any, equal_nan: bool = False) -> bool:
    if np.shape(a1) != np.shape(a2):
        return False
    same = elementwise(_class_of(a1, a2), _same_or_nan if equal_nan else np.equal, (a1, a2), {})
    return bool(reductions.reduce(same, "all"))


def _same_or_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Where a chunk is: equal, or both nan.
    same: np.ndarray = np.equal(a, b)
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        same |= np.isnan(a) & np.isnan(b)
    return same


def _dot(a: Any, b: Any, out: Any = None) -> Any:
    # numpy's dot: matmul for 1-D and 2-D operands, a product by a scalar.
    if out is not None:
        _no_out(out)
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return elementwise(_class_of(a, b), np.multiply, (a, b), {})
    return matmul(a, b)


def _stacked(name: str) -> Callable[..., Any]:
    # vstack, hstack and column_stack, as numpy defines them from concatenate and stack.
    def run(tup: Any, *, dtype: Any = None, casting: Any = "same_kind") -> Any:
        arrays = list(tup)
        one_d = all(np.ndim(a) == 1 for a in arrays)
        if name == "vstack":
            if one_d:
                return layout.stack(arrays, 0, dtype, casting)
            return layout.concatenate(arrays, 0, dtype, casting)
        if name == "hstack":
            return layout.concatenate(arrays, 0 if one_d else 1, dtype, casting)
        if one_d:  # column_stack
            return layout.stack(arrays, 1, dtype, casting)
        return layout.concatenate(arrays, 1, dtype, casting)

    return run


_FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    np.concatenate: lambda arrays, axis=0, out=None, *, dtype=None, casting="same_kind": (
        layout.concatenate(arrays, axis, dtype, casting) if out is None else _no_out(out)
    ),
    np.stack: lambda arrays, axis=0, out=None, *, dtype=None, casting="same_kind": (
        layout.stack(arrays, axis, dtype, casting) if out is None else _no_out(out)
    ),
    np.vstack: _stacked("vstack"),
    np.hstack: _stacked("hstack"),
    np.column_stack: _stacked("column_stack"),
    np.where: _where,
    np.dot: _dot,
    np.nonzero: _nonzero,
    np.reshape: lambda a, shape=None, order="C", *, newshape=None, copy=None: a.reshape(
        shape if newshape is None else newshape, order=order
    ),
    np.ravel: lambda a, order="C": a.reshape(-1, order=order),
    np.transpose: lambda a, axes=None: a.transpose(axes),
    np.squeeze: lambda a, axis=None: a.squeeze(axis),
    np.copy: lambda a, order="K", subok=False: a.copy(),
    np.block: layout.block,
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
    np.clip: _elementwise(np.clip, 3),
    np.round: _elementwise(np.round, 1),
    np.around: _elementwise(np.around, 1),
    np.isclose: _elementwise(np.isclose, 2),
    np.allclose: _allclose,
    np.array_equal: _array_equal,
    **{
        getattr(np, function): _method(method)
        for function, method in [
            ("sum", "sum"),
            ("prod", "prod"),
            ("min", "min"),
            ("max", "max"),
            ("amin", "min"),
            ("amax", "max"),
            ("any", "any"),
            ("all", "all"),
            ("mean", "mean"),
            ("var", "var"),
            ("std", "std"),
            ("argmin", "argmin"),
            ("argmax", "argmax"),
            ("cumsum", "cumsum"),
            ("cumprod", "cumprod"),
            ("astype", "astype"),  # numpy 2.1
        ]
        if hasattr(np, function)
    },
}


# -- numpy's creation functions, given like= ----------------------------------------------


def _rows_and_row_shape(shape: Any) -> tuple[int, tuple[int, ...]]:
    # A shape numpy takes, as the rows and the shape of a row, or the error that says why not.
    wanted = tuple(
        operator.index(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,))
    )
    if len(wanted) not in (1, 2):
        raise ValueError(f"shape {wanted}: a DistArray is 1-D or 2-D (chunked by rows)")
    if any(n < 0 for n in wanted):
        raise ValueError("negative dimensions are not allowed")
    return wanted[0], wanted[1:]


def _made(
    like: Chunked,
    rows: int,
    dtype: np.dtype[Any],
    row_shape: tuple[int, ...],
    make: Callable[[int, int], np.ndarray],
) -> Any:
    # A DistArray of `rows` rows, one near-equal chunk a rank, chunk k made
    # on its rank as make(its rows, its first row).
    layer = like._layer
    sizes = split_sizes(rows, layer.m.size)
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    return tasks(
        type(like),
        layer,
        make,
        [[("value", length), ("value", start)] for length, start in zip(sizes, starts)],
        range(len(sizes)),
        sizes,
        np.dtype(dtype),
        row_shape,
    )


def _filled(name: str) -> Callable[..., Any]:
    # np.zeros, np.ones, np.empty and np.full: each chunk made where it will be.
    def run(like: Chunked, shape: Any, *args: Any, **kwargs: Any) -> Any:
        rows, row_shape = _rows_and_row_shape(shape)
        probe = getattr(np, name)((0,) + row_shape, *args, **kwargs)  # numpy's dtype and errors
        make = functools.partial(_filled_rows, name, row_shape, args, kwargs)
        return _made(like, rows, probe.dtype, row_shape, make)

    return run


def _arange(
    like: Chunked,
    start: Any,
    stop: Any = None,
    step: Any = None,
    dtype: Any = None,
    *,
    device: Any = None,
) -> Any:
    # numpy's arange: element i is start + i * delta, delta being (start + step) - start
    # in the result's dtype, as numpy fills it; each chunk computes its own.
    if stop is None:
        start, stop = 0, start
    step = 1 if step is None else step
    # numpy's dtype follows the types of start, stop and step, not their
    # values: numpy's answer (and its errors of type) for zeros of those types.
    probe = np.arange(
        _typed(start, 0), _typed(stop, 0), _typed(step, 1), dtype=dtype, device=device
    )
    result = probe.dtype
    if result.kind not in "iuf":
        raise TypeError(
            f"arange of dtype {result}: a DistArray makes integers and floats only; "
            "use Messenger.array(np.arange(...))"
        )
    if step == 0:
        raise ZeroDivisionError("division by zero")
    span = (stop - start) / step
    if not math.isfinite(span):
        np.arange(start, stop, step, dtype=dtype)  # numpy's error for a range of no length
    rows = max(math.ceil(span), 0)
    first = np.asarray(start, dtype=result)
    delta = np.asarray(start + step, dtype=result) - first
    return _made(like, rows, result, (), functools.partial(_arange_rows, first, delta))


def _typed(value: Any, number: int) -> Any:
    # `number` of the type of `value` (a Python or numpy scalar, or a 0-d array).
    if isinstance(value, (int, float, complex, np.generic)):
        return type(value)(number)
    return np.asarray(value).dtype.type(number)


def _converted(
    convert: Callable[..., Any], like: Chunked, a: Any, *args: Any, **kwargs: Any
) -> Any:
    # np.asarray(a, like=x) and np.array(a, like=x): a DistArray stays as it is; anything
    # else is converted on this rank, then scattered as Messenger.array does.
    if isinstance(a, Chunked):
        if args or set(kwargs) - {"dtype"}:
            raise TypeError(f"{convert.__name__} of a DistArray takes dtype= only")
        dtype = kwargs.get("dtype")
        return a if dtype is None else a.astype(dtype, copy=False)  # type: ignore[attr-defined]
    return scatter(type(like), like._layer, convert(a, *args, **kwargs), None, None)


def _filled_rows(
    name: str,
    row_shape: tuple[int, ...],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    length: int,
    start: int,
) -> np.ndarray:
    made: np.ndarray = getattr(np, name)((length,) + row_shape, *args, **kwargs)
    return made


def _arange_rows(first: np.ndarray, delta: np.ndarray, length: int, start: int) -> np.ndarray:
    places = np.arange(start, start + length).astype(first.dtype)
    return places * delta + first  # type: ignore[no-any-return]


_CREATION: dict[Callable[..., Any], Callable[..., Any]] = {
    np.zeros: _filled("zeros"),
    np.ones: _filled("ones"),
    np.empty: _filled("empty"),
    np.full: _filled("full"),
    np.arange: _arange,
    np.asarray: functools.partial(_converted, np.asarray),
    np.array: functools.partial(_converted, np.array),
}


def _no_out(out: Any) -> Any:
    raise TypeError("out= is not supported: a DistArray is a new array")
