"""The Python half of dispatch: receivers, and what the native dispatcher hands over.

The native dispatcher (``Engine.serve``) delivers plain sends and requests
to their receivers itself, and every answer to ``Requests.answer``. It hands
the rest here: a handler's exception or unusual result, async handlers, messages it
could not deliver (unknown tag, unreadable payload, malformed frame).
`Dispatch` is also the answering side of requests: replies, errors sent
back to requesters, and cancels of requests being worked on.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Callable

from ._asyncio import handler_of
from ._checks import check_user_tag
from ._diagnostics import OpenRequest, logger
from ._errors import (
    ConveyorError,
    FrameError,
    RemoteError,
    UnknownTagError,
    traceback_text,
)
from ._native import core
from ._tags import CANCEL

if TYPE_CHECKING:
    from ._message import Message
    from ._requests import Requests
    from ._transport import Transport

    # A receiver: called with each message; for a request, returns the answer.
    Handler = Callable[[Message], Any]

__all__ = ["Dispatch", "Receivers", "reply_target"]

# How many different drops a messenger logs a warning about: without a
# bound, messages to ever new unknown tags (or ever new malformed frames)
# would flood the log, and the set of those reported grow without end.
# Drops are counted in any case.
_MAX_WARNINGS = 100

# The counters of `Dispatch.counts` that Messenger.stats() reports.
COUNTERS = (
    "unknown_tag",
    "payloads_undecodable",
    "handler_errors",
    "requests_cancelled",
    "answers_cancelled",
)


class Receivers:
    """The receivers of one messenger, by tag: ``table`` is ``{tag: (handler, per_item)}``."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[Handler, bool]] = {}

    def add(self, tag: str, handler: Handler, per_item: bool = False) -> None:
        """Register `handler` for `tag` (a reserved ``conveyor.`` tag too)."""
        if tag in self.table:
            raise ValueError(f"a receiver is already registered under {tag!r}")
        self.table[tag] = (handler, bool(per_item))

    def add_user(self, tag: str, handler: Handler, per_item: bool) -> None:
        """Register a user's `handler` for `tag`, which may not be reserved."""
        check_user_tag(tag)
        if not callable(handler):
            raise TypeError(f"a receiver must be callable, not {type(handler).__name__}")
        self.add(tag, handler, per_item)

    def remove_user(self, tag: str) -> None:
        """Remove the user's receiver of `tag`."""
        check_user_tag(tag)
        try:
            del self.table[tag]
        except KeyError:
            raise KeyError(f"no receiver is registered under {tag!r}") from None


