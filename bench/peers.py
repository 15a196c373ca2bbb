"""Side by side with the peers: conveyor, mpi4py.futures, Dask and Ray in one run.

Run as a whole (``make bench-peers``)::

    python bench/peers.py [--runs 3] [--reps 5] [--iters N] [--which task,echo,array]
                          [--only conveyor,mpi4py,dask,ray] [--json FILE] [--markdown FILE]
                          [--readme] [--timeout 600] [--settle 120] [--idle-below 0.3]

Three round trips, each timed one at a time (submit, then wait for the
result, then the next), on every contestant:

task
    a no-op task: a function (or actor method) that takes nothing and
    returns None.
echo
    an 8-byte request/reply: a function (or actor method) that returns its
    argument, a Python int (8 bytes of data).
array
    a 64 MiB argument: a function (or actor method) that takes a 64 MiB
    float64 array and returns its ``nbytes``.

The contestants, one after the other (never two at once), each in a
process (or job) of its own started by this driver, once per run:

conveyor
    ``mpiexec -n 2 python bench/peers.py --part conveyor``: rank 0 drives
    (``with m.driver() as d``), rank 1 serves. Three ways in:
    ``cv.Executor(ranks=[1])`` (``ex.submit(f, x).result()``), an actor
    spawned on rank 1 (``ref.echo(x).result()``), and ``m.request(1, tag,
    x).result()`` to a function receiver (no function travels: the floor).
mpi4py
    ``mpiexec -n 2 python -m mpi4py.futures bench/peers.py --part mpi4py``:
    rank 0 runs ``MPIPoolExecutor(max_workers=1)``, rank 1 is its worker.
    Its other mode, spawning the worker from a plain ``python``, needs
    ``MPI_Comm_spawn`` from a singleton, which the mpich wheel's MPI does
    only when an ``mpiexec`` is on PATH (else ``PMII_singinit: execv
    failed`` and an abort); under mpiexec both contestants also have the
    same two processes.
dask
    ``python bench/peers.py --part dask``: a client of
    ``distributed.LocalCluster(n_workers=1, threads_per_worker=1,
    processes=True)``; ``client.submit(f, x, pure=False).result()`` (not
    pure, so every submission is a new task rather than the cached one).
ray
    ``python bench/peers.py --part ray``: ``ray.init(num_cpus=2,
    include_dashboard=False)``; a task ``ray.get(f.remote(x))`` and an
    actor ``ray.get(a.echo.remote(x))``.

Before each part the driver waits, up to ``--settle`` seconds, until other
work keeps fewer than ``--idle-below`` CPUs busy, and it records how many
CPUs other work kept busy while the part ran (the machine's busy time from
/proc/stat less the part's own). Each part warms every way in up
(untimed), then times ``--reps`` repetitions, rotating the order of the
ways in every repetition; a repetition is ``--iters`` round trips (a
default per contestant, so each takes a fraction of a second) or a few of
the 64 MiB one (`ARRAY_ITERS`). A part reports the
median per round trip of its repetitions; over ``--runs`` runs the table
gives the median of those and their range (lowest and highest), and the
ratio peer / conveyor computed within each run, against conveyor's
counterpart: Ray actors against conveyor's actor, every task (Dask,
mpi4py.futures, Ray tasks) against ``cv.Executor``. Targets: conveyor's
no-op task at most 20 µs, and every peer's 8-byte round trip at least 20x
conveyor's. A contestant that is not installed is reported as skipped,
with the reason; one that fails or times out is reported as failed, and
the exit status is then 1 (a missed target does not change it).
"""

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# Nothing at module level may start MPI, Dask or Ray: Dask's worker
# processes import this file again as __mp_main__, and mpi4py.futures'
# worker imports it too.

HERE = pathlib.Path(__file__).resolve()
README = HERE.parent.parent / "README.md"
BEGIN = "<!-- peers: begin (written by bench/peers.py --readme: do not edit) -->"
END = "<!-- peers: end -->"

