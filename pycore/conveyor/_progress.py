"""`ProgressBar`: chunks done / total of DistArray work, on tqdm.

The chunk layer tells this module of each task that arrives on the rank
while a bar is active (`task_arrived`) and calls back when its chunk is
settled; while none is, that costs one test of an empty list per task.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any, Callable

__all__ = ["ProgressBar", "active", "task_arrived"]

INSTALL_HINT = "pip install 'conveyor-mpi[progress]'"

# The bars in their `with` blocks, innermost last: every one counts.
active: list[ProgressBar] = []


def task_arrived() -> Callable[[], None]:
    """A chunk's task arrived on this rank: one more to do for every active bar.

    Returns what to call once its chunk is settled: it counts for those
    bars only (not for one entered since, whose total does not have it).
    """
    bars = tuple(active)
    for bar in bars:
        bar._add_total()
    return functools.partial(_settled, bars)


def _settled(bars: Sequence[ProgressBar]) -> None:
    for bar in bars:
        bar._add_done()


class ProgressBar:
    """Show the chunks of DistArray work this rank computes: done / total (a context manager).

    Like ``dask.diagnostics.ProgressBar``: every chunk task that arrives on
    the rank inside the ``with`` block adds to the total, and each one
    settled (computed, or failed) to the count done, drawn by tqdm. Each
    rank counts its own chunks; by default only rank 0 of
    ``MPI.COMM_WORLD`` draws (its share is the job's, in proportion).

    Parameters
    ----------
    file : typing.TextIO, optional
        Where the bar goes; ``sys.stderr`` by default.
    all_ranks : bool, default False
        Draw on every rank (each bar names its rank), not only on rank 0.
    **tqdm_options
        Passed on to ``tqdm.tqdm`` (``mininterval``, ``ncols``, ``ascii``...).

    Raises
    ------
    ImportError
        If tqdm is not installed (``pip install 'conveyor-mpi[progress]'``).

    Examples
    --------
    >>> with cv.ProgressBar():                       # doctest: +SKIP
    ...     total = cv.dreduce(np.add, cv.dmap(np.sqrt, x))
    """

    def __init__(
        self, *, file: IO[str] | None = None, all_ranks: bool = False, **tqdm_options: Any
    ) -> None:
        try:
            import tqdm
        except ImportError as exc:
            raise ImportError(
                f"ProgressBar needs tqdm, which is not installed ({INSTALL_HINT})"
            ) from exc
        from mpi4py import MPI

        rank = MPI.COMM_WORLD.Get_rank()
        self.total = self.done = 0
        self._tqdm = tqdm.tqdm
        self._options = {
            "file": file,
            "unit": "chunk",
            "desc": f"rank {rank} chunks",
            **tqdm_options,
        }
        self._draws = all_ranks or rank == 0
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        self.total = self.done = 0
        if self._draws:
            self._bar = self._tqdm(total=0, **self._options)
        active.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active.remove(self)
        if self._bar is not None:
            self._bar.refresh()  # the last counts, drawn however recent the last draw was
            self._bar.close()
            self._bar = None

    def _add_total(self) -> None:
        self.total += 1
        if self._bar is not None:
            self._bar.total = self.total  # drawn with the next update

    def _add_done(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
