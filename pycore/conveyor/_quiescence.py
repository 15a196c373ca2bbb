"""Termination detection: `wait_quiet` and `aquiet`, one algorithm for both.

Mattern's four-counter method: the job is quiet once the frames finished
by the latest wave equal those posted by the wave before it. A frame is
finished only after its handlers return (after their own sends), so
cascades of any depth finish first. The native engine runs the waves; the loop that starts
them and compares their totals is `_detect`, driven by a blocking caller
(`wait_quiet`) or an awaiting one (`aquiet`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ._asyncio import attach, handler_of
from ._errors import ConveyorError
from ._failures import WAVE_SLICE
from ._transport import WAIT_SLICE

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["aquiet", "refuse_in_handler", "wait_quiet"]

# The longest pause between two waves that saw messages in flight (an
# arriving message ends it early).
_WAVE_PAUSE = 200e-6

# What _detect asks its driver for: the totals of the running wave, or a pause.
_WAVE, _PAUSE = "wave", "pause"


# The steps of _detect: it yields _WAVE or _PAUSE, and is sent the totals
# of the wave a _WAVE step asked for (None, to start it or after a pause).
Steps = Generator[str, Any, None]


def _detect(transport: Transport) -> Steps:
    engine = transport.engine
    tracer = transport.tracer
    posted_before = None
    while True:
        transport.serve(0.0)
        started = time.monotonic_ns()
        # Join the wave in flight, if any: an aquiet() that was cancelled
        # left it so, and the other ranks take part in it.
        if not engine.wave_active:
            engine.start_wave()
        totals = engine.wave_done()
        if totals is None:
            totals = yield _WAVE
        posted, finished = totals
        if tracer is not None:
            tracer.span("quiescence", "wave", started, {"posted": posted, "finished": finished})
        if finished == posted_before == posted:
            return
        if finished != posted:
            # Frames are in flight: let one arrive before the next wave
            # rather than spinning through waves (a wave may end at once).
            yield _PAUSE
        posted_before = posted


def _next(steps: Steps, totals: tuple[int, int] | None) -> str | None:
    # The next step of `steps`, given the totals a _WAVE step asked for; None once quiet.
    try:
        return steps.send(totals)
    except StopIteration:
        return None


def refuse_in_handler(transport: Transport, what: str) -> None:
    """Raise `ConveyorError` if called from a handler of `transport`'s messenger.

    `what` is a collective that waits for quiet: a handler counts as
    running until it returns, so quiet would never come.
    """
    if transport.in_handler() or handler_of.get() is transport:
        raise ConveyorError(f"{what} is collective and cannot be called from a handler")


def wait_quiet(transport: Transport, timeout: float | None = None) -> None:
    """Serve until no message is in flight on any rank (collective), at most `timeout` s.

    On timeout the wave in flight is left running: the next call joins it.
    """
    tracer = transport.tracer
    if tracer is None:
        return _wait_quiet(transport, timeout)
    start = time.monotonic_ns()
    try:
        _wait_quiet(transport, timeout)
    finally:
        tracer.span("wait", "wait_quiet", start)


def _wait_quiet(transport: Transport, timeout: float | None) -> None:
    transport.check_open()
    refuse_in_handler(transport, "wait_quiet()")
    engine = transport.engine
    deadline = None if timeout is None else time.monotonic() + timeout

    def until_deadline(wait: float) -> float:
        # `wait`, cut short by the deadline; past it, the timeout is raised.
        if deadline is None:
            return wait
        left = deadline - time.monotonic()
        if left <= 0:
            raise transport.timed_out(f"the job was not quiet within {timeout} s")
        return min(wait, left)

    if (failures := transport.failures) is not None:  # waves among the ranks left
        while True:
            transport.serve(0.0)  # applies the failures declared, too
            if failures.step(engine):
                return
            transport.serve(until_deadline(WAVE_SLICE))

    steps = _detect(transport)
    totals = None
    while (step := _next(steps, totals)) is not None:
        totals = None
        if step is _WAVE:
            totals = engine.wave_done()
            while totals is None:
                transport.serve(until_deadline(WAIT_SLICE))
                totals = engine.wave_done()
        else:
            transport.serve(until_deadline(_WAVE_PAUSE))


async def aquiet(transport: Transport) -> None:
    """Await the moment no message is in flight on any rank (collective)."""
    link = attach(transport)
    refuse_in_handler(transport, "aquiet()")
    steps = _detect(transport)
    totals = None
    while (step := _next(steps, totals)) is not None:
        totals = None
        if step is _WAVE:
            link.wave = link.loop.create_future()
            try:
                totals = await link.wave
            finally:
                link.wave = None
        else:
            await asyncio.sleep(_WAVE_PAUSE)
