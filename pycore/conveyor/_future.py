"""Futures whose waiting drives the messenger's progress."""

import sys
import traceback

from ._errors import ConveyorError

__all__ = ["Future"]

_PENDING, _DONE, _FAILED = range(3)


class Future:
    """The eventual answer to a request.

    Waiting on it (`result`, `exception`) runs the messenger's progress loop,
    so other incoming messages keep being handled meanwhile: a handler may
    wait on a future without deadlocking its rank.
    """

    __slots__ = ("_messenger", "_state", "_value", "_callbacks")

    def __init__(self, messenger):
        self._messenger = messenger
        self._state = _PENDING
        self._value = None
        self._callbacks = []

    def done(self):
        """Return True once the answer (or an error) has arrived."""
        return self._state != _PENDING

    def result(self, timeout=None):
        """Return the answer, waiting for it for at most `timeout` seconds.

        Raises
        ------
        conveyor.TimeoutError
            If no answer arrived in time (the request stays pending).
        conveyor.RemoteError
            If the remote handler raised.
        """
        if self._state == _PENDING:
            self._messenger._wait_for(self, timeout)
        if self._state == _FAILED:
            raise self._value
        return self._value

    def exception(self, timeout=None):
        """Return the error the request failed with, or None if it succeeded."""
        if self._state == _PENDING:
            self._messenger._wait_for(self, timeout)
        return self._value if self._state == _FAILED else None

    def add_done_callback(self, fn):
        """Call ``fn(future)`` when the future completes (at once if it has)."""
        if self._state == _PENDING:
            self._callbacks.append(fn)
        else:
            fn(self)

    def __repr__(self):
        state = ("pending", "done", "failed")[self._state]
        return f"<conveyor.Future {state}>"

    def _resolve(self, state, value):
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

    def _set_result(self, value):
        self._resolve(_DONE, value)

    def _set_exception(self, exc):
        self._resolve(_FAILED, exc)
