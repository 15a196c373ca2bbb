"""The ``conveyor`` command (also ``python -m conveyor``): its parser and the dispatch.

Subcommands:

run
    Run a Python script on N ranks under mpiexec.
bench
    OSU-style latency, bandwidth and message-rate benchmarks of conveyor
    against raw mpi4py, on two ranks under mpiexec.
shell
    An interactive command interpreter over the ranks' item stores
    (``mpiexec -n 4 conveyor shell``, or ``conveyor shell -n 4``).
script
    The same commands, read from a file.
trace
    ``trace merge``: join the ranks' trace files (``Messenger(trace=...)``)
    into one timeline; ``trace plot``: draw one as ranks × time.

Building the parser imports no MPI: ``--help``, ``--version`` and the
launchers run without initialising it.
"""

import argparse
import functools

from . import run, shell, trace

__all__ = ["build_parser", "main"]


def build_parser():
    """Return the parser of the ``conveyor`` command and its subcommands."""
    from .. import __version__
    from .._bench import launch as bench

    parser = argparse.ArgumentParser(
        prog="conveyor", description="Message-driven programs over MPI: command-line tools."
    )
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    # Each subcommand reports its usage errors under its own name.
    run_command = commands.add_parser(
        "run",
        help="run a Python script on N ranks under mpiexec",
        description="Start N ranks under mpiexec, each running SCRIPT with the ARGs, as "
        "'mpiexec -n N python SCRIPT ARG...' would; say which ranks failed.",
        epilog="The exit status is 0 if every rank succeeded, else the status of the "
        "first rank that failed; 124 after --timeout, 130 after Ctrl-C.",
    )
    run.add_arguments(run_command)
    run_command.set_defaults(run=functools.partial(run.run, run_command))

    bench_command = commands.add_parser(
        "bench",
        help="benchmark latency, bandwidth and message rate against raw mpi4py",
        description=bench.DESCRIPTION,
    )
    bench.add_arguments(bench_command)
    bench_command.set_defaults(run=functools.partial(bench.run, bench_command))

    epilog = (
        "Under mpiexec every rank runs the command: rank 0 reads the commands, the "
        "others serve. Type 'help' in the shell for the commands."
    )
    shell_command = commands.add_parser(
        "shell",
        help="an interactive command interpreter over the ranks' item stores",
        description="Read commands at a prompt on rank 0 (put, get, copy, move, rm, ls, "
        "stats, ...) and carry them out on the ranks of the job.",
        epilog=epilog,
    )
    shell.add_arguments(shell_command, script=False)
    shell_command.set_defaults(run=functools.partial(shell.run, shell_command, script=False))
    script_command = commands.add_parser(
        "script",
        help="run a file of shell commands",
        description="Run the commands of FILE, one per line, as 'conveyor shell' would. "
        "The exit status is 1 if any command failed.",
        epilog=epilog,
    )
    shell.add_arguments(script_command, script=True)
    script_command.set_defaults(run=functools.partial(shell.run, script_command, script=True))
    trace_command = commands.add_parser(
        "trace",
        help="merge and plot the traces of Messenger(trace=...)",
        description="Work with the Chrome-trace files that Messenger(trace='run.%r.json') "
        "writes, one per rank.",
    )
    trace.add_arguments(trace_command)
    return parser


def main(argv=None):
    """Run the ``conveyor`` command with `argv` (default: ``sys.argv[1:]``).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name.

    Returns
    -------
    int
        The exit status.
    """
    args = build_parser().parse_args(argv)
    return args.run(args)
