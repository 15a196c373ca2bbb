"""Tracing: ``Messenger(trace="run.%r.json")`` writes Chrome-trace / Perfetto events.

The native engine records each send and each dispatched message
(``Engine.start_trace``: the message rate leaves no room for Python code
per message); this module adds the waits (`Future.result`, `wait_quiet`)
and the termination-detection waves, and writes one JSON file per rank on
close. `merge` makes one timeline of several ranks' files, pairing each
send with its delivery as a flow (an arrow in Perfetto and in
``conveyor trace plot``).

Clock: every rank records ``CLOCK_MONOTONIC`` (``time.monotonic_ns()``,
what the engine reads in a few ns through the vDSO), shifted onto rank 0's
by an offset measured when the messenger is made: Cristian's method, the
best of a few ping-pongs with rank 0, so the error is at most half the
shortest round trip (microseconds). Wall-clock time (``time.time_ns``)
would agree exactly between ranks of one host, but between hosts only as
well as NTP keeps them (often milliseconds), and it jumps when set;
``MPI.Wtime`` is a local clock in MPICH, no more comparable across hosts.
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._config import env_number
from ._diagnostics import logger
from ._native import core
from ._transport import Transport

if TYPE_CHECKING:
    from mpi4py import MPI

    from ._transport import Waiter

__all__ = ["TracedTransport", "Tracer", "check_pattern", "merge", "read_traces", "trace_path"]

# Engine entries a rank keeps at most (32 bytes each); beyond, they are
# counted as dropped. ``CONVEYOR_TRACE_EVENTS`` changes it.
_DEFAULT_CAPACITY = 4_000_000
# Entries turned into Python objects at a time when a trace is written.
_READ_SLICE = 65536
# Ping-pongs with rank 0 per rank, of which the shortest sets the offset.
_SYNC_ROUNDS = 8
# The trace's threads: messages (sends and handler spans, which nest as the
# handlers do) and waits (which a service thread's handlers do not nest in).
MESSAGES_TID, WAITS_TID = 0, 1

_KIND_NAMES = {
    0: "rejected",
    core.message.KIND_SEND: "send",
    core.message.KIND_REQUEST: "request",
    core.message.KIND_REPLY: "reply",
    core.message.KIND_ERROR: "error",
    core.message.KIND_ANSWER: "answer",
}
# A delivery of these kinds runs a receiver (a handler span); the others
# settle this rank's requests.
_HANDLED = ("send", "request")


def trace_path(pattern: str, rank: int) -> str:
    """Return `pattern` with ``%r`` replaced by `rank` (and ``%%`` by ``%``)."""
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"trace must be a file name (a str such as 'run.%r.json'), not {pattern!r}")
    return pattern.replace("%%", "\0").replace("%r", str(rank)).replace("\0", "%")


def check_pattern(pattern: str | os.PathLike[str]) -> str:
    """Return the trace's file name `pattern` as a str, if its directory exists.

    Called as the messenger is made: a trace that could not be written is
    refused then, not after the run.

    Raises
    ------
    ValueError
        If the directory of `pattern` does not exist.
    """
    pattern = os.fspath(pattern)
    directory = os.path.dirname(os.path.abspath(pattern))
    if not os.path.isdir(directory):
        raise ValueError(f"the directory of the trace {pattern!r} does not exist")
    return pattern


def _clock_offset(comm: MPI.Intracomm) -> tuple[int, int]:
    # (offset, origin): this rank's monotonic clock + offset is rank 0's;
    # origin is rank 0's clock now (time 0 of the trace). Collective.
    buf = np.zeros(1, dtype=np.int64)
    offset = 0
    if comm.rank == 0:
        for rank in range(1, comm.size):
            for _ in range(_SYNC_ROUNDS):
                comm.Recv(buf, source=rank, tag=1)
                buf[0] = time.monotonic_ns()
                comm.Send(buf, dest=rank, tag=2)
        buf[0] = time.monotonic_ns()
    else:
        best = None
        for _ in range(_SYNC_ROUNDS):
            sent = time.monotonic_ns()
            comm.Send(buf, dest=0, tag=1)
            comm.Recv(buf, source=0, tag=2)
            back = time.monotonic_ns()
            if best is None or back - sent < best:
                best = back - sent
                offset = int(buf[0]) - (sent + back) // 2
    comm.Bcast(buf, root=0)
    return offset, int(buf[0])


class Tracer:
    """The trace of one rank of a messenger: its events, and the file they go to.

    Made collectively (the clock offset is measured with rank 0).

    Parameters
    ----------
    pattern : str
        The file name, ``%r`` replaced by the rank.
    comm : mpi4py.MPI.Intracomm
        The messenger's communicator (duplicated for the clock's ping-pongs).
    engine : conveyor._core.engine.Engine
        The engine whose entries are recorded.
    """

    def __init__(self, pattern: str, comm: MPI.Intracomm, engine: core.engine.Engine) -> None:
        self.path = trace_path(pattern, comm.rank)
        self.rank, self.size = comm.rank, comm.size
        sync = comm.Dup()  # ping-pongs on a communicator of their own
        try:
            self.offset, self.origin = _clock_offset(sync)
        finally:
            sync.Free()
        self.engine = engine
        # The façade's spans: (category, name, start_ns, end_ns, args).
        self.spans: list[tuple[str, str, int, int, dict[str, Any] | None]] = []
        engine.start_trace(env_number("CONVEYOR_TRACE_EVENTS", _DEFAULT_CAPACITY))

    def span(
        self, category: str, name: str, start: int, args: dict[str, Any] | None = None
    ) -> None:
        """Record a span of the façade from `start` (``time.monotonic_ns()``) to now."""
        self.spans.append((category, name, start, time.monotonic_ns(), args))

    def _us(self, ns: int) -> float:
        # A local monotonic time as microseconds since the trace's origin on rank 0's clock.
        return (ns + self.offset - self.origin) / 1000

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield this rank's events so far in the Chrome trace format."""
        pid, us = self.rank, self._us
        yield from [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"rank {pid}"}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": MESSAGES_TID, "args": {"name": "messages"}},
            {"ph": "M", "name": "thread_name", "pid": pid, "tid": WAITS_TID, "args": {"name": "waits"}},
        ]  # fmt: skip
        for first in range(0, self.engine.trace_size, _READ_SLICE):
            for sent, kind, peer, tag, start, end, size in self.engine.read_trace(
                first, _READ_SLICE
            ):
                kind_name = _KIND_NAMES.get(kind, str(kind))
                if sent:
                    # A slice of no length, not an instant: a flow starts in a slice.
                    yield {
                        "ph": "X", "cat": "send", "name": tag or kind_name, "pid": pid,
                        "tid": MESSAGES_TID, "ts": us(start), "dur": 0,
                        "args": {"kind": kind_name, "dest": peer, "bytes": size},
                    }  # fmt: skip
                else:
                    yield {
                        "ph": "X", "cat": "handler" if kind_name in _HANDLED else "delivery",
                        "name": tag or kind_name, "pid": pid, "tid": MESSAGES_TID,
                        "ts": us(start), "dur": (end - start) / 1000,
                        "args": {"kind": kind_name, "source": peer, "bytes": size},
                    }  # fmt: skip
        for category, name, start, end, args in self.spans:
            event = {
                "ph": "X", "cat": category, "name": name, "pid": pid, "tid": WAITS_TID,
                "ts": us(start), "dur": (end - start) / 1000,
            }  # fmt: skip
            if args:
                event["args"] = args
            yield event

    def write(self) -> None:
        """Write every event so far to the trace file (replacing it whole).

        The events are written one by one: a trace of millions of messages
        is never all Python objects at once.
        """
        dropped = self.engine.trace_dropped
        other = {
            "conveyor": {
                "rank": self.rank,
                "size": self.size,
                "clock": "CLOCK_MONOTONIC shifted onto rank 0's (Cristian's method)",
                "offset_ns": self.offset,
                "dropped": dropped,
            }
        }
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with open(temporary, "w") as f:
            f.write('{"traceEvents":[')
            for i, event in enumerate(self.events()):
                if i:
                    f.write(",\n")
                f.write(json.dumps(event, separators=(",", ":")))
            f.write(f'],"displayTimeUnit":"ms","otherData":{json.dumps(other)}}}\n')
        os.replace(temporary, self.path)  # a reader never sees half a file
        if dropped:
            logger.warning(
                "conveyor: rank %d: the trace was full: %d events were not recorded "
                "(CONVEYOR_TRACE_EVENTS raises the limit)",
                self.rank,
                dropped,
            )

    def write_safely(self) -> None:
        """`write`, logging rather than raising a failure (on SIGUSR1 and abnormal exits)."""
        try:
            self.write()
        except Exception:
            logger.exception(
                "conveyor: rank %d: the trace %s was not written", self.rank, self.path
            )


