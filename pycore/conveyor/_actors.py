"""Actors: objects spawned on a rank, found by name from any rank, called by message.

``ref = m.spawn(rank, Cls, *args, name="logger")`` creates ``Cls(*args)``
on `rank` and returns an `ActorRef`; ``ref.method(x)`` is a request that
calls the method there (a `Future` of its result), ``ref.method.send(x)``
a plain send. An actor handles its messages one at a time, in order: a call
that comes while one of its methods runs (the method waits, and its rank
handles other messages meanwhile) waits in the actor's mailbox. A rank may
hold many actors.

Names are registered at the name's home rank (chosen by the same stable
hash as a table key's), which is the one place that decides: of two ranks
spawning one name at once, one gets the actor and the other a clear error.
A spawn claims the name there, creates the actor, then publishes its
reference; `lookup` of a name still being created waits for it.
"""

from __future__ import annotations

import collections
import itertools
from typing import TYPE_CHECKING, Any, Callable, cast

from . import _exit
from ._carriage import CarriageableItem
from ._errors import ConveyorError, FrameError
from ._shipping import Received, Shipped
from ._table import home_of
from ._tags import (
    ACTOR_CALL,
    ACTOR_CLAIM,
    ACTOR_CREATE,
    ACTOR_LOOKUP,
    ACTOR_PUBLISH,
    ACTOR_RELEASE,
    ACTOR_TELL,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._dispatch import Dispatch, Receivers
    from ._future import Future
    from ._message import Message
    from ._messenger import Messenger
    from ._requests import Requests

__all__ = ["ActorRef", "ActorService"]


class ActorRef(CarriageableItem, name="conveyor.ActorRef"):
    """A reference to an actor: its rank, its number there, and its name if it has one.

    Made by `Messenger.spawn` and `Messenger.lookup`. ``ref.method(*args,
    **kwargs)`` returns a `Future` of the method's result; ``ref.method.send(...)``
    sends without an answer. A reference travels inside messages and
    survives `pickle`; one that arrived so uses the one open messenger of
    its process (`bind` chooses another).

    Attributes
    ----------
    rank : int
        The rank the actor lives on.
    id : int
        The actor's number on that rank.
    name : str or None
        The name it was spawned with.
    """

    def __init__(self, rank: int, id: int, name: str | None, messenger: Messenger | None = None):
        self.rank = rank
        self.id = id
        self.name = name
        self._messenger = messenger

    def bind(self, messenger: Messenger) -> ActorRef:
        """Return this reference, sending through ``messenger``.

        Parameters
        ----------
        messenger : Messenger
            The messenger that carries its calls.

        Returns
        -------
        ActorRef
            A reference to the same actor.
        """
        return ActorRef(self.rank, self.id, self.name, messenger)

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActorRef):
            return NotImplemented
        return (self.rank, self.id) == (other.rank, other.id)

    def __hash__(self) -> int:
        return hash((ActorRef, self.rank, self.id))

    def __repr__(self) -> str:
        name = "" if self.name is None else f" {self.name!r}"
        return f"<conveyor.ActorRef{name} #{self.id} on rank {self.rank}>"

    def __reduce__(self) -> tuple[type[ActorRef], tuple[int, int, str | None]]:
        return ActorRef, (self.rank, self.id, self.name)

    def out_of_band(self) -> Sequence[Any]:
        """Return the fields the reference travels as (see `CarriageableItem`).

        Returns
        -------
        sequence
            ``(rank, id, name)``.
        """
        return (self.rank, self.id, self.name)

    @classmethod
    def load(cls, buffer: memoryview, out_of_band: list[Any]) -> ActorRef:
        """Rebuild a reference from its fields (see `CarriageableItem`).

        Parameters
        ----------
        buffer : memoryview
            Empty.
        out_of_band : list
            ``[rank, id, name]``.

        Returns
        -------
        ActorRef
            The reference.
        """
        rank, id, name = out_of_band
        if not (
            isinstance(rank, int) and isinstance(id, int) and isinstance(name, (str, type(None)))
        ):
            raise TypeError("a malformed actor reference")
        return cls(rank, id, name)

    def _service(self) -> ActorService:
        messenger = self._messenger
        if messenger is None:
            open_now = _exit.open_messengers()
            if len(open_now) != 1:
                raise ConveyorError(
                    f"{len(open_now)} messengers are open in this process: choose the one "
                    "that carries this reference's calls with ref.bind(messenger)"
                )
            # `_exit` sits below `_messenger` and types what it holds by what it
            # needs of it; every messenger it holds is a Messenger.
            messenger = cast("Messenger", open_now[0])
        return messenger._actors


