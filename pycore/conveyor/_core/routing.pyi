"""conveyor._core.routing: the grouping of rows behind Sender.send_many."""

import numpy as np
import numpy.typing as npt

def route(
    dests: npt.ArrayLike, items: np.ndarray, nranks: int
) -> tuple[np.ndarray, npt.NDArray[np.uint64], int]:
    """Group the rows of `items` by destination rank, keeping their order per rank.

    Return the grouped rows (`items` itself, made C-contiguous, when all go
    to one rank), ``offsets`` (``nranks + 1`` entries: the rows for rank
    ``r`` are ``grouped[offsets[r]:offsets[r + 1]]``) and that one rank, or
    -1. `dests` may have any integer
    dtype; a destination outside ``0 .. nranks - 1`` raises ValueError.
    """