class TracedTransport(Transport):
    """A `Transport` whose blocking waits for answers are spans of its tracer.

    Only a traced messenger has one: an untraced wait runs `Transport`'s
    own code, without a test for tracing.
    """

    def __init__(self, engine: core.engine.Engine, aggregate: bool, tracer: Tracer) -> None:
        super().__init__(engine, aggregate)
        self.tracer = self._tracer = tracer

    def wait_for(self, waiter: Waiter, timeout: float | None) -> None:
        """Serve until `waiter` is ready, recorded as a ``result`` wait."""
        start = time.monotonic_ns()
        try:
            super().wait_for(waiter, timeout)
        finally:
            self._tracer.span("wait", "result", start)


def merge(documents: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Return one trace of every rank's events in `documents`, with sends joined to deliveries.

    Each send is paired with a delivery of the same kind and tag from its
    rank on its destination, in order (conveyor keeps the order of the
    messages of one pair of ranks), and the pair becomes a flow (``s`` and
    ``f`` events): an arrow from the send to the handler span.

    Parameters
    ----------
    documents : iterable of dict
        Per-rank traces as written by a traced `Messenger` (already merged
        ones too: their flows are made again).

    Returns
    -------
    dict
        A Chrome trace document (``traceEvents`` sorted by time).
    """
    events: list[dict[str, Any]] = []
    ranks: list[Any] = []
    for document in documents:
        events.extend(e for e in document["traceEvents"] if e.get("ph") not in ("s", "f"))
        info = document.get("otherData", {}).get("conveyor", {})
        ranks.extend(info.get("ranks", [info] if info else []))
    events.sort(key=lambda e: (e.get("ts", -1.0), e["pid"]))
    sends: dict[tuple[Any, ...], collections.deque[dict[str, Any]]] = collections.defaultdict(
        collections.deque
    )
    for e in events:
        if e.get("cat") == "send":
            key = (e["pid"], e["args"]["dest"], e["args"]["kind"], e["name"])
            sends[key].append(e)
    flows: list[dict[str, Any]] = []
    for e in events:
        if e.get("cat") in ("handler", "delivery") and e["args"]["kind"] != "rejected":
            queue = sends.get((e["args"]["source"], e["pid"], e["args"]["kind"], e["name"]))
            if queue:
                sent = queue.popleft()
                number = len(flows) // 2
                common = {"cat": "message", "name": e["name"], "id": number, "tid": MESSAGES_TID}
                flows.append({"ph": "s", "pid": sent["pid"], "ts": sent["ts"], **common})
                flows.append({"ph": "f", "bp": "e", "pid": e["pid"], "ts": e["ts"], **common})
    return {
        "traceEvents": events + flows,
        "displayTimeUnit": "ms",
        "otherData": {"conveyor": {"ranks": sorted(ranks, key=lambda r: r.get("rank", 0))}},
    }


def read_traces(paths: Sequence[str]) -> dict[str, Any]:
    """Read the trace files `paths` and return them `merge`-d.

    Raises
    ------
    ValueError
        If a file is not a trace (JSON with a ``traceEvents`` list).
    """
    documents = []
    for path in paths:
        with open(path) as f:
            try:
                document = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("traceEvents"), list):
            raise ValueError(f"{path}: not a trace (no traceEvents list)")
        documents.append(document)
    return merge(documents)
