"""Third-party transfer benchmark: rank 0 orders rank 1 to copy a large array to rank 2.

Run on 3 or more ranks (ranks beyond 2 stay idle)::

    mpiexec -n 3 python bench/third_party.py [--size 256M] [--reps 5] [--json FILE]

Rank 1 holds one array of ``--size`` bytes (uint8) in its store under
"big". Every repetition measures three contestants, in a rotating order
(so machine noise hits all of them), each after a barrier:

direct
    rank 1 ``m.send(2, "sink", arr)`` then ``m.request(2, "got").result()``
    (per-pair order puts the request behind the array, so its answer
    acknowledges receipt); timed on rank 1.
ordered
    rank 0 ``m.order(1, cv.Copy("big", to=2, as_name=...)).result()``:
    rank 1 sends its stored array straight to rank 2's store, which
    acknowledges it, and rank 1 answers rank 0; timed on rank 0, which
    never holds the array.
mpi4py
    the floor: rank 1 ``comm.Send(arr, 2)`` into a preallocated
    ``comm.Recv`` buffer on rank 2, then a 1-byte ack ``Send``/``Recv``;
    timed on rank 1.

Copies received by rank 2 are dropped (the direct one when its handler
returns, the ordered one deleted from the store after each repetition),
so memory does not pile up; conveyor's receive buffer cache
(``CONVEYOR_BUFFER_CACHE_BYTES``) serves both conveyor contestants alike.
One untimed warm-up repetition comes first.

Reported (rank 0 prints a table): the median time and throughput of each
contestant, the ratio ordered/direct throughput with PASS/FAIL against 0.9,
direct/mpi4py for reference, and rank 0's peak RSS growth
(``ru_maxrss`` after the last repetition minus before the first, warm-up
included) against the array size, PASS if below a quarter of it; and the
zero-copy bytes rank 0 and rank 2 received (rank 0's must be 0). ``--json``
writes metadata, medians and every sample.
"""

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import conveyor as cv
from conveyor._bench.runinfo import run_metadata
from conveyor.cli.arguments import byte_size

