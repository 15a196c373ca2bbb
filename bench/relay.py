"""An all-to-all of small messages under each CONVEYOR_ROUTE: MPI messages and batch memory.

Run on many ranks (oversubscribed is fine: the figures are counts)::

    mpiexec -n 64 python bench/relay.py [--items 100000] [--modes direct,host,grid2d]
        [--hosts 8] [--json FILE]

Every rank sends ``--items`` 8-byte integers, one message each, to ranks
drawn at random (uniformly, a fixed seed per rank), then waits for
quiescence. Per mode, in one job (a messenger each):

MPI messages
    frames the ranks posted to MPI (``frames_sent``: a batch is one), the
    mean and the most of one rank, hops included;
batches open
    the most batches one rank had filling at once (``batches_open_peak``);
batch bytes
    the most bytes of batch buffers one rank held at once
    (``batch_bytes_peak``: its aggregation memory, within
    ``CONVEYOR_BATCH_POOL_BYTES``);
relayed
    messages passed on by relays, all ranks;
seconds
    the wall time of the exchange (on an oversubscribed machine, a count of
    context switches as much as anything: shown, not a target).

Each rank checks that it received every message sent to it exactly once:
the sum and the count of the values each source sent it. The ratios are
against ``direct`` in the same job. ``--hosts`` sets ``CONVEYOR_HOSTS``
(virtual hosts: on one machine, ``host`` is ``direct`` without it).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
from mpi4py import MPI

import conveyor as cv

# Counters of m.stats() summed over the ranks into --json's "totals": what
# the batches carried and why they left (bench/scale_model.py reads them).
PER_RANK = (
    "messages_sent",
    "messages_relayed",
    "frames_sent",
    "batches_sent",
    "background_flushes",
    "bytes_framed",
    "credits_sent",
    "fences_sent",
    "send_cpu_seconds",
    "frames_sent_sending",
    "background_flushes_sending",
)


def exchange(items, seed):
    """One all-to-all on a new messenger; returns this rank's counters and the seconds it took."""
    comm = MPI.COMM_WORLD
    with cv.Messenger() as m:
        received = np.zeros((m.size, 2), dtype=np.int64)  # per source: count, sum

        @m.on("item")
        def item(msg):
            received[msg.source, 0] += 1
            received[msg.source, 1] += msg.payload

        rng = np.random.default_rng(seed + m.rank)
        dests = rng.integers(0, m.size, items)
        values = rng.integers(0, 1 << 40, items)
        sent = np.zeros((m.size, 2), dtype=np.int64)
        np.add.at(sent[:, 0], dests, 1)
        np.add.at(sent[:, 1], dests, values)
        m.barrier()
        start = time.perf_counter()
        send = m.sender("item").send
        cpu = time.thread_time()
        for dest, value in zip(dests.tolist(), values.tolist()):
            send(dest, value)
        stats_sent = m.stats()
        stats_sent["send_cpu_seconds"] = time.thread_time() - cpu
        m.wait_quiet()
        seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        expected = comm.alltoall(list(sent))
        for source, (count, total) in enumerate(expected):
            assert tuple(received[source]) == (count, total), (m.rank, source)
        stats = m.stats()
        # What the sends alone took and made: their loop's CPU time, and
        # the batches that left before the rank waited.
        stats["send_cpu_seconds"] = stats_sent["send_cpu_seconds"]
        stats["frames_sent_sending"] = stats_sent["frames_sent"]
        stats["background_flushes_sending"] = stats_sent["background_flushes"]
        return m.route, stats, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--modes", default="direct,host,grid2d")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--hosts", help="CONVEYOR_HOSTS for every mode (virtual hosts)")
    parser.add_argument("--json", help="write the figures to this file (rank 0)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if args.hosts:
        os.environ["CONVEYOR_HOSTS"] = args.hosts
    rows = []
    for mode in args.modes.split(","):
        os.environ["CONVEYOR_ROUTE"] = mode
        route, stats, seconds = exchange(args.items, args.seed)
        gathered = comm.gather(
            (stats["frames_sent"], stats["batches_open_peak"], stats["messages_relayed"])
            + (stats["batch_bytes_peak"],)
            + tuple(stats[k] for k in PER_RANK),
            root=0,
        )
        if comm.Get_rank() == 0:
            frames = [g[0] for g in gathered]
            rows.append(
                {
                    "mode": route,
                    "ranks": comm.Get_size(),
                    "items_per_rank": args.items,
                    "mpi_messages_mean": sum(frames) / len(frames),
                    "mpi_messages_max": max(frames),
                    "batches_open_peak_max": max(g[1] for g in gathered),
                    "messages_relayed": sum(g[2] for g in gathered),
                    "batch_bytes_peak_max": max(g[3] for g in gathered),
                    "seconds": seconds,
                    # The counters the model (bench/scale_model.py) reads, summed over ranks.
                    "totals": {k: sum(g[4 + i] for g in gathered) for i, k in enumerate(PER_RANK)},
                }
            )
    if comm.Get_rank() != 0:
        return
    base = next((r for r in rows if r["mode"] == "direct"), rows[0])
    print(
        f"all-to-all of {args.items:,} 8-byte messages per rank, {comm.Get_size()} ranks, "
        f"every message delivered exactly once"
    )
    print(
        f"{'mode':8} {'MPI msgs/rank':>14} {'max':>8} {'ratio':>6} "
        f"{'batches open':>13} {'ratio':>6} {'batch KiB':>10} {'ratio':>6} "
        f"{'relayed':>11} {'seconds':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:8} {r['mpi_messages_mean']:14,.0f} {r['mpi_messages_max']:8,} "
            f"{r['mpi_messages_mean'] / base['mpi_messages_mean']:6.2f} "
            f"{r['batches_open_peak_max']:13,} "
            f"{r['batches_open_peak_max'] / base['batches_open_peak_max']:6.2f} "
            f"{r['batch_bytes_peak_max'] / 1024:10,.0f} "
            f"{r['batch_bytes_peak_max'] / base['batch_bytes_peak_max']:6.2f} "
            f"{r['messages_relayed']:11,} {r['seconds']:8.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
