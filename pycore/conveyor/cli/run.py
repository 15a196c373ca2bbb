"""``conveyor run -n N script.py ARG ...``: run a script on N ranks under mpiexec or srun.

Each rank runs `script_rank`, which runs the script and leaves its exit
status in a scratch directory; this process waits for the launcher in a
process group of its own (`launch`), kills the group on timeout or Ctrl-C,
and says which ranks failed.

Inside a Slurm allocation (``SLURM_JOB_ID`` set, as in an ``sbatch``
script or a ``salloc`` shell) with ``srun`` on ``PATH``, the ranks are
started with ``srun --ntasks N`` instead of mpiexec, unless ``--launcher
mpiexec`` (or ``CONVEYOR_LAUNCHER=mpiexec``, or ``--mpiexec PATH``) says
otherwise. srun's tasks may run on other nodes than this process, so the
scratch directory is then made in the working directory, which a cluster's
nodes share; on timeout or Ctrl-C srun is sent SIGTERM (which it passes on
to its tasks) before its group is killed.
"""

import argparse
import os
import signal
import sys
import tempfile

from .arguments import positive_int, seconds
from .launch import (
    MPIEXEC_HELP,
    fault_tolerance_options,
    find_srun,
    inside_mpi_job,
    rank_threads,
    require_mpiexec,
    run_in_group,
    stopped_reason,
)

__all__ = ["LAUNCHERS", "add_arguments", "choose_launcher", "launch_command", "run"]

# What --launcher (or CONVEYOR_LAUNCHER) may say: srun inside a Slurm
# allocation that has it, else mpiexec; or either, forced.
LAUNCHERS = ("auto", "mpiexec", "srun")


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
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        help="what starts the ranks: 'srun' inside a Slurm allocation (SLURM_JOB_ID set) "
        "that has srun on PATH, else 'mpiexec' (default: $CONVEYOR_LAUNCHER, else auto; "
        "--mpiexec PATH means mpiexec)",
    )
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
        failed (or the launcher's), `TIMED_OUT` (124) after ``--timeout``,
        `INTERRUPTED` (130) after Ctrl-C.
    """
    if inside_mpi_job():
        parser.error(
            "this process is already a rank started by mpiexec: "
            "run the script with python, or leave mpiexec out"
        )
    if not os.path.isfile(args.script):
        parser.error(f"argument SCRIPT: no such file: {args.script!r}")
    launcher, srun = choose_launcher(parser, args)
    program = "srun" if srun else "mpiexec"
    options = []
    if args.fault_tolerant:
        if srun:
            parser.error(
                "--fault-tolerant keeps ranks running with mpiexec's options only: "
                "add --launcher mpiexec"
            )
        options = fault_tolerance_options(launcher)
        if options is None:
            parser.error(
                f"--fault-tolerant: {launcher} is neither MPICH's nor Open MPI's mpiexec: "
                "no option known to keep its ranks running when one dies"
            )
    # srun's tasks may run on other nodes: they write their statuses to the
    # working directory, which the nodes of a cluster share.
    where = os.getcwd() if srun and os.access(os.getcwd(), os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".conveyor-run-", dir=where) as status_dir:
        rank_command = [
            sys.executable,
            "-m",
            "conveyor.cli.script_rank",
            status_dir,
            *["--prefix"] * args.prefix,
            args.script,
            *args.args,
        ]
        # srun's tasks run outside our process group: told to stop, it ends them.
        status = run_in_group(
            launch_command(launcher, srun, args.nranks, rank_command, options),
            args.timeout,
            terminate=signal.SIGTERM if srun else None,
            threads=rank_threads(args.nranks, srun),
        )
        statuses = {}
        for name in os.listdir(status_dir):
            with open(os.path.join(status_dir, name)) as f:
                statuses[int(name)] = int(f.read())
    stopped = stopped_reason(status, args.timeout)
    if stopped is not None:
        _say(stopped)
        return status
    failed = {rank: code for rank, code in sorted(statuses.items()) if code != 0}
    for rank, code in failed.items():
        _say(f"rank {rank} failed with exit status {code}")
    unfinished = [rank for rank in range(args.nranks) if rank not in statuses]
    for rank in unfinished:
        _say(
            f"rank {rank} did not finish: stopped by {program} or by a signal, or left by os._exit"
        )
    if srun and unfinished:
        _say(
            "a rank reports its status in the working directory: one on a node "
            "that does not share it is listed as not finished"
        )
    if args.fault_tolerant and unfinished and statuses and not failed:
        # The job was started to outlive its dead ranks: it did.
        _say(
            f"the other {len(statuses)} ranks finished without {'it' if len(unfinished) == 1 else 'them'}"
        )
        return 0
    if status != 0 or unfinished:
        _say(f"{program} exited with status {status}")
    # MPICH's mpiexec exits with 0 when the rank that ended the job early
    # did so with os._exit(0): a job whose script did not end on every rank
    # failed all the same.
    return next(iter(failed.values()), status or int(bool(unfinished)))


def choose_launcher(parser, args):
    """Return ``(path, srun)``: the program that starts the ranks, and whether it is srun.

    ``--launcher`` wins, then ``CONVEYOR_LAUNCHER``; ``auto`` (the default)
    is srun inside a Slurm allocation that has it, unless ``--mpiexec``
    names an mpiexec. What is chosen, and why, is said on standard error
    whenever Slurm is involved. Usage errors go through `parser`.
    """
    choice = args.launcher or os.environ.get("CONVEYOR_LAUNCHER", "").strip() or "auto"
    if choice not in LAUNCHERS:
        parser.error(f"CONVEYOR_LAUNCHER={choice!r}: say {', '.join(map(repr, LAUNCHERS))}")
    if choice == "srun" and args.mpiexec is not None:
        parser.error("--mpiexec names an mpiexec, but the launcher is srun")
    job = os.environ.get("SLURM_JOB_ID")
    srun = find_srun()
    if choice == "srun":
        if srun is None:
            parser.error(
                "the launcher is srun, but "
                + (
                    "srun is not on PATH"
                    if job
                    else "this is not a Slurm allocation (no SLURM_JOB_ID)"
                )
            )
    elif choice == "auto" and args.mpiexec is None and srun is not None:
        _say(
            f"inside Slurm job {job}: starting the ranks with srun "
            "(--launcher mpiexec or CONVEYOR_LAUNCHER=mpiexec starts them with mpiexec)"
        )
    else:
        if choice == "auto" and job and args.mpiexec is None:
            _say(
                f"inside Slurm job {job}, but srun is not on PATH: starting the ranks with mpiexec"
            )
        return require_mpiexec(parser, args.mpiexec), False
    return srun, True


def launch_command(launcher, srun, nranks, rank_command, options=()):
    """The command that starts `nranks` ranks of `rank_command` with `launcher`.

    srun gets ``--ntasks N`` and ``--kill-on-bad-exit=1`` (a rank that
    fails ends the job, as under mpiexec); its MPI plugin is the site's
    default or ``SLURM_MPI_TYPE``'s. mpiexec gets `options` (those of
    ``--fault-tolerant``), then ``-n N``.
    """
    if srun:
        return [launcher, "--ntasks", str(nranks), "--kill-on-bad-exit=1", *rank_command]
    return [launcher, *options, "-n", str(nranks), *rank_command]


def _say(text):
    print(f"conveyor run: {text}", file=sys.stderr, flush=True)
