"""DistArray benchmark: ``(x + y).sum()`` in conveyor, in Dask array, and in numpy.

Run on 4 ranks (one chunk of x per rank; the numbers below are for 4)::

    mpiexec -n 4 python bench/dist_add.py [--n 100000000] [--reps 5] [--no-dask] [--json FILE]

x and y hold ``--n`` float64 each (800 MB at the default). x is in one
equal chunk per rank (4), y in 7 unequal chunks (`Y_WEIGHTS`: 3/28, 5/28,
2/28, 7/28, 4/28, 6/28, 1/28 of the rows), so that most rows of x sit on
another rank than the y rows they are added to. Every chunk's values come
from ``default_rng(seed).random``, one seed per chunk, and all three
contestants build the same arrays from the same seeds, each where it keeps
them (building is not timed):

conveyor
    x: ``DistArray.from_local``, each rank generating its own chunk; y:
    ``d.dmap`` of the generator over a DistArray of the 7 chunk numbers
    (``d.array(arange(7), chunks=[1] * 7)``, chunk j on rank ``j % 4``, as
    ``Messenger.array`` places chunks), so each y chunk is generated on its
    rank and nothing large is scattered from the driver. ``x + y`` takes y's
    chunking (dcall's target is the longest operand with most chunks): the
    owner of each y chunk fetches the rows of x it needs.
dask
    rank 0 alone, after the conveyor part, starts a
    ``distributed.LocalCluster(n_workers=4, threads_per_worker=1,
    processes=True)``; x and y are ``da.concatenate`` of ``da.from_delayed``
    chunks of the same sizes and seeds, persisted and waited for.
numpy
    rank 0 alone, the concatenated arrays ``a`` and ``b`` in one process.

Timed on rank 0 with ``time.perf_counter``, one untimed warm-up each, then
``--reps`` repetitions of two things:

sum
    ``(x + y).sum()`` (conveyor), ``(x + y).sum().compute()`` (Dask),
    ``(a + b).sum()`` (numpy): the benchmark, target conveyor <= 0.5x Dask.
add
    ``x + y`` computed whole, not summed, and dropped:
    ``(x + y).resolve()``, ``wait((x + y).persist())`` (under a new key
    name each time: Dask would find the previous repetition's keys not yet
    released and reuse them), ``a + b``. No target.

Reported: medians, the ratios conveyor / Dask and conveyor / numpy,
the bytes each rank sent per sum (``m.stats()``, warm-up included),
PASS/FAIL against the target, whether the three sums agree (relative
tolerance 1e-9), every rank's peak RSS after building and after the
conveyor part, and the load average before and after.

While rank 0 runs the baselines, ranks 1.. have closed their messenger and
wait in a barrier that sleeps 50 ms between tests (a blocking MPI barrier
would spin on the 2 shared cores); their CPU use over that wait is
reported too. Exit status 1 if the sums disagree.
"""

import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import sys
import time

import numpy as np

# Nothing at module level may start MPI: Dask's worker processes are
# spawned and import this file again as __mp_main__.

Y_WEIGHTS = (3, 5, 2, 7, 4, 6, 1)  # y's chunk sizes, in 28ths of the rows
TARGET = 0.5  # conveyor / Dask, (x + y).sum()
RTOL = 1e-9  # the sums agree to this relative tolerance
POLL = 0.05  # seconds between the idle ranks' barrier tests (polling every 10 ms costs ~0.7 % of a core)
RSS = "dist_add.rss"  # request: a rank's peak RSS
SENT = "dist_add.sent"  # request: the bytes a rank has sent (m.stats())


def block(seed, length):
    """The values of one chunk: `length` uniform floats from `seed` (a tuple)."""
    return np.random.default_rng(list(seed)).random(length)


