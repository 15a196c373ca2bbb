"""Functions and arguments sent by value to other ranks (cloudpickle, opted into by the API).

cloudpickle 3.1.3 and later rename the file of every function it pickles by
value to ``"<dynamic-code>"``, to make its payloads deterministic. For us
that loses what a user most needs from a remote traceback: the file, line
and source text of their own function. Every rank of a job runs the same
Python, so code objects travel in :mod:`marshal`'s format instead, which
keeps them whole (file name, line table, nested code of closures and
lambdas); `linecache` then finds the source wherever the file is readable.
"""

from __future__ import annotations

import collections
import io
import marshal
import types
from typing import Any, Callable

import cloudpickle

__all__ = ["dumps", "loads"]


def _load_code(data: bytes) -> types.CodeType:
    code = marshal.loads(data)
    if not isinstance(code, types.CodeType):
        raise TypeError(f"expected a code object, not {type(code).__name__}")
    return code


def _reduce_code(code: types.CodeType) -> tuple[Callable[[bytes], types.CodeType], tuple[bytes]]:
    return _load_code, (marshal.dumps(code),)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    # cloudpickle reduces functions and classes in reducer_override and
    # leaves code objects to the dispatch table: ours comes first.
    dispatch_table = collections.ChainMap(
        {types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table
    )


def dumps(obj: object) -> bytes:
    """Pickle `obj` as cloudpickle does, keeping the file names of its code."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=5).dump(obj)
        return file.getvalue()


loads: Callable[[bytes], Any] = cloudpickle.loads
