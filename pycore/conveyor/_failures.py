"""Fault tolerance: a heartbeat failure detector, and termination detection among the ranks left.

A messenger made with ``fault_tolerant=True`` runs a `Failures` object. Its
thread sends a heartbeat (an empty MPI message on a communicator of its
own, so that the engine's termination detection never counts it) to every
other rank four times per ``CONVEYOR_HEARTBEAT_S`` and declares failed a
rank that stayed silent that long. A declared rank is failed for good, on
the program's thread (`Failures.apply`, called whenever the transport
checks that it is open): the requests waiting for it fail with
`RankFailedError`, and later sends and requests to it raise it.

`wait_quiet` cannot use the engine's wave (an ``MPI_Iallreduce`` over every
rank, which a dead rank never joins) and runs waves of its own instead
(`Failures.step`): each rank sends every rank it believes alive its frame counts,
less the frames it posted to the failed ranks and those it finished that
came from them (`Engine.frames_without`), with the set of ranks it believes
failed. A wave whose contributions disagree on that set, or during which a
rank was declared failed, is void. Quiet is Mattern's condition over valid
waves, as in `_quiescence`. A rank that learns that another has finished
the same `wait_quiet` (its next contribution belongs to a later call) takes
its word: that rank saw every contribution and the job quiet.

The launcher must leave the other ranks running when one dies: ``conveyor
run --fault-tolerant`` passes MPICH's ``-disable-auto-cleanup`` or Open
MPI's ``--enable-recovery``. MPICH's ``MPI_Finalize`` then waits for the
dead rank for ever, so a rank that saw a failure leaves without it
(`exit_without_finalize`).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ._diagnostics import logger
from ._errors import ConveyorError, RankFailedError
from ._native import core
from ._trace import TracedTransport, Tracer
from ._transport import Transport

if TYPE_CHECKING:
    from mpi4py import MPI

    from ._requests import Requests

__all__ = [
    "WAVE_SLICE",
    "FaultTolerantTransport",
    "Failures",
    "exit_without_finalize",
    "failure_seen",
    "ignore_launcher_signal",
    "messenger_transport",
    "refuse",
]

# Tags on the detector's own communicator.
_HEARTBEAT, _WAVE = 1, 2
# A contribution to a wave: (call, wave, posted, finished), then one flag per
# rank, 1 where the sender believes that rank failed.
_HEAD = 4
# How long the program's thread serves between two looks at the waves.
WAVE_SLICE = 1e-3


class Failures:
    """The failure detector of one fault-tolerant messenger, and its termination detection.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The messenger's communicator: duplicated here (collective).
    requests : Requests
        The messenger's requests: those to a failed rank fail.
    seconds : float
        The silence after which a rank is declared failed.
    """

    def __init__(self, comm: MPI.Intracomm, requests: Requests, seconds: float) -> None:
        self.comm = comm.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.requests = requests
        self.seconds = seconds
        self.period = seconds / 4
        # Applied on the program's thread: ranks failed for good.
        self.failed: set[int] = set()
        # Declared by the heartbeat thread, not applied yet: rank -> why.
        self._declared: dict[int, str] = {}
        self._lock = threading.Lock()
        self.news = False  # something declared and not applied
        self._stop = threading.Event()
        self._sends: list[tuple[int, Any, Any]] = []  # (dest, request, buffer) not complete
        # Termination detection: the number of the wait_quiet call (each
        # ends quiet on every rank), the wave within it, the contributions
        # received, by (call, wave) then source, and this rank's wave.
        self._call = 0
        self._wave = 0
        self._received: dict[tuple[int, int], dict[int, np.ndarray]] = {}
        self._mine: np.ndarray | None = None
        self._posted_before: int | None = None
        self._thread: threading.Thread | None = None
        if self.size > 1:
            self._thread = threading.Thread(
                target=self._beat, name=f"conveyor-heartbeat-rank{self.rank}", daemon=True
            )
            self._thread.start()

    # -- the heartbeat thread ------------------------------------------------

    def _beat(self) -> None:
        from mpi4py import MPI

        comm, empty = self.comm, bytearray(0)
        now = time.monotonic()
        last_seen = [now] * self.size
        pending: dict[int, MPI.Request] = {}
        last_round = now
        while not self._stop.wait(self.period):
            now = time.monotonic()
            # A detector that was starved itself (a loaded machine) blames
            # no one this round: the heartbeats may be waiting unread.
            starved = now - last_round > self.seconds / 2
            last_round = now
            status = MPI.Status()
            while (message := comm.Improbe(MPI.ANY_SOURCE, _HEARTBEAT, status)) is not None:
                message.Recv([empty, 0, MPI.BYTE])
                last_seen[status.Get_source()] = now
            with self._lock:
                gone = set(self._declared) | self.failed
            for rank in range(self.size):
                if rank == self.rank or rank in gone:
                    continue
                request = pending.get(rank)
                if request is None or request.Test():
                    pending[rank] = comm.Isend([empty, 0, MPI.BYTE], rank, _HEARTBEAT)
                silent = now - last_seen[rank]
                if not starved and silent > self.seconds:
                    self._declare(rank, f"no heartbeat for {silent:.1f} s")

    def _declare(self, rank: int, why: str) -> None:
        with self._lock:
            if rank not in self._declared and rank not in self.failed:
                self._declared[rank] = why
                self.news = True

    def stop(self) -> None:
        """Stop the heartbeat thread (the messenger closes or is abandoned)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def free(self) -> None:
        """Free the communicator, once stopped (the messenger closes)."""
        self.comm.Free()

    # -- the program's thread ------------------------------------------------

    def apply(self, engine: core.engine.Engine) -> None:
        """Fail, for good, the ranks the heartbeat thread declared failed since the last call."""
        with self._lock:
            declared, self._declared = self._declared, {}
            self.news = False
        for rank, why in sorted(declared.items()):
            self.failed.add(rank)
            logger.warning(
                "conveyor: rank %d of %d: rank %d failed (%s): its requests fail with "
                "RankFailedError, and the job goes on without it",
                self.rank,
                self.size,
                rank,
                why,
            )
            _note_failure()
            self.requests.fail_rank(rank, why)
            engine.abandon(rank)

    def check_alive(self, rank: int) -> None:
        """Raise `RankFailedError` if `rank` failed."""
        if rank in self.failed:
            raise RankFailedError(rank, "declared failed earlier")

    def step(self, engine: core.engine.Engine) -> bool:
        """Take one look at the waves of `wait_quiet`; return True once the ranks left are quiet.

        It starts this rank's wave, reads what arrived, and judges the wave
        once every rank left has contributed. The caller serves between two
        looks (at most `WAVE_SLICE` s: the waves' messages do not end a wait).
        """
        if self._mine is None:
            self._contribute(engine)
        self._receive()
        if any(call > self._call for call, _ in self._received):
            # A rank has finished this call: it saw the job quiet.
            return self._quiet()
        assert self._mine is not None
        mine = self._mine
        if not np.array_equal(mine[_HEAD:], self._flags()):
            return self._next_wave(None)  # a rank failed during the wave: void
        key = (self._call, self._wave)
        got = self._received.get(key, {})
        if any(rank not in got for rank in self._alive() if rank != self.rank):
            return False
        waves = [mine, *(got[r] for r in self._alive() if r != self.rank)]
        if not all(np.array_equal(w[_HEAD:], mine[_HEAD:]) for w in waves):
            return self._next_wave(None)  # they disagree on who failed: void
        posted = sum(int(w[2]) for w in waves)
        finished = sum(int(w[3]) for w in waves)
        if finished == self._posted_before == posted:
            return self._quiet()
        return self._next_wave(posted)

    def _next_wave(self, posted: int | None) -> bool:
        self._received.pop((self._call, self._wave), None)
        self._wave += 1
        self._mine = None
        self._posted_before = posted
        return False

    def _quiet(self) -> bool:
        self._received = {k: v for k, v in self._received.items() if k[0] > self._call}
        self._call += 1
        self._wave = 0
        self._mine = None
        self._posted_before = None
        return True

    def _alive(self) -> list[int]:
        return [r for r in range(self.size) if r not in self.failed]

    def _flags(self) -> np.ndarray:
        flags = np.zeros(self.size, dtype=np.int64)
        flags[sorted(self.failed)] = 1
        return flags

    def _contribute(self, engine: core.engine.Engine) -> None:
        posted, finished = engine.frames_without(sorted(self.failed))
        mine = np.empty(_HEAD + self.size, dtype=np.int64)
        mine[:_HEAD] = (self._call, self._wave, posted, finished)
        mine[_HEAD:] = self._flags()
        self._mine = mine
        self._sends = [
            (d, r, b) for d, r, b in self._sends if d not in self.failed and not r.Test()
        ]
        for rank in self._alive():
            if rank != self.rank:
                self._sends.append((rank, self.comm.Isend(mine, rank, _WAVE), mine))

    def _receive(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        while (message := self.comm.Improbe(MPI.ANY_SOURCE, _WAVE, status)) is not None:
            source = status.Get_source()
            count = status.Get_count(MPI.INT64_T)
            wave = np.empty(max(count, 0), dtype=np.int64)
            message.Recv(wave)
            if count != _HEAD + self.size or source in self.failed:
                continue  # not a contribution, or from a rank failed since
            key = (int(wave[0]), int(wave[1]))
            if key >= (self._call, self._wave):
                self._received.setdefault(key, {})[source] = wave


class FaultTolerantTransport(Transport):
    """A `Transport` that applies declared failures whenever it checks it is open.

    Sends and requests to a failed rank raise `RankFailedError`; answers to
    one are dropped (nothing waits for them); a wait for credit from one
    ends.
    """

    failures: Failures

    def check_open(self) -> None:
        """Raise `ConveyorError` if the messenger is closed; apply declared failures."""
        super().check_open()
        if self.failures.news:
            self.failures.apply(self.engine)

    def post(self, rank: int, kind: int, ref: int, tag: str, payload: Any) -> None:
        """Send a frame of `kind` unless `rank` failed: then raise, or drop an answer."""
        if rank in self.failures.failed:
            if kind in (core.message.KIND_SEND, core.message.KIND_REQUEST):
                self.failures.check_alive(rank)
            return
        super().post(rank, kind, ref, tag, payload)

    def congested(self, dest: int) -> bool:
        """Whether sends to `dest` wait for its credit; never for a failed rank."""
        return dest not in self.failures.failed and super().congested(dest)

    def relieve(self, dest: int) -> None:
        """Back-pressure as `Transport.relieve`; raise `RankFailedError` if `dest` failed."""
        super().relieve(dest)
        self.failures.check_alive(dest)


class FaultTolerantTracedTransport(FaultTolerantTransport, TracedTransport):
    """The `FaultTolerantTransport` of a traced messenger."""


def messenger_transport(
    engine: core.engine.Engine, aggregate: bool, tracer: Tracer | None, fault_tolerant: bool
) -> Transport:
    """Return the transport of a messenger: traced if it has a `tracer`, fault-tolerant if asked.

    Each kind is a class of its own, so that a messenger that is neither runs
    the plain code, with no test for tracing or failed ranks. They are told
    apart here, the room that knows all four; a fault-tolerant transport gets
    its ``failures`` next (they need the messenger's requests, which need it).
    """
    if fault_tolerant:
        if tracer is None:
            return FaultTolerantTransport(engine, aggregate)
        return FaultTolerantTracedTransport(engine, aggregate, tracer)
    if tracer is None:
        return Transport(engine, aggregate)
    return TracedTransport(engine, aggregate, tracer)


# Set once a rank of this process's messengers was declared failed: the
# process then leaves without MPI_Finalize (see exit_without_finalize).
_failure_seen = False


def _note_failure() -> None:
    global _failure_seen
    _failure_seen = True


def failure_seen() -> bool:
    """Whether a fault-tolerant messenger of this process declared a rank failed."""
    return _failure_seen


def ignore_launcher_signal() -> None:
    """Ignore SIGUSR1 from now on if it would end the process (a messenger that saw a failure closes).

    MPICH's hydra, under ``-disable-auto-cleanup``, sends SIGUSR1 to the
    ranks left each time one exits without MPI_Finalize, as the ranks of a
    job that lost one do (`exit_without_finalize`): a rank between its
    messenger's close (which restores SIGUSR1's default action) and its
    exit would die of it.
    """
    import signal

    usr1 = getattr(signal, "SIGUSR1", None)
    if (
        usr1 is not None
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(usr1) is signal.SIG_DFL
    ):
        signal.signal(usr1, signal.SIG_IGN)


def exit_without_finalize() -> None:
    """End this process now, with status 0, without MPI_Finalize (called at exit).

    MPICH's MPI_Finalize waits for every rank, the dead one included, for
    ever. The program has ended; an uncaught exception has already
    aborted the job (see `_exit._at_exit`).
    """
    logger.warning(
        "conveyor: a rank failed during this job: this rank leaves without MPI_Finalize, "
        "which would wait for it"
    )
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed by the program
            pass
    os._exit(0)


def refuse(what: str) -> ConveyorError:
    """The error for `what`, which a fault-tolerant messenger does not support."""
    return ConveyorError(f"{what} is not supported by a fault-tolerant messenger")
