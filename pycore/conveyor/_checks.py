"""Argument checks shared by the whole façade: ranks, tags, names, references and timeouts."""

from __future__ import annotations

import math
import numbers
import operator

__all__ = [
    "RESERVED_PREFIX",
    "check_name",
    "check_rank",
    "check_ref",
    "check_tag",
    "check_timeout",
    "check_user_table",
    "check_user_tag",
]

# conveyor's own receivers (items, tables, chunks, cancels) and tables are
# named so; user tags and table names may not start with it.
RESERVED_PREFIX = "conveyor."


def check_rank(value: object, size: int | None = None, what: str = "a rank") -> int:
    """Return `value` as an int rank >= 0; with `size`, check that it is in ``0..size-1``."""
    try:
        rank = operator.index(value)  # type: ignore[arg-type]  # TypeError is the check
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if size is None and rank < 0:
        raise ValueError(f"{what} must be >= 0, not {rank}")
    if size is not None and not 0 <= rank < size:
        hint = ""
        if size == 1:
            hint = (
                ": this job has 1 rank; start several with 'conveyor run -n 4 script.py' "
                "or 'mpiexec -n 4 python script.py'"
            )
        raise ValueError(f"{what} {rank} is out of range 0..{size - 1}{hint}")
    return rank


def check_name(name: object, what: str = "an item name") -> str:
    """Return `name` if it is a non-empty str."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} must not be empty")
    return name


def check_tag(tag: object) -> str:
    """Return `tag` if it is a valid tag (conveyor's reserved ones included)."""
    return check_name(tag, "a tag")


def check_user_tag(tag: object) -> str:
    """Return `tag` if a user may register a receiver under it, or send to it.

    The reserved receivers trust what they get (one unpickles the functions
    of distributed arrays): only conveyor's own services reach them.
    """
    if type(tag) is str and tag and not tag.startswith(RESERVED_PREFIX):
        return tag  # the common case, on every send and request, without a call
    tag = check_tag(tag)
    if tag.startswith(RESERVED_PREFIX):
        raise ValueError(f"tags starting with {RESERVED_PREFIX!r} are reserved for conveyor")
    return tag


def check_user_table(name: object) -> str:
    """Return `name` if a user may name a table so: conveyor's own tables are reserved."""
    name = check_name(name, "a table name")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"table names starting with {RESERVED_PREFIX!r} are reserved for conveyor")
    return name


def check_ref(value: object) -> int:
    """Return `value` as a request reference: frames carry it as an unsigned 64-bit int."""
    try:
        ref = operator.index(value)  # type: ignore[arg-type]  # TypeError is the check
    except TypeError:
        raise TypeError(f"a request reference must be an int, not {type(value).__name__}") from None
    if not 0 <= ref < 1 << 64:
        raise ValueError(f"a request reference must be in 0..2**64-1, not {ref}")
    return ref


def check_timeout(value: object) -> float | None:
    """Return `value` as seconds to wait; None or infinity mean no limit.

    NaN and negative numbers are refused: compared with a deadline they
    would turn a wait into one without limit.
    """
    if value is None:
        return None
    if (type(value) is float or type(value) is int) and value >= 0:
        # The common case (NaN fails >=) without isinstance(numbers.Real), an
        # ABC check that cost a request with a timeout 0.3 us.
        return float(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, not {value}")
    return seconds