class _Method:
    # `ref.method`: call it for a Future, or .send() it without an answer.

    __slots__ = ("_ref", "_name")

    def __init__(self, ref: ActorRef, name: str) -> None:
        self._ref = ref
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Future[Any]:
        ref = self._ref
        service = ref._service()
        return service.requests.request(ref.rank, ACTOR_CALL, (ref.id, self._name, args, kwargs))

    def send(self, *args: Any, **kwargs: Any) -> None:
        ref = self._ref
        service = ref._service()
        service.requests.transport.send(ref.rank, ACTOR_TELL, (ref.id, self._name, args, kwargs))

    def __repr__(self) -> str:
        return f"<method {self._name!r} of {self._ref!r}>"


class _Actor:
    # One actor on its rank: the object, and the calls waiting while one runs.

    __slots__ = ("instance", "busy", "mailbox")

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.busy = False
        self.mailbox: collections.deque[Message] = collections.deque()


class ActorService:
    """Spawning, naming and calling actors: both sides, on every rank.

    Attributes
    ----------
    requests : Requests
        What calls and spawns go through.
    """

    def __init__(
        self, messenger: Messenger, receivers: Receivers, requests: Requests, dispatch: Dispatch
    ) -> None:
        self.requests = requests
        self._m = messenger
        self._dispatch = dispatch
        self._shipped = Shipped(messenger.host_ranks, messenger._host_index)
        self._received = Received()
        self._actors: dict[int, _Actor] = {}  # the actors of this rank, by number
        self._numbers = itertools.count(1)
        # The names whose home is this rank: (rank, id) once published, None while being created.
        self._names: dict[str, tuple[int, int] | None] = {}
        self._lookups: dict[str, list[Message]] = {}  # lookups waiting for a name's publication
        receivers.add(ACTOR_CREATE, self._create)
        receivers.add(ACTOR_CALL, self._call)
        receivers.add(ACTOR_TELL, self._call)
        receivers.add(ACTOR_CLAIM, self._claim)
        receivers.add(ACTOR_PUBLISH, self._publish)
        receivers.add(ACTOR_RELEASE, self._release)
        receivers.add(ACTOR_LOOKUP, self._lookup)

    # -- the caller's side -------------------------------------------------------

    def spawn(
        self,
        rank: int,
        cls: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        timeout: float | None,
    ) -> ActorRef:
        """Create ``cls(*args, **kwargs)`` on `rank`, under `name` if given; return its reference."""
        if not callable(cls):
            raise TypeError(f"an actor's class must be callable, not {type(cls).__name__}")
        home = None
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError("an actor's name must be a non-empty str")
            home = home_of(name, self._m.size)
            self.requests.request(home, ACTOR_CLAIM, name).result(timeout)
        try:
            parcel = self._shipped.parcel(rank, cls)
            created = self.requests.request(rank, ACTOR_CREATE, (parcel, args, kwargs))
            self._shipped.sent(rank, parcel, created)
            number = created.result(timeout)
        except BaseException:
            if home is not None and not self.requests.transport.closed:
                self.requests.transport.send(home, ACTOR_RELEASE, name)
            raise
        if home is not None:
            self.requests.request(home, ACTOR_PUBLISH, (name, rank, number)).result(timeout)
        return ActorRef(rank, number, name, self._m)

    def lookup(self, name: str, timeout: float | None) -> ActorRef:
        """Return the reference of the actor named `name` (KeyError if there is none)."""
        if not isinstance(name, str) or not name:
            raise ValueError("an actor's name must be a non-empty str")
        home = home_of(name, self._m.size)
        rank, number = self.requests.request(home, ACTOR_LOOKUP, name).result(timeout)
        return ActorRef(rank, number, name, self._m)

    # -- the actor's rank --------------------------------------------------------

    def _create(self, msg: Message) -> int:
        parcel, args, kwargs = _fields(msg, 3)
        cls = self._received.function(msg.source, parcel)
        instance = cls(*args, **kwargs)  # raising answers the spawner with the error
        number = next(self._numbers)
        self._actors[number] = _Actor(instance)
        return number

    def _call(self, msg: Message) -> None:
        number, method, args, kwargs = _fields(msg, 4)
        actor = self._actors.get(number)
        if actor is None:
            raise LookupError(f"rank {self._m.rank} has no actor #{number}")
        if not isinstance(method, str) or method.startswith("_"):
            raise AttributeError(f"{method!r} is not a public method of the actor")
        if actor.busy:
            # One message at a time: this one waits until the running one ends.
            if msg.is_request:
                msg.defer()
            actor.mailbox.append(msg)
            return
        self._run(actor, msg)
        while actor.mailbox:
            self._run(actor, actor.mailbox.popleft())

    def _run(self, actor: _Actor, msg: Message) -> None:
        _, method, args, kwargs = msg.payload
        actor.busy = True
        try:
            result = getattr(actor.instance, method)(*args, **kwargs)
        except Exception as exc:
            if msg.is_request:
                msg.fail(exc)
            else:  # nobody waits for an answer: reported as any receiver's error
                self._dispatch.failed(msg, exc)
            return
        finally:
            actor.busy = False
        if msg.is_request:
            msg.reply(result)

    # -- the names' home ---------------------------------------------------------

    def _claim(self, msg: Message) -> None:
        name = msg.payload
        if name in self._names:
            where = self._names[name]
            rank = "being created" if where is None else f"on rank {where[0]}"
            raise ValueError(f"an actor named {name!r} exists ({rank})")
        self._names[name] = None

    def _publish(self, msg: Message) -> None:
        name, rank, number = _fields(msg, 3)
        if name not in self._names or self._names[name] is not None:
            raise FrameError(f"rank {msg.source} published {name!r}, which it had not claimed")
        self._names[name] = (rank, number)
        for lookup in self._lookups.pop(name, ()):
            lookup.reply((rank, number))

    def _release(self, msg: Message) -> None:
        name = msg.payload
        if self._names.get(name, ()) is None:  # claimed and never published: its spawn failed
            del self._names[name]
            for lookup in self._lookups.pop(name, ()):
                lookup.fail(KeyError(f"the spawn of {name!r} failed"))

    def _lookup(self, msg: Message) -> Any:
        name = msg.payload
        if name not in self._names:
            msg.fail(KeyError(f"no actor named {name!r}"))
            return None
        where = self._names[name]
        if where is None:
            msg.defer()
            self._lookups.setdefault(name, []).append(msg)
            return None
        return where


def _fields(msg: Message, count: int) -> tuple[Any, ...]:
    # The fields of one of these services' payloads: a tuple of `count`
    # (with a dict of keywords last for calls and creations), else FrameError.
    fields = msg.payload
    if not (isinstance(fields, tuple) and len(fields) == count):
        raise FrameError(f"a malformed {msg.tag!r} message from rank {msg.source}")
    if count == 4 or msg.tag == ACTOR_CREATE:
        args, kwargs = fields[-2:]
        if not (isinstance(args, (tuple, list)) and isinstance(kwargs, dict)):
            raise FrameError(f"a malformed {msg.tag!r} message from rank {msg.source}")
    return fields