MiB = 1 << 20
RATIO_TARGET = 0.9  # ordered throughput / direct throughput
RSS_GROWTH_LIMIT = 0.25  # rank 0's peak RSS growth, as a fraction of the array size
GIVER, HOLDER, DEST = 0, 1, 2
CONTESTANTS = ("direct", "ordered", "mpi4py")


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class Bench:
    def __init__(self, m, raw, size):
        self.m = m
        self.raw = raw  # a dup of COMM_WORLD for the mpi4py floor
        self.size = size
        self.sunk = 0
        self.arr = None
        self.recv_buf = None
        self.ack = np.zeros(1, dtype=np.uint8)
        m.on("sink")(self._sink)
        m.on("got")(lambda msg: self.sunk)
        if m.rank == HOLDER:
            arr = np.ones(size, dtype=np.uint8)
            arr[::4096] = 7
            m.store.put("big", arr)
            self.arr = arr
        if m.rank == DEST:
            self.recv_buf = np.empty(size, dtype=np.uint8)
            self.recv_buf[::4096] = 0  # touch every page once, before timing

    def _sink(self, msg):
        assert msg.payload.nbytes == self.size
        self.sunk += 1  # the array is dropped when the handler returns

    def run(self, name, rep):
        """One timed run of contestant `name`; returns seconds on its timing rank, else None."""
        m, raw = self.m, self.raw
        raw.Barrier()
        elapsed = None
        if name == "direct":
            if m.rank == HOLDER:
                t0 = time.perf_counter()
                m.send(DEST, "sink", self.arr)
                m.request(DEST, "got").result(timeout=600)
                elapsed = time.perf_counter() - t0
            m.wait_quiet()
        elif name == "ordered":
            as_name = f"big/copy/{rep}"
            if m.rank == GIVER:
                t0 = time.perf_counter()
                done = m.order(HOLDER, cv.Copy("big", to=DEST, as_name=as_name)).result(timeout=600)
                elapsed = time.perf_counter() - t0
                assert done["bytes"] == self.size, done
            m.wait_quiet()
            if m.rank == DEST:
                copy = m.store[as_name]
                assert copy[0] == 7 and copy[1] == 1 and copy.nbytes == self.size
                del copy
                m.store.delete(as_name)
        else:
            if m.rank == HOLDER:
                t0 = time.perf_counter()
                raw.Send(self.arr, dest=DEST, tag=1)
                raw.Recv(self.ack, source=DEST, tag=2)
                elapsed = time.perf_counter() - t0
            elif m.rank == DEST:
                raw.Recv(self.recv_buf, source=HOLDER, tag=1)
                raw.Send(self.ack, dest=HOLDER, tag=2)
        return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=byte_size,
        default=256 * MiB,
        help="array size in bytes: 65536, 64K, 16M, 1G (default 256M)",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write metadata, medians and samples")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    world = MPI.COMM_WORLD
    if world.size < 3:
        print("third_party.py needs at least 3 ranks (mpiexec -n 3)", file=sys.stderr)
        return 2

    started = time.perf_counter()
    raw = world.Dup()
    samples = {name: [] for name in CONTESTANTS}
    with cv.Messenger() as m:
        bench = Bench(m, raw, args.size)
        m.wait_quiet()
        raw.Barrier()
        rss_before = peak_rss_bytes()
        stats_before = m.stats()
        for name in CONTESTANTS:  # warm-up, untimed
            bench.run(name, "warmup")
        for rep in range(args.reps):
            k = rep % len(CONTESTANTS)
            for name in CONTESTANTS[k:] + CONTESTANTS[:k]:
                elapsed = bench.run(name, rep)
                if elapsed is not None:
                    samples[name].append(elapsed)
        m.wait_quiet()
        rss_after = peak_rss_bytes()
        stats_after = m.stats()
        per_rank = world.gather(
            {
                "rank": world.rank,
                "samples": samples,
                "peak_rss_before": rss_before,
                "peak_rss_after": rss_after,
                "zero_copy_received": stats_after["bytes_zero_copy_received"]
                - stats_before["bytes_zero_copy_received"],
                "zero_copy_sent": stats_after["bytes_zero_copy_sent"]
                - stats_before["bytes_zero_copy_sent"],
                "bytes_framed": stats_after["bytes_framed"] - stats_before["bytes_framed"],
                "store_items": stats_after["store_items"],
            },
            root=0,
        )
    raw.Free()
    wall = time.perf_counter() - started
    if world.rank != 0:
        return 0

    times = {
        "direct": per_rank[HOLDER]["samples"]["direct"],
        "ordered": per_rank[GIVER]["samples"]["ordered"],
        "mpi4py": per_rank[HOLDER]["samples"]["mpi4py"],
    }
    medians = {name: statistics.median(t) for name, t in times.items()}
    gbps = {name: args.size / t / 1e9 for name, t in medians.items()}
    ratio = gbps["ordered"] / gbps["direct"]
    vs_raw = gbps["direct"] / gbps["mpi4py"]
    rss_growth = per_rank[GIVER]["peak_rss_after"] - per_rank[GIVER]["peak_rss_before"]
    rss_ok = rss_growth < RSS_GROWTH_LIMIT * args.size
    giver_zc = per_rank[GIVER]["zero_copy_received"]
    dest_zc = per_rank[DEST]["zero_copy_received"]
    ratio_ok = ratio >= RATIO_TARGET

    print(
        f"third_party: {world.size} ranks, array {args.size / MiB:g} MiB at rank {HOLDER} -> "
        f"rank {DEST}, ordered by rank {GIVER}; {args.reps} reps (+1 warm-up), medians"
    )
    print()
    head = f"{'contestant':<36} {'time ms':>9} {'GB/s':>7} {'min ms':>8} {'max ms':>8}"
    print(head)
    print("-" * len(head))
    labels = {
        "direct": "direct  m.send + request (rank 1)",
        "ordered": "ordered m.order(1, Copy) (rank 0)",
        "mpi4py": "mpi4py  Send/Recv + ack (rank 1)",
    }
    for name in CONTESTANTS:
        t = times[name]
        print(
            f"{labels[name]:<36} {medians[name] * 1e3:9.1f} {gbps[name]:7.2f} "
            f"{min(t) * 1e3:8.1f} {max(t) * 1e3:8.1f}"
        )
    print()
    print(
        f"ordered / direct throughput   {ratio:6.3f}   target >= {RATIO_TARGET}   "
        f"{'PASS' if ratio_ok else 'FAIL'}"
    )
    print(f"direct / mpi4py throughput    {vs_raw:6.3f}   (reference)")
    print(
        f"rank 0 peak RSS growth        {rss_growth / MiB:6.1f} MiB of a {args.size / MiB:g} MiB "
        f"array   target < {RSS_GROWTH_LIMIT:g}x   {'PASS' if rss_ok else 'FAIL'}"
    )
    print(
        f"zero-copy bytes received      rank 0: {giver_zc}   rank 2: {dest_zc / MiB:g} MiB "
        f"({dest_zc / args.size:g} arrays)"
    )
    print(f"\nwall time {wall:.1f} s", flush=True)

    if args.json:
        meta = run_metadata(ranks=world.size, size=args.size, reps=args.reps, wall_seconds=wall)
        summary = {
            "median_s": medians,
            "gbytes_per_s": gbps,
            "ordered_vs_direct": ratio,
            "ratio_target": RATIO_TARGET,
            "ratio_met": ratio_ok,
            "direct_vs_mpi4py": vs_raw,
            "giver_peak_rss_growth_bytes": rss_growth,
            "rss_growth_limit": RSS_GROWTH_LIMIT,
            "rss_met": rss_ok,
            "giver_zero_copy_received": giver_zc,
            "dest_zero_copy_received": dest_zc,
        }
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "summary": summary, "samples_s": times, "per_rank": per_rank},
                f,
                indent=1,
                ensure_ascii=False,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
