"""Run the OSU-style benchmarks on two ranks and keep their results (``make bench``).

Usage::

    python bench/run.py [conveyor._bench.osu options, e.g. --which latency --reps 5]

Launches ``mpiexec -n 2 python -m conveyor._bench.osu`` with this interpreter, lets it
print its table, and writes every sample to ``bench/results/osu-<time>.json``
(git-ignored). mpiexec is looked up next to this Python first (the mpich
wheel installs it there), then ``$CONVEYOR_MPIEXEC``, then ``PATH``.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The default run takes about a minute; anything far beyond that is a hang.
TIMEOUT = 30 * 60


def find_mpiexec():
    # A system mpiexec on PATH may belong to another MPI than the one mpi4py
    # was built with, so the one beside this interpreter wins.
    found = (
        shutil.which("mpiexec", path=os.path.dirname(sys.executable))
        or os.environ.get("CONVEYOR_MPIEXEC")
        or shutil.which("mpiexec")
    )
    if not found:
        sys.exit("run.py: no mpiexec found (install the mpich wheel or set CONVEYOR_MPIEXEC)")
    return found


def main(argv):
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / time.strftime("osu-%Y%m%d-%H%M%S.json")
    cmd = [find_mpiexec(), "-n", "2", sys.executable, "-m", "conveyor._bench.osu", "--json", str(out), *argv]
    print("$", " ".join(cmd), flush=True)
    # Own process group, so a hang can be ended with every rank mpiexec started.
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=TIMEOUT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, KeyboardInterrupt):
            return 130
        print(f"run.py: benchmarks still running after {TIMEOUT} s: killed", file=sys.stderr)
        return 1
    if code == 0 and out.exists():
        print(f"results: {out.relative_to(HERE.parent)}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
