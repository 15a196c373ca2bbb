"""Types of command-line values, shared by every command (argparse ``type=`` callables).

`parse_bytes` is the package's one reader of byte counts (``64K``, ``16MiB``):
the bench options and the shell's ``capacity`` command both use it.
"""

import argparse
import re

_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_BYTE_SIZE = re.compile(r"([0-9]+)([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_bytes(text):
    """Parse a byte count: ``65536``, ``64k``, ``64K``, ``64KiB``, ``16MB``, ``2G`` or ``1T``.

    Suffixes are powers of 1024, in either case, optionally followed by
    ``B`` or ``iB``.

    Parameters
    ----------
    text : str
        The count as typed; surrounding spaces are ignored.

    Returns
    -------
    int
        The number of bytes (0 or more).

    Raises
    ------
    ValueError
        If `text` is not such a count.
    """
    match = _BYTE_SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a number of bytes (such as 65536, 64K, 16M or 1G)")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2).lower()]


def byte_size(text):
    """Parse a size of at least one byte (see `parse_bytes`)."""
    try:
        size = parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (say 65536, 64K, 16M or 1G)"
        ) from None
    if size < 1:
        raise argparse.ArgumentTypeError("a size must be at least 1 byte")
    return size


def byte_sizes(text):
    """Parse comma-separated sizes (``65536,256K``), each at least 1 byte (see `byte_size`)."""
    return [byte_size(size) for size in text.split(",")]


def positive_int(text):
    """Parse an int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seconds(text):
    """Parse a duration in seconds: a number of at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value