def split(total, weights):
    """`total` rows in chunks proportional to `weights` (boundaries rounded down)."""
    ends = [total * c // sum(weights) for c in itertools.accumulate(weights)]
    return [end - start for start, end in zip([0] + ends, ends)]


def x_seed(k):
    return (1, k)


def y_seed(j):
    return (2, j)


def sent_bytes(m):
    stats = m.stats()
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(run, reps):
    """Call `run` once untimed, then `reps` times; return (last result, seconds each)."""
    value = run()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        value = run()
        samples.append(time.perf_counter() - t0)
    return value, samples


def summary(sum_samples, keep_samples, total):
    return {
        "sum_s": sum_samples,
        "sum_median_s": statistics.median(sum_samples),
        "add_s": keep_samples,
        "add_median_s": statistics.median(keep_samples),
        "sum": float(total),
    }


# -- conveyor (every rank) -------------------------------------------------------


def run_conveyor(world, reps, x_sizes, y_sizes):
    """The conveyor part; rank 0 returns its figures, the others None."""
    import conveyor as cv

    with cv.Messenger() as m:
        m.on(RSS)(lambda msg: peak_rss_mib())
        m.on(SENT)(lambda msg: sent_bytes(m))
        x = cv.DistArray.from_local(m, block(x_seed(m.rank), x_sizes[m.rank]))
        out = None
        with m.driver() as d:
            if d is not None:
                seeds = d.array(np.arange(len(y_sizes)), chunks=[1] * len(y_sizes))
                y = d.dmap(lambda j: block(y_seed(int(j[0])), y_sizes[int(j[0])]), seeds).resolve()
                del seeds
                built = [m.request(r, RSS).result() for r in range(m.size)]

                def add():
                    (x + y).resolve()

                before = [m.request(r, SENT).result() for r in range(m.size)]
                total, sums = timed(lambda: (x + y).sum(), reps)
                after = [m.request(r, SENT).result() for r in range(m.size)]
                _, adds = timed(add, reps)
                out = summary(sums, adds, total)
                # What the sums sent, every rank's, per sum (the warm-up counted too).
                out["sent_per_sum"] = [(b - a) / (reps + 1) for a, b in zip(before, after)]
                out["y_owners"] = [ref.owner for ref in y.chunks]
                out["peak_rss_built_mib"] = built
                del y
        x = None  # its chunks go before the messenger closes (collectively)
    rss = world.gather(peak_rss_mib(), root=0)
    if world.rank == 0:
        out["peak_rss_mib"] = rss
    return out


# -- the baselines (rank 0 alone) ----------------------------------------------


@contextlib.contextmanager
def dask_arrays(workers, x_sizes, y_sizes):
    """A LocalCluster of `workers` processes holding x and y in their chunks: (client, x, y)."""
    import logging

    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    def array(seed, sizes):
        return da.concatenate(
            [
                da.from_delayed(dask.delayed(block)(seed(k), size), (size,), np.float64)
                for k, size in enumerate(sizes)
            ]
        )

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        x = array(x_seed, x_sizes).persist()
        y = array(y_seed, y_sizes).persist()
        wait([x, y])
        yield client, x, y


def run_dask(workers, reps, x_sizes, y_sizes):
    import uuid

    from dask.array.core import elemwise
    from distributed import wait

    with dask_arrays(workers, x_sizes, y_sizes) as (client, x, y):

        def add():
            # x + y under a new name each time: a persist of the keys of the
            # previous repetition would find them not yet released, and reuse them.
            wait(elemwise(np.add, x, y, name=f"add-{uuid.uuid4().hex}").persist())

        total, sums = timed(lambda: (x + y).sum().compute(), reps)
        _, adds = timed(add, reps)
        out = summary(sums, adds, total)
        out["chunks"] = [list(x.chunks[0]), list(y.chunks[0])]
        out["workers"] = len(client.scheduler_info()["workers"])
    return out


def run_numpy(reps, x_sizes, y_sizes):
    a = np.concatenate([block(x_seed(k), size) for k, size in enumerate(x_sizes)])
    b = np.concatenate([block(y_seed(j), size) for j, size in enumerate(y_sizes)])

    def add():
        a + b

    total, sums = timed(lambda: (a + b).sum(), reps)
    _, adds = timed(add, reps)
    return summary(sums, adds, total)


def sleep_barrier(comm):
    """A barrier that sleeps between tests instead of spinning; return its CPU use in % of a core."""
    cpu, wall = time.process_time(), time.perf_counter()
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(POLL)
    return 100.0 * (time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9)


# -- report ----------------------------------------------------------------------


def report(results, args, world_size, x_sizes, y_sizes):
    conv, dask_, nump = results["conveyor"], results["dask"], results["numpy"]
    print(
        f"dist_add: (x + y).sum(), n = {args.n:,} float64 ({args.n * 8 / 1e6:.0f} MB each), "
        f"{world_size} ranks, {args.reps} reps (medians)"
    )
    print(f"  x chunks {x_sizes}")
    print(f"  y chunks {y_sizes} on ranks {conv['y_owners']}")
    dask_name = f"dask, {dask_['workers']} worker processes" if dask_ else "dask (--no-dask)"
    rows = [(f"conveyor, {world_size} ranks", conv), (dask_name, dask_), ("numpy, 1 process", nump)]
    print(f"  {'contestant':<32} {'sum':>9} {'add':>9}   value of the sum")
    for name, row in rows:
        if row is None:
            print(f"  {name:<32} {'-':>9} {'-':>9}")
        else:
            print(
                f"  {name:<32} {row['sum_median_s']:>8.3f}s {row['add_median_s']:>8.3f}s   {row['sum']:.10g}"
            )
    for key, label in (("ratio_dask", "conveyor / dask"), ("ratio_numpy", "conveyor / numpy")):
        if results[key] is not None:
            print(f"  {label:<32} {results[key]['sum']:>8.2f}x {results[key]['add']:>8.2f}x")
    if results["passed"] is not None:
        print(
            f"  target: conveyor <= {TARGET}x dask on the sum: "
            f"{'PASS' if results['passed'] else 'FAIL'}"
        )
    print(f"  sums agree (rtol {RTOL:g}): {'yes' if results['sums_agree'] else 'NO'}")
    print(
        "  conveyor peak RSS per rank (MiB): "
        + ", ".join(f"{v:.0f}" for v in conv["peak_rss_mib"])
        + "  (after building: "
        + ", ".join(f"{v:.0f}" for v in conv["peak_rss_built_mib"])
        + ")"
    )
    print(
        "  conveyor bytes sent per sum, by rank (m.stats()): "
        + ", ".join(f"{v / 1e6:.3f} MB" for v in conv["sent_per_sum"])
    )
    print(
        "  idle ranks' CPU while rank 0 ran the baselines: "
        + ", ".join(f"{v:.1f} %" for v in results["idle_cpu_pct"])
    )
    print(
        f"  load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000_000, help="elements of x and y")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed repetitions; medians are reported"
    )
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask contestant")
    parser.add_argument("--json", metavar="FILE", help="write metadata, medians and samples")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if args.n < 28 * world.size or args.reps < 1:
        parser.error(f"--n must be at least {28 * world.size} and --reps at least 1")
    x_sizes = split(args.n, [1] * world.size)
    y_sizes = split(args.n, Y_WEIGHTS)
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    conveyor = run_conveyor(world, args.reps, x_sizes, y_sizes)

    if world.rank != 0:
        world.gather(sleep_barrier(world), root=0)
        return 0
    dask_ = None if args.no_dask else run_dask(world.size, args.reps, x_sizes, y_sizes)
    nump = run_numpy(args.reps, x_sizes, y_sizes)
    sleep_barrier(world)
    idle_cpu = world.gather(0.0, root=0)[1:]

    def ratios(other):
        if other is None:
            return None
        return {
            "sum": conveyor["sum_median_s"] / other["sum_median_s"],
            "add": conveyor["add_median_s"] / other["add_median_s"],
        }

    sums = [r["sum"] for r in (conveyor, dask_, nump) if r is not None]
    results = {
        "conveyor": conveyor,
        "dask": dask_,
        "numpy": nump,
        "ratio_dask": ratios(dask_),
        "ratio_numpy": ratios(nump),
        "target": TARGET,
        "passed": None
        if dask_ is None
        else conveyor["sum_median_s"] <= TARGET * dask_["sum_median_s"],
        "sums_agree": all(np.isclose(s, nump["sum"], rtol=RTOL, atol=0) for s in sums),
        "idle_cpu_pct": idle_cpu,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    report(results, args, world.size, x_sizes, y_sizes)
    if args.json:
        from conveyor._bench.runinfo import run_metadata

        meta = run_metadata(
            n=args.n,
            reps=args.reps,
            ranks=world.size,
            x_chunks=x_sizes,
            y_chunks=y_sizes,
            wall_seconds=time.perf_counter() - t_start,
        )
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **results}, f, indent=1)
        print(f"  results: {args.json}")
    return 0 if results["sums_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
