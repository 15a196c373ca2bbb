"""Futures and streams whose waiting drives the messenger's progress."""

from __future__ import annotations

import asyncio
import collections
import sys
import traceback
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from ._asyncio import loop_of, wait_answer
from ._checks import check_timeout
from ._errors import CancelledError, ConveyorError, TimeoutError

if TYPE_CHECKING:
    from ._requests import Requests

__all__ = ["Future", "Stream"]

_PENDING, _DONE, _FAILED, _CANCELLED = range(4)

#: The type of a request's answer: ``fut: cv.Future[int] = m.request(...)``.
T = TypeVar("T")


class Future(Generic[T]):
    """The eventual answer to a request.

    Waiting on it (`result`, `exception`) runs the messenger's progress loop,
    so other incoming messages keep being handled meanwhile: a handler may
    wait on a future without deadlocking its rank. If the request is
    answered several times (``msg.reply(x, final=False)``), the future gets
    the final answer; `Messenger.request_stream` gets them all.

    The answer's type is not known statically (`Messenger.request` returns
    ``Future[Any]``): annotate it where it is known, ``fut: cv.Future[int]``.
    """

    __slots__ = ("_requests", "_dest", "_ref", "_state", "_value", "_callbacks")

    def __init__(self, requests: Requests, dest: int, ref: int) -> None:
        self._requests = requests
        self._dest = dest
        self._ref = ref
        self._state = _PENDING
        self._value: Any = None  # the answer, or the error it failed with
        self._callbacks: list[Callable[[Future[T]], object]] = []

    def done(self) -> bool:
        """Tell whether the answer (or an error) has arrived, or the request was cancelled.

        Returns
        -------
        bool
            True once the future is done.
        """
        return self._state != _PENDING

    def cancelled(self) -> bool:
        """Tell whether the request was cancelled.

        Returns
        -------
        bool
            True if `cancel` cancelled it.
        """
        return self._state == _CANCELLED

    def result(self, timeout: float | None = None) -> T:
        """Return the answer, waiting for it for at most ``timeout`` seconds.

        Waiting handles the messages that arrive meanwhile.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait; no limit by default.

        Returns
        -------
        object
            The answer.

        Raises
        ------
        conveyor.TimeoutError
            If no answer arrived in time (the request stays pending).
        conveyor.RemoteError
            If the remote handler raised.
        conveyor.CancelledError
            If the request was cancelled.
        """
        if self._state == _PENDING:
            self._requests.transport.wait_for(self, timeout)
        if self._state in (_FAILED, _CANCELLED):
            raise self._value
        answer: T = self._value
        return answer

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the error the request failed with, or None if it succeeded.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the answer; no limit by default.

        Returns
        -------
        BaseException or None
            The `RemoteError`, `CancelledError` or other error, or None.

        Raises
        ------
        conveyor.TimeoutError
            If no answer arrived in time.
        """
        if self._state == _PENDING:
            self._requests.transport.wait_for(self, timeout)
        error: BaseException | None = self._value if self._state in (_FAILED, _CANCELLED) else None
        return error

    def cancel(self) -> bool:
        """Cancel the request: stop waiting, and tell the rank working on it.

        The remote handler sees ``msg.cancelled`` become True; its answers
        are dropped (and counted) on either side.

        Returns
        -------
        bool
            False if the future was already done, else True.
        """
        if self._state != _PENDING:
            return False
        self._requests.cancel(self)
        self._resolve(_CANCELLED, CancelledError(f"the request to rank {self._dest} was cancelled"))
        return True

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(future)`` when the future completes (at once if it has).

        Parameters
        ----------
        fn : callable
            Called with the future as its only argument.
        """
        if self._state == _PENDING:
            self._callbacks.append(fn)
        else:
            fn(self)

    def __await__(self) -> Generator[Any, None, T]:
        """Await the answer from a coroutine (the messenger is served by the running loop)."""
        return wait_answer(self._requests.transport, self).__await__()

    def __repr__(self) -> str:
        state = ("pending", "done", "failed", "cancelled")[self._state]
        return f"<conveyor.Future {state}>"

    # The messenger's side: answers as they arrive.

    def _ready(self) -> bool:
        return self._state != _PENDING

    def _answer(self, value: T, final: bool) -> None:
        if final:
            self._resolve(_DONE, value)

    def _fail(self, exc: BaseException) -> None:
        self._resolve(_FAILED, exc)

    def _resolve(self, state: int, value: object) -> None:
        if self._state != _PENDING:
            raise ConveyorError("future already resolved")
        self._state = state
        self._value = value
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a callback's failure must not break message handling
                print("conveyor: a Future callback raised:", file=sys.stderr)
                traceback.print_exc()


class Stream(Generic[T]):
    """The answers to a request that is answered several times, in order.

    Made by `Messenger.request_stream`. Iterate over it (``for answer in
    stream``, or ``async for`` in a coroutine); iteration ends after the
    final answer. Each answer is awaited for at most the stream's
    ``timeout``, else `conveyor.TimeoutError` is raised (the stream stays
    usable). An error from the remote handler is raised in its place.

    Attributes
    ----------
    timeout : float or None
        Seconds to wait for each answer; None waits without limit.
    """

    __slots__ = ("_requests", "_dest", "_ref", "_answers", "_state", "_error", "_waiter", "timeout")

    def __init__(self, requests: Requests, dest: int, ref: int, timeout: float | None) -> None:
        self._requests = requests
        self._dest = dest
        self._ref = ref
        self._answers: collections.deque[T] = collections.deque()
        self._state = _PENDING
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None  # what an `async for` awaits
        self.timeout = timeout

    def done(self) -> bool:
        """Tell whether the final answer (or an error) arrived, or the stream was cancelled.

        Returns
        -------
        bool
            True once no answer is still to come.
        """
        return self._state != _PENDING

    def cancel(self) -> bool:
        """Cancel the request: drop the answers still to come and tell the rank working on it.

        Answers already received are dropped too.

        Returns
        -------
        bool
            False if the final answer had already arrived, else True.
        """
        if self._state != _PENDING:
            return False
        self._requests.cancel(self)
        self._answers.clear()
        self._state = _CANCELLED
        self._wake()
        return True

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        if not self._answers and self._state == _PENDING:
            self._requests.transport.wait_for(self, self.timeout)
        return self._take(StopIteration)

    def __aiter__(self) -> Stream[T]:
        return self

    async def __anext__(self) -> T:
        if not self._answers and self._state == _PENDING:
            self._waiter = loop_of(self._requests.transport).create_future()
            try:
                await asyncio.wait_for(self._waiter, check_timeout(self.timeout))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no answer within {self.timeout} s") from None
            finally:
                self._waiter = None
        return self._take(StopAsyncIteration)

    def __repr__(self) -> str:
        state = ("open", "done", "failed", "cancelled")[self._state]
        return f"<conveyor.Stream {state}, {len(self._answers)} answers waiting>"

    def _take(self, stop: type[Exception]) -> T:
        if self._answers:
            return self._answers.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        raise stop

    # The messenger's side: answers as they arrive.

    def _ready(self) -> bool:
        return bool(self._answers) or self._state != _PENDING

    def _answer(self, value: T, final: bool) -> None:
        self._answers.append(value)
        if final:
            self._state = _DONE
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._state = _FAILED
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
