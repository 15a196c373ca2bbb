"""``conveyor bench``: start the two benchmark ranks under mpiexec, judge, then plot.

This process only launches: the benchmarks run in ``mpiexec -n 2 python -m
conveyor._bench.osu`` (this interpreter), whose rank 0 prints the table and
writes the JSON; this process then reads the JSON to fail the run if a
target was missed, and ``--plot`` draws it.
"""

import json
import os
import pathlib
import sys
import tempfile

from ..cli.arguments import positive_int
from ..cli.launch import INTERRUPTED, MPIEXEC_HELP, TIMED_OUT, require_mpiexec, run_in_group
from . import plan, plot

# The default run takes 1-2 minutes on two cores; anything far beyond is a hang.
DEFAULT_TIMEOUT = 30 * 60

DESCRIPTION = (
    "OSU-style micro-benchmarks: conveyor side by side with raw mpi4py. Runs on "
    "two ranks under mpiexec, prints a table of medians and ratios with PASS/FAIL "
    "against each target, and exits with status 1 if a target is missed "
    "(except with --quick, whose figures are noise)."
)


def add_arguments(parser):
    """Add the options of ``conveyor bench`` to `parser`."""
    plan.add_run_options(parser)
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw latencies, bandwidth curves and message rates to FILE.png "
        "(needs matplotlib: pip install 'conveyor-mpi[plot]')",
    )
    parser.add_argument("--mpiexec", metavar="PATH", help=MPIEXEC_HELP)
    parser.add_argument(
        "--timeout",
        type=positive_int,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"kill the run if it takes longer (default {DEFAULT_TIMEOUT})",
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
        mpiexec's exit status if the ranks failed; 124 on a hang, 130 after
        Ctrl-C.
    """
    try:
        plan.plan_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    _check_output_path(parser, "--json", args.json)
    _check_output_path(parser, "--plot", args.plot)
    # Fail before a run of minutes, not after it.
    if args.plot is not None:
        try:
            plot.require_matplotlib()
        except plot.MatplotlibMissing as exc:
            parser.error(f"argument --plot: {exc}")
    mpiexec = require_mpiexec(parser, args.mpiexec)

    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as scratch:
        # The JSON is written even if not asked for: the verdict and the plot read it.
        json_path = os.path.abspath(args.json or os.path.join(scratch, "results.json"))
        status = run_ranks(
            mpiexec, plan.run_options_argv(args) + ["--json", json_path], args.timeout
        )
        if status != 0:
            return status
        if args.json is not None:
            print(f"results: {args.json}")
        if args.plot is not None:
            plot.plot_file(json_path, args.plot)
            print(f"plot: {args.plot}")
        with open(json_path) as f:
            missed = [row for row in json.load(f)["results"] if row["passed"] is False]
    if missed and not args.quick:
        names = ", ".join(f"{row['benchmark']} {row['label']}" for row in missed)
        print(f"conveyor bench: {len(missed)} target(s) missed: {names}", file=sys.stderr)
        return 1
    return 0


def run_ranks(mpiexec, rank_argv, timeout):
    """Run the benchmark program on two ranks; its output goes to ours.

    Returns
    -------
    int
        mpiexec's exit status; 124 if it was killed after `timeout`
        seconds, 130 after Ctrl-C.
    """
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "conveyor._bench.osu", *rank_argv]
    print("$", " ".join(cmd), flush=True)
    status = run_in_group(cmd, timeout)
    if status == TIMED_OUT:
        print(f"conveyor bench: still running after {timeout} s: killed", file=sys.stderr)
    elif status == INTERRUPTED:
        print("conveyor bench: interrupted: killed", file=sys.stderr)
    return status
