"""Fetching a large array from a rank of the same host: shared item against a plain one.

Run on 2 or more ranks::

    mpiexec -n 4 python bench/shared_fetch.py [--mib 256] [--reps 5] [--json FILE]

Rank 0 stores the same array twice, as a plain item and with
``shared=True``. Then:

footprint
    every rank but 0 fetches the item and reads all of it (a sum), as ranks
    that all need the same table; the memory the job gained is the sum over
    the ranks of the growth of their proportional set size (``Pss`` in
    ``/proc/self/smaps_rollup``: a page mapped by k processes counts 1/k in
    each), plain items first, then shared ones.
time
    rank 1 fetches each ``--reps`` times, alternating, and measures the
    time of each fetch (from the request to the array in hand) and the
    growth of its resident memory (``VmRSS``) across the fetch, before
    touching the array. A plain fetch moves the bytes through MPI into
    fresh memory; a shared one maps rank 0's file. Medians (ranges in
    brackets) and the ratio plain / shared.

With ``CONVEYOR_HOSTS=2`` the ranks are on different (virtual) hosts and a
shared item travels to the other host as a plain one: a check that the
ratio then falls to about 1.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

import conveyor as cv

MiB = 1 << 20


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def pss():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Pss in /proc/self/smaps_rollup")


def footprint(m, name):
    """The job's Pss growth, in MiB, while every rank but 0 fetches and reads `name`."""
    m.barrier()
    start = pss()
    held = m.fetch(0, name).result(timeout=600) if m.rank else None
    if held is not None:
        float(held.sum())  # reads every page
    m.barrier()
    return m.allreduce(pss() - start) / MiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="the array's size in MiB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with cv.Messenger() as m:
        if m.size < 2:
            sys.exit("shared_fetch.py runs on 2 or more ranks")
        if m.rank == 0:
            a = np.arange(args.mib * MiB // 8, dtype=np.float64)
            m.store.put("plain", a)
            m.store.put("shared", a, shared=True)
            del a
        footprints = {name: footprint(m, name) for name in ("plain", "shared")}
        samples = {"plain": [], "shared": []}
        if m.rank == 1:
            for _ in range(args.reps):
                for name in samples:
                    grown, start = rss(), time.perf_counter()
                    value = m.fetch(0, name).result(timeout=600)
                    seconds = time.perf_counter() - start
                    samples[name].append((seconds, (rss() - grown) / MiB))
                    assert value.nbytes == args.mib * MiB
                    del value
            report(args, m, samples, footprints)
        m.barrier()
        m.wait_quiet()


def report(args, m, samples, footprints):
    rows = {}
    for name, pairs in samples.items():
        seconds = [s for s, _ in pairs]
        growth = [g for _, g in pairs]
        rows[name] = {
            "seconds_median": statistics.median(seconds),
            "seconds_range": [min(seconds), max(seconds)],
            "rss_growth_mib_median": statistics.median(growth),
            "rss_growth_mib_max": max(growth),
        }
    ratio = rows["plain"]["seconds_median"] / rows["shared"]["seconds_median"]
    print(f"fetch of {args.mib} MiB, {args.reps} reps, hosts {list(m.hosts)}")
    for name, row in rows.items():
        low, high = row["seconds_range"]
        print(
            f"  {name:6s} {row['seconds_median'] * 1e3:10.3f} ms [{low * 1e3:.3f}-{high * 1e3:.3f}]"
            f"  RSS growth {row['rss_growth_mib_median']:8.2f} MiB (max {row['rss_growth_mib_max']:.2f})"
        )
    print(f"  plain / shared: {ratio:.0f}x")
    print(f"memory the job gained while {m.size - 1} ranks fetched and read the item:")
    for name, mib in footprints.items():
        print(f"  {name:6s} {mib:10.1f} MiB ({mib / args.mib:.2f}x the item)")
    if args.json:
        document = {"mib": args.mib, "hosts": m.hosts, "rows": rows, "ratio": ratio}
        document["footprint_mib"] = footprints
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)


if __name__ == "__main__":
    main()
