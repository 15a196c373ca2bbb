"""``conveyor bench``: start the two benchmark ranks under mpiexec, then plot.

This process only launches: the benchmarks run in ``mpiexec -n 2 python -m
conveyor._bench.osu`` (this interpreter), whose rank 0 prints the table and
writes the JSON; ``--plot`` then draws that JSON here.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile

from . import osu, plot

# The default run takes 1-2 minutes on two cores; anything far beyond is a hang.
DEFAULT_TIMEOUT = 30 * 60


def find_mpiexec(explicit=None):
    """Return the mpiexec to start the ranks with.

    Parameters
    ----------
    explicit : str, optional
        A path or command name given with ``--mpiexec``; it wins.

    Returns
    -------
    str or None
        `explicit` resolved, else the mpiexec next to this Python (the mpich
        wheel installs it there), else ``$CONVEYOR_MPIEXEC``, else the one on
        ``PATH``; None if there is none.
    """
    if explicit is not None:
        return shutil.which(explicit)
    # A system mpiexec on PATH may belong to another MPI than the one mpi4py
    # was built with, so the one beside this interpreter comes first.
    return (
        shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        or os.environ.get("CONVEYOR_MPIEXEC")
        or shutil.which("mpiexec")
    )



def require_mpiexec(parser, explicit):
    """`find_mpiexec`, or a usage error of `parser` saying what to do."""
    mpiexec = find_mpiexec(explicit)
    if mpiexec is None:
        if explicit is not None:
            parser.error(f"argument --mpiexec: {explicit!r} is not an executable")
        parser.error("no mpiexec found: install the mpich wheel (pip install mpich), "
                     "set CONVEYOR_MPIEXEC or pass --mpiexec")
    return mpiexec

def add_arguments(parser):
    """Add the options of ``conveyor bench`` to `parser`."""
    osu.add_run_options(parser)
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw latencies, bandwidth curves and message rates to FILE.png "
                             "(needs matplotlib: pip install 'conveyor-mpi[plot]')")
    parser.add_argument("--mpiexec", metavar="PATH",
                        help="the mpiexec to use (default: the one next to this Python, "
                             "then $CONVEYOR_MPIEXEC, then PATH)")
    parser.add_argument("--timeout", type=osu.positive_int, default=DEFAULT_TIMEOUT,
                        metavar="SECONDS",
                        help=f"kill the run if it takes longer (default {DEFAULT_TIMEOUT})")


def _check_output_path(parser, option, path):
    if path is not None and not pathlib.Path(path).resolve().parent.is_dir():
        parser.error(f"argument {option}: the directory of {path!r} does not exist")


def run(parser, args):
    """Run ``conveyor bench`` with parsed `args`; report usage errors through `parser`.

    Returns
    -------
    int
        0 on success, mpiexec's exit status if the ranks failed, 1 on a hang.
    """
    try:
        osu.plan_from(args)
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
        json_path = args.json
        if json_path is None and args.plot is not None:
            json_path = os.path.join(scratch, "results.json")  # the plot's input only
        rank_argv = osu.run_options_argv(args)
        if json_path is not None:
            rank_argv += ["--json", os.path.abspath(json_path)]
        status = run_ranks(mpiexec, rank_argv, args.timeout)
        if status != 0:
            return status
        if args.json is not None:
            print(f"results: {args.json}")
        if args.plot is not None:
            plot.plot_file(json_path, args.plot)
            print(f"plot: {args.plot}")
    return 0


def run_ranks(mpiexec, rank_argv, timeout):
    """Run the benchmark program on two ranks; its output goes to ours.

    Returns
    -------
    int
        mpiexec's exit status; 1 if it was killed after `timeout` seconds,
        130 after Ctrl-C.
    """
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "conveyor._bench.osu", *rank_argv]
    print("$", " ".join(cmd), flush=True)
    # Own process group, so a hang can be ended with every rank mpiexec started.
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, KeyboardInterrupt):
            return 130
        print(f"conveyor bench: still running after {timeout} s: killed", file=sys.stderr)
        return 1
