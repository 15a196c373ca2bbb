"""Run ``conveyor bench`` and keep its results under bench/results (``make bench``, ``make figures``).

Usage::

    python bench/run.py [--readme] [conveyor bench options, e.g. --runs 6 --which latency]

Runs ``conveyor bench`` with the options given and has it write the summary
and every sample to ``bench/results/osu-<time>.json``, the table the README
shows to ``osu-<time>.md`` and, when matplotlib is installed, the plot to
``osu-<time>.png`` (the folder is git-ignored).

With ``--readme`` (``make figures``), the table then replaces the one
between the figures markers of README.md. Only this option touches the
README: a run made to explore (fewer runs, some rows) must not overwrite
the published figures, while the published ones must come from a command,
not from pasting. A run with a missed target still writes the table, which
marks the row FAIL; a run that failed writes none, and the README is left
as it was.
"""

import argparse
import importlib.util
import pathlib
import sys
import time

from conveyor.cli.main import main as conveyor

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
BEGIN = "<!-- figures: begin (written by make figures: do not edit) -->"
END = "<!-- figures: end -->"


def rewrite_readme(readme, table):
    """Replace what lies between `BEGIN` and `END` in the file `readme` with `table`."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {BEGIN!r} ... {END!r} block")
    readme.write_text(f"{text[: start + len(BEGIN)]}\n\n{table}\n{text[end:]}", encoding="utf-8")


def main(argv):
    """Run the benchmarks with `argv`; return the exit status of ``conveyor bench``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--readme", action="store_true")
    args, bench_options = parser.parse_known_args(argv)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("osu-%Y%m%d-%H%M%S")
    table = stem.with_suffix(".md")
    options = ["--json", f"{stem}.json", "--markdown", str(table)]
    if importlib.util.find_spec("matplotlib") is not None:
        options += ["--plot", f"{stem}.png"]
    # conveyor bench times each run out and ends every rank on a hang or
    # Ctrl-C; it runs in this process so that the README can follow.
    status = conveyor(["bench", *options, *bench_options])
    if args.readme and table.exists():
        rewrite_readme(README, table.read_text(encoding="utf-8"))
        print(f"figures: {README}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
