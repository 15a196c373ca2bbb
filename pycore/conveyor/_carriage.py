"""What can travel in a message: Address and the CarriageableItem protocol.

Built-in values (None, bool, int, float, complex, str, bytes, bytearray,
memoryview, numpy arrays and scalars, lists/tuples/dicts of these) are
carried by the native codec. A user type travels by subclassing
`CarriageableItem` under a stable name, as RayPlatform's items did: it says
how many bytes it needs, dumps itself into a buffer of that size, and loads
itself back; large arrays it holds can go out of band, without copies.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, ClassVar, SupportsIndex

from ._checks import check_ref

__all__ = ["Address", "CarriageableItem"]

# name -> class, shared with the native codec (which looks types up here).
_registry: dict[str, type[CarriageableItem]] = {}


class Address:
    """Where a message can be sent: a receiver's name on a rank.

    An address is itself carriageable, so a reply-to address can travel
    inside a payload and be used by whoever receives it:
    ``messenger.send(address, payload)``.

    Parameters
    ----------
    rank : int
        The rank the receiver lives on.
    name : str
        The tag or registered name of the receiver.
    ref : int, optional
        Set on the reply address of a request (``Message.reply_to``): sending
        to it answers that request, whichever rank sends.
    """

    __slots__ = ("rank", "name", "ref")

    rank: int
    name: str
    ref: int | None

    def __init__(self, rank: SupportsIndex, name: str, ref: SupportsIndex | None = None) -> None:
        rank = operator.index(rank)
        if rank < 0:
            raise ValueError(f"rank must be >= 0, not {rank}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if ref is not None:
            ref = check_ref(ref)
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "ref", ref)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("Address is immutable")

    def __reduce__(self) -> tuple[type[Address], tuple[int, str, int | None]]:
        # pickle (and copy) would set the slots one by one, which __setattr__
        # refuses: rebuild through the constructor, which checks them too.
        return Address, (self.rank, self.name, self.ref)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return (self.rank, self.name, self.ref) == (other.rank, other.name, other.ref)

    def __hash__(self) -> int:
        return hash((Address, self.rank, self.name, self.ref))

    def __repr__(self) -> str:
        ref = "" if self.ref is None else f", ref={self.ref}"
        return f"Address({self.rank}, {self.name!r}{ref})"


class CarriageableItem:
    """Base class of user types that travel in messages.

    Subclass it with a stable name (the same on every rank) and implement
    `load`; override `required_bytes` and `dump` to lay the item out in a
    buffer, and `out_of_band` to send large arrays without copying them::

        class Reads(cv.CarriageableItem, name="demo.Reads"):
            def __init__(self, sample, codes):
                self.sample, self.codes = sample, codes      # int, uint8 array

            def required_bytes(self) -> int:
                return 8

            def dump(self, buffer: memoryview) -> None:
                buffer[:8] = self.sample.to_bytes(8, "little")

            def out_of_band(self) -> Sequence[Any]:
                return [self.codes]                          # travels zero-copy

            @classmethod
            def load(cls, buffer, out_of_band):
                return cls(int.from_bytes(buffer[:8], "little"), out_of_band[0])
    """

    #: The stable name under which the type is registered (None: abstract).
    carriage_name: ClassVar[str | None] = None

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is None:
            cls.carriage_name = None
            return
        if not isinstance(name, str) or not name:
            raise TypeError("a CarriageableItem's name must be a non-empty str")
        if cls.load.__func__ is CarriageableItem.load.__func__:  # type: ignore[attr-defined]
            raise TypeError(f"{cls.__qualname__} must implement the classmethod load()")
        known = _registry.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ValueError(
                f"carriage name {name!r} is already taken by {known.__module__}.{known.__qualname__}"
            )
        # A class defined again under the same name (a reloaded module) replaces the old one.
        _registry[name] = cls
        cls.carriage_name = name

    def required_bytes(self) -> int:
        """Return how many bytes `dump` writes.

        Returns
        -------
        int
            The size of the buffer `dump` gets; 0 by default.
        """
        return 0

    def dump(self, buffer: memoryview) -> None:
        """Write the item into ``buffer``.

        Parameters
        ----------
        buffer : memoryview
            Writable, of `required_bytes` bytes.
        """

    def unsent(self, buffer: memoryview) -> None:
        """Undo what `dump` did beyond the buffer: the message did not leave.

        Called when the message the item was dumped into fails after the
        dump (a later value cannot be carried, or the frame is too large),
        with the buffer `dump` wrote. An item whose `dump` takes something
        for the copy (a share of a resource, a count) gives it back here;
        the default does nothing.

        Parameters
        ----------
        buffer : memoryview
            The bytes `dump` wrote.
        """

    def out_of_band(self) -> Sequence[Any]:
        """Return carriageable values (typically large arrays) sent beside the buffer.

        Arrays above the zero-copy threshold travel straight from their memory.

        Returns
        -------
        sequence
            The values; none by default.
        """
        return ()

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[Any]) -> CarriageableItem:
        """Rebuild an item from what `dump` wrote and what `out_of_band` returned.

        Parameters
        ----------
        buffer : memoryview
            Read-only bytes written by `dump`.
        out_of_band : list
            The values `out_of_band` returned, decoded (arrays arrive as arrays).

        Returns
        -------
        CarriageableItem
            The item.
        """
        raise NotImplementedError
