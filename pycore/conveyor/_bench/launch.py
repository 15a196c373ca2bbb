"""``conveyor bench``: run the two benchmark ranks under mpiexec, judge, then write and plot.

This process only launches: the benchmarks run in ``mpiexec -n 2 python -m
conveyor._bench.osu`` (this interpreter), whose rank 0 prints the table and
writes the JSON of its run. ``--runs N`` starts N such jobs one after the
other, so each run is a sample of its own (fresh ranks, fresh caches and
placement); this process then reads their JSON, takes the medians over the
runs (`summary`), fails the command if a median missed its target, and
writes the JSON, the Markdown table and the plot. Around each job it reads
how busy other work kept the machine (`machine`), records that in the
run's metadata, prints it under the table, and warns when it was too busy.
"""

import json
import os
import pathlib
import sys
import tempfile

from ..cli.arguments import positive_int
from ..cli.launch import (
    INTERRUPTED,
    MPIEXEC_HELP,
    rank_threads,
    require_mpiexec,
    run_in_group,
    stopped_reason,
)
from . import machine, plan, plot, summary

# The default run takes 1-2 minutes on two cores; anything far beyond is a hang.
DEFAULT_TIMEOUT = 30 * 60

DESCRIPTION = (
    "OSU-style micro-benchmarks: conveyor side by side with raw mpi4py. Runs on "
    "two ranks under mpiexec, prints a table of medians and ratios with PASS/FAIL "
    "against each target, and exits with status 1 if a target is missed "
    "(except with --quick, whose figures are noise). With --runs N, runs N "
    "times and judges the median of the runs."
)


def add_arguments(parser):
    """Add the options of ``conveyor bench`` to `parser`."""
    plan.add_run_options(parser)
    parser.add_argument(
        "--runs",
        type=positive_int,
        default=1,
        metavar="N",
        help="run the benchmarks N times, each in a new mpiexec job, and report per row "
        "the median over the runs and the range of its ratio (default 1)",
    )
    parser.add_argument(
        "--markdown",
        metavar="FILE.md",
        help="write the figures as the Markdown table of the README to FILE.md",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the ratios against their targets, latencies, bandwidth curves and "
        "message rates to FILE.png (needs matplotlib: pip install 'conveyor-mpi[plot]')",
    )
    parser.add_argument("--mpiexec", metavar="PATH", help=MPIEXEC_HELP)
    parser.add_argument(
        "--timeout",
        type=positive_int,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"kill a run that takes longer (default {DEFAULT_TIMEOUT})",
    )


def _check_output_path(parser, option, path):
    if path is not None and not pathlib.Path(path).resolve().parent.is_dir():
        parser.error(f"argument {option}: the directory of {path!r} does not exist")


def run(parser, args):
    """Run ``conveyor bench`` with parsed `args`; report usage errors through `parser`.

    Returns
    -------
    int
        0 on success; 1 if a row missed its target (not with ``--quick``);
        mpiexec's exit status if the ranks of a run failed; 124 on a hang,
        130 after Ctrl-C. A run that fails ends the command: nothing is
        written.
    """
    try:
        plan.plan_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    for option in ("json", "markdown", "plot"):
        _check_output_path(parser, f"--{option}", getattr(args, option))
    # Fail before a run of minutes, not after it.
    if args.plot is not None:
        try:
            plot.require_matplotlib()
        except plot.MatplotlibMissing as exc:
            parser.error(f"argument --plot: {exc}")
    mpiexec = require_mpiexec(parser, args.mpiexec)

    runs = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as scratch:
        for number in range(1, args.runs + 1):
            if args.runs > 1:
                print(f"\nrun {number} of {args.runs}", flush=True)
            json_path = os.path.join(scratch, f"run-{number}.json")
            watch = machine.Watch()
            try:
                watch.start()  # reads the machine for a second: nothing of ours runs yet
            except KeyboardInterrupt:
                print("conveyor bench: interrupted", file=sys.stderr)
                return INTERRUPTED
            status = run_ranks(
                mpiexec, plan.run_options_argv(args) + ["--json", json_path], args.timeout
            )
            if status != 0:
                return status
            load = watch.stop()
            with open(json_path) as f:
                run = json.load(f)
            run["meta"]["load"] = load
            runs.append(run)
            print(machine.describe(load), flush=True)
            print_warning(machine.combine([load])["warning"])
    document = summary.combine(runs)
    rows = document["results"]
    if args.runs > 1:
        print(f"\nmedians of {args.runs} runs; range = lowest and highest ratio of a run")
        print("\n".join(summary.table_lines(rows)))
        print(machine.summary_line(document["meta"]["load"]), flush=True)
        print_warning(document["meta"]["load"]["warning"])
    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1, ensure_ascii=False)
        print(f"results: {args.json}")
    if args.markdown is not None:
        with open(args.markdown, "w") as f:
            f.write(summary.markdown(document))
        print(f"table: {args.markdown}")
    if args.plot is not None:
        plot.plot_results(rows, args.plot)
        print(f"plot: {args.plot}")
    missed = [row for row in rows if row["passed"] is False]
    if missed and not args.quick:
        names = ", ".join(f"{row['benchmark']} {row['label']}" for row in missed)
        print(f"conveyor bench: {len(missed)} target(s) missed: {names}", file=sys.stderr)
        return 1
    return 0


def print_warning(warning):
    """Print `warning` (a busy machine's) on standard output, under the table; None: nothing."""
    if warning is not None:
        print(warning, flush=True)


def run_ranks(mpiexec, rank_argv, timeout):
    """Run the benchmark program on two ranks; its output goes to ours.

    Each rank's BLAS and OpenMP get its share of the cores, as under
    ``conveyor run``: numpy's OpenBLAS would start a thread per core in
    each rank, which spin a while after start-up beside the timed loops.

    Returns
    -------
    int
        mpiexec's exit status; 124 if it was killed after `timeout`
        seconds, 130 after Ctrl-C.
    """
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "conveyor._bench.osu", *rank_argv]
    print("$", " ".join(cmd), flush=True)
    status = run_in_group(cmd, timeout, threads=rank_threads(2))
    stopped = stopped_reason(status, timeout)
    if stopped is not None:
        print(f"conveyor bench: {stopped}", file=sys.stderr)
    return status
