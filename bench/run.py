"""Run ``conveyor bench`` and keep its results under bench/results (``make bench``).

Usage::

    python bench/run.py [conveyor bench options, e.g. --which latency --reps 5]

Runs ``python -m conveyor bench`` with this interpreter, passing the options
on, and has it write every sample to ``bench/results/osu-<time>.json`` and,
when matplotlib is installed, the plot to ``bench/results/osu-<time>.png``
(the folder is git-ignored).
"""

import importlib.util
import os
import pathlib
import sys
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def main(argv):
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("osu-%Y%m%d-%H%M%S")
    cmd = [sys.executable, "-m", "conveyor", "bench", "--json", f"{stem}.json"]
    if importlib.util.find_spec("matplotlib") is not None:
        cmd += ["--plot", f"{stem}.png"]
    # conveyor bench itself times the run out and ends every rank on a hang
    # or Ctrl-C: nothing is left for this script to do, so it becomes that.
    os.execv(sys.executable, cmd + argv)


if __name__ == "__main__":
    main(sys.argv[1:])