class Dispatch:
    """What the native dispatcher hands over, for one messenger.

    ``Engine.serve`` is given this object and reads the attributes below by
    name; it calls `fallback`, `returned`, `failed`, `finish_request` and
    `slow_handler`, and hands every answer to its waiter in
    ``requests.waiters`` (a readable final one) or to ``requests.answer``
    (any other). It counts each message as handled itself, once its
    dispatch ends.

    Attributes
    ----------
    receivers : dict
        ``{tag: (handler, per_item)}`` (the table of `Receivers`).
    message_type : type
        The `Message` class, made natively for each delivery.
    requests : Requests
        Where answers go.
    aggregate : bool
        Whether replies are aggregated.
    counts : collections.Counter
        Drops and errors, by the names in `COUNTERS`.
    tasks : set
        The async handlers' tasks still running.
    """

    def __init__(
        self,
        rank: int,
        transport: Transport,
        receivers: Receivers,
        requests: Requests,
        message_type: type[Message],
    ) -> None:
        self.rank = rank
        self.transport = transport
        self.receivers = receivers.table
        self.message_type = message_type
        self.requests = requests
        self.aggregate = transport.aggregate
        self.counts: collections.Counter[str] = collections.Counter()
        # Requests left open after their handler returned (deferred,
        # streaming), held weakly: a deferred request whose reply_to was
        # passed on is forgotten with its message.
        self._open_requests: weakref.WeakValueDictionary[tuple[int, int], Message] = (
            weakref.WeakValueDictionary()
        )
        self._warned: set[str] = set()  # the drops warned about, at most _MAX_WARNINGS
        self.tasks: set[asyncio.Task[Any]] = set()
        receivers.add(CANCEL, self._on_cancel)

    def open_requests(self) -> int:
        """How many requests this rank is answering (running or left open)."""
        return self.transport.engine.answering_count + len(self._open_requests)

    def state(self) -> tuple[OpenRequest, ...]:
        """The requests this rank is answering: those whose handler runs, then those left open."""
        rows, seen = [], set()
        for msg in self.transport.engine.answering_now():
            _, _, ref = reply_target(msg)
            seen.add((msg.source, ref))
            rows.append(OpenRequest(msg.source, ref, msg.tag, True, msg._cancelled))
        for (source, ref), msg in list(self._open_requests.items()):
            if (source, ref) not in seen:
                rows.append(OpenRequest(source, ref, msg.tag, False, msg._cancelled))
        return tuple(rows)

    # -- what the native dispatcher hands over ---------------------------------

    def fallback(self, item: tuple[int, int, int, str, Any, str | None]) -> None:
        """A message the native dispatcher did not deliver: ``(kind, source, ref, tag, payload, error)``."""
        kind, source, ref, tag, payload, error = item
        if kind == core.message.KIND_SEND or kind == core.message.KIND_REQUEST:
            self._refuse_delivery(kind == core.message.KIND_REQUEST, source, ref, tag, error)
        else:  # counted by the engine as frames_malformed or frames_forged
            self._report(f"dropped a malformed frame from rank {source}: {error}")

    def returned(self, msg: Message, result: Any) -> None:
        """What a plain send's receiver returned: nobody waits for it, but a coroutine must run."""
        if asyncio.iscoroutine(result):
            try:
                self._spawn(msg, result)
            except ConveyorError as exc:
                self.failed(msg, exc)

    def failed(self, msg: Message, exc: BaseException) -> None:
        """A plain send's receiver raised: log it as an error (nobody waits for an answer)."""
        self.counts["handler_errors"] += 1
        logger.error(
            "conveyor: rank %d: the receiver of %r raised (message from rank %d):\n%s",
            self.rank,
            msg.tag,
            msg.source,
            traceback_text(exc).rstrip("\n"),
        )

    def slow_handler(self, tag: str, source: int, seconds: float) -> None:
        """A handler ran at least ``CONVEYOR_SLOW_HANDLER_S``: log a warning naming it."""
        logger.warning(
            "conveyor: rank %d: the receiver of %r took %.3f s (message from rank %d; "
            "CONVEYOR_SLOW_HANDLER_S=%g)",
            self.rank,
            tag,
            seconds,
            source,
            self.transport.engine.slow_handler_seconds,
        )

    def finish_request(self, msg: Message, result: Any, exc: BaseException | None) -> None:
        """Settle request `msg` whose handler raised (`exc`) or whose result needs more than a reply.

        It replied or deferred itself, was cancelled, is a coroutine, or
        cannot travel.
        """
        if exc is None:
            try:
                if asyncio.iscoroutine(result):
                    self._spawn(msg, result)
                elif not (msg._replied or msg._deferred):
                    msg.reply(result)
            except Exception as error:
                exc = error
        if exc is not None:
            self._handler_raised(msg, exc)
        if not msg._replied:
            _, _, ref = reply_target(msg)
            self._open_requests[(msg.source, ref)] = msg

    # -- the answering side of requests ------------------------------------------

    def reply(self, msg: Message, value: Any, final: bool) -> None:
        """Send `value` as an answer to request `msg` (`Message.reply`)."""
        if msg._cancelled:
            self.counts["answers_cancelled"] += 1
        else:
            rank, name, ref = reply_target(msg)
            kind = core.message.KIND_REPLY if final else core.message.KIND_ANSWER
            self.transport.post(rank, kind, ref, name, value)
        if final:
            msg._replied = True
            self._forget(msg)

    def fail_request(self, msg: Message, exc: BaseException, text: str = "") -> None:
        """Answer request `msg` (final) with `exc`: its requester gets a RemoteError."""
        msg._replied = True
        self._forget(msg)
        if msg._cancelled:
            self.counts["answers_cancelled"] += 1
        else:
            rank, _, ref = reply_target(msg)
            self._send_error(rank, ref, exc, text)

    def _handler_raised(self, msg: Message, exc: BaseException) -> None:
        if msg._replied:  # it raised after its final answer: nobody waits
            self.failed(msg, exc)
        else:
            self.counts["handler_errors"] += 1
            self.fail_request(msg, exc, traceback_text(exc))

    def _forget(self, msg: Message) -> None:
        # Its final answer is sent: a cancel has nothing to find any more.
        _, _, ref = reply_target(msg)
        key = (msg.source, ref)
        if self.transport.engine.answering(*key) is None:  # else its handler's return forgets it
            self._open_requests.pop(key, None)

    def _on_cancel(self, msg: Message) -> None:
        key = (msg.source, msg.payload)
        request = self.transport.engine.answering(*key) or self._open_requests.pop(key, None)
        if request is not None:
            request._cancelled = True
            self.counts["requests_cancelled"] += 1

    def _refuse_delivery(
        self, is_request: bool, source: int, ref: int, tag: str, error: str | None
    ) -> None:
        # Its payload could not be read, or no receiver has its tag.
        exc: BaseException
        if error is not None:
            self.counts["payloads_undecodable"] += 1
            exc = FrameError(f"payload to {tag!r}: {error}")
        else:
            self.counts["unknown_tag"] += 1
            exc = UnknownTagError(self.rank, "UnknownTagError", f"no receiver for tag {tag!r}")
        if is_request:
            self._send_error(source, ref, exc, "")
        else:  # an unknown tag is reported once: it is the same mistake each time
            self._report(f"dropped a message: {exc}", repeat=error is not None)

    def _report(self, problem: str, repeat: bool = True) -> None:
        # A logged warning, not a Python warning: what arrives from another
        # rank is not a mistake of the code running here. For at most
        # _MAX_WARNINGS different problems (then once that the rest go
        # unsaid); one seen before is reported again if `repeat`.
        # Tags and errors come from the wire, of any length: cut them short.
        if len(problem) > 300:
            problem = problem[:300] + "..."
        if problem not in self._warned:
            if len(self._warned) > _MAX_WARNINGS:
                return
            if len(self._warned) == _MAX_WARNINGS:
                problem = (
                    f"more than {_MAX_WARNINGS} different messages dropped: the next are "
                    "only counted (see Messenger.stats)"
                )
            self._warned.add(problem)
        elif not repeat:
            return
        logger.warning("conveyor: rank %d: %s", self.rank, problem)

    def _send_error(self, dest: int, ref: int, exc: BaseException, text: str) -> None:
        kind = "unknown_tag" if isinstance(exc, UnknownTagError) else "error"
        if isinstance(exc, RemoteError) and not isinstance(exc, UnknownTagError):
            # Passed on from another rank: report the original error.
            kind_type, message = exc.remote_type, f"rank {exc.rank}: {exc.remote_message}"
            text = exc.remote_traceback
        else:
            kind_type = type(exc).__qualname__
            message = exc.remote_message if isinstance(exc, RemoteError) else str(exc)
        report = {"kind": kind, "type": kind_type, "message": message, "traceback": text}
        self.transport.post(dest, core.message.KIND_ERROR, ref, "", report)

    # -- async handlers ----------------------------------------------------------

    def _spawn(self, msg: Message, coro: Coroutine[Any, Any, Any]) -> None:
        # An async handler's coroutine runs as a task; its message counts as
        # handled (for termination detection) only once the task ends.
        link = self.transport.link
        if link is None:
            coro.close()
            raise ConveyorError(
                f"the receiver of {msg.tag!r} is async: serve the Messenger from an event "
                "loop (Messenger.attach, or async with Messenger())"
            )
        task = link.loop.create_task(self._run_handler(coro))
        self.transport.engine.defer_handled(msg.source)
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, msg))

    async def _run_handler(self, coro: Coroutine[Any, Any, Any]) -> Any:
        # Marks the task's context (inherited by the tasks it starts) as a
        # handler of this messenger's, for aquiet() to refuse.
        handler_of.set(self.transport)
        return await coro

    def _task_done(self, msg: Message, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        try:
            exc = (
                ConveyorError("the handler's task was cancelled")
                if task.cancelled()
                else task.exception()
            )
            if msg.is_request and not (msg._replied or msg._deferred):
                if exc is None:
                    try:
                        msg.reply(task.result())
                        return
                    except Exception as answer_error:  # the answer cannot travel
                        exc = answer_error
                self._handler_raised(msg, exc)
            elif exc is not None:
                self.failed(msg, exc)
        finally:
            self.transport.engine.mark_handled(1, msg.source)


def reply_target(msg: Message) -> tuple[int, str, int]:
    """Return ``(rank, name, ref)`` of the address that answers request `msg`."""
    address = msg.reply_to
    assert address is not None and address.ref is not None, "not a request"
    return address.rank, address.name, address.ref
