"""Conveyor's engine without Python, beside C MPI: the floor under the latency rows.

Usage::

    python bench/engine_latency.py [--iters 20000] [--reps 9] [--runs 3]

Builds ``bench/engine_pingpong.cpp`` with the core's engine sources and the
``mpicxx`` beside this Python (the MPI conveyor is built against), runs it
under ``mpiexec -n 2`` `--runs` times, and prints the median one-way latency
of each contestant over the runs, with its range: MPI_Send/MPI_Recv in C
(``osu_latency``), the engine's post/wait/pop in C++, and the same through an
aggregation batch. ``conveyor bench --which latency,oneway,agg-latency`` gives
the same path from Python and raw mpi4py's; bench/README.md sets them side by
side to show where the time goes.
"""

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

from conveyor.cli.arguments import positive_int

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAMES = {
    "mpi": "C MPI_Send/MPI_Recv",
    "engine": "engine post/wait/pop (C++)",
    "aggregated": "engine post_aggregated (C++)",
}


def tool(name):
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if not found:
        sys.exit(f"engine_latency: no {name} found beside {sys.executable} or on PATH")
    return found


def build(binary, program="engine_pingpong.cpp"):
    """Compiles bench/`program` with the engine's sources into `binary`."""
    sources = sorted(str(p) for p in (ROOT / "csrc" / "conveyor" / "engine").glob("*.cpp"))
    cmd = [tool("mpicxx"), "-std=c++17", "-O3", "-pthread", f"-I{ROOT / 'csrc'}"]
    subprocess.run(
        [*cmd, str(ROOT / "bench" / program), *sources, "-o", str(binary)],
        check=True,
    )


def run(binary, *args):
    """{contestant: its median figure} of one mpiexec job of `binary` with `args`."""
    proc = subprocess.run(
        [tool("mpiexec"), "-n", "2", str(binary), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return {name: float(median) for name, median, *_ in map(str.split, proc.stdout.splitlines())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iters", type=positive_int, default=20000, help="ping-pongs per repetition"
    )
    parser.add_argument("--reps", type=positive_int, default=9, help="repetitions per run (median)")
    parser.add_argument("--runs", type=positive_int, default=3, help="mpiexec jobs (median, range)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        binary = pathlib.Path(tmp) / "engine_pingpong"
        build(binary)
        runs = [run(binary, args.iters, args.reps) for _ in range(args.runs)]
    print(f"one-way latency, µs: medians of {args.runs} runs (range)")
    for name, label in NAMES.items():
        values = [r[name] for r in runs]
        print(
            f"{label:>30}  {statistics.median(values):6.2f}  ({min(values):.2f}–{max(values):.2f})"
        )


if __name__ == "__main__":
    main()