CONTESTANTS = ("conveyor", "mpi4py", "dask", "ray")
BENCHMARKS = (  # key, label, unit, seconds per unit
    ("task", "no-op task", "µs", 1e-6),
    ("echo", "8 B round trip", "µs", 1e-6),
    ("array", "64 MiB argument", "ms", 1e-3),
)
# The rows of the table: (contestant, way in, label, conveyor's counterpart).
ROWS = (
    ("conveyor", "executor", "conveyor `cv.Executor`, 2 ranks", None),
    ("conveyor", "actor", "conveyor actor (`m.spawn`)", None),
    ("conveyor", "request", "conveyor `m.request` (no function travels)", None),
    ("mpi4py", "executor", "mpi4py.futures `MPIPoolExecutor`, 1 worker", "executor"),
    ("dask", "submit", "Dask `LocalCluster` client, 1 worker process", "executor"),
    ("ray", "task", "Ray task", "executor"),
    ("ray", "actor", "Ray actor", "actor"),
)
ITERS = {"conveyor": 2000, "mpi4py": 300, "dask": 100, "ray": 200}  # round trips per repetition
# 64 MiB round trips per repetition: mpi4py.futures takes seconds for one.
ARRAY_ITERS = {"conveyor": 5, "mpi4py": 1, "dask": 3, "ray": 3}
WARMUP = 0.2  # warm-up: this fraction of a repetition's round trips, at least 3 (1 of 64 MiB)
TASK_TARGET_US = 20.0  # conveyor's no-op task, at most
PEER_TARGET = 20.0  # each peer's 8-byte round trip / conveyor's, at least
X = 12345678  # the 8-byte argument
ARRAY_BYTES = 64 * 2**20
TIMEOUT = 120.0  # seconds for any one round trip


# -- the work, the same on every side ---------------------------------------------


def noop():
    """The no-op task."""
    return None


def echo(x):
    """The 8-byte request/reply: return the argument."""
    return x


def nbytes(a):
    """The 64 MiB argument: return its size."""
    return a.nbytes


class Worker:
    """The actor of both actor contestants."""

    def noop(self):
        return None

    def echo(self, x):
        return x

    def nbytes(self, a):
        return a.nbytes


