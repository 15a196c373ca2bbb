"""The ``conveyor`` command line (also ``python -m conveyor``).

Subcommands:

bench
    OSU-style latency, bandwidth and message-rate benchmarks of conveyor
    against raw mpi4py, on two ranks under mpiexec.
"""

import argparse
import functools
import sys


def build_parser():
    """Return the parser of the ``conveyor`` command and its subcommands."""
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
