"""Which ranks share a host: the hosts MPI reports, and virtual ones for tests.

A messenger surveys its communicator once, when it is made (collective):
MPI tells which ranks share memory (``MPI_Comm_split_type`` with
``MPI_COMM_TYPE_SHARED``), and ``CONVEYOR_HOSTS`` may split those further
into virtual hosts, so that one machine can exercise both the same-host and
the cross-host paths. A virtual host never spans two real ones: ranks are
on the same host only if MPI puts them on the same host *and* the variable
puts them in the same block.

``CONVEYOR_HOSTS`` is a number of hosts, ``N`` (the job's ranks split into
N blocks of consecutive ranks, near-equal, the larger first), or the sizes
of the blocks, ``"3,1"``, which add up to the number of ranks. The blocks
are of ``MPI.COMM_WORLD``'s ranks, as real hosts are of the job's
processes: a messenger of a smaller communicator sees its ranks grouped by
the blocks of their processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["Hosts", "idle_barrier", "survey", "virtual_blocks"]

# The longest sleep of `idle_barrier` between two tests of its barrier: a
# rank leaves it at most this long after the last one arrived.
_BARRIER_MAX_SLEEP = 2e-3


@dataclass(frozen=True)
class Hosts:
    """The hosts of a communicator's ranks, as seen from one rank."""

    # Each host's ranks, ascending; hosts in order of their lowest rank.
    groups: tuple[tuple[int, ...], ...]
    # This rank's host, an index into `groups`.
    index: int
    # Whether the ranks on this rank's real host outnumber its cores (see survey).
    crowded: bool
    # Each rank's process id.
    pids: tuple[int, ...]


def virtual_blocks(text: str | None, size: int) -> list[int] | None:
    """The block of each of `size` ranks that ``CONVEYOR_HOSTS=text`` asks for; None if unset."""
    if text is None or not text.strip():
        return None
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"CONVEYOR_HOSTS={text!r} is neither a number of hosts nor sizes such as '3,1'"
        ) from None
    if len(numbers) == 1:  # a number of hosts: near-equal blocks, the larger first
        (count,) = numbers
        if not 1 <= count <= size:
            raise ValueError(f"CONVEYOR_HOSTS={text!r}: the number of hosts must be 1..{size}")
        base, extra = divmod(size, count)
        numbers = [base + (k < extra) for k in range(count)]
    elif any(n < 1 for n in numbers) or sum(numbers) != size:
        raise ValueError(
            f"CONVEYOR_HOSTS={text!r}: host sizes must be >= 1 and add up to {size} ranks"
        )
    return [block for block, n in enumerate(numbers) for _ in range(n)]


def idle_barrier(comm: MPI.Intracomm) -> None:
    """Return once every rank of `comm` has called it, sleeping while it waits (collective).

    MPI's blocking collectives poll, yielding the core between polls. Ranks
    that wait for a late one in them (still starting Python, importing
    numpy) take the cores from it where ranks outnumber cores: 64 ranks on
    2 cores spent some 2.5 s of CPU so while making their messengers. This
    barrier tests a nonblocking one and sleeps between tests, from 50 µs
    up to `_BARRIER_MAX_SLEEP`.
    """
    if comm.Get_size() == 1:
        return
    request = comm.Ibarrier()
    pause = 50e-6
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, _BARRIER_MAX_SLEEP)


def survey(comm: MPI.Intracomm) -> Hosts:
    """Find the hosts of `comm`'s ranks (collective over `comm`).

    ``crowded`` tells whether the ranks of this rank's real host outnumber
    the cores they may run on: the union of their CPU affinities, so ranks
    bound one to a core each are not crowded.

    Raises
    ------
    ValueError
        If ``CONVEYOR_HOSTS`` is malformed (on every rank, before any
        collective call).
    """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    blocks = virtual_blocks(os.environ.get("CONVEYOR_HOSTS"), world.Get_size())
    block = 0 if blocks is None else blocks[world.Get_rank()]
    rank = comm.Get_rank()
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS: any core
        cores = list(range(os.cpu_count() or 1))
    # Every rank arrives before the blocking calls below, which poll while they wait.
    idle_barrier(comm)
    real = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        usable = set().union(*real.allgather(cores))
        crowded = real.Get_size() > len(usable)
        # The real host's lowest rank of `comm` names it (found without a collective).
        group, members = comm.Get_group(), real.Get_group()
        try:
            leader = min(members.Translate_ranks(list(range(real.Get_size())), group))
        finally:
            group.Free()
            members.Free()
    finally:
        real.Free()
    found = comm.allgather((leader, block, os.getpid()))
    groups: dict[tuple[int, int], list[int]] = {}
    for r, (real_host, virtual_host, _) in enumerate(found):  # hosts by their lowest rank
        groups.setdefault((real_host, virtual_host), []).append(r)
    ordered = tuple(tuple(ranks) for ranks in groups.values())
    index = list(groups).index(found[rank][:2])
    return Hosts(ordered, index, crowded, tuple(pid for _, _, pid in found))
