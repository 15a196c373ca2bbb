"""What a benchmark run does: the benchmarks, their sizes and counts, and the options that choose them.

Shared by ``conveyor bench``, which only launches, and the ranks of
`osu`, which run: nothing here imports MPI.
"""

import argparse
import dataclasses

from ..cli.arguments import byte_size, positive_int

KiB = 1 << 10
MiB = 1 << 20

BENCHMARKS = (
    "latency",
    "oneway",
    "bw",
    "rate",
    "batch",
    "agg-latency",
    "served",
    "executor",
    "rate-trace",
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long each benchmark runs: the full run or ``--quick``."""

    reps: int  # repetitions; medians are reported
    latency_iters: int  # timed ping-pongs per latency repetition
    min_size: int  # smallest bandwidth message, bytes
    max_size: int  # largest bandwidth message; sizes go up by 4x
    bw_run_bytes: int  # bytes per timed bandwidth run (at least two windows)
    rate_windows: int  # timed windows of RATE_WINDOW messages per rate run
    batch_run_items: int  # items per timed batch run (at least two windows)

    def bw_sizes(self):
        """The bandwidth message sizes: min_size, 4·min_size, ... up to max_size."""
        sizes = []
        size = self.min_size
        while size <= self.max_size:
            sizes.append(size)
            size *= 4
        return sizes


FULL = Plan(
    reps=9,
    latency_iters=20000,
    min_size=64 * KiB,
    max_size=256 * MiB,
    bw_run_bytes=1024 * MiB,
    rate_windows=2000,
    batch_run_items=16_000_000,
)
# A smoke test of every contestant: a whole `conveyor bench --quick` takes seconds.
QUICK = Plan(
    reps=3,
    latency_iters=500,
    min_size=64 * KiB,
    max_size=1 * MiB,
    bw_run_bytes=16 * MiB,
    rate_windows=50,
    batch_run_items=1_000_000,
)


def parse_which(text):
    """Parse ``--which``: comma-separated names from `BENCHMARKS`, in the given order."""
    which = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in which if name not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(map(repr, unknown))} (choose from {', '.join(BENCHMARKS)})"
        )
    if not which:
        raise argparse.ArgumentTypeError(f"name at least one of {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(which))  # each once


def add_run_options(parser):
    """Add the options of a benchmark run (shared by ``conveyor bench`` and the ranks)."""
    parser.add_argument(
        "--which",
        type=parse_which,
        default=list(BENCHMARKS),
        metavar="LIST",
        help=f"comma-separated benchmarks to run (default: all of {','.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few repetitions, iterations and sizes: checks that every "
        "contestant runs, in seconds (figures are not meaningful)",
    )
    parser.add_argument(
        "--reps",
        type=positive_int,
        metavar="N",
        help=f"repetitions per measurement; medians are reported "
        f"(default {FULL.reps}, --quick {QUICK.reps})",
    )
    parser.add_argument(
        "--iters",
        type=positive_int,
        metavar="N",
        help=f"timed ping-pongs per latency repetition "
        f"(default {FULL.latency_iters}, --quick {QUICK.latency_iters})",
    )
    parser.add_argument(
        "--min-size",
        type=byte_size,
        metavar="SIZE",
        help="smallest bandwidth message (default 64K)",
    )
    parser.add_argument(
        "--max-size",
        type=byte_size,
        metavar="SIZE",
        help="largest bandwidth message; sizes go up by 4x (default 256M, --quick 1M)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write metadata, medians and every sample to FILE"
    )


def plan_from(args):
    """Return the `Plan` that `args` (from `add_run_options`) ask for.

    Raises
    ------
    ValueError
        If the options contradict each other.
    """
    base = QUICK if args.quick else FULL
    overrides = {
        "reps": args.reps,
        "latency_iters": args.iters,
        "min_size": args.min_size,
        "max_size": args.max_size,
    }
    plan = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if plan.min_size > plan.max_size:
        raise ValueError(
            f"--min-size ({format_size(plan.min_size)}) is larger than "
            f"--max-size ({format_size(plan.max_size)})"
        )
    return plan


def run_options_argv(args):
    """Return the options that reproduce `args` (from `add_run_options`), all but ``--json``."""
    argv = ["--which", ",".join(args.which)]
    if args.quick:
        argv.append("--quick")
    for flag, value in (
        ("--reps", args.reps),
        ("--iters", args.iters),
        ("--min-size", args.min_size),
        ("--max-size", args.max_size),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def format_size(n):
    """Format a byte count the way the table shows it: ``64 KiB``, ``8 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"
