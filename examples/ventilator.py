"""Work distribution with reliability: a ventilator, workers and a sink.

ZeroMQ's divide-and-conquer pipeline, with what a real service adds to it.
A client asks for the sum of f(x) over a range of integers. The ventilator
splits the request into chunks and hands them out to workers. The sink adds
up the chunks' results and answers the client. On top of that:

- a cache of chunk results: a chunk is marked in progress when it is issued
  and done when its result arrives, so the chunks that overlapping requests
  share are computed once (results are kept in the sink's ``m.store``);
- answers in a stream: the client gets a first answer at once (how many
  chunks were in the cache already), one per chunk done, then the sum
  (``m.request_stream`` and ``msg.reply(..., final=False)``);
- deadlines: a chunk that no worker has finished within ``--deadline``
  seconds is issued again to another worker. The first result wins and a
  late duplicate is ignored. ``--stuck-worker R`` makes worker R hang in
  every chunk it computes (by default the last worker, if there are two or
  more);
- cancellation: the client cancels a request midway (``--cancel-after K``
  chunks). The ventilator stops issuing its chunks and cancels the ones in
  flight (``Future.cancel``), workers see ``msg.cancelled`` and skip them,
  and the sink drops the request;
- a worker that crashes (``--kill-worker``: the first worker leaves by
  ``os._exit`` as it starts its third chunk). The messenger is then
  fault-tolerant: the ventilator's requests to the dead worker fail with
  ``RankFailedError``, it issues their chunks to the other workers, and
  the job ends without the dead rank. Start it so that mpiexec keeps the
  other ranks running: ``conveyor run --fault-tolerant``.

Rank 0 is the client and rank 1 the ventilator and the sink. The other ranks
are workers. With fewer ranks, roles share ranks: in plain python, rank 0
plays them all. The sink lives on the ventilator's rank because it answers
the client's request, and only the rank a request was sent to can answer it
several times. No rank waits on any one thing: each runs a loop that
handles messages and gives each of its roles a turn (a worker computes one
chunk per turn), so the ventilator keeps watching the clock and a
cancellation reaches a worker between two chunks.

At the end rank 0 checks every answer against a single-process computation.
It also checks that no chunk was computed twice unless it was re-issued, and
that no rank holds anything of a request anymore. Then it prints a summary
and PASS or FAIL (exit status 1)::

    mpiexec -n 4 python examples/ventilator.py
    mpiexec -n 6 python examples/ventilator.py --values 400000 --stuck-worker none
    python examples/ventilator.py --function prime --json summary.json
    conveyor run --fault-tolerant -n 4 examples/ventilator.py --kill-worker
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

import conveyor as cv

# The longest an idle rank waits for a message before its roles look at the
# clock (the ventilator's deadlines are checked that often).
TICK = 0.02
# The chunk a worker killed by --kill-worker crashes on (1 is its first):
# by then it holds chunks (up to --window) that the others must take over.
KILLED_AT_CHUNK = 3

T = TypeVar("T")
# A job's key: (client rank, request number).
JobKey = tuple[int, int]


# -- the work ----------------------------------------------------------------


def collatz_steps(x: npt.ArrayLike) -> np.ndarray:
    """Return the number of Collatz steps (n/2 or 3n+1) from each of `x` down to 1 (0 below 2)."""
    x = np.asarray(x, dtype=np.int64)
    steps = np.zeros(len(x), dtype=np.int64)
    index = np.flatnonzero(x > 1)
    value = x[index]
    while len(value):
        odd = value & 1  # 3n+1 is even: take both steps at once
        value = np.where(odd, (3 * value + 1) >> 1, value >> 1)
        steps[index] += 1 + odd
        going = value > 1
        index, value = index[going], value[going]
    return steps


def is_prime(x: npt.ArrayLike) -> np.ndarray:
    """Return whether each of `x` is prime (trial division by the primes up to sqrt(max(x)))."""
    x = np.asarray(x, dtype=np.int64)
    top = math.isqrt(int(x.max())) if len(x) else 0
    sieve = np.ones(top + 1, dtype=bool)
    sieve[:2] = False
    for p in range(2, math.isqrt(top) + 1):
        if sieve[p]:
            sieve[p * p :: p] = False
    prime = x >= 2
    for divisor in np.flatnonzero(sieve):
        prime &= (x % divisor != 0) | (x == divisor)
    return prime


# The functions a client may ask for, by name: f(1-D int64 array) -> array.
FUNCTIONS = {"collatz": collatz_steps, "prime": is_prime}


class Chunk(NamedTuple):
    """A piece of a request: the sum of f(x) for x in range(lo, hi)."""

    function: str
    lo: int
    hi: int

    @property
    def name(self) -> str:
        """The chunk's key in the cache, also its name in the sink's item store."""
        return f"{self.function}/{self.lo}-{self.hi}"

    @classmethod
    def parse(cls, name: str) -> Chunk:
        function, _, bounds = name.rpartition("/")
        lo, _, hi = bounds.partition("-")
        return cls(function, int(lo), int(hi))

    def compute(self) -> int:
        return int(FUNCTIONS[self.function](np.arange(self.lo, self.hi, dtype=np.int64)).sum())


def split(function: str, start: int, stop: int, size: int) -> list[Chunk]:
    """Return the chunks of the request "sum of f(x) for x in range(start, stop)".

    Chunks are cut at the multiples of `size`, whatever the request, so
    overlapping requests have the same chunks (except the first and last
    ones, which the request's own ends may cut).
    """
    edges = [start, *range((start // size + 1) * size, stop, size), stop]
    return [Chunk(function, lo, hi) for lo, hi in zip(edges, edges[1:]) if lo < hi]


def single_process_sums(requests: list[Request]) -> dict[int, int]:
    """Return {number: sum} for `requests` (function, start, stop, number), computed here.

    f is evaluated once per function, over all the values the requests cover.
    """
    sums: dict[int, int] = {}
    for function in {r.function for r in requests}:
        mine = [r for r in requests if r.function == function]
        lo = min(r.start for r in mine)
        values = FUNCTIONS[function](np.arange(lo, max(r.stop for r in mine), dtype=np.int64))
        for r in mine:
            sums[r.number] = int(values[r.start - lo : r.stop - lo].sum())
    return sums


# -- roles -------------------------------------------------------------------


class Layout(NamedTuple):
    """Which rank plays which role."""

    client: int
    ventilator: int  # and the sink
    workers: tuple[int, ...]

    @classmethod
    def of(cls, size: int) -> Layout:
        workers = [r for r in range(2, size)] or [r for r in range(1, size)] or [0]
        return cls(0, 1 % size, tuple(workers))


class Job:
    """A client's request, as the ventilator and the sink see it."""

    def __init__(self, msg: cv.Message, chunks: list[Chunk]) -> None:
        self.msg = msg  # deferred: the sink answers it
        self.names = [chunk.name for chunk in chunks]
        self.done = 0  # chunks whose result the sink holds
        self.cached = 0  # done before the request came
        self.joined = 0  # in progress for another request when it came


class Pending:
    """A chunk wanted and not done yet (done ones are in the sink's store)."""

    __slots__ = ("chunk", "wanted_by", "attempts", "queued", "issued_at")

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.wanted_by: set[JobKey] = set()  # the keys of the jobs that need it
        self.attempts: set[int] = set()  # the numbers of its attempts that workers hold
        self.queued = True  # waiting for a worker with room
        self.issued_at = 0.0  # when it was last given to a worker


class Attempt(NamedTuple):
    """A chunk given to a worker, until the worker reports a result or a skip."""

    name: str
    worker: int
    future: cv.Future[None]  # of the request to the worker: cancel() tells it to skip


class Ventilator:
    """Splits requests into chunks, issues them to workers, and (as the sink) answers the client.

    A chunk is never computed twice: a request that needs a chunk done
    takes it from the cache, one that needs a chunk in progress waits for it
    (the chunk is issued again only once its deadline has passed).
    """

    def __init__(
        self, m: cv.Messenger, workers: tuple[int, ...], chunk: int, window: int, deadline: float
    ) -> None:
        self.m = m
        self.workers = workers
        self.chunk = chunk  # values per chunk: the same grid for every request
        self.window = window  # chunks a worker holds at most (computing and waiting)
        self.deadline = deadline
        self.jobs: dict[JobKey, Job] = {}
        self.pending: dict[str, Pending] = {}  # chunk name -> Pending
        # chunk names waiting for a worker (some stale)
        self.queue: collections.deque[str] = collections.deque()
        self.attempts: dict[int, Attempt] = {}  # attempt number -> Attempt
        self.next_attempt = 1
        self.load = dict.fromkeys(self.workers, 0)  # attempts each worker holds
        self.suspects: set[int] = set()  # workers that missed a deadline: only used if all did
        self.lost: set[int] = set()  # workers that failed (cv.RankFailedError)
        self.lost_chunks: list[str] = []  # the chunks of the attempts they held
        self.draining = False  # the client sends no more requests
        self.stopped = False
        self.counts: collections.Counter[str] = collections.Counter()
        self.reissued: collections.Counter[str] = collections.Counter()  # chunk name -> reissues
        self.cancelled: list[dict[str, Any]] = []  # what the cancelled requests had
        m.on("job")(self.on_job)
        m.on("result")(self.on_result)
        m.on("skipped")(self.on_skipped)
        m.on("drain")(self.on_drain)

    # The ventilator's side: requests in, chunks out.

    def on_job(self, msg: cv.Message) -> None:
        """A request {"number", "function", "start", "stop"}: answered later, chunk by chunk."""
        request = msg.payload
        function, start, stop = request["function"], request["start"], request["stop"]
        if function not in FUNCTIONS:
            raise ValueError(f"unknown function {function!r} (known: {', '.join(FUNCTIONS)})")
        if not 0 <= start <= stop:
            raise ValueError(f"need 0 <= start <= stop, not [{start}, {stop})")
        msg.defer()
        key = (msg.source, request["number"])
        chunks = split(function, start, stop, self.chunk)
        job = self.jobs[key] = Job(msg, chunks)
        for chunk in chunks:
            entry = self.pending.get(chunk.name)
            if chunk.name in self.m.store:
                job.cached += 1
            elif entry is not None:
                job.joined += 1
                entry.wanted_by.add(key)
            else:
                entry = self.pending[chunk.name] = Pending(chunk)
                entry.wanted_by.add(key)
                self.queue.append(chunk.name)
        job.done = job.cached
        self.counts["cache_hits"] += job.cached
        self.counts["joined"] += job.joined
        self.answer(key, job)  # the quick first answer (the final one if all was cached)
        self.pump()

    def pump(self) -> None:
        """Issue queued chunks to the workers that have room."""
        while self.queue:
            entry = self.pending.get(self.queue[0])
            if entry is None or not entry.queued:  # done, cancelled or issued since
                self.queue.popleft()
                continue
            worker = self.pick_worker(avoid={self.attempts[a].worker for a in entry.attempts})
            if worker is None:
                return
            self.queue.popleft()
            number = self.next_attempt
            self.next_attempt += 1
            # A request, not a plain send, so that it can be cancelled.
            future = self.m.request(worker, "chunk", {"attempt": number, "chunk": entry.chunk.name})
            entry.issued_at = time.monotonic()
            self.attempts[number] = Attempt(entry.chunk.name, worker, future)
            entry.attempts.add(number)
            entry.queued = False
            self.load[worker] += 1
            self.counts["issued"] += 1

    def pick_worker(self, avoid: set[int]) -> int | None:
        """Return a worker with room, or None.

        Suspects only if every worker is one; a worker in `avoid` (one that
        holds the chunk already) only if no other has room.
        """
        trusted = [w for w in self.workers if w not in self.suspects] or list(self.workers)
        free = [w for w in trusted if self.load[w] < self.window]
        if not free:
            return None
        return min(free, key=lambda w: (w in avoid, self.load[w]))

    def step(self) -> bool:
        """Look at the clock and at the cancellations; give the stop signal once drained."""
        for key, job in list(self.jobs.items()):
            if job.msg.cancelled:
                self.drop(key, job)
        for number, attempt in list(self.attempts.items()):
            # Its request failed with RankFailedError; or it was cancelled,
            # and the worker that would say it skipped it is gone.
            future = attempt.future
            failed = future.done() and not future.cancelled() and future.exception() is not None
            if attempt.worker in self.m.failed_ranks or (
                failed and isinstance(future.exception(), cv.RankFailedError)
            ):
                self.lose(number, attempt)
        now = time.monotonic()
        for name, entry in self.pending.items():
            if entry.wanted_by and not entry.queued and now - entry.issued_at > self.deadline:
                # No result in time: issue it again (first in line) to another
                # worker, and trust the late ones less. The old attempts go
                # on: whichever result comes first wins.
                self.suspects.update(self.attempts[a].worker for a in entry.attempts)
                entry.queued = True
                self.queue.appendleft(name)
                self.reissued[name] += 1
        self.pump()
        if self.draining and not self.jobs and not self.attempts and not self.stopped:
            # Sent after every chunk request: each worker handles all it was
            # given before it stops. Not before every attempt is settled:
            # one held by a worker that crashed ends only once the messenger
            # declares the worker failed.
            for rank in range(self.m.size):
                if rank not in self.lost:
                    self.m.send(rank, "stop")
            self.stopped = True
        return False

    def lose(self, number: int, attempt: Attempt) -> None:
        """The worker of `attempt` failed: give it no more chunks, and issue this one again."""
        del self.attempts[number]
        if attempt.worker not in self.lost:
            self.lost.add(attempt.worker)
            self.workers = tuple(w for w in self.workers if w != attempt.worker)
        self.counts["lost"] += 1
        self.lost_chunks.append(attempt.name)
        entry = self.pending.get(attempt.name)
        if entry is None:
            return
        entry.attempts.discard(number)
        if not entry.attempts and not entry.queued:
            if entry.wanted_by:
                entry.queued = True
                self.queue.appendleft(attempt.name)
            else:  # cancelled meanwhile
                del self.pending[attempt.name]

    def drop(self, key: JobKey, job: Job) -> None:
        """The client cancelled `job`: stop issuing its chunks, cancel those in flight, forget it."""
        del self.jobs[key]
        issued = 0
        for name in job.names:
            entry = self.pending.get(name)
            if entry is None:  # done
                continue
            entry.wanted_by.discard(key)
            issued += bool(entry.attempts)
            if entry.wanted_by:  # another request needs it
                continue
            entry.queued = False
            for number in entry.attempts:
                self.attempts[number].future.cancel()  # the worker sees msg.cancelled
            if not entry.attempts:
                del self.pending[name]
            # else kept until the workers report, so that a request that needs
            # the chunk meanwhile waits for it rather than computing it again
        self.counts["cancelled"] += 1
        self.cancelled.append(
            {"request": key[1], "chunks": job.names, "done": job.done, "in_flight": issued}
        )

    def on_drain(self, msg: cv.Message) -> None:
        self.draining = True

    def idle(self) -> bool:
        return self.stopped

    # The sink's side: results in, answers out.

    def on_result(self, msg: cv.Message) -> None:
        """A worker's result: {"attempt", "value"}.

        Workers send results as messages of their own: the answer to a chunk
        request that was cancelled meanwhile would be dropped, and the value lost.
        """
        number = msg.payload["attempt"]
        attempt = self.attempts.pop(number)
        self.load[attempt.worker] -= 1
        if attempt.name in self.m.store:
            self.counts["duplicates"] += 1  # a late attempt: the first result won
            return
        self.m.store.put(attempt.name, msg.payload["value"])
        entry = self.pending.pop(attempt.name)
        for other in entry.attempts - {number}:
            self.attempts[other].future.cancel()
        for key in entry.wanted_by:
            job = self.jobs[key]
            job.done += 1
            self.answer(key, job)
        self.pump()

    def on_skipped(self, msg: cv.Message) -> None:
        """A worker skipped the cancelled attempt `msg.payload`."""
        attempt = self.attempts.pop(msg.payload)
        self.load[attempt.worker] -= 1
        entry = self.pending.get(attempt.name)
        if entry is not None:
            entry.attempts.discard(msg.payload)
            if not entry.attempts and not entry.queued:
                if entry.wanted_by:  # wanted again since it was cancelled
                    entry.queued = True
                    self.queue.appendleft(attempt.name)
                else:
                    del self.pending[attempt.name]
        self.pump()

    def answer(self, key: JobKey, job: Job) -> None:
        """Tell the client how far `job` is; the sum, and forget it, once it is complete."""
        progress: dict[str, int] = {
            "done": job.done,
            "chunks": len(job.names),
            "cached": job.cached,
            "joined": job.joined,
        }
        if job.done < len(job.names):
            job.msg.reply(progress, final=False)
            return
        progress["sum"] = sum(self.m.store[name] for name in job.names)
        job.msg.reply(progress)
        del self.jobs[key]

    def report(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "reissued": dict(self.reissued),
            "suspects": sorted(self.suspects),
            "lost": sorted(self.lost),
            "lost_chunks": self.lost_chunks,
            "cancelled": self.cancelled,
            "left": {
                "jobs": len(self.jobs),
                "pending": len(self.pending),
                "attempts": len(self.attempts),
            },
        }


class Worker:
    """Computes the chunks it is given one at a time, in order; skips cancelled ones.

    Each chunk request is kept (``msg.defer``) until its turn, so the rank
    keeps handling messages, cancellations included, while chunks wait.
    """

    def __init__(
        self, m: cv.Messenger, sink: int, stuck_seconds: float = 0.0, die_at: int = 0
    ) -> None:
        self.m = m
        self.sink = sink
        self.stuck_seconds = stuck_seconds
        self.die_at = die_at  # crash as this chunk starts (1 is the first; 0: never)
        self.started = 0
        self.queue: collections.deque[cv.Message] = collections.deque()
        # chunk name -> times computed here
        self.computed: collections.Counter[str] = collections.Counter()
        self.skipped = 0
        m.on("chunk")(self.on_chunk)

    def on_chunk(self, msg: cv.Message) -> None:
        msg.defer()
        self.queue.append(msg)

    def step(self) -> bool:
        """Compute (or skip) the next chunk; return whether there was one."""
        if not self.queue:
            return False
        msg = self.queue.popleft()
        number = msg.payload["attempt"]
        if msg.cancelled:  # the ventilator gave it up while it waited here
            self.skipped += 1
            self.m.send(self.sink, "skipped", number)
            return True
        chunk = Chunk.parse(msg.payload["chunk"])
        self.started += 1
        if self.started == self.die_at:
            print(f"worker {self.m.rank} crashes (os._exit) as it starts its chunk {chunk.name}")
            sys.stdout.flush()
            os._exit(1)  # a crash: no cleanup, no reply, no report
        if self.stuck_seconds:
            time.sleep(self.stuck_seconds)  # hung: not even handling messages
        value = chunk.compute()
        self.computed[chunk.name] += 1
        self.m.send(self.sink, "result", {"attempt": number, "value": value})
        msg.reply()  # ends the request (the ventilator drops it if it cancelled it meanwhile)
        return True

    def idle(self) -> bool:
        return not self.queue

    def report(self) -> dict[str, Any]:
        return {"computed": dict(self.computed), "skipped": self.skipped, "queued": len(self.queue)}


class Request:
    """One of the client's requests, and what became of it."""

    def __init__(
        self,
        number: int,
        function: str,
        start: int,
        stop: int,
        cancel_after: int = 0,
        after: Request | None = None,
    ) -> None:
        self.number, self.function, self.start, self.stop = number, function, start, stop
        self.cancel_after = cancel_after  # cancel once this many chunks are done (0: never)
        self.after = after  # the Request to wait for before sending this one
        self.stream: cv.Stream[dict[str, int]] | None = None
        self.status = "waiting"  # then "running", and "done" or "cancelled"
        self.first: dict[str, int] | None = None  # the first answer: what the cache had
        self.last: dict[str, int] | None = None  # the latest answer

    def payload(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "function": self.function,
            "start": self.start,
            "stop": self.stop,
        }


def arrived(stream: cv.Stream[T]) -> list[T]:
    """Return the answers that have arrived on `stream` (made with ``timeout=0``), without waiting."""
    answers: list[T] = []
    while True:
        try:
            answers.append(next(stream))
        except (StopIteration, cv.TimeoutError):
            return answers


class Client:
    """Sends the requests, follows their answers, cancels one midway."""

    def __init__(self, m: cv.Messenger, ventilator: int, requests: list[Request]) -> None:
        self.m = m
        self.ventilator = ventilator
        self.requests = requests
        self.drained = False

    def step(self) -> bool:
        for r in self.requests:
            if r.status == "waiting" and (r.after is None or r.after.status == "done"):
                r.stream = self.m.request_stream(self.ventilator, "job", r.payload(), timeout=0)
                r.status = "running"
            if r.status != "running" or r.stream is None:
                continue
            for answer in arrived(r.stream):
                r.first = r.first or answer
                r.last = answer
            if r.stream.done():
                r.status = "done"
            elif r.cancel_after and r.last and r.last["done"] >= r.cancel_after:
                r.stream.cancel()
                r.status = "cancelled"
        if not self.drained and all(r.status in ("done", "cancelled") for r in self.requests):
            self.m.send(self.ventilator, "drain")  # no more requests: stop once idle
            self.drained = True
        return False

    def idle(self) -> bool:
        return self.drained


def make_requests(args: argparse.Namespace) -> list[Request]:
    """The demonstration: two overlapping requests, one cancelled midway, one answered by the cache."""
    n, f = args.values, args.function
    first = Request(1, f, 0, n)
    return [
        first,
        Request(2, f, n // 2, n // 2 + n),  # shares half its chunks with request 1
        Request(3, f, 2 * n, 4 * n, cancel_after=args.cancel_after),
        Request(4, f, 0, n, after=first),  # request 1 again, once it is done
    ]


# -- running it ----------------------------------------------------------------

# Counters of m.stats() in the report, and what must be 0 at the end.
STATS = (
    "pending_requests",
    "open_requests",
    "late_answers",
    "answers_cancelled",
    "requests_cancelled",
    "store_items",
)
HELD = ("pending_requests", "open_requests", "jobs", "pending", "attempts", "queued")


class Role(Protocol):
    """What `serve` gives turns to: the client, the ventilator, a worker."""

    def step(self) -> bool:
        """Do some work; return whether there was any."""
        ...

    def idle(self) -> bool:
        """Return whether the role has nothing left to do."""
        ...


def serve(m: cv.Messenger, roles: list[Role], stopped: Callable[[], object]) -> None:
    """Handle messages and give each role a turn, until `stopped()` and every role is idle."""
    while not (stopped() and all(role.idle() for role in roles)):
        busy = False
        for role in roles:
            busy = role.step() or busy
        m.progress(0.0 if busy else TICK)  # wait for a message only if there was nothing to do


def run(m: cv.Messenger, layout: Layout, args: argparse.Namespace) -> bool:
    """Play this rank's roles until the ventilator says stop; on rank 0, check and report.

    Returns False on rank 0 if a check fails.
    """
    client: Client | None = None
    ventilator: Ventilator | None = None
    worker: Worker | None = None
    roles: list[Role] = []
    if m.rank == layout.client:
        client = Client(m, layout.ventilator, make_requests(args))
        roles.append(client)
    if m.rank == layout.ventilator:
        ventilator = Ventilator(m, layout.workers, args.chunk, args.window, args.deadline)
        roles.append(ventilator)
    if m.rank in layout.workers:
        hang = args.stuck_seconds if m.rank == args.stuck_worker else 0.0
        die_at = KILLED_AT_CHUNK if m.rank == args.kill_worker else 0
        worker = Worker(m, layout.ventilator, hang, die_at)
        roles.append(worker)
    stopped: list[int] = []
    reports: dict[int, dict[str, Any]] = {}

    @m.on("stop")
    def stop(msg: cv.Message) -> None:
        stopped.append(msg.source)

    @m.on("report")
    def collect(msg: cv.Message) -> None:
        reports[msg.source] = msg.payload

    m.wait_quiet()  # as a barrier: every receiver is registered before the first request
    start = time.perf_counter()
    serve(m, roles, lambda: stopped)
    seconds = time.perf_counter() - start
    m.wait_quiet()  # what is still in flight (say, a stuck worker's late result) arrives

    stats = m.stats()
    m.send(
        layout.client,
        "report",
        {
            "stats": {key: stats[key] for key in STATS},
            "worker": worker.report() if worker else None,
            "ventilator": ventilator.report() if ventilator else None,
        },
    )
    m.wait_quiet()
    if client is None:
        return True
    return summarize(client.requests, reports, layout, args, seconds)


def summarize(
    requests: list[Request],
    reports: dict[int, dict[str, Any]],
    layout: Layout,
    args: argparse.Namespace,
    seconds: float,
) -> bool:
    """Check the run, print its summary and PASS or FAIL; return whether it passed."""
    vent = reports[layout.ventilator]["ventilator"]
    computed: collections.Counter[str] = collections.Counter()
    skipped = 0
    for report in reports.values():
        if report["worker"]:
            computed.update(report["worker"]["computed"])
            skipped += report["worker"]["skipped"]
    failures: list[str] = []
    expected = single_process_sums([r for r in requests if r.status == "done"])
    print(
        f"{'request':<8} {'f':<8} {'range':<22} {'chunks':>6} {'cached':>6} {'joined':>6}  result"
    )
    for r in requests:
        first = r.first or {}
        line = (
            f"{r.number:<8} {r.function:<8} {f'[{r.start:,}, {r.stop:,})':<22} "
            f"{first.get('chunks', '-'):>6} {first.get('cached', '-'):>6} "
            f"{first.get('joined', '-'):>6}  "
        )
        if r.status == "done":
            assert r.last is not None  # the final answer
            ok = r.last["sum"] == expected[r.number]
            line += (
                f"{r.last['sum']:,} ({'equals' if ok else 'DIFFERS from'} the single-process sum)"
            )
            if not ok:
                failures.append(f"request {r.number}: {r.last['sum']} != {expected[r.number]}")
        else:
            done = r.last["done"] if r.last else 0
            line += f"cancelled after {done} of {first.get('chunks', '?')} chunks"
        print(line)

    # A chunk is computed once; again only if it was re-issued after its deadline.
    twice = sorted(name for name, n in computed.items() if n > 1 + vent["reissued"].get(name, 0))
    if twice:
        failures.append(f"computed twice without being re-issued: {', '.join(twice)}")
    # Nothing of a request is left anywhere: no request open or pending, no
    # job, chunk or attempt at the ventilator, no chunk waiting at a worker.
    left: list[str] = []
    for rank, report in sorted(reports.items()):
        held = {
            **report["stats"],
            **(report["ventilator"] or {}).get("left", {}),
            **{key: value for key, value in (report["worker"] or {}).items() if key == "queued"},
        }
        left += [
            f"rank {rank}: {key} {value}" for key, value in held.items() if key in HELD and value
        ]
    if left:
        failures.append(f"state left at the end: {', '.join(left)}")
    again = sum(n - 1 for n in computed.values())
    late = {
        rank: report["stats"]["late_answers"]
        for rank, report in reports.items()
        if report["stats"]["late_answers"]
    }
    counts = vent["counts"]
    cancelled_chunks = {name for job in vent["cancelled"] for name in job["chunks"]}
    computed_cancelled = sum(computed[name] for name in cancelled_chunks)

    print(
        f"chunks computed    {sum(computed.values()):>5}  ({len(computed)} distinct; "
        f"{again} computed again after a re-issue)"
    )
    print(
        f"chunks re-issued   {sum(vent['reissued'].values()):>5}  (no result within "
        f"{args.deadline:g} s; late workers: {', '.join(map(str, vent['suspects'])) or 'none'})"
    )
    print(
        f"duplicates         {counts.get('duplicates', 0):>5}  late results ignored: the first won"
    )
    print(
        f"workers lost       {len(vent['lost']):>5}  "
        f"({', '.join(f'rank {r}' for r in vent['lost']) or 'none'}; the "
        f"{counts.get('lost', 0)} chunk requests they held given up, the chunks done by others)"
    )
    print(
        f"cache hits         {counts.get('cache_hits', 0):>5}  chunks answered from the cache, "
        f"{counts.get('joined', 0)} joined while in progress"
    )
    print(
        f"requests cancelled {counts.get('cancelled', 0):>5}  ({computed_cancelled} of their "
        f"{len(cancelled_chunks)} chunks computed, {skipped} skipped by workers)"
    )
    print(
        f"late answers       {sum(late.values()):>5}  dropped after a cancel "
        f"({', '.join(f'rank {r}: {n}' for r, n in sorted(late.items())) or 'none'})"
    )
    print(
        f"left over          {'none' if not left else len(left):>5}  "
        f"(requests, chunks, attempts held anywhere)"
    )
    print(f"time               {seconds:>5.2f} s  (from the first request to the last answer)")

    if args.json:
        summary = {
            "ranks": len(reports),
            "layout": layout._asdict(),
            "seconds": seconds,
            "requests": [
                {
                    "number": r.number,
                    "function": r.function,
                    "start": r.start,
                    "stop": r.stop,
                    "status": r.status,
                    "first": r.first,
                    "last": r.last,
                    "expected": expected.get(r.number),
                }
                for r in requests
            ],
            "computed": dict(computed),
            "reissued": vent["reissued"],
            "suspects": vent["suspects"],
            "lost": vent["lost"],
            "lost_chunks": vent["lost_chunks"],
            "counts": counts,
            "cancelled": vent["cancelled"],
            "skipped": skipped,
            "stats": {str(rank): report["stats"] for rank, report in reports.items()},
            "left": left,
            "failures": failures,
        }
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=1)
    for failure in failures:
        print(f"FAIL: {failure}")
    if not failures:
        print(
            "PASS: every sum equals the single-process one, no chunk was computed twice "
            "unless re-issued, nothing is left over"
        )
    return not failures


def parse_args(
    argv: list[str] | None = None,
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="A ventilator, workers and a sink over MPI ranks with conveyor: a chunk cache, "
        "deadlines and cancellation."
    )
    parser.add_argument(
        "--values",
        type=int,
        default=100_000,
        help="values per request: request 1 is f over [0, VALUES) (default: %(default)s)",
    )
    parser.add_argument(
        "--function", choices=sorted(FUNCTIONS), default="collatz", help="f (default: %(default)s)"
    )
    parser.add_argument(
        "--chunk", type=int, default=2_500, help="values per chunk (default: %(default)s)"
    )
    parser.add_argument(
        "--window", type=int, default=2, help="chunks a worker holds at most (default: %(default)s)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=0.5,
        help="seconds before a chunk is issued again (default: %(default)s)",
    )
    parser.add_argument(
        "--stuck-worker",
        default="auto",
        metavar="RANK",
        help="the worker that hangs in every chunk: a rank, 'none', or 'auto': "
        "the last worker if there are two or more (default: %(default)s)",
    )
    parser.add_argument(
        "--stuck-seconds",
        type=float,
        default=1.5,
        help="how long the stuck worker hangs per chunk (default: %(default)s)",
    )
    parser.add_argument(
        "--cancel-after",
        type=int,
        default=8,
        metavar="K",
        help="cancel request 3 once K of its chunks are done; 0: never (default: %(default)s)",
    )
    parser.add_argument(
        "--kill-worker",
        action="store_true",
        help="the first worker crashes (os._exit) as it starts its chunk "
        f"{KILLED_AT_CHUNK}; the messenger is fault-tolerant and the others take over its "
        "chunks (4 ranks or more; run with 'conveyor run --fault-tolerant')",
    )
    parser.add_argument("--json", metavar="FILE", help="write the summary to FILE as JSON")
    args = parser.parse_args(argv)
    for name in ("values", "chunk", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if not args.deadline > 0 or args.stuck_seconds < 0 or args.cancel_after < 0:
        parser.error("need --deadline > 0, --stuck-seconds >= 0 and --cancel-after >= 0")
    if args.stuck_worker not in ("auto", "none"):
        try:
            args.stuck_worker = int(args.stuck_worker)
        except ValueError:
            parser.error(
                f"--stuck-worker must be a rank, 'auto' or 'none', not {args.stuck_worker!r}"
            )
    return parser, args


def choose_stuck_worker(
    parser: argparse.ArgumentParser, args: argparse.Namespace, layout: Layout
) -> int | None:
    """Return the rank of the stuck worker, or None."""
    if args.stuck_worker == "none":
        return None
    if args.stuck_worker == "auto":
        # Not while a worker is killed: the one left would hang in every chunk.
        return layout.workers[-1] if len(layout.workers) > 1 and not args.kill_worker else None
    if args.stuck_worker not in layout.workers:
        parser.error(
            f"--stuck-worker {args.stuck_worker} is not a worker "
            f"(the workers are ranks {', '.join(map(str, layout.workers))})"
        )
    if len(layout.workers) < 2:
        parser.error(
            "--stuck-worker needs another worker to take over its chunks (4 ranks or more)"
        )
    stuck: int = args.stuck_worker  # parse_args made it an int
    return stuck


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    with cv.Messenger(fault_tolerant=args.kill_worker) as m:
        layout = Layout.of(m.size)
        # Every rank decides alike: a bad option stops them all here, before
        # any message or collective call.
        args.stuck_worker = choose_stuck_worker(parser, args, layout)
        if args.kill_worker and len(layout.workers) < 2:
            parser.error(
                "--kill-worker needs another worker to take over its chunks (4 ranks or more)"
            )
        args.kill_worker = layout.workers[0] if args.kill_worker else None
        if m.rank == 0:
            workers = ", ".join(map(str, layout.workers))
            print(
                f"{m.size} rank{'s' if m.size > 1 else ''}: client {layout.client}, "
                f"ventilator and sink {layout.ventilator}, "
                f"worker{'s' if len(layout.workers) > 1 else ''} {workers}"
            )
            if args.stuck_worker is not None:
                print(
                    f"worker {args.stuck_worker} is stuck: it hangs {args.stuck_seconds:g} s in "
                    f"every chunk (deadline {args.deadline:g} s)"
                )
            if args.kill_worker is not None:
                print(f"worker {args.kill_worker} crashes as it starts its chunk {KILLED_AT_CHUNK}")
        ok = run(m, layout, args)
    # Exit only after the messenger has closed (collectively) on every rank.
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
