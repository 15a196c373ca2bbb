"""Bytes sent for a ``dcall`` over 64 chunks whose function is a closure over 1 MiB.

Run on 4 ranks (``CONVEYOR_HOSTS`` splits them into virtual hosts)::

    mpiexec -n 4 python bench/closure_bytes.py [--chunks 64] [--mib 1] [--json FILE]

The driver (rank 0) calls ``d.dcall(f, x)`` on a DistArray of ``--chunks``
chunks spread over the ranks, where ``f`` captures a float64 array of
``--mib`` MiB, so that pickled by value it is that large, and waits for
its result chunks (``resolve``). Reported: the bytes each rank sent for
the call (``bytes_framed`` plus ``bytes_zero_copy_sent`` of ``m.stats()``,
the difference over the call, driver block and ``wait_quiet`` included),
their sum, and the sum divided by the closure's size. Counters, not timing:
one run tells.
"""

import argparse
import json
import sys

import numpy as np


def sent(m):
    stats = m.stats()
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--mib", type=float, default=1.0, help="the closure's captured array")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    import conveyor as cv

    world = MPI.COMM_WORLD
    with cv.Messenger() as m:
        table = np.random.default_rng(0).random(int(args.mib * (1 << 20)) // 8)
        total = None
        with m.driver() as d:
            if d is not None:
                x = d.array(np.arange(args.chunks * 100.0), chunks=[100] * args.chunks)
                x.resolve()
        m.wait_quiet()
        before = sent(m)
        with m.driver() as d:
            if d is not None:
                y = d.dcall(lambda v: v + table[: len(v)], x)
                y.resolve()
        m.wait_quiet()
        mine = sent(m) - before  # the call and its tasks; the check below is not counted
        with m.driver() as d:
            if d is not None:
                total = float(y.sum())
                del x, y
        m.wait_quiet()
        hosts = m.hosts
    costs = world.gather(mine, root=0)
    if world.rank == 0:
        expected = float((np.arange(args.chunks * 100.0) + np.tile(table[:100], args.chunks)).sum())
        assert np.isclose(total, expected), (total, expected)
        result = {
            "ranks": world.size,
            "hosts": [list(h) for h in hosts],
            "chunks": args.chunks,
            "closure_bytes": table.nbytes,
            "sent_bytes": costs,
            "sent_total": sum(costs),
            "sent_per_closure": sum(costs) / table.nbytes,
        }
        print(
            f"dcall over {args.chunks} chunks, closure over {table.nbytes / 2**20:g} MiB, "
            f"{world.size} ranks on hosts {result['hosts']}: sent {sum(costs):,} bytes "
            f"({result['sent_per_closure']:.3f}x the closure; per rank {costs})"
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
