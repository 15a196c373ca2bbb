"""Message (what a receiver gets) and Receiver (the base of object receivers)."""

from __future__ import annotations

from typing import Any

from ._errors import ConveyorError, traceback_text
from ._native import core

__all__ = ["Message", "Receiver"]


class Message(core.message.MessageBase):
    """A delivered message, as a receiver sees it.

    A handler may keep its message, or a weak reference to it, as long as it
    likes. One that nothing kept once its handler returned is reused for a
    later delivery (making and freeing one per message took a tenth of the
    receiver's time), so two messages may have the same `id`, one after the
    other.

    Attributes
    ----------
    tag : str
        The tag (receiver name) it was sent to.
    payload : Any
        The decoded payload (with per-item delivery, one row of the batch).
    source : int
        The rank that sent it.
    reply_to : Address or None
        For a request, the address that answers it; None for a plain send.
    """

    # The fields live in the native base, which creates one per delivery
    # (with the Dispatch that delivered it); a weak reference lets the
    # dispatch find an open request to cancel it.
    __slots__ = ("__weakref__",)

    @property
    def is_request(self) -> bool:
        """True if the sender waits for an answer."""
        return self.reply_to is not None

    @property
    def cancelled(self) -> bool:
        """True once the requester cancelled this request: stop working on it."""
        return self._cancelled

    def reply(self, value: Any = None, *, final: bool = True) -> None:
        """Answer the request with ``value`` (instead of the handler's return value).

        With ``final=False`` more answers follow (say a quick one from a
        cache, then a detailed one): the requester's `Messenger.request_stream`
        gets each, a plain `Messenger.request` only the final one. Answers
        to a cancelled request are dropped (and counted).

        Parameters
        ----------
        value : object
            The answer; it must be carriageable.
        final : bool, default True
            Whether this is the last answer.

        Raises
        ------
        conveyor.ConveyorError
            If the message is not a request, or its final answer was sent.
        """
        self._check_open_request()
        self._dispatch.reply(self, value, final)

    def fail(self, exc: BaseException) -> None:
        """Answer the request with an error: the requester gets a `RemoteError` for ``exc``.

        For a deferred request that cannot be completed (a handler's own
        exception does this by itself).

        Parameters
        ----------
        exc : BaseException
            The error, reported with its type and message.

        Raises
        ------
        conveyor.ConveyorError
            If the message is not a request, or its final answer was sent.
        """
        self._check_open_request()
        # A raised exception's traceback goes with it, as a handler's own does.
        text = "" if exc.__traceback__ is None else traceback_text(exc)
        self._dispatch.fail_request(self, exc, text)

    def defer(self) -> None:
        """Answer later: the handler's return value is not the answer.

        Keep the message and call `reply` afterwards, or pass ``reply_to`` on:
        whichever rank sends to that address answers the request.

        Raises
        ------
        conveyor.ConveyorError
            If the message is not a request.
        """
        if self.reply_to is None:
            raise ConveyorError(f"the message to {self.tag!r} is not a request: nothing to defer")
        self._deferred = True

    def _check_open_request(self) -> None:
        if self.reply_to is None:
            raise ConveyorError(
                f"the message to {self.tag!r} is not a request: nothing to reply to"
            )
        if self._replied:
            raise ConveyorError(f"the request to {self.tag!r} was already answered")

    def __repr__(self) -> str:
        kind = "request" if self.is_request else "message"
        return f"<conveyor.Message {kind} tag={self.tag!r} from rank {self.source}>"


class Receiver:
    """Base class of object receivers, registered by name with `Messenger.register`.

    Override `receive`; its return value answers a request.
    """

    def receive(self, msg: Message) -> Any:
        """Handle ``msg``; return the answer if it is a request.

        Parameters
        ----------
        msg : Message
            The delivered message.

        Returns
        -------
        object
            The answer to a request (ignored for a plain send); it must be
            carriageable.
        """
        raise NotImplementedError
