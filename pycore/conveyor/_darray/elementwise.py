"""numpy's broadcasting, for the operators, the ufuncs and numpy's elementwise functions.

`elementwise` checks the operands' shapes as numpy does, then runs the
function through `calls.call` (dcall's tasks), where no length differs any
more but by being 1, so that R's recycling and numpy's broadcasting agree.
Operands that broadcast along the rows (a scalar, a numpy row, an array
of one row) go whole to every chunk, bound into the function; numpy arrays
with a row per row are cut at the chunks' boundaries. A DistArray that
would broadcast along the columns of the result (a 1-D array against the
rows of a 2-D one) would have to be whole on every rank: that is an error
that names ``.collect()``.

The result's dtype and row shape are numpy's answer for the same operands
without rows, so that a chain of operations never waits for a chunk to
learn them.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

from .calls import call, layer_of_operands
from .chunked import C, Chunked


def elementwise(
    cls: type[C], f: Callable[..., Any], inputs: tuple[Any, ...], kwargs: dict[str, Any]
) -> C:
    """``f(*inputs, **kwargs)`` as numpy broadcasts it, with at least one DistArray input."""
    layer_of_operands(inputs, {}, getattr(f, "__name__", "elementwise"))
    operands = [x if isinstance(x, Chunked) or _scalar(x) else np.asarray(x) for x in inputs]
    shapes = [x.shape if isinstance(x, Chunked) else np.shape(x) for x in operands]
    shape = broadcast_shape(shapes)
    if len(shape) not in (1, 2):
        raise ValueError(
            f"the result would have shape {shape}: a DistArray is 1-D or 2-D (chunked by rows)"
        )
    rows = shape[0]
    distributed: list[Any] = []  # the operands cut by rows, in order
    constants: list[Any] = []  # the operands every chunk gets whole
    slots: list[
        int
    ] = []  # per operand: its index in `distributed`, or -1 - its index in `constants`
    probes: list[Any] = []  # the operands without rows, for numpy's dtype and row shape
    for x, x_shape in zip(operands, shapes):
        if isinstance(x, Chunked):
            if len(x_shape) != len(shape):
                raise ValueError(
                    f"a DistArray of shape {x_shape} broadcasts along the columns of the "
                    f"result, of shape {shape}: every rank would need all of it; "
                    "pass its .collect() instead"
                )
            slots.append(len(distributed))
            distributed.append(x)
            probes.append(np.empty((0,) + x_shape[1:], x.dtype))
        elif len(x_shape) == len(shape) and x_shape[0] == rows and rows != 1:
            slots.append(len(distributed))
            distributed.append(x)
            probes.append(x[:0])
        else:
            slots.append(-1 - len(constants))
            constants.append(x)
            probes.append(x)
    probe = np.asarray(f(*probes, **kwargs))
    rowwise = Rowwise(f, slots, constants, kwargs)
    return call(cls, rowwise, tuple(distributed), {}, probe.dtype, probe.shape[1:])


def broadcast_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """numpy's broadcast of ``shapes``, or its error."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = " ".join(shape_text(shape) for shape in shapes)
        raise ValueError(f"operands could not be broadcast together with shapes {listed}") from None


def shape_text(shape: tuple[int, ...]) -> str:
    """A shape as numpy's messages write it: ``(7,3)``, ``(7,)``."""
    return "(" + ",".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _scalar(x: Any) -> bool:
    return isinstance(x, (numbers.Number, np.generic))


class Rowwise:
    """``f`` where a chunk is: its rows of each distributed operand, the constants whole.

    Each row of the result depends on the same rows of the operands alone,
    so the task may compute a chunk a segment of rows at a time into one
    result (``out``), reading each operand's rows in the pieces they came
    in: `_segments.ROWWISE` says so.
    """

    rowwise = True

    def __init__(
        self, f: Callable[..., Any], slots: list[int], constants: list[Any], kwargs: dict[str, Any]
    ) -> None:
        self.f, self.slots, self.constants, self.kwargs = f, slots, constants, kwargs

    def __call__(self, *rows: np.ndarray, out: np.ndarray | None = None) -> Any:
        args = [rows[slot] if slot >= 0 else self.constants[-1 - slot] for slot in self.slots]
        if out is None:
            return self.f(*args, **self.kwargs)
        if isinstance(self.f, np.ufunc):  # written in place
            return self.f(*args, out=out, **self.kwargs)
        out[...] = self.f(*args, **self.kwargs)
        return out
