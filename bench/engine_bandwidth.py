"""Conveyor's engine without Python, beside C MPI: the floor under the bandwidth rows.

Usage::

    python bench/engine_bandwidth.py [--sizes 65536,262144,1048576] [--mib 256]
                                     [--reps 9] [--runs 3]

Builds ``bench/engine_window.cpp`` with the core's engine sources (as
``bench/engine_latency.py`` builds its ping-pong), runs it under ``mpiexec
-n 2`` `--runs` times per size, and prints each contestant's median MB/s over
the runs, with its range, and the engine's ratio to each MPI contestant:
osu_bw's windows of 64 ``MPI_Isend`` into one preposted receive buffer, the
same into a buffer per message of the window, and the engine's posts of
frames whose data goes out of band, received into buffers of its own.
``conveyor bench --which bw`` gives the same path from Python and raw
mpi4py's; bench/README.md sets them side by side.
"""

import argparse
import pathlib
import statistics
import tempfile

from engine_latency import build, run

from conveyor.cli.arguments import byte_sizes, positive_int

WINDOW = 64  # osu_bw's
NAMES = {
    "mpi": "C MPI_Isend window, one buffer",
    "mpi-distinct": "the same, a buffer per message",
    "engine": "engine post/wait/pop (C++)",
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=byte_sizes,
        default="65536,262144,1048576",
        help="message sizes, comma-separated (65536 or 64K)",
    )
    parser.add_argument("--mib", type=positive_int, default=256, help="MiB moved per repetition")
    parser.add_argument("--reps", type=positive_int, default=9, help="repetitions per run (median)")
    parser.add_argument(
        "--runs", type=positive_int, default=3, help="mpiexec jobs per size (median, range)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        binary = pathlib.Path(tmp) / "engine_window"
        build(binary, "engine_window.cpp")
        for size in args.sizes:
            windows = max(2, (args.mib << 20) // (WINDOW * size))
            runs = [run(binary, size, WINDOW, windows, args.reps) for _ in range(args.runs)]
            print(f"{size} bytes, MB/s: medians of {args.runs} runs (range)")
            for name, label in NAMES.items():
                values = [r[name] for r in runs]
                print(
                    f"{label:>32}  {statistics.median(values):8.0f}"
                    f"  ({min(values):.0f}–{max(values):.0f})"
                )
            for name in ("mpi", "mpi-distinct"):
                ratios = [r["engine"] / r[name] for r in runs]
                print(
                    f"{'engine / ' + name:>32}  {statistics.median(ratios):8.2f}"
                    f"  ({min(ratios):.2f}–{max(ratios):.2f})"
                )


if __name__ == "__main__":
    main()
