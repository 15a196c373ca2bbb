"""Serving a Messenger from an asyncio event loop.

The engine's background thread makes MPI progress and, when a message (or
the end of a termination-detection wave) waits for the owner, writes to an
eventfd (a pipe where there is none) that the loop watches. The loop then
dispatches on its own thread, like any other callback: no thread but the
background one calls MPI meanwhile, and nothing polls.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import TYPE_CHECKING, TypeVar

from ._errors import ConveyorError

if TYPE_CHECKING:
    from ._future import Future
    from ._transport import Transport

__all__ = ["LoopLink", "attach", "detach", "handler_of", "loop_of", "wait_answer"]

T = TypeVar("T")

# In an async handler's task (and the tasks it starts): the messenger's
# Transport, so that a collective wait awaited there can be refused.
handler_of: contextvars.ContextVar[Transport | None] = contextvars.ContextVar(
    "conveyor_handler_of", default=None
)


class LoopLink:
    """The connection of one messenger's transport to one event loop."""

    def __init__(self, transport: Transport, loop: asyncio.AbstractEventLoop) -> None:
        engine = transport.engine
        if not engine.background:
            raise ConveyorError(
                "serving from an event loop needs the engine's background thread, which "
                "needs MPI_THREAD_MULTIPLE (mpi4py's default) and CONVEYOR_BACKGROUND=1"
            )
        self.loop = loop
        self.wave: asyncio.Future[tuple[int, int]] | None = None  # what aquiet() awaits
        self._transport = transport
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        loop.add_reader(self._read_fd, self._on_signal)
        engine.serve_in_background(self._write_fd)

    def _on_signal(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        transport = self._transport
        transport.engine.serve(0.0, -1, transport.dispatch)
        if self.wave is not None and not self.wave.done():
            totals = transport.engine.wave_done()
            if totals is not None:
                self.wave.set_result(totals)

    def close(self) -> None:
        """Stop signalling the loop (the engine goes back to serving its owner's waits)."""
        self._transport.engine.serve_in_background(-1)
        self.loop.remove_reader(self._read_fd)
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)
        if self.wave is not None and not self.wave.done():
            self.wave.set_exception(ConveyorError("the messenger left the event loop"))


def attach(transport: Transport, loop: asyncio.AbstractEventLoop | None = None) -> LoopLink:
    """Serve `transport` from `loop` (the running one by default); return the link."""
    transport.check_open()
    if transport.service is not None:
        raise ConveyorError(
            "this Messenger is served by its own thread (serve='thread'); an event loop "
            "cannot serve it too: await asyncio.wrap_future(future) instead"
        )
    loop = loop or asyncio.get_running_loop()
    if transport.link is not None:
        if transport.link.loop is loop:
            return transport.link
        raise ConveyorError("this Messenger is already served by another event loop")
    transport.link = LoopLink(transport, loop)
    return transport.link


def detach(transport: Transport) -> None:
    """Stop serving `transport` from its event loop, if one serves it."""
    if transport.link is not None:
        transport.link.close()
        transport.link = None


def loop_of(transport: Transport) -> asyncio.AbstractEventLoop:
    """Attach to the running loop and return it; the caller is about to await an answer."""
    link = attach(transport)
    transport.engine.flush()  # do not keep the awaited requests in a batch
    return link.loop


async def wait_answer(transport: Transport, future: Future[T]) -> T:
    """Await `future` (a conveyor Future); cancelling the await cancels the request."""
    if transport.service is not None:  # answered on the service thread
        transport.engine.flush()
        return await asyncio.wrap_future(future)
    if not future.done():
        waiter: asyncio.Future[None] = loop_of(transport).create_future()
        future.add_done_callback(
            lambda done: waiter.done() or waiter.set_result(None)  # type: ignore[func-returns-value]
        )
        try:
            await waiter
        except asyncio.CancelledError:
            # Given up (the task was cancelled, or a timeout ran out): so is
            # the request, as with any awaitable asyncio cancels.
            future.cancel()
            raise
    return future.result()
