"""conveyor._core.message: a delivered message's native fields, and the frame kinds."""

from typing import Any, Final

from typing_extensions import disjoint_base

from .._carriage import Address

#: Frame kind: deliver the payload to the receiver of the tag.
KIND_SEND: Final = 1
#: Frame kind: deliver, and answer the sender with a reply carrying ``ref``.
KIND_REQUEST: Final = 2
#: Frame kind: resolve the requester's future ``ref`` with the payload.
KIND_REPLY: Final = 3
#: Frame kind: fail the requester's future ``ref``; the payload describes the error.
KIND_ERROR: Final = 4
#: Frame kind: one answer to the requester's stream ``ref``, with more to come.
KIND_ANSWER: Final = 7
FRAME_VERSION: Final[int]

@disjoint_base
class MessageBase:
    """The fields of a delivered message (see conveyor.Message)."""

    @property
    def tag(self) -> str:
        """The tag (receiver name) it was sent to."""
    @property
    def payload(self) -> Any:
        """The decoded payload."""
    @property
    def source(self) -> int:
        """The rank that sent it."""
    @property
    def reply_to(self) -> Address | None:
        """For a request, the address that answers it; None for a plain send."""
    @property
    def _dispatch(self) -> Any: ...
    _replied: bool
    _deferred: bool
    _cancelled: bool
    def __new__(
        cls, dispatch: Any, tag: str, payload: object, source: int, reply_to: Any
    ) -> MessageBase: ...
