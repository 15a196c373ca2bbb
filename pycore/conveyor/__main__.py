"""The ``conveyor`` command line (also ``python -m conveyor``).

Subcommands:

bench
    OSU-style latency, bandwidth and message-rate benchmarks of conveyor
    against raw mpi4py, on two ranks under mpiexec.
shell
    An interactive command interpreter over the ranks' item stores
    (``mpiexec -n 4 conveyor shell``, or ``conveyor shell -n 4``).
script
    The same commands, read from a file.
"""

import argparse
import functools
import sys


def build_parser():
    """Return the parser of the ``conveyor`` command and its subcommands."""
    from . import _shell
    from ._bench import launch, osu

    parser = argparse.ArgumentParser(
        prog="conveyor", description="Message-driven programs over MPI: command-line tools."
    )
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                                     required=True)
    bench = commands.add_parser(
        "bench",
        help="benchmark latency, bandwidth and message rate against raw mpi4py",
        description=osu.__doc__.split("\n\n")[0] + " Runs on two ranks under mpiexec, "
        "prints a table of medians and ratios with PASS/FAIL against each target.",
    )
    launch.add_arguments(bench)
    # Each subcommand reports its usage errors under its own name.
    bench.set_defaults(run=functools.partial(launch.run, bench))

    epilog = ("Under mpiexec every rank runs the command: rank 0 reads the commands, the "
              "others serve. Type 'help' in the shell for the commands.")
    shell = commands.add_parser(
        "shell",
        help="an interactive command interpreter over the ranks' item stores",
        description="Read commands at a prompt on rank 0 (put, get, copy, move, rm, ls, "
        "stats, ...) and carry them out on the ranks of the job.",
        epilog=epilog,
    )
    _shell.add_arguments(shell, script=False)
    shell.set_defaults(run=functools.partial(_shell.run, shell, script=False))
    script = commands.add_parser(
        "script",
        help="run a file of shell commands",
        description="Run the commands of FILE, one per line, as 'conveyor shell' would. "
        "The exit status is 1 if any command failed.",
        epilog=epilog,
    )
    _shell.add_arguments(script, script=True)
    script.set_defaults(run=functools.partial(_shell.run, script, script=True))
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
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
