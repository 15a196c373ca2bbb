"""A thread that serves a messenger, so that the program's own thread may block anywhere.

``Messenger(serve="thread")``: handlers run on the service thread, which
waits in the native engine with the GIL released whenever nothing is ready.
The program's thread keeps sending (the engine takes turns between the two
threads), and its waits (`Future.result`, `wait_quiet`, back-pressure)
wait for the service thread to have dispatched, on a condition, instead of
serving themselves: only one thread ever dispatches, so messages are still
handled one at a time and in order. A handler that waits in turn serves
inline on the service thread, as any handler does.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

from ._errors import ConveyorError

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Service"]

# How long the service thread waits in the engine before it looks at its
# stop flag; an arriving message ends the wait at once.
_SLICE = 0.05


class Service:
    """The service thread of one messenger's transport.

    Attributes
    ----------
    failure : BaseException or None
        What stopped the thread, if it stopped by itself (the engine failed);
        raised by every wait of the program's thread afterwards.
    """

    def __init__(self, transport: Transport, name: str) -> None:
        self.failure: BaseException | None = None
        self._transport = transport
        self._served = threading.Condition()  # notified after every round of serving
        self._rounds = 0  # rounds of serving so far (a wave's end ends one too)
        self._handled = 0  # messages handled so far
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def is_current(self) -> bool:
        """Tell whether the calling thread is the service thread (a handler runs)."""
        return threading.get_ident() == self._thread.ident

    def _run(self) -> None:
        engine, dispatch = self._transport.engine, self._transport.dispatch
        try:
            while not self._stopping:
                handled = engine.serve(_SLICE, -1, dispatch)
                with self._served:
                    self._rounds += 1
                    self._handled += handled
                    self._served.notify_all()
        except BaseException as exc:  # the engine failed: the program's thread hears of it
            self.failure = exc
        finally:
            with self._served:
                self._stopping = True
                self._served.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``ready()``, for at most `timeout` s (None: no limit); return ``ready()``.

        Raises
        ------
        conveyor.ConveyorError
            If the service thread stopped, for `failure` or by `stop`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._served:
            while not ready():
                if self._stopping:
                    raise ConveyorError("the messenger's service thread stopped") from self.failure
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._served.wait(left)
        return True

    def next_round(self, timeout: float | None) -> int:
        """Wait for the end of the next round of serving, at most `timeout` s; return what it handled.

        A round ends when something arrived (a message, the end of a
        termination-detection wave) or after a slice of idle waiting.
        """
        with self._served:
            rounds, handled = self._rounds, self._handled
        self.wait(lambda: self._rounds != rounds, timeout)
        return self._handled - handled

    def stop(self) -> None:
        """Stop serving: return once the service thread has finished its round."""
        self._stopping = True
        if not self.is_current():
            self._thread.join()
