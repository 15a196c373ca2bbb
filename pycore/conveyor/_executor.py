"""`Executor`: a `concurrent.futures.Executor` over the ranks of a messenger.

``ex.submit(f, x)`` sends a request to the reserved tag `EXECUTOR_RUN` of
the next rank in turn; its handler calls the function and answers with the
result. The function travels once per rank and by digest afterwards
(`_shipping`); its arguments and result travel as any payload (carriageable
values, arrays without copies, anything with ``pickle=True``). A task runs
in its rank's handler, so it runs while that rank serves (inline, while it
waits in conveyor; or at any time with ``serve="thread"``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from ._checks import check_rank
from ._errors import FrameError
from ._future import Future
from ._shipping import Received, Shipped
from ._tags import EXECUTOR_RUN

if TYPE_CHECKING:
    from ._dispatch import Receivers
    from ._message import Message
    from ._messenger import Messenger
    from ._requests import Requests
    from ._shared import HostIndex

__all__ = ["Executor", "ExecutorService"]

R = TypeVar("R")


class ExecutorService:
    """The executor's two sides on every rank: sending tasks, and running the ones that come."""

    def __init__(
        self,
        receivers: Receivers,
        requests: Requests,
        host_ranks: Container[int] = (),
        index: HostIndex | None = None,
    ) -> None:
        self._requests = requests
        self._shipped = Shipped(host_ranks, index)
        self._received = Received()
        receivers.add(EXECUTOR_RUN, self._run)

    def submit(
        self, rank: int, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any], chunk: bool
    ) -> Future[Any]:
        """Send a task to `rank`: ``fn(*args, **kwargs)``, or for a `chunk`, fn over each args tuple."""
        parcel = self._shipped.parcel(rank, fn)
        future = self._requests.request(rank, EXECUTOR_RUN, (parcel, args, kwargs, chunk))
        self._shipped.sent(rank, parcel, future)  # only once it left: the receiver will see it
        return future

    def _run(self, msg: Message) -> Any:
        try:
            parcel, args, kwargs, chunk = msg.payload
            if not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
                raise TypeError
        except (TypeError, ValueError):
            raise FrameError(f"a malformed task from rank {msg.source}") from None
        fn = self._received.function(msg.source, parcel)
        if chunk:
            return [fn(*each) for each in args]
        return fn(*args, **kwargs)


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` whose workers are the ranks of a messenger.

    Tasks go to ``ranks`` in turn (by default every rank but this one, or
    this one alone in a job of one rank) and run in a handler there, while
    that rank serves. The function travels once per rank, by reference when
    it can be imported there (a module's function) and by value otherwise
    (a lambda, a closure, a function of ``__main__``), as cloudpickle does;
    it is pickled on its first submission, with the globals it captures
    then. Its arguments and result travel as any payload: carriageable
    values, arrays without copies, and anything else with
    ``Messenger(pickle=True)``. A task that raises fails its future with a
    `RemoteError` (of the remote type too, for a built-in one).

    Parameters
    ----------
    messenger : Messenger
        Whose ranks run the tasks.
    ranks : iterable of int, optional
        The ranks that run tasks, in turn.

    Raises
    ------
    ValueError
        If ``ranks`` is empty or holds a rank out of range.
    """

    def __init__(self, messenger: Messenger, ranks: Iterable[int] | None = None) -> None:
        if ranks is None:
            others = [r for r in range(messenger.size) if r != messenger.rank]
            ranks = others or [messenger.rank]
        self._ranks = [check_rank(r, messenger.size) for r in ranks]
        if not self._ranks:
            raise ValueError("an Executor needs at least one rank")
        self._service = messenger._executor_service
        self._turn = itertools.cycle(self._ranks)
        self._pending: set[Future[Any]] = set()
        self._shut = False

    @property
    def ranks(self) -> list[int]:
        """The ranks that run the tasks, in the order they get them."""
        return list(self._ranks)

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        """Run ``fn(*args, **kwargs)`` on the next rank; return its future.

        Parameters
        ----------
        fn : callable
            The function.
        *args, **kwargs
            Its arguments.

        Returns
        -------
        Future
            Resolves to the function's result.

        Raises
        ------
        RuntimeError
            If the executor was shut down.
        conveyor.CarriageError
            If an argument cannot travel (nothing is sent).
        """
        return self._submit(fn, args, kwargs, False)

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[R]:
        """Return an iterator of ``fn`` over the iterables' items, in order.

        Every task is submitted at once; the results come in order as they
        are iterated.

        Parameters
        ----------
        fn : callable
            The function, called with one item of each iterable.
        *iterables : iterable
            Its arguments.
        timeout : float, optional
            Seconds from this call until every result must have come.
        chunksize : int, default 1
            Items per task: larger chunks send fewer, larger messages.

        Returns
        -------
        collections.abc.Iterator
            The results. It raises `conveyor.TimeoutError` where a result
            did not come in time, and a task's error where its task failed.

        Raises
        ------
        ValueError
            If ``chunksize`` is less than 1.
        RuntimeError
            If the executor was shut down.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables)
        if chunksize == 1:
            futures = [self._submit(fn, args, {}, False) for args in items]
        else:
            chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
            futures = [self._submit(fn, chunk, {}, True) for chunk in chunks]
        return self._results(futures, end, chunksize > 1)

    @staticmethod
    def _results(futures: list[Future[Any]], end: float | None, chunked: bool) -> Iterator[Any]:
        # As concurrent.futures.Executor.map: in order, each within what is
        # left of the timeout; what is not iterated is cancelled.
        futures.reverse()
        try:
            while futures:
                future = futures.pop()
                value = future.result(None if end is None else max(0.0, end - time.monotonic()))
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            for future in futures:
                future.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; with ``wait``, return once the submitted ones are done.

        Parameters
        ----------
        wait : bool, default True
            Wait for the tasks submitted so far (handling messages meanwhile).
        cancel_futures : bool, default False
            Cancel the tasks whose result has not come yet.
        """
        self._shut = True
        if cancel_futures:
            for future in list(self._pending):
                future.cancel()
        if wait:
            for future in list(self._pending):
                try:
                    future.exception()  # waits, serving
                except concurrent.futures.CancelledError:
                    pass

    def _submit(
        self, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any], chunk: bool
    ) -> Future[Any]:
        if self._shut:
            raise RuntimeError("cannot submit a task after the executor was shut down")
        if not callable(fn):
            raise TypeError(f"the function must be callable, not {type(fn).__name__}")
        future = self._service.submit(next(self._turn), fn, args, kwargs, chunk)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def __repr__(self) -> str:
        state = "shut down" if self._shut else f"{len(self._pending)} tasks pending"
        return f"<conveyor.Executor over ranks {self._ranks}, {state}>"
