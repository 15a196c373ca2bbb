"""``conveyor shell`` and ``conveyor script``: their options, and what each process does.

Every rank of the job runs `run_rank`: rank 0 reads commands (typed at a
prompt, or from a script file) and carries them out with the `interpreter`;
the other ranks serve its messages (`service`) until rank 0 says ``quit``.
With ``-n N`` this process only starts the ranks under mpiexec (`launch`)
and, for ``shell``, is the terminal's `frontend`.
"""

import argparse
import os
import signal
import subprocess
import sys

import conveyor as cv

from .arguments import positive_int, seconds
from .frontend import front_end
from .interpreter import DEFAULT_TIMEOUT, Shell
from .launch import (
    INTERRUPTED,
    MPIEXEC_HELP,
    inside_mpi_job,
    kill_group,
    mpiexec_environment,
    rank_threads,
    require_mpiexec,
    start_in_group,
)
from .service import Service

__all__ = ["add_arguments", "run", "run_rank"]


def add_arguments(parser, script):
    """Add the options of ``conveyor shell`` (`script` False) or ``conveyor script``."""
    if script:
        parser.add_argument("file", metavar="FILE", help="the script to run ('-': standard input)")
    parser.add_argument(
        "-n",
        "--np",
        type=positive_int,
        metavar="N",
        dest="nranks",
        help="start N ranks under mpiexec (default: run as the rank "
        "that mpiexec started, or as a job of one rank)",
    )
    parser.add_argument("--mpiexec", metavar="PATH", help="with -n: " + MPIEXEC_HELP)
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long a command waits for a rank's answer "
        f"(default {DEFAULT_TIMEOUT:g}; 0: no limit)",
    )
    if script:
        parser.add_argument(
            "--stop-on-error",
            action="store_true",
            help="stop at the first command that fails (default: go on)",
        )
        parser.add_argument(
            "--echo",
            action="store_true",
            help="print each command, after the prompt, before running it",
        )
    else:
        # Rank 0 of `conveyor shell -n N`: stdin and stdout belong to the front end.
        parser.add_argument("--frontend", action="store_true", help=argparse.SUPPRESS)


def run(parser, args, script):
    """Run ``conveyor shell`` or ``conveyor script`` with parsed `args`.

    Returns
    -------
    int
        The exit status (see `Shell.run_script` and `Shell.interact`); 2 if
        the script cannot be read, 130 after Ctrl-C.
    """
    if args.nranks is not None:
        if inside_mpi_job():
            parser.error(
                "argument -n: this process is already a rank started by mpiexec; "
                "leave -n out (or run without mpiexec)"
            )
        return launch(parser, args, script)
    if args.mpiexec is not None:
        parser.error("argument --mpiexec: only with -n N")
    return run_rank(args, script)


def run_rank(args, script):
    """Be one rank of the job: rank 0 runs the session, the others serve it."""
    with cv.Messenger() as m:
        service = Service(m)
        if m.rank != 0:
            # mpiexec passes Ctrl-C to every rank: only rank 0 acts on it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            service.serve()
            return 0
        # A session prints its errors in order with its prompts and results,
        # which mpiexec forwards on one stream; a script keeps them apart.
        shell = Shell(m, err=sys.stderr if script else sys.stdout, timeout=args.timeout)
        try:
            if not script:
                if getattr(args, "frontend", False):
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                return shell.interact(frontend=getattr(args, "frontend", False))
            try:
                if args.file == "-":
                    lines, source = sys.stdin.readlines(), "<stdin>"
                else:
                    with open(args.file, encoding="utf-8") as f:
                        lines, source = f.readlines(), args.file
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                print(
                    f"error: cannot read the script {args.file!r}: {reason}",
                    file=sys.stderr,
                    flush=True,
                )
                return 2
            try:
                return shell.run_script(
                    lines, source, echo=args.echo, stop_on_error=args.stop_on_error
                )
            except KeyboardInterrupt:
                shell.error("interrupted: the script stopped")
                return INTERRUPTED
        finally:
            service.quit_others()


def launch(parser, args, script):
    """Start the ranks under mpiexec (``-n N``) and wait for them.

    ``conveyor script FILE -n N`` just runs ``mpiexec -n N`` with this
    Python on the same arguments. ``conveyor shell -n N`` is the front end
    of the session: it reads lines here, with readline, sends them to rank
    0 through mpiexec's standard input and prints rank 0's answers up to
    its marker line, so Ctrl-C only cancels the line being typed.

    Returns
    -------
    int
        mpiexec's exit status; 130 if the session was ended with Ctrl-C.
    """
    mpiexec = require_mpiexec(parser, args.mpiexec)
    cmd = [mpiexec, "-n", str(args.nranks), sys.executable, "-m", "conveyor"]
    options = ["--timeout", repr(args.timeout)]
    if script:
        if args.file != "-" and not os.path.isfile(args.file):
            parser.error(f"argument FILE: no such file: {args.file!r}")
        # The ranks start in this directory: the path stays as the user wrote it.
        options += ["--stop-on-error"] * args.stop_on_error + ["--echo"] * args.echo
        env = mpiexec_environment(threads=rank_threads(args.nranks))
        proc = subprocess.Popen(cmd + ["script", args.file, *options], env=env)
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                pass  # mpiexec passes it to the ranks: rank 0 stops the script
    proc = start_in_group(
        cmd + ["shell", "--frontend", *options],
        threads=rank_threads(args.nranks),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        return front_end(proc)
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        kill_group(proc)
