"""Futures and streams whose waiting drives the messenger's progress."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from ._asyncio import loop_of, wait_answer
from ._checks import check_timeout
from ._diagnostics import logger
from ._errors import CancelledError

if TYPE_CHECKING:
    from ._requests import Requests

__all__ = ["Future", "Stream"]

_PENDING, _DONE, _FAILED, _CANCELLED = range(4)

#: The type of a request's answer: ``fut: cv.Future[int] = m.request(...)``.
T = TypeVar("T")

# concurrent.futures' states, which its wait() and as_completed() read.
_WAITING = "PENDING"
_FINISHED = "FINISHED"
_CANCELLED_STATES = ("CANCELLED", "CANCELLED_AND_NOTIFIED")

# Makes futures' conditions, so that two threads never make two for one future.
_conditions_lock = threading.Lock()


def _call(fn: Callable[[Future[Any]], object], future: Future[Any]) -> None:
    # A done callback, as concurrent.futures calls it: an exception is logged
    # (to conveyor's logger, with everything the package reports) and
    # ignored, so that it cannot break the handling of messages.
    try:
        fn(future)
    except Exception:
        logger.exception("conveyor: exception calling callback for %r", future)


class Future(concurrent.futures.Future[T]):
    """The eventual answer to a request: a standard `concurrent.futures.Future`.

    Waiting on it (`result`, `exception`) runs the messenger's progress loop,
    so other incoming messages keep being handled meanwhile: a handler may
    wait on a future without deadlocking its rank. A wait returns as soon as
    the answer is there, and lasts at most its timeout plus the length of
    one handler started before the deadline. If the request is answered
    several times (``msg.reply(x, final=False)``), the future gets the final
    answer; `Messenger.request_stream` gets them all.

    It works with `concurrent.futures.wait`, `concurrent.futures.as_completed`
    and `asyncio.wrap_future` when something else serves the messenger
    meanwhile (``Messenger(serve="thread")``, or an event loop for
    ``wrap_future``); with a messenger served inline, the thread that waits
    must be the one that serves: use `result` or ``await``. A request's
    future is never *running* (`running` is False): it may be cancelled
    until its answer comes.

    The answer's type is not known statically (`Messenger.request` returns
    ``Future[Any]``): annotate it where it is known, ``fut: cv.Future[int]``.
    """

    def __init__(self, requests: Requests, dest: int, ref: int) -> None:
        # Not concurrent.futures.Future.__init__, which makes the condition
        # at once; these are the rest of its fields.
        self._state = _WAITING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future[T]], object]] = []
        self._made_condition: threading.Condition | None = None
        self._requests = requests
        self._dest = dest
        self._ref = ref
        self._sent = ("", 0.0)  # (tag, time.monotonic()) once sent (see Requests.open)

    # concurrent.futures.Future makes a threading.Condition for every future,
    # which costs more than the rest of a future together; most futures are
    # only ever waited on by the thread that serves the messenger. This makes
    # it when a thread first asks for it (concurrent.futures.wait, a served
    # messenger). A plain attribute holds it, not the instance's __dict__:
    # reading __dict__ makes CPython build the dict, on every answer.
    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        with _conditions_lock:
            if self._made_condition is None:
                self._made_condition = threading.Condition()
            return self._made_condition

    def done(self) -> bool:
        """Tell whether the answer (or an error) has arrived, or the request was cancelled.

        Returns
        -------
        bool
            True once the future is done.
        """
        return self._state != _WAITING

    def cancelled(self) -> bool:
        """Tell whether the request was cancelled.

        Returns
        -------
        bool
            True if `cancel` cancelled it.
        """
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        """Tell whether the request runs: always False, since it can be cancelled until answered.

        Returns
        -------
        bool
            False.
        """
        return False

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
            If the remote handler raised (also an instance of the remote
            exception's type when it is a built-in, such as ``ValueError``).
        conveyor.CancelledError
            If the request was cancelled.
        """
        if self._state == _WAITING:
            self._requests.transport.wait_for(self, timeout)
        if self._state == _FINISHED and self._exception is None:
            answer: T = self._result  # the common case, without calling exception()
            return answer
        error = self.exception()  # cancelled (this raises CancelledError) or failed
        assert error is not None  # a plain answer returned above
        raise error

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Return the error the request failed with, or None if it succeeded.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the answer; no limit by default.

        Returns
        -------
        BaseException or None
            The `RemoteError` or other error, or None.

        Raises
        ------
        conveyor.TimeoutError
            If no answer arrived in time.
        conveyor.CancelledError
            If the request was cancelled.
        """
        if self._state == _WAITING:
            self._requests.transport.wait_for(self, timeout)
        if self._state in _CANCELLED_STATES:
            raise CancelledError(f"the request to rank {self._dest} was cancelled")
        return self._exception

    def cancel(self) -> bool:
        """Cancel the request: stop waiting, and tell the rank working on it.

        The remote handler sees ``msg.cancelled`` become True; its answers
        are dropped (and counted) on either side.

        Returns
        -------
        bool
            False if the answer has come, else True (also when the future
            was cancelled before).
        """
        waiting = self._state == _WAITING
        if waiting:
            self._requests.cancel(self)
        if not super().cancel():
            return False
        if waiting:
            # What an executor does when it would start the work: tell the
            # threads in concurrent.futures.wait() that the future is done.
            self.set_running_or_notify_cancel()
        return True

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Call ``fn(future)`` when the future completes (at once if it has).

        An exception in ``fn`` is logged (on the ``conveyor`` logger) and
        ignored, as `concurrent.futures` does: it must not break the
        handling of messages.

        Parameters
        ----------
        fn : callable
            Called with the future as its only argument.

        Raises
        ------
        TypeError
            If ``fn`` is not callable (it would fail only when called, in a
            log record).
        """
        if not callable(fn):
            raise TypeError(f"a done callback must be callable, not {type(fn).__name__}")
        if self._made_condition is not None:
            super().add_done_callback(fn)  # type: ignore[arg-type]  # it is called with self
            return
        # Without a lock (see _resolve): whichever thread takes fn from the
        # list calls it, this one if the future finished meanwhile.
        self._done_callbacks.append(fn)
        if self._state != _WAITING:
            try:
                self._done_callbacks.remove(fn)
            except ValueError:
                return  # _invoke_callbacks took it
            _call(fn, self)

    def __await__(self) -> Generator[Any, None, T]:
        """Await the answer from a coroutine (the messenger is served by the running loop)."""
        return wait_answer(self._requests.transport, self).__await__()

    def __repr__(self) -> str:
        if self._state in _CANCELLED_STATES:
            state = "cancelled"
        elif self._state == _FINISHED:
            state = "done" if self._exception is None else "failed"
        else:
            state = "pending"
        return f"<conveyor.Future {state}>"

    # The messenger's side: answers as they arrive.

    _ready = done

    def _answer(self, value: T, final: bool) -> None:
        if final:
            self._resolve(value, None)

    def _fail(self, exc: BaseException) -> None:
        self._resolve(None, exc)

    def _resolve(self, value: Any, exc: BaseException | None) -> None:
        if self._made_condition is not None:  # a thread waits, or did: the standard way
            if exc is None:
                self.set_result(value)
            else:
                self.set_exception(exc)
            return
        # No thread has asked for the condition: finish without a lock (one
        # cost a request 0.2 us). The GIL orders these steps against a thread
        # that makes the condition meanwhile (`_condition`) and then reads the
        # state under it: either it sees the future finished, or we see its
        # condition below and wake it as set_result would have.
        if self._state != _WAITING:
            raise concurrent.futures.InvalidStateError(f"{self!r} is already done")
        self._result, self._exception, self._state = value, exc, _FINISHED
        condition = self._made_condition
        if condition is not None:
            with condition:
                for waiter in self._waiters:
                    if exc is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
                condition.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()

    def _invoke_callbacks(self) -> None:
        # concurrent.futures' own, but each callback is taken from the list
        # before it is called: add_done_callback adds without a lock, and
        # calls one itself if it can still take it back once the future is done.
        callbacks = self._done_callbacks
        while callbacks:
            try:
                fn = callbacks.pop(0)
            except IndexError:
                return  # add_done_callback took the last one back
            _call(fn, self)


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

    __slots__ = (
        "_requests",
        "_dest",
        "_ref",
        "_sent",
        "_answers",
        "_state",
        "_error",
        "_waiter",
        "timeout",
    )

    def __init__(self, requests: Requests, dest: int, ref: int, timeout: float | None) -> None:
        self._requests = requests
        self._dest = dest
        self._ref = ref
        self._sent = ("", 0.0)  # (tag, time.monotonic()) once sent (see Requests.open)
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
                raise self._requests.transport.timed_out(
                    f"no answer within {self.timeout} s"
                ) from None
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
