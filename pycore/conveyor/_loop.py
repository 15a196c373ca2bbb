"""Serving a Messenger from an asyncio event loop.

The engine's background thread makes MPI progress and, when a message (or
the end of a termination-detection wave) waits for the owner, writes to an
eventfd (a pipe where there is none) that the loop watches. The loop then
dispatches on its own thread, like any other callback: no thread but the
background one calls MPI meanwhile, and nothing polls.
"""

import os

from ._errors import ConveyorError

__all__ = ["LoopLink"]


class LoopLink:
    """The connection of one Messenger to one event loop."""

    def __init__(self, messenger, loop):
        engine = messenger._engine
        if not engine.background:
            raise ConveyorError(
                "serving from an event loop needs the engine's background thread, which "
                "needs MPI_THREAD_MULTIPLE (mpi4py's default) and CONVEYOR_BACKGROUND=1"
            )
        self.loop = loop
        self.wave = None  # the future aquiet() awaits while a wave runs
        self._messenger = messenger
        if hasattr(os, "eventfd"):
            self._read_fd = self._write_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._read_fd, False)
            os.set_blocking(self._write_fd, False)
        loop.add_reader(self._read_fd, self._on_signal)
        engine.serve_in_background(self._write_fd)

    def _on_signal(self):
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        messenger = self._messenger
        messenger._engine.serve(0.0, -1, messenger._hooks)
        if self.wave is not None and not self.wave.done():
            totals = messenger._engine.wave_done()
            if totals is not None:
                self.wave.set_result(totals)

    def close(self):
        """Stop signalling the loop (the engine goes back to serving its owner's waits)."""
        self._messenger._engine.serve_in_background(-1)
        self.loop.remove_reader(self._read_fd)
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)
        if self.wave is not None and not self.wave.done():
            self.wave.set_exception(ConveyorError("the messenger left the event loop"))
