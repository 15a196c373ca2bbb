"""Distributed arrays against Dask and Heat: the four figures of issue 17.

Run on 4 ranks (the figures are for 4)::

    mpiexec -n 4 python bench/arrays.py [--n 100000000] [--reps 3]
                                        [--only conveyor,heat,dask,numpy] [--json FILE]

``make bench-arrays`` installs Heat (requirements-heat.txt) and runs it.
Four operations on ``--n`` float64 (10^8 by default, 800 MB an array):

add_sum
    ``(x + y).sum()`` with misaligned chunks: x in one equal chunk per rank,
    y in 7 unequal chunks (`dist_add.Y_WEIGHTS`), so most rows of x meet y
    rows that live on another rank.
mask_sum
    ``x[x > 0.5].sum()``: a boolean mask of about half the rows.
std
    ``x.std()``.
rebalance
    y, 7 unequal chunks, to one equal chunk per rank: conveyor
    ``y.rebalance(size).resolve()``, Dask ``y.rechunk(...).persist()``
    waited for, Heat ``y.balance_()`` (on a fresh copy of y each time, made
    untimed, since ``balance_`` works in place).

The data are `dist_add`'s: every chunk is ``default_rng(seed).random``, one
seed per chunk, built by each contestant where it keeps it (not timed):

conveyor (every rank)
    x by ``DistArray.from_local``; y by ``d.dmap`` of the generator over a
    DistArray of the 7 chunk numbers, chunk j on rank ``j % size``; rank 0
    drives (``m.driver()``) and times.
heat (every rank, after conveyor's messenger is closed)
    ``ht.array(local, is_split=0)``: x the same equal pieces; y the same 7
    chunks, but a Heat array holds one contiguous piece per rank, so rank r
    holds the chunks ``j`` with ``j * size // 7 == r`` (for 4 ranks: 3+5,
    2+7, 4+6 and 1 28ths of the rows), unequal and misaligned with x.
    ``torch.set_num_threads(1)``: one thread per rank, as for the others.
    Timed on rank 0 between two barriers.
dask (rank 0 alone, the other ranks waiting in a sleeping barrier)
    ``LocalCluster(n_workers=size, threads_per_worker=1, processes=True)``;
    x and y ``da.concatenate`` of ``da.from_delayed`` chunks of the same
    sizes and seeds, persisted. A rechunk's result is released, and the
    scheduler asked until it has forgotten its keys, between repetitions
    (untimed): Dask would otherwise find the keys in memory and do nothing.
numpy (rank 0 alone)
    the concatenated arrays in one process: the floor (no rebalance).

Each operation: one untimed warm-up, then ``--reps`` timed repetitions;
reported are the median and the range (lowest, highest), the ratio
conveyor / the faster peer (of Dask and Heat, by median) and PASS/FAIL
against ``TARGET`` (0.5), and whether the values agree (relative tolerance
1e-9 against numpy; the rebalance's chunk sizes and the sum of its result).
A peer that is not installed is reported as skipped, with the reason.
Exit status 1 if the values disagree.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

# The bench folder is the script's: dist_add holds the shared data and helpers.
from dist_add import (
    Y_WEIGHTS,
    block,
    dask_arrays,
    peak_rss_mib,
    sleep_barrier,
    split,
    x_seed,
    y_seed,
)

# Nothing at module level may start MPI: Dask's worker processes are
# spawned and import this file again as __mp_main__.

OPS = ("add_sum", "mask_sum", "std", "rebalance")
CONTESTANTS = ("conveyor", "heat", "dask", "numpy")
PEERS = ("dask", "heat")
TARGET = 0.5  # conveyor / the faster peer, on every operation
RTOL = 1e-9


def timed(run, reps, setup=None):
    """One untimed warm-up then `reps` timed calls of `run(setup())`; return (value, samples)."""
    value = run(setup() if setup else None)
    samples = []
    for _ in range(reps):
        arg = setup() if setup else None
        t0 = time.perf_counter()
        value = run(arg)
        samples.append(time.perf_counter() - t0)
    return value, samples


def stats(samples, value):
    return {
        "s": samples,
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "value": value,
    }


def y_groups(ranks):
    """Heat's y: the chunks of y that rank r holds, contiguous, for each rank."""
    return [
        [j for j in range(len(Y_WEIGHTS)) if j * ranks // len(Y_WEIGHTS) == r] for r in range(ranks)
    ]


# -- conveyor (every rank) -------------------------------------------------------


def run_conveyor(reps, x_sizes, y_sizes):
    import conveyor as cv

    out = None
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(m, block(x_seed(m.rank), x_sizes[m.rank]))
        with m.driver() as d:
            if d is not None:
                seeds = d.array(np.arange(len(y_sizes)), chunks=[1] * len(y_sizes))
                y = d.dmap(lambda j: block(y_seed(int(j[0])), y_sizes[int(j[0])]), seeds).resolve()
                del seeds
                out = {}
                value, s = timed(lambda _: float((x + y).sum()), reps)
                out["add_sum"] = stats(s, value)
                value, s = timed(lambda _: float(x[x > 0.5].sum()), reps)
                out["mask_sum"] = stats(s, value)
                value, s = timed(lambda _: float(x.std()), reps)
                out["std"] = stats(s, value)
                _, s = timed(lambda _: y.rebalance(m.size).resolve(), reps)
                r = y.rebalance(m.size)
                out["rebalance"] = stats(s, float(r.sum()))
                out["rebalance"]["chunks"] = [ref.length for ref in r.resolve().chunks]
                out["rebalance"]["owners"] = [ref.owner for ref in r.chunks]
                del r, y
        x = None  # its chunks go before the messenger closes (collectively)
    return out


# -- heat (every rank) -------------------------------------------------------------


def run_heat(world, reps, x_sizes, y_sizes):
    import heat as ht
    import torch

    torch.set_num_threads(1)
    rank, size = world.rank, world.size
    x = ht.array(block(x_seed(rank), x_sizes[rank]), is_split=0)
    mine = y_groups(size)[rank]
    y_local = np.concatenate([block(y_seed(j), y_sizes[j]) for j in mine] or [np.empty(0)])
    y = ht.array(y_local, is_split=0)
    del y_local

    def run(op, setup=None):
        def timed_op(arg):
            world.Barrier()
            value = op(arg)
            world.Barrier()
            return value

        value, s = timed(timed_op, reps, setup)
        return stats(s, value)

    out = {
        "add_sum": run(lambda _: float((x + y).sum().item())),
        "mask_sum": run(lambda _: float(x[x > 0.5].sum().item())),
        "std": run(lambda _: float(x.std().item())),
    }

    def balance(z):
        z.balance_()
        return z

    row = run(balance, setup=lambda: y.copy())
    z = balance(y.copy())
    row["value"] = float(z.sum().item())
    row["chunks"] = [int(n) for n in z.lshape_map[:, 0].tolist()]
    row["before"] = [int(n) for n in y.lshape_map[:, 0].tolist()]
    out["rebalance"] = row
    x = y = z = None  # freed before the next contestant
    return out if rank == 0 else None


# -- dask and numpy (rank 0 alone) ----------------------------------------------


def run_dask(workers, reps, x_sizes, y_sizes):
    import dask
    from distributed import wait

    with dask_arrays(workers, x_sizes, y_sizes) as (client, x, y):
        equal = (tuple(split(sum(y_sizes), [1] * workers)),)

        def forgotten(keys):
            """Wait until the scheduler holds none of `keys` (untimed)."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if not any(client.who_has(keys).values()):
                    return
                time.sleep(0.01)
            raise RuntimeError("dask kept the rechunked keys for 30 s")

        last = {}

        def release():
            r = last.pop("r", None)
            if r is not None:
                keys = [k for k in dask.core.flatten(r.__dask_keys__())]
                del r
                forgotten(keys)

        def rechunk(_):
            r = y.rechunk(equal).persist()
            wait(r)
            last["r"] = r

        out = {}
        value, s = timed(lambda _: float((x + y).sum().compute()), reps)
        out["add_sum"] = stats(s, value)
        value, s = timed(lambda _: float(x[x > 0.5].sum().compute()), reps)
        out["mask_sum"] = stats(s, value)
        value, s = timed(lambda _: float(x.std().compute()), reps)
        out["std"] = stats(s, value)
        _, s = timed(rechunk, reps, setup=release)
        r = last.pop("r")
        out["rebalance"] = stats(s, float(r.sum().compute()))
        out["rebalance"]["chunks"] = list(r.chunks[0])
        out["workers"] = len(client.scheduler_info()["workers"])
        del r
    return out


def run_numpy(reps, x_sizes, y_sizes):
    a = np.concatenate([block(x_seed(k), size) for k, size in enumerate(x_sizes)])
    b = np.concatenate([block(y_seed(j), size) for j, size in enumerate(y_sizes)])
    out = {}
    value, s = timed(lambda _: float((a + b).sum()), reps)
    out["add_sum"] = stats(s, value)
    value, s = timed(lambda _: float(a[a > 0.5].sum()), reps)
    out["mask_sum"] = stats(s, value)
    value, s = timed(lambda _: float(a.std()), reps)
    out["std"] = stats(s, value)
    out["rebalance"] = {"value": float(b.sum())}  # nothing to move: the reference sum only
    return out


# -- which peers can run -----------------------------------------------------------


def missing(name):
    """Why contestant `name` cannot run here, or None."""
    import importlib

    modules = {"heat": ("heat", "torch"), "dask": ("dask.array", "distributed")}
    for module in modules.get(name, ()):
        try:
            importlib.import_module(module)
        except Exception as e:  # an ImportError, or a torch that fails to load
            return (
                f"import {module}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
    return None


# -- report ----------------------------------------------------------------------


def judge(results, ops=OPS):
    """Per operation: the faster peer, the ratio conveyor / it, PASS/FAIL."""
    verdicts = {}
    conv = results["conveyor"]
    for op in ops:
        peers = [
            (results[p][op]["median_s"], p)
            for p in PEERS
            if isinstance(results.get(p), dict) and "median_s" in results[p].get(op, {})
        ]
        if not peers or conv is None:
            verdicts[op] = None
            continue
        best, peer = min(peers)
        ratio = conv[op]["median_s"] / best
        verdicts[op] = {"peer": peer, "ratio": ratio, "passed": ratio <= TARGET}
    return verdicts


def agree(results, n_ranks, total):
    """Whether every contestant's values match numpy's, and the rebalance's chunks are equal."""
    ref = results["numpy"]
    equal = split(total, [1] * n_ranks)
    ok = True
    for name in CONTESTANTS:
        row = results.get(name)
        if not isinstance(row, dict) or name == "numpy":
            continue
        for op in OPS:
            if not np.isclose(row[op]["value"], ref[op]["value"], rtol=RTOL, atol=0):
                ok = False
        if row["rebalance"]["chunks"] != equal:
            ok = False
    return ok


def cell(results, name, op):
    """A contestant's figure for `op`: median (lowest–highest), "skipped" or "-"."""
    row = results.get(name)
    if isinstance(row, str):
        return "skipped"
    row = (row or {}).get(op)
    if not isinstance(row, dict) or "median_s" not in row:
        return "-"
    return f"{row['median_s']:.3f} s ({row['min_s']:.3f}–{row['max_s']:.3f})"


def verdict(results, op):
    v = results["verdicts"][op]
    if v is None:
        return "-"
    return f"{v['ratio']:.2f}× {v['peer']} {'PASS' if v['passed'] else 'FAIL'}"


def markdown(results):
    """The README's table: medians with ranges, the ratio and the verdict per operation."""
    names = {
        "add_sum": "`(x + y).sum()`, misaligned",
        "mask_sum": "`x[x > 0.5].sum()`",
        "std": "`x.std()`",
        "rebalance": "rebalance 7 → 4 chunks",
    }
    lines = [
        "| operation | conveyor | Dask | Heat | numpy (1 process) | conveyor / faster peer |",
        "|---|---|---|---|---|---|",
    ]
    for op in OPS:
        cells = [cell(results, c, op) for c in ("conveyor", "dask", "heat", "numpy")]
        lines.append(f"| {names[op]} | " + " | ".join(cells) + f" | {verdict(results, op)} |")
    return "\n".join(lines)


def report(results, args, ranks):
    print(
        f"arrays: n = {args.n:,} float64 ({args.n * 8 / 1e6:.0f} MB an array), {ranks} ranks, "
        f"warm-up + {args.reps} reps: median (lowest–highest)"
    )
    print(f"  x chunks {results['x_chunks']}; y chunks {results['y_chunks']}")
    print(
        f"  {'operation':<10} "
        + " ".join(f"{c:>28}" for c in CONTESTANTS)
        + "   conveyor / faster peer"
    )
    for op in OPS:
        cells = " ".join(f"{cell(results, c, op):>28}" for c in CONTESTANTS)
        print(f"  {op:<10} {cells}   {verdict(results, op).replace('×', 'x')}")
    for c in CONTESTANTS:
        if isinstance(results.get(c), str):
            print(f"  {c} skipped: {results[c]}")
    print(f"  target: conveyor <= {TARGET}x the faster peer on each operation")
    print(
        f"  values agree (rtol {RTOL:g}) and rebalances give equal chunks: {'yes' if results['agree'] else 'NO'}"
    )
    print("  peak RSS per rank (MiB): " + ", ".join(f"{v:.0f}" for v in results["peak_rss_mib"]))
    print(
        f"  load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000_000, help="elements of x and y")
    parser.add_argument(
        "--reps", type=int, default=3, help="timed repetitions; medians are reported"
    )
    parser.add_argument(
        "--only",
        default=",".join(CONTESTANTS),
        help="contestants to run, of " + ",".join(CONTESTANTS),
    )
    parser.add_argument("--json", metavar="FILE", help="write metadata, medians and samples")
    parser.add_argument("--markdown", metavar="FILE", help="write the README's table")
    args = parser.parse_args(argv)
    only = [c for c in args.only.split(",") if c]
    if "conveyor" not in only or "numpy" not in only or set(only) - set(CONTESTANTS):
        parser.error(f"--only must name conveyor and numpy, of {', '.join(CONTESTANTS)}")

    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if args.n < 28 * world.size or args.reps < 1:
        parser.error(f"--n must be at least {28 * world.size} and --reps at least 1")
    x_sizes = split(args.n, [1] * world.size)
    y_sizes = split(args.n, Y_WEIGHTS)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    results = {c: "not asked for (--only)" for c in CONTESTANTS}

    results["conveyor"] = run_conveyor(args.reps, x_sizes, y_sizes)

    if "heat" in only:
        # Every rank must be able to import it, or none runs it.
        reasons = [r for r in world.allgather(missing("heat")) if r]
        if reasons:
            results["heat"] = reasons[0]
        else:
            results["heat"] = run_heat(world, args.reps, x_sizes, y_sizes)

    rss = world.gather(peak_rss_mib(), root=0)
    if world.rank != 0:
        sleep_barrier(world)
        return 0
    if "dask" in only:
        reason = missing("dask")
        results["dask"] = reason or run_dask(world.size, args.reps, x_sizes, y_sizes)
    results["numpy"] = run_numpy(args.reps, x_sizes, y_sizes)
    sleep_barrier(world)

    results.update(
        x_chunks=x_sizes,
        y_chunks=y_sizes,
        heat_y_chunks=[sum(y_sizes[j] for j in g) for g in y_groups(world.size)],
        verdicts=judge(results),
        target=TARGET,
        agree=agree(results, world.size, args.n),
        peak_rss_mib=rss,
        load_before=load_before,
        load_after=os.getloadavg(),
    )
    report(results, args, world.size)
    table = markdown(results)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        from conveyor._bench.runinfo import run_metadata

        versions = {}
        for name in ("numpy", "dask", "distributed", "heat", "torch", "mpi4py"):
            try:
                import importlib.metadata

                versions[name] = importlib.metadata.version(name)
            except Exception:
                versions[name] = None
        meta = run_metadata(
            n=args.n,
            reps=args.reps,
            ranks=world.size,
            x_chunks=x_sizes,
            y_chunks=y_sizes,
            versions=versions,
            wall_seconds=time.perf_counter() - t_start,
        )
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **results, "markdown": table}, f, indent=1)
        print(f"  results: {args.json}")
    return 0 if results["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