def big_array():
    return np.arange(ARRAY_BYTES // 8, dtype=np.float64)


def expected(benchmark):
    return {"task": None, "echo": X, "array": ARRAY_BYTES}[benchmark]


def check(benchmark, value):
    if value != expected(benchmark):
        raise AssertionError(f"{benchmark}: got {value!r}, not {expected(benchmark)!r}")


# -- timing (in each part) -------------------------------------------------------


def measure(ways, which, reps, iters, array_iters):
    """Time `ways` ({way: {benchmark: call}}): {way: {benchmark: [µs per round trip, per rep]}}.

    Only the benchmarks in `which`; a repetition is `iters` round trips
    (`array_iters` of the 64 MiB one).
    """
    keys = [(way, bench) for way, calls in ways.items() for bench in calls if bench in which]

    def count(bench):
        return array_iters if bench == "array" else iters

    for way, bench in keys:
        for _ in range(max(1 if bench == "array" else 3, int(count(bench) * WARMUP))):
            check(bench, ways[way][bench]())
    samples = {way: {bench: [] for bench in calls if bench in which} for way, calls in ways.items()}
    for rep in range(reps):
        turn = rep % len(keys)
        for way, bench in keys[turn:] + keys[:turn]:
            call, n = ways[way][bench], count(bench)
            start = time.perf_counter()
            for _ in range(n):
                value = call()
            elapsed = time.perf_counter() - start
            check(bench, value)
            samples[way][bench].append(elapsed / n * 1e6)
    return samples


def part_conveyor(which, reps, iters, array_iters):
    import conveyor as cv
    from conveyor._bench.runinfo import run_metadata

    with cv.Messenger() as m:
        if m.size != 2:
            raise SystemExit(f"the conveyor part runs on 2 ranks, not {m.size}")
        m.on("noop")(lambda msg: None)
        m.on("echo")(lambda msg: msg.payload)
        m.on("nbytes")(lambda msg: msg.payload.nbytes)
        out = None
        with m.driver() as d:
            if d is not None:
                a = big_array()
                ex = m.executor(ranks=[1])
                ref = m.spawn(1, Worker)
                ways = {
                    "executor": {
                        "task": lambda: ex.submit(noop).result(TIMEOUT),
                        "echo": lambda: ex.submit(echo, X).result(TIMEOUT),
                        "array": lambda: ex.submit(nbytes, a).result(TIMEOUT),
                    },
                    "actor": {
                        "task": lambda: ref.noop().result(TIMEOUT),
                        "echo": lambda: ref.echo(X).result(TIMEOUT),
                        "array": lambda: ref.nbytes(a).result(TIMEOUT),
                    },
                    "request": {
                        "task": lambda: m.request(1, "noop").result(TIMEOUT),
                        "echo": lambda: m.request(1, "echo", X).result(TIMEOUT),
                        "array": lambda: m.request(1, "nbytes", a).result(TIMEOUT),
                    },
                }
                samples = measure(ways, which, reps, iters, array_iters)
                meta = run_metadata()
                out = {"samples": samples, "iters": iters, "meta": meta}
    return out


def part_mpi4py(which, reps, iters, array_iters):
    import mpi4py
    from mpi4py.futures import MPIPoolExecutor

    with MPIPoolExecutor(max_workers=1) as ex:
        a = big_array()
        ways = {
            "executor": {
                "task": lambda: ex.submit(noop).result(TIMEOUT),
                "echo": lambda: ex.submit(echo, X).result(TIMEOUT),
                "array": lambda: ex.submit(nbytes, a).result(TIMEOUT),
            }
        }
        samples = measure(ways, which, reps, iters, array_iters)
    return {"samples": samples, "iters": iters, "meta": {"mpi4py": mpi4py.__version__}}


def part_dask(which, reps, iters, array_iters):
    import logging
    import warnings

    import distributed
    from distributed import Client, LocalCluster

    # The 64 MiB argument travels inside the task, as client.submit sends it;
    # Dask warns about the graph's size each time.
    warnings.filterwarnings("ignore", message=".*large graph.*")
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        a = big_array()
        ways = {
            "submit": {
                "task": lambda: client.submit(noop, pure=False).result(TIMEOUT),
                "echo": lambda: client.submit(echo, X, pure=False).result(TIMEOUT),
                "array": lambda: client.submit(nbytes, a, pure=False).result(TIMEOUT),
            }
        }
        samples = measure(ways, which, reps, iters, array_iters)
        workers = len(client.scheduler_info()["workers"])
    return {
        "samples": samples,
        "iters": iters,
        "meta": {"distributed": distributed.__version__, "workers": workers},
    }


def part_ray(which, reps, iters, array_iters):
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        r_noop, r_echo, r_nbytes = (ray.remote(f) for f in (noop, echo, nbytes))
        actor = ray.remote(Worker).remote()
        a = big_array()
        ways = {
            "task": {
                "task": lambda: ray.get(r_noop.remote(), timeout=TIMEOUT),
                "echo": lambda: ray.get(r_echo.remote(X), timeout=TIMEOUT),
                "array": lambda: ray.get(r_nbytes.remote(a), timeout=TIMEOUT),
            },
            "actor": {
                "task": lambda: ray.get(actor.noop.remote(), timeout=TIMEOUT),
                "echo": lambda: ray.get(actor.echo.remote(X), timeout=TIMEOUT),
                "array": lambda: ray.get(actor.nbytes.remote(a), timeout=TIMEOUT),
            },
        }
        samples = measure(ways, which, reps, iters, array_iters)
    finally:
        ray.shutdown()
    return {"samples": samples, "iters": iters, "meta": {"ray": ray.__version__}}


PARTS = {"conveyor": part_conveyor, "mpi4py": part_mpi4py, "dask": part_dask, "ray": part_ray}


def run_part_here(args):
    """``--part NAME``: measure one contestant in this process, write its JSON to ``--out``."""
    name = args.part
    out = PARTS[name](args.which, args.reps, args.iters or ITERS[name], ARRAY_ITERS[name])
    if out is not None:  # conveyor's serving rank has nothing to write
        with open(args.out, "w") as f:
            json.dump(out, f)
    return 0


# -- the driver ------------------------------------------------------------------


def why_skipped(name, mpiexec):
    """Why contestant `name` cannot run here, or None if it can."""
    if name in ("conveyor", "mpi4py") and mpiexec is None:
        return "no mpiexec found (install the mpich wheel or set CONVEYOR_MPIEXEC)"
    module = {"mpi4py": "mpi4py", "dask": "distributed"}.get(name, name)
    if importlib.util.find_spec(module) is None:
        how = {
            "dask": "pip install 'dask[distributed]' (requirements-dev.txt has it)",
            "ray": "pip install -r requirements-peers.txt (make bench-peers does)",
        }.get(name, f"pip install {module}")
        return f"{module} is not installed: {how}"
    return None


def part_command(name, args, mpiexec, out):
    options = ["--part", name, "--which", ",".join(args.which), "--reps", str(args.reps)]
    options += ["--out", out]
    if args.iters:
        options += ["--iters", str(args.iters)]
    script = [sys.executable, str(HERE)]
    if name == "conveyor":
        return [mpiexec, "-n", "2", *script, *options]
    if name == "mpi4py":
        return [mpiexec, "-n", "2", sys.executable, "-m", "mpi4py.futures", str(HERE), *options]
    return [*script, *options]


def machine_busy():
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # less idle and iowait


def busy_cpus(before, after):
    """CPUs the machine kept busy between two `machine_busy` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total > 0 else 0.0


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_idle(limit, settle):
    """Wait until other work keeps less than `limit` CPUs busy (1 s samples), at most `settle` s.

    Return (seconds waited, CPUs busy in the last sample). Nothing of this
    bench runs meanwhile, so what is busy is other work.
    """
    started = time.perf_counter()
    while True:
        before = machine_busy()
        time.sleep(1.0)
        busy = busy_cpus(before, machine_busy())
        waited = time.perf_counter() - started
        if busy < limit or waited >= settle:
            return waited, busy


def run_part(name, args, mpiexec, folder):
    """Run contestant `name` in a job of its own; return its results or {"failed": why}."""
    from conveyor.cli.launch import kill_group, start_in_group

    out = os.path.join(folder, f"{name}.json")
    log = os.path.join(folder, f"{name}.log")
    cmd = part_command(name, args, mpiexec, out)
    waited, idle_busy = wait_for_idle(args.idle_below, args.settle) if args.settle else (0.0, None)
    started, busy_before, cpu_before = time.perf_counter(), machine_busy(), children_cpu()
    # Output to a file, not a pipe: a process left behind (Ray's) cannot hold it open.
    with open(log, "w") as output:
        proc = start_in_group(cmd, stdout=output, stderr=subprocess.STDOUT)
        try:
            status = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            kill_group(proc)  # what is left of the job (all of it on a timeout or Ctrl-C)
    seconds = time.perf_counter() - started
    # What other work kept busy meanwhile: the machine's busy CPUs less this part's own.
    own = (children_cpu() - cpu_before) / seconds if seconds > 0 else 0.0
    others = max(0.0, busy_cpus(busy_before, machine_busy()) - own)
    load = {"waited_s": waited, "busy_before": idle_busy, "others_cpus": others, "own_cpus": own}
    text = pathlib.Path(log).read_text(errors="replace")
    if status != 0 or not os.path.exists(out):
        why = f"timed out after {args.timeout:g} s" if status is None else f"exit status {status}"
        tail = "\n".join(text.splitlines()[-15:])
        return {"failed": f"{why}: {' '.join(cmd)}\n{tail}", "seconds": seconds, "load": load}
    with open(out) as f:
        result = json.load(f)
    result["seconds"] = seconds
    result["load"] = load
    os.remove(out)
    return result


def summarize(runs, names, which):
    """The table's rows: medians over the runs, ranges, and ratios to conveyor's counterpart."""
    rows = []
    for bench, label, unit, scale in BENCHMARKS:
        if bench not in which:
            continue
        for contestant, way, name, counterpart in ROWS:
            if contestant not in names:
                continue
            per_run = []  # this row's median in each run, in seconds
            ratios = []  # peer / conveyor within each run
            for run in runs:
                part = run.get(contestant, {})
                if "samples" not in part:
                    continue
                value = statistics.median(part["samples"][way][bench]) * 1e-6
                per_run.append(value)
                conv = run.get("conveyor", {})
                if counterpart is not None and "samples" in conv:
                    ratios.append(
                        value / (statistics.median(conv["samples"][counterpart][bench]) * 1e-6)
                    )
            if not per_run:
                continue
            row = {
                "benchmark": bench,
                "label": label,
                "contestant": contestant,
                "way": way,
                "name": name,
                "unit": unit,
                "median": statistics.median(per_run) / scale,
                "min": min(per_run) / scale,
                "max": max(per_run) / scale,
                "runs": [v / scale for v in per_run],
                "counterpart": None if counterpart is None else f"conveyor/{counterpart}",
                "ratio": None,
                "target": None,
                "passed": None,
            }
            if ratios:
                row["ratio"] = {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                    "runs": ratios,
                }
            if bench == "task" and (contestant, way) == ("conveyor", "executor"):
                row["target"] = f"<= {TASK_TARGET_US:g} µs"
                row["passed"] = row["median"] <= TASK_TARGET_US
            elif bench == "echo" and contestant != "conveyor" and ratios:
                row["target"] = f"ratio >= {PEER_TARGET:g}x"
                row["passed"] = row["ratio"]["median"] >= PEER_TARGET
            rows.append(row)
    return rows


def figure(value):
    """A value with three significant figures (thousands grouped)."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def timing(row, sep="–"):
    """A row's median and range in the unit that keeps the median below 1000: ("11.3 ms", "11.1–11.4")."""
    units = ("µs", "ms", "s")
    step = units.index(row["unit"])
    scale = 1.0
    while row["median"] / scale >= 1000 and step < len(units) - 1:
        scale, step = scale * 1000, step + 1
    low, high = figure(row["min"] / scale), figure(row["max"] / scale)
    return f"{figure(row['median'] / scale)} {units[step]}", f"{low}{sep}{high}"


def verdict(row):
    return {None: "", True: "PASS", False: "FAIL"}[row["passed"]]


def print_table(rows, args):
    print(
        f"\npeers: medians over {args.runs} run(s) of {args.reps} repetitions "
        "(range: lowest-highest run); ratio = peer / conveyor's counterpart within a run"
    )
    head = f"  {'round trip':<16} {'contestant':<46} {'median':>11} {'range':>19} {'ratio':>8} {'range':>15}  target"
    print(head)
    for row in rows:
        ratio = row["ratio"]
        print(
            f"  {row['label']:<16} {row['name'].replace('`', ''):<46} "
            f"{timing(row)[0]:>11} {timing(row, '-')[1]:>19} "
            + (
                f"{figure(ratio['median']) + 'x':>8} {figure(ratio['min']) + '-' + figure(ratio['max']):>15}"
                if ratio
                else f"{'-':>8} {'':>15}"
            )
            + (f"  {row['target']} {verdict(row)}" if row["target"] else "")
        )


def markdown(rows, args, meta):
    """The README's table: one line per contestant, value and ratio per round trip."""
    cells = {}
    for row in rows:
        value = "{} ({})".format(*timing(row))
        if row["passed"] is False and row["ratio"] is None:
            value += " **FAIL**"
        ratio = "–"
        if row["ratio"]:
            r = row["ratio"]
            ratio = f"{figure(r['median'])}× ({figure(r['min'])}–{figure(r['max'])})"
            if row["passed"] is not None:
                ratio = f"**{figure(r['median'])}×** ({figure(r['min'])}–{figure(r['max'])})"
                ratio += "" if row["passed"] else " **FAIL**"
        cells[row["contestant"], row["way"], row["benchmark"]] = (value, ratio)
    versions = ", ".join(v if k == "MPI" else f"{k} {v}" for k, v in meta["versions"].items() if v)
    others = [v for values in meta["others_cpus"].values() for v in values]
    busy = (
        f" Other work kept at most {max(others):.2f} CPUs busy while a contestant ran."
        if others
        else ""
    )
    lines = [
        f"Medians of {args.runs} runs of `bench/peers.py`, each the median of {args.reps} "
        f"repetitions, one round trip at a time; {meta['cpus']} CPUs, {versions}, "
        f"{meta['time'][:10]}. In parentheses, the lowest and highest run. The ratio is "
        "peer / conveyor within one run, against conveyor's actor for Ray's actor and "
        f"against `cv.Executor` for every task.{busy}",
        "",
        "| contestant | no-op task | ratio | 8 B round trip | ratio (target ≥ 20×) | 64 MiB argument | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for contestant, way, name, _ in ROWS:
        if not any((contestant, way, b) in cells for b, *_ in BENCHMARKS):
            continue
        line = [name]
        for bench, *_ in BENCHMARKS:
            line += cells.get((contestant, way, bench), ("–", "–"))
        lines.append("| " + " | ".join(line) + " |")
    for name, why in meta["skipped"].items():
        lines.append(f"| {name}: skipped ({why}) | | | | | | |")
    task = next((r for r in rows if r["benchmark"] == "task" and r["way"] == "executor"), None)
    if task is not None and task["contestant"] == "conveyor":
        lines += [
            "",
            f"Target: a no-op `cv.Executor` task in at most {TASK_TARGET_US:g} µs on 2 ranks: "
            f"{figure(task['median'])} µs, **{verdict(task)}**.",
        ]
    return "\n".join(lines) + "\n"


def rewrite_readme(table):
    text = README.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{README} has no {BEGIN!r} ... {END!r} block")
    README.write_text(f"{text[: start + len(BEGIN)]}\n\n{table}\n{text[end:]}", encoding="utf-8")


def versions():
    found = {"Python": platform.python_version()}
    for dist in ("conveyor-mpi", "mpi4py", "numpy", "distributed", "ray"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def drive(args):
    from conveyor._bench.summary import _mpi_name
    from conveyor.cli.launch import find_mpiexec

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the Ray part sends nothing out
    names = args.only
    mpiexec = find_mpiexec(args.mpiexec)
    skipped = {n: why for n in names if (why := why_skipped(n, mpiexec)) is not None}
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}", flush=True)
    running = [n for n in names if n not in skipped]
    meta = {
        "argv": sys.argv,
        "runs": args.runs,
        "reps": args.reps,
        "iters": {n: args.iters or ITERS[n] for n in running},
        "array_iters": {n: ARRAY_ITERS[n] for n in running},
        "which": args.which,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "versions": versions(),
        "skipped": skipped,
        "load_before": os.getloadavg(),
    }
    runs, failed = [], {}
    with tempfile.TemporaryDirectory(prefix="conveyor-peers-") as folder:
        for number in range(1, args.runs + 1):
            run = {}
            for name in running:
                if name in failed:
                    continue
                result = run_part(name, args, mpiexec, folder)
                if "failed" in result:
                    failed[name] = f"run {number}: {result['failed']}"
                    print(f"run {number}: {name} FAILED: {result['failed']}", flush=True)
                    continue
                run[name] = result
                load = result["load"]
                print(
                    f"run {number}: {name} done in {result['seconds']:.1f} s "
                    f"(waited {load['waited_s']:.0f} s for the machine to settle; "
                    f"other work kept {load['others_cpus']:.2f} CPUs busy meanwhile)",
                    flush=True,
                )
            runs.append(run)
    meta["load_after"] = os.getloadavg()
    meta["failed"] = failed
    meta["others_cpus"] = {
        n: [run[n]["load"]["others_cpus"] for run in runs if n in run] for n in running
    }
    conveyor_meta = next((r["conveyor"]["meta"] for r in runs if "conveyor" in r), None)
    if conveyor_meta is not None:
        meta["mpi"] = conveyor_meta["mpi"]
        meta["versions"]["MPI"] = _mpi_name(conveyor_meta["mpi"])
    rows = summarize(runs, running, args.which)
    print_table(rows, args)
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    table = markdown(rows, args, meta)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table, encoding="utf-8")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "runs": runs}, f, indent=1, ensure_ascii=False)
    if args.readme and not failed:
        rewrite_readme(table)
    return 1 if failed else 0


