"""Collectives that serve while they wait: barrier, bcast, gather, scatter, allgather, allreduce.

They are built on the messenger's own messages rather than on MPI's
collectives: each rank's part travels as a message to the reserved tag
`COLLECTIVE`, and a rank waits for the parts it needs the way it waits for
an answer (`Transport.wait_for`), handling every other message meanwhile.
So a collective cannot deadlock against a neighbour that is still asking
this rank something, may be called from a handler, and may be awaited.
Values travel as any payload does (carriageable, or pickled with
``pickle=True``), large arrays without copies.

Every rank numbers its collectives in the order it calls them, as MPI
requires them to be called in the same order everywhere; a part carries the
number and the collective's kind, so that a rank that called another
collective at that point is told so instead of getting wrong values.
Rooted collectives go through the root (2(P-1) messages for a barrier or
an allreduce, P-1 for the others; an allgather sends P(P-1)): they are
meant for the values that coordinate a program, not for bulk reductions of
large arrays, which mpi4py does better on a communicator of your own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

from ._checks import check_rank
from ._errors import ConveyorError
from ._future import Future
from ._tags import COLLECTIVE

if TYPE_CHECKING:
    from ._dispatch import Receivers
    from ._message import Message
    from ._requests import Requests

__all__ = ["Collectives"]

# Appended to a collective's kind in the part that says it failed on its root.
_FAILED = ":failed"


class _Round:
    # One collective on this rank: the parts it waits for, by source rank,
    # and what makes its result once they are all there.

    __slots__ = ("kind", "future", "sources", "parts", "finish")

    def __init__(
        self,
        kind: str,
        future: Future[Any],
        sources: set[int],
        finish: Callable[[dict[int, Any]], Any],
    ) -> None:
        self.kind = kind
        self.future = future
        self.sources = sources
        self.parts: dict[int, Any] = {}
        self.finish = finish


class Collectives:
    """The collectives of one messenger, and the receiver of their parts on every rank."""

    def __init__(self, rank: int, size: int, receivers: Receivers, requests: Requests) -> None:
        self._rank = rank
        self._size = size
        self._requests = requests
        self._transport = requests.transport
        self._calls = 0  # collectives called on this rank so far
        self._rounds: dict[int, _Round] = {}  # by number: those still waiting for parts
        # Parts that came before this rank called their collective: number -> source -> part.
        self._early: dict[int, dict[int, tuple[str, Any]]] = {}
        receivers.add(COLLECTIVE, self._arrive)

    # -- the collectives ---------------------------------------------------------

    def barrier(self) -> Future[None]:
        """Resolve once every rank has called it."""
        root = 0
        if self._rank != root:
            return self._start("barrier", {root}, lambda parts: None, {root: None})
        n = self._calls
        return self._start(
            "barrier", self._others(), lambda parts: self._release(n, "barrier", None)
        )

    def bcast(self, value: Any, root: int) -> Future[Any]:
        """Resolve to `value` of rank `root` on every rank."""
        check_rank(root, self._size)
        if self._rank == root:
            return self._start(
                "bcast", set(), lambda parts: value, dict.fromkeys(self._others(), value)
            )
        return self._start("bcast", {root}, lambda parts: parts[root])

    def gather(self, value: Any, root: int) -> Future[list[Any] | None]:
        """Resolve to every rank's `value`, in rank order, on `root`; to None elsewhere."""
        check_rank(root, self._size)
        if self._rank != root:
            return self._start("gather", set(), lambda parts: None, {root: value})
        return self._start("gather", self._others(), lambda parts: self._in_order(parts, value))

    def scatter(self, values: Sequence[Any] | None, root: int) -> Future[Any]:
        """Resolve to ``values[rank]`` of `root`'s `values` on every rank."""
        check_rank(root, self._size)
        if self._rank != root:
            return self._start("scatter", {root}, lambda parts: parts[root])
        if values is None or len(values) != self._size:
            got = "None" if values is None else f"{len(values)} values"
            raise ValueError(
                f"scatter needs one value per rank ({self._size}) on the root, not {got}"
            )
        own = values[self._rank]
        return self._start(
            "scatter", set(), lambda parts: own, {r: values[r] for r in self._others()}
        )

    def allgather(self, value: Any) -> Future[list[Any]]:
        """Resolve to every rank's `value`, in rank order, on every rank."""
        return self._start(
            "allgather",
            self._others(),
            lambda parts: self._in_order(parts, value),
            dict.fromkeys(self._others(), value),
        )

    def allreduce(self, value: Any, op: Callable[[Any, Any], Any]) -> Future[Any]:
        """Resolve to ``op`` folded over every rank's `value` in rank order, on every rank.

        The root (rank 0) folds and sends the result to the others, so every
        rank gets the same result even where ``op`` is not associative.
        """
        if not callable(op):
            raise TypeError(f"op must be callable, not {type(op).__name__}")
        root = 0
        if self._rank != root:
            return self._start("allreduce", {root}, lambda parts: parts[root], {root: value})
        n = self._calls

        def fold(parts: dict[int, Any]) -> Any:
            values = self._in_order(parts, value)
            try:
                result = values[0]
                for v in values[1:]:
                    result = op(result, v)
            except Exception as exc:  # the others wait for the result: tell them
                self._release(n, "allreduce" + _FAILED, f"{type(exc).__name__}: {exc}")
                raise
            return self._release(n, "allreduce", result)

        return self._start("allreduce", self._others(), fold)

    # -- the mechanism -------------------------------------------------------------

    def _others(self) -> set[int]:
        return set(range(self._size)) - {self._rank}

    def _in_order(self, parts: dict[int, Any], own: Any) -> list[Any]:
        return [own if r == self._rank else parts[r] for r in range(self._size)]

    def _release(self, n: int, kind: str, value: Any) -> Any:
        # The root's second half of a barrier or an allreduce: the others wait for it.
        for r in self._others():
            self._transport.send(r, COLLECTIVE, (n, kind, value))
        return value

    def _start(
        self,
        kind: str,
        sources: set[int],
        finish: Callable[[dict[int, Any]], Any],
        sends: dict[int, Any] | None = None,
    ) -> Future[Any]:
        # Number the collective, send this rank's parts, and return the
        # future that resolves once the parts from `sources` are all here.
        self._transport.check_open()
        n = self._calls
        self._calls += 1
        future: Future[Any] = Future(self._requests, self._rank, 0)
        round = _Round(kind, future, sources, finish)
        for dest, part in (sends or {}).items():
            self._transport.send(dest, COLLECTIVE, (n, kind, part))
        self._rounds[n] = round
        for source, (sent_kind, part) in self._early.pop(n, {}).items():
            self._add(n, round, source, sent_kind, part)
        self._complete_if_whole(n, round)
        return future

    def _arrive(self, msg: Message) -> None:
        # A part from another rank, maybe before this rank called its collective.
        try:
            n, kind, part = msg.payload
            if not (isinstance(n, int) and isinstance(kind, str) and 0 <= n):
                raise TypeError
        except (TypeError, ValueError):
            raise ConveyorError(
                f"a malformed collective part from rank {msg.source}: {msg.payload!r:.200}"
            ) from None
        round = self._rounds.get(n)
        if round is None:
            if n >= self._calls:
                self._early.setdefault(n, {})[msg.source] = (kind, part)
            # else a part of a collective that failed or was cancelled here: nobody wants it
            return
        self._add(n, round, msg.source, kind, part)
        self._complete_if_whole(n, round)

    def _add(self, n: int, round: _Round, source: int, kind: str, part: Any) -> None:
        if kind == round.kind + _FAILED and source in round.sources:
            self._fail(n, round, ConveyorError(f"the {round.kind} failed on rank {source}: {part}"))
        elif kind != round.kind or source not in round.sources or source in round.parts:
            error = ConveyorError(
                f"collective {n} does not match across ranks: this rank called "
                f"{round.kind}, and rank {source} sent a part of {kind} (every rank must "
                "call the same collectives in the same order)"
            )
            self._fail(n, round, error)
        else:
            round.parts[source] = part

    def _fail(self, n: int, round: _Round, error: BaseException) -> None:
        del self._rounds[n]
        if not round.future.done():  # else cancelled by its caller
            round.future._fail(error)

    def _complete_if_whole(self, n: int, round: _Round) -> None:
        # Once every part is here, unless a wrong part failed the round.
        if n in self._rounds and not round.sources - round.parts.keys():
            self._complete(n, round)

    def _complete(self, n: int, round: _Round) -> None:
        try:
            result = round.finish(round.parts)
        except Exception as exc:  # op raised: this rank's caller gets it
            self._fail(n, round, exc)
            return
        del self._rounds[n]
        if not round.future.done():
            round.future._answer(result, True)
