"""The requester's side of requests: each open request's waiter, by reference."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union, overload

from ._diagnostics import PendingRequest
from ._errors import ConveyorError, FrameError, RankFailedError, UnknownTagError, raised_remotely
from ._future import Future, Stream
from ._native import core
from ._tags import CANCEL
from ._transport import Transport

if TYPE_CHECKING:
    # What gets a request's answers.
    Waiter = Union[Future[Any], Stream[Any]]
    WaiterT = TypeVar("WaiterT", Future[Any], Stream[Any])

__all__ = ["Requests"]


_REPLY, _ANSWER = core.message.KIND_REPLY, core.message.KIND_ANSWER


class Requests(core.engine.RequestsBase):
    """The requests this rank sent and still waits for.

    Every answer ends here: `answer` hands it to the request's `Future` or
    `Stream` (its *waiter*), whichever path it arrived by; the native
    dispatcher hands the common one, a readable final answer, to its waiter
    in `waiters` itself. The native base numbers and posts the requests,
    and takes `Messenger.request`'s common case (``try_request``) whole.

    Attributes
    ----------
    waiters : dict
        ``{ref: Future or Stream}`` of the open requests.
    transport : Transport
        Sends the requests and serves while their callers wait.
    late : int
        Answers that came after their request was cancelled (or failed).
    malformed : int
        Error answers whose report could not be read (from forged frames).
    """

    def __init__(self, transport: Transport) -> None:
        # The native path posts as Transport.post does: a transport that
        # posts otherwise (a fault-tolerant one) is called instead.
        plain = type(transport).post is Transport.post
        super().__init__(transport.engine, transport, Future, plain)
        self.transport = transport
        self.late = 0
        self.malformed = 0

    def __len__(self) -> int:
        return len(self.waiters)

    @overload
    def open(self, dest: int, tag: str, payload: Any) -> Future[Any]: ...
    @overload
    def open(
        self, dest: int, tag: str, payload: Any, make_waiter: Callable[[int], WaiterT]
    ) -> WaiterT: ...
    def open(
        self, dest: int, tag: str, payload: Any, make_waiter: Callable[[int], Waiter] | None = None
    ) -> Waiter:
        """Send a request to `tag` on `dest`; return its `Future`, or ``make_waiter(ref)``.

        The caller has checked that the messenger is open.
        """
        # The number is taken before the waiter is made: the garbage collector
        # may run there, and a finaliser (a ChunkRef's, releasing its chunk)
        # open a request of its own, which must not get the same number.
        ref = self._next_ref
        self._next_ref += 1
        # A plain Future, the common case, without a factory call.
        waiter = Future(self, dest, ref) if make_waiter is None else make_waiter(ref)
        self._post(dest, ref, tag, payload, waiter)
        return waiter

    def request(self, dest: int, tag: str, payload: Any) -> Future[Any]:
        """Send a request to `tag` on `dest`, reserved tags included; return its `Future`.

        The path of conveyor's own services to their receivers:
        `Messenger.request` is this for the user's tags only.
        """
        self.transport.check_open()
        return self.open(dest, tag, payload)

    def state(self) -> tuple[PendingRequest, ...]:
        """The open requests, oldest first: where they went, and how long ago."""
        now = time.monotonic()
        rows = []
        for ref, waiter in list(self.waiters.items()):
            tag, sent = waiter._sent
            rows.append(
                PendingRequest(ref, waiter._dest, tag, now - sent, isinstance(waiter, Stream))
            )
        return tuple(rows)

    def cancel(self, waiter: Waiter) -> None:
        """Drop the answers still to come, and tell the worker (``msg.cancelled``)."""
        if self.waiters.pop(waiter._ref, None) is not None and not self.transport.closed:
            self.transport.post(waiter._dest, core.message.KIND_SEND, 0, CANCEL, waiter._ref)

    def answer(self, kind: int, source: int, ref: int, payload: Any, error: str | None) -> None:
        """Hand an answer (`kind` REPLY, ANSWER or ERROR) to its waiter; count it if none waits.

        `error` says why its payload could not be read, if it could not.
        The native dispatcher calls this for every answer but the common
        one, a readable REPLY whose request is open: that one it takes from
        `waiters` and hands to ``waiter._answer(payload, True)`` itself.
        """
        waiter = self.waiters.get(ref)
        if waiter is None:
            self.late += 1  # after a cancel or a closed messenger
        elif error is not None:
            del self.waiters[ref]
            waiter._fail(FrameError(f"the answer from rank {source}: {error}"))
        elif kind == _ANSWER:
            waiter._answer(payload, False)
        elif kind == _REPLY:
            del self.waiters[ref]
            waiter._answer(payload, True)
        else:
            del self.waiters[ref]
            waiter._fail(self._remote_error(source, payload))

    def _remote_error(self, source: int, report: Any) -> ConveyorError:
        # An Error frame's payload, as Dispatch._send_error makes it; from a
        # forged frame, anything: that is a malformed answer, not a crash.
        names = ("kind", "type", "message", "traceback")
        if not (isinstance(report, dict) and all(isinstance(report.get(n), str) for n in names)):
            self.malformed += 1
            return FrameError(f"a malformed error answer from rank {source}: {report!r:.200}")
        fields = (source, report["type"], report["message"], report["traceback"])
        if report["kind"] == "unknown_tag":
            return UnknownTagError(*fields)
        return raised_remotely(*fields)

    def fail_rank(self, rank: int, why: str) -> None:
        """Fail every open request to `rank` with `RankFailedError`: its answer will never come."""
        for ref, waiter in list(self.waiters.items()):
            if waiter._dest == rank:
                del self.waiters[ref]
                waiter._fail(RankFailedError(rank, why))

    def fail_all(self, why: str) -> None:
        """Fail every open request with ConveyorError(`why`): its answer will never come."""
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            waiter._fail(ConveyorError(why))
