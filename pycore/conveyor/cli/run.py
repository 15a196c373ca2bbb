"""``conveyor run -n N script.py ARG ...``: run a script on N ranks under mpiexec.

Each rank runs `script_rank`, which runs the script and leaves its exit
status in a scratch directory; this process waits for mpiexec in a process
group of its own (`launch`), kills the group on timeout or Ctrl-C, and
says which ranks failed.
"""

import argparse
import os
import sys
import tempfile

from .arguments import positive_int, seconds
from .launch import (
    INTERRUPTED,
    MPIEXEC_HELP,
    TIMED_OUT,
    fault_tolerance_options,
    inside_mpi_job,
    require_mpiexec,
    run_in_group,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    """Add the options and arguments of ``conveyor run`` to `parser`."""
    parser.add_argument(
        "-n",
        "--np",
        type=positive_int,
        required=True,
        metavar="N",
        dest="nranks",
        help="the number of ranks to start",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=0,
        metavar="SECONDS",
        help="kill every rank if the job takes longer; exit status 124 (default 0: no limit)",
    )
    parser.add_argument(
        "--prefix",
        action="store_true",
        help="prefix each line a rank prints with its rank: [1] ...",
    )
    parser.add_argument(
        "--fault-tolerant",
        action="store_true",
        help="keep the other ranks running when one dies (for Messenger(fault_tolerant=True)); "
        "the job succeeds if every rank that finished did",
    )
    parser.add_argument("--mpiexec", metavar="PATH", help=MPIEXEC_HELP)
    parser.add_argument("script", metavar="SCRIPT", help="the Python file every rank runs")
    parser.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="ARG",
        help="arguments passed to the script (sys.argv[1:])",
    )


def run(parser, args):
    """Run ``conveyor run`` with parsed `args`; report usage errors through `parser`.

    Returns
    -------
    int
        0 if every rank succeeded; the exit status of the first rank that
        failed (or mpiexec's), `TIMED_OUT` (124) after ``--timeout``,
        `INTERRUPTED` (130) after Ctrl-C.
    """
    if inside_mpi_job():
        parser.error(
            "this process is already a rank started by mpiexec: "
            "run the script with python, or leave mpiexec out"
        )
    if not os.path.isfile(args.script):
        parser.error(f"argument SCRIPT: no such file: {args.script!r}")
    mpiexec = require_mpiexec(parser, args.mpiexec)
    options = []
    if args.fault_tolerant:
        options = fault_tolerance_options(mpiexec)
        if options is None:
            parser.error(
                f"--fault-tolerant: {mpiexec} is neither MPICH's nor Open MPI's mpiexec: "
                "no option known to keep its ranks running when one dies"
            )
    with tempfile.TemporaryDirectory(prefix="conveyor-run-") as status_dir:
        cmd = [
            mpiexec,
            *options,
            "-n",
            str(args.nranks),
            sys.executable,
            "-m",
            "conveyor.cli.script_rank",
            status_dir,
            *["--prefix"] * args.prefix,
            args.script,
            *args.args,
        ]
        status = run_in_group(cmd, args.timeout)
        statuses = {}
        for name in os.listdir(status_dir):
            with open(os.path.join(status_dir, name)) as f:
                statuses[int(name)] = int(f.read())
    if status == TIMED_OUT:
        _say(f"still running after {args.timeout:g} s: killed every rank")
        return TIMED_OUT
    if status == INTERRUPTED:
        _say("interrupted: killed every rank")
        return INTERRUPTED
    failed = {rank: code for rank, code in sorted(statuses.items()) if code != 0}
    for rank, code in failed.items():
        _say(f"rank {rank} failed with exit status {code}")
    unfinished = [rank for rank in range(args.nranks) if rank not in statuses]
    for rank in unfinished:
        _say(f"rank {rank} did not finish: stopped by mpiexec or by a signal, or left by os._exit")
    if args.fault_tolerant and unfinished and statuses and not failed:
        # The job was started to outlive its dead ranks: it did.
        _say(
            f"the other {len(statuses)} ranks finished without {'it' if len(unfinished) == 1 else 'them'}"
        )
        return 0
    if status != 0 or unfinished:
        _say(f"mpiexec exited with status {status}")
    # MPICH's mpiexec exits with 0 when the rank that ended the job early
    # did so with os._exit(0): a job whose script did not end on every rank
    # failed all the same.
    return next(iter(failed.values()), status or int(bool(unfinished)))


def _say(text):
    print(f"conveyor run: {text}", file=sys.stderr, flush=True)
