"""Ranks that multiply matrices, started by plain mpiexec and by ``conveyor run``.

numpy's BLAS (OpenBLAS in its wheels) starts a thread per core in every
process that imports it, and those threads spin for a while after each
call. Started by plain ``mpiexec``, N ranks on a machine of C cores run
N x C BLAS threads; ``conveyor run`` gives each rank its share of the
cores instead (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS``, unless set: `conveyor.cli.launch.rank_threads`)::

    python bench/blas_threads.py [--ranks 2,4] [--runs 3] [--size 300] [--products 200]

Each rank multiplies two ``--size`` square matrices ``--products`` times,
with an ``Allreduce`` every tenth product, as a program whose ranks
compute and then exchange does. Both launches start the same program with
no thread variable set; they alternate, ``--runs`` times each per rank
count. Printed per rank count: each launch's median seconds (rank 0's,
from a barrier to a barrier) with their range, the threads a rank's BLAS
was given, and the ratio of the medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def rank_program(size, products):
    """One rank's work; rank 0 prints its seconds and the threads its BLAS was given."""
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    a = np.random.default_rng(comm.rank).random((size, size))
    total = np.zeros(1)
    comm.Barrier()
    start = time.perf_counter()
    for i in range(products):
        b = a @ a
        if i % 10 == 0:
            comm.Allreduce(b[:1, 0].copy(), total)
    comm.Barrier()
    if comm.rank == 0:
        threads = os.environ.get("OPENBLAS_NUM_THREADS")
        print(json.dumps({"seconds": time.perf_counter() - start, "threads": threads}))


def launch(how, nranks, size, products):
    """Run the program on `nranks` ranks with plain mpiexec or conveyor run: (seconds, threads)."""
    from conveyor.cli.launch import THREAD_VARIABLES, find_mpiexec, mpiexec_environment

    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    program = [HERE, "--rank-program", "--size", str(size), "--products", str(products)]
    if how == "mpiexec":
        cmd = [find_mpiexec(), "-n", str(nranks), sys.executable, *program]
        env = mpiexec_environment(env)
    else:
        conveyor = os.path.join(os.path.dirname(sys.executable), "conveyor")
        cmd = [conveyor, "run", "--launcher", "mpiexec", "-n", str(nranks), *program]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["threads"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ranks", default="2,4", help="rank counts, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--rank-program", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_program:
        return rank_program(args.size, args.products)
    print(f"{'ranks':>5}  {'launch':<12}  {'BLAS threads':>12}  {'seconds (range)':<22}  ratio")
    for nranks in (int(n) for n in args.ranks.split(",")):
        samples = {"mpiexec": [], "conveyor run": []}
        threads = {}
        for _ in range(args.runs):
            for how in samples:
                seconds, threads[how] = launch(how, nranks, args.size, args.products)
                samples[how].append(seconds)
        medians = {how: statistics.median(s) for how, s in samples.items()}
        for how, s in samples.items():
            ratio = medians[how] / medians["mpiexec"]
            spread = f"{medians[how]:.3f} ({min(s):.3f}-{max(s):.3f})"
            given = threads[how] or "default"
            print(f"{nranks:>5}  {how:<12}  {given:>12}  {spread:<22}  {ratio:.2f}")


if __name__ == "__main__":
    main()
