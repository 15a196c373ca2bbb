"""The Python side of the engine: posting sends and serving what arrives.

A `Transport` posts each send to the native engine and slows its caller
down while the destination is congested (back-pressure), and serves:
receives, then dispatches what is ready, for as long as its caller waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

from ._checks import check_timeout
from ._diagnostics import attach
from ._errors import ConveyorError, TimeoutError
from ._native import core

if TYPE_CHECKING:
    from ._asyncio import LoopLink
    from ._diagnostics import RankState
    from ._dispatch import Dispatch
    from ._failures import Failures
    from ._service import Service
    from ._trace import Tracer

__all__ = ["Transport"]

# How long one native wait may last before Python regains control (to notice
# Ctrl-C and deadlines); an arriving message ends the wait at once.
WAIT_SLICE = 0.1


class Waiter(Protocol):
    """What `Transport.wait_for` serves for: a Future or a Stream."""

    def _ready(self) -> bool: ...


class Transport:
    """Sends and serves for one Messenger through its native engine.

    Attributes
    ----------
    engine : conveyor._core.engine.Engine
        The native engine.
    aggregate : bool
        Whether sends without a Sender of their own are aggregated.
    dispatch : Dispatch
        What the native dispatcher calls back (set once it exists).
    link : conveyor._asyncio.LoopLink or None
        The event loop serving the messenger, if any.
    service : conveyor._service.Service or None
        The thread serving the messenger, if any (``serve="thread"``).
    closed : bool
        Set once the messenger is closed: nothing may be sent or served.
    describe : callable or None
        Returns the state of the messenger's rank (`_diagnostics.collect`
        over its rooms; set once they exist): what a wait that timed out
        carries.
    tracer : conveyor._trace.Tracer or None
        The messenger's trace, if it is traced (then this is a
        `conveyor._trace.TracedTransport`).
    failures : conveyor._failures.Failures or None
        The failure detector of a fault-tolerant messenger (then this is a
        `conveyor._failures.FaultTolerantTransport`).
    """

    def __init__(self, engine: core.engine.Engine, aggregate: bool) -> None:
        self.engine = engine
        self.aggregate = aggregate
        self.dispatch: Dispatch | None = None
        self.link: LoopLink | None = None
        self.service: Service | None = None
        self.closed = False
        self.describe: Callable[[], RankState] | None = None
        self.tracer: Tracer | None = None
        self.failures: Failures | None = None
        # What Engine.wait calls between two native waits, and serve()
        # before it serves: check_open, if this transport's checks more
        # than the engine's own closed flag (a fault-tolerant one applies
        # declared failures there, which fail the requests to a dead rank
        # and so end waits for them).
        plain = type(self).check_open is Transport.check_open
        self._wait_check = None if plain else self.check_open

    def check_open(self) -> None:
        """Raise `ConveyorError` if the messenger is closed."""
        if self.closed:
            raise ConveyorError("this Messenger is closed")

    def post(self, rank: int, kind: int, ref: int, tag: str, payload: Any) -> None:
        """Send a frame of `kind`; wait while `rank` is congested."""
        if self.engine.send(rank, kind, ref, tag, payload, self.aggregate):
            self.relieve(rank)

    def send(self, rank: int, tag: str, payload: Any = None) -> None:
        """Send `payload` to the receiver of `tag` on `rank`, reserved tags included.

        The path of conveyor's own services to their receivers:
        `Messenger.send` is this for the user's tags only.
        """
        self.check_open()
        self.post(rank, core.message.KIND_SEND, 0, tag, payload)

    def state(self, patience: float) -> tuple[str, int, dict[str, Any] | None]:
        """Return who serves (``mode``), how many handlers run, and the engine's state.

        The engine's state is None if its lock did not come within `patience` s.
        """
        if self.closed:
            return "closed", 0, None
        mode = "thread" if self.service else "asyncio" if self.link else "inline"
        return mode, self.engine.handling, self.engine.describe(patience)

    def timed_out(self, what: str) -> TimeoutError:
        """Return the `TimeoutError` of a wait for `what` that ran out, with this rank's state."""
        error = TimeoutError(what)
        if self.describe is not None:
            attach(error, self.describe())
        return error

    def in_handler(self) -> bool:
        """Tell whether the calling thread runs a handler of this messenger."""
        if self.service is not None and not self.service.is_current():
            return False  # the program's thread, while the service thread handles
        return self.engine.handling != 0

    def served_elsewhere(self) -> Service | None:
        """The service thread, if one serves and the caller is not it: then the caller only waits."""
        service = self.service
        return service if service is not None and not service.is_current() else None

    def congested(self, dest: int) -> bool:
        """Whether sends to `dest` wait for its credit: the sender should slow down."""
        return self.engine.congested(dest)

    def relieve(self, dest: int) -> None:
        """Back-pressure: serve incoming messages until `dest` takes sends again.

        A handler never waits here (its sends queue instead), so nested
        handlers cannot pile up on the stack; nor does an event loop, which
        would stall every other task.
        """
        if self.in_handler() or self.link is not None:
            return
        while self.congested(dest):
            self.check_open()
            if (service := self.served_elsewhere()) is not None:
                # Credit comes to the service thread: look again after its round.
                service.wait(lambda: not self.congested(dest), WAIT_SLICE)
            else:
                self.engine.serve(WAIT_SLICE, dest, self.dispatch)

    def serve(self, timeout: float = 0.0) -> int:
        """Dispatch what has arrived, waiting up to `timeout` s for the first; return how many.

        Where a service thread serves, the caller waits up to `timeout` for
        the end of its next round, and gets how many it handled in that round.
        """
        # Unserved, the common case, without a call on every progress(): the
        # engine refuses to serve once closed, so only a transport that
        # checks more (_wait_check) is called on.
        if self.service is not None and (service := self.served_elsewhere()) is not None:
            self.check_open()
            self.engine.flush()
            return service.next_round(timeout if timeout >= 0 else None)
        if self._wait_check is not None:
            self._wait_check()
        return self.engine.serve(timeout, -1, self.dispatch)

    def wait_for(self, waiter: Waiter, timeout: float | None) -> None:
        """Serve until ``waiter._ready()`` (a Future or Stream), at most `timeout` s.

        The caller has found the waiter not ready: it is asked again only
        after something was served.

        Every blocking wait for answers comes here: its timeout is checked
        here. It returns as soon as the answer is there, and after the
        deadline starts no further message: a wait lasts its timeout plus
        the length of one handler at most.
        """
        # The common cases, no limit or a float, without a call.
        if timeout is not None and not (type(timeout) is float and timeout >= 0):
            timeout = check_timeout(timeout)
        # Unserved, the common case, without a call on every request's path.
        if self.service is not None and (service := self.served_elsewhere()) is not None:
            self.check_open()
            self.engine.flush()  # the requests this thread sent leave now
            if not service.wait(waiter._ready, timeout):
                raise self.timed_out(f"no answer within {timeout} s")
            return
        limit = -1.0 if timeout is None else timeout
        if not self.engine.wait(waiter, limit, WAIT_SLICE, self.dispatch, self._wait_check):
            raise self.timed_out(f"no answer within {timeout} s")
