"""Which ranks relay a rank's small messages: the tables of ``CONVEYOR_ROUTE``.

At P ranks, a rank that sends small messages to every other keeps a batch
(up to ``CONVEYOR_BATCH_BYTES``) for each of them and posts P - 1 MPI
messages per flush. Relaying through other ranks lets each rank aggregate
for a few next hops instead: the engine packs every small message into a
batch for its next hop, which passes it on (csrc/conveyor/engine/relay.cpp).
Large messages always go straight to their destination, zero-copy. A route
is fixed per (origin, destination), so order per pair is kept.

The modes:

``direct``
    No relaying: a batch per destination.
``host``
    Across hosts, a message goes first to the rank of the destination's host
    whose place on its host is the sender's place on its own (modulo the
    host's size), which passes it on within the host. A rank batches for its
    own host's ranks and for one rank of each other host.
``grid2d``
    The ranks, in host order, fill a grid of ⌈√P⌉ columns row by row; a
    message goes along its row to the destination's column, then along that
    column (where the grid's last row is short, along the column first). A
    rank batches for about 2√P ranks. Consecutive ranks of one host share a
    row, so the first hop mostly stays within a host.
``auto`` (the default)
    ``grid2d`` from `AUTO_GRID_RANKS` ranks on, else ``direct``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._errors import ConveyorError

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["AUTO_GRID_RANKS", "ROUTES", "next_hops", "route_mode", "routing"]

ROUTES = ("direct", "host", "grid2d", "auto")
# From how many ranks ``auto`` relays: below it, the batches of an
# all-to-all fit in a few MiB and a relay's extra hop costs more than it saves.
AUTO_GRID_RANKS = 64


def route_mode(size: int, text: str | None = None) -> str:
    """The relay mode for `size` ranks that ``CONVEYOR_ROUTE`` (or `text`) asks for, ``auto`` resolved."""
    if text is None:
        text = os.environ.get("CONVEYOR_ROUTE") or "auto"
    mode = text.strip().lower()
    if mode not in ROUTES:
        raise ValueError(f"CONVEYOR_ROUTE={text!r} is not one of {', '.join(ROUTES)}")
    if mode == "auto":
        mode = "grid2d" if size >= AUTO_GRID_RANKS else "direct"
    return mode


def next_hops(mode: str, rank: int, groups: Sequence[Sequence[int]]) -> list[int]:
    """Rank `rank`'s next hop towards each rank under `mode` (empty for ``direct``).

    `groups` are the hosts' ranks (`Hosts.groups`), which together are
    0 .. P-1. Every route reaches its destination in at most two hops.
    """
    size = sum(len(g) for g in groups)
    if mode == "direct" or size == 1:
        return []
    if mode == "host":
        return _host_hops(rank, groups)
    if mode == "grid2d":
        return _grid_hops(rank, [r for g in groups for r in g])
    raise ValueError(f"unknown relay mode {mode!r}")


def _host_hops(rank: int, groups: Sequence[Sequence[int]]) -> list[int]:
    host_of = {r: h for h, g in enumerate(groups) for r in g}
    home = host_of[rank]
    place = groups[home].index(rank)
    hops = []
    for dest in range(len(host_of)):
        there = groups[host_of[dest]]
        hops.append(dest if host_of[dest] == home else there[place % len(there)])
    return hops


def _grid_hops(rank: int, order: list[int]) -> list[int]:
    size = len(order)
    width = math.isqrt(size - 1) + 1  # ⌈√P⌉
    at = {r: i for i, r in enumerate(order)}
    row, column = divmod(at[rank], width)
    hops = []
    for dest in range(size):
        dest_row, dest_column = divmod(at[dest], width)
        if row == dest_row or column == dest_column:
            hops.append(dest)
        elif row * width + dest_column < size:  # along the row first
            hops.append(order[row * width + dest_column])
        else:  # that place is past the short last row: along the column first
            hops.append(order[dest_row * width + column])
    return hops


def routing(comm: MPI.Intracomm, groups: Sequence[Sequence[int]]) -> tuple[str, list[int]]:
    """This rank's relay mode and next hops (collective: every rank must ask for the same mode).

    Raises
    ------
    ValueError
        If ``CONVEYOR_ROUTE`` is malformed (on every rank that has it so,
        before any collective call).
    ConveyorError
        If the ranks were given different modes.
    """
    mode = route_mode(comm.Get_size())
    modes = set(comm.allgather(mode))
    if len(modes) > 1:
        raise ConveyorError(
            f"the ranks were given different CONVEYOR_ROUTE modes ({', '.join(sorted(modes))}); "
            "every rank must relay the same way"
        )
    return mode, next_hops(mode, comm.Get_rank(), groups)