def choice_list(choices):
    """An argparse type: a comma-separated subset of `choices`, in their order."""

    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {','.join(choices)}")
        return [n for n in choices if n in names]

    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs, each in fresh processes")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per run")
    parser.add_argument(
        "--iters",
        type=int,
        default=0,
        help="small round trips per repetition (default: per contestant, "
        + ", ".join(f"{k} {v}" for k, v in ITERS.items())
        + "); the 64 MiB one: "
        + ", ".join(f"{k} {v}" for k, v in ARRAY_ITERS.items()),
    )
    parser.add_argument(
        "--only",
        type=choice_list(CONTESTANTS),
        default=list(CONTESTANTS),
        help="contestants, comma-separated (default: all: %(default)s)",
    )
    benchmarks = tuple(b for b, *_ in BENCHMARKS)
    parser.add_argument(
        "--which",
        type=choice_list(benchmarks),
        default=list(benchmarks),
        help="round trips, comma-separated (default: all: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write metadata, rows and every sample")
    parser.add_argument("--markdown", metavar="FILE", help="write the README's table")
    parser.add_argument(
        "--readme", action="store_true", help="replace the README's table (if nothing failed)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per contestant run")
    parser.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="before each contestant, wait up to this many seconds for other work to "
        "keep fewer than --idle-below CPUs busy (0: do not wait)",
    )
    parser.add_argument("--idle-below", type=float, default=0.3, help="see --settle")
    parser.add_argument("--mpiexec", help="the mpiexec to start the MPI contestants with")
    parser.add_argument("--part", choices=CONTESTANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.reps < 1 or args.iters < 0:
        parser.error("--runs and --reps must be at least 1, --iters at least 0")
    if args.part:
        return run_part_here(args)
    with contextlib.suppress(KeyboardInterrupt):
        return drive(args)
    return 130


if __name__ == "__main__":
    sys.exit(main())
