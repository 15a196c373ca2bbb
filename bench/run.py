"""Run ``conveyor bench`` and keep its results under bench/results (``make bench``, ``make figures``).

Usage::

    python bench/run.py [--readme] [--history] [conveyor bench options, e.g. --runs 6]
    python bench/run.py --history-from FILE.json [--commit REV]

Runs ``conveyor bench`` with the options given and has it write the summary
and every sample to ``bench/results/osu-<time>.json``, the table the README
shows to ``osu-<time>.md`` and, when matplotlib is installed, the plot to
``osu-<time>.png`` (the folder is git-ignored). The JSON's metadata also
records the commit of this checkout (``commit``, ``-dirty`` if tracked
files had changes).

With ``--readme`` (``make figures``), the table then replaces the one
between the figures markers of README.md. Only this option touches the
README: a run made to explore (fewer runs, some rows) must not overwrite
the published figures, while the published ones must come from a command,
not from pasting. A run with a missed target still writes the table, which
marks the row FAIL; a run that failed writes none, and the README is left
as it was.

With ``--history`` (``make figures`` too), a row of the run's key median
ratios is appended to the History table of bench/README.md, so that a
regression shows against the rows before it; ``--history-from`` appends the
row of a JSON kept earlier, without running anything (``--commit`` names
the commit of one written before the commit was recorded). A row needs the
key rows of a full run (`KEY_ROWS`), and the machine's load marks a row
whose runs were taken on a busy machine.
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import subprocess
import sys
import time

from conveyor._bench.machine import cpu_model
from conveyor._bench.summary import format_ratio
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


HISTORY = ROOT / "bench" / "README.md"
HISTORY_BEGIN = "<!-- history: begin (rows appended by bench/run.py --history: do not edit) -->"
HISTORY_END = "<!-- history: end -->"
# The columns of the History table after date, commit, machine and runs: the
# median ratio conveyor / mpi4py of these rows of the results (benchmark, label).
KEY_ROWS = (
    ("latency 8 B array", "latency", "8 B array"),
    ("oneway 8 B int", "oneway", "8 B int"),
    ("bw 1 MiB", "bw", "1 MiB"),
    ("bw 16 MiB", "bw", "16 MiB"),
    ("bw 64 MiB", "bw", "64 MiB"),
    ("bw 256 MiB", "bw", "256 MiB"),
    ("rate", "rate", "8 B int"),
    ("batch 1M", "batch", "1M items"),
)
HISTORY_COLUMNS = ("date", "commit", "machine", "runs", *(key[0] for key in KEY_ROWS), "load")
HISTORY_HEADER = f"| {' | '.join(HISTORY_COLUMNS)} |\n|{'---|' * len(HISTORY_COLUMNS)}\n"


def checkout_commit(root=ROOT):
    """The commit of the checkout at `root`, ``-dirty`` if tracked files changed; None outside git."""
    try:
        head, changes = (
            subprocess.run(
                ["git", "-C", str(root), *command], capture_output=True, text=True, check=True
            ).stdout.strip()
            for command in (
                ["rev-parse", "--short=7", "HEAD"],
                ["status", "--porcelain", "--untracked-files=no"],
            )
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if changes else head


def load_cell(load):
    """The History table's load column for the summary's ``meta["load"]`` (None: not recorded)."""
    if load is None:
        return "not recorded"
    busy = load["busy_runs"]
    if busy:
        return f"**busy**: run{'s' * (len(busy) > 1)} {', '.join(map(str, busy))} of {load['runs']}"
    readings = (load["others_before_max"], load["others_during_max"])
    others = max([value for value in readings if value is not None], default=0.0)
    return f"quiet: others ≤ {others:.2f} CPUs"


def history_row(document, commit=None):
    """The History table's row of `document` (the JSON of ``conveyor bench``).

    Parameters
    ----------
    document : dict
        The results of one or more runs (``--json``), with every row of
        `KEY_ROWS`.
    commit : str, optional
        The commit measured; by default the one the JSON records.

    Raises
    ------
    ValueError
        If the results miss a row of `KEY_ROWS` (a run of some benchmarks,
        or of small sizes such as ``--quick``'s), or no commit is known.
    """
    meta = document["meta"]
    rows = {(row["benchmark"], row["label"]): row for row in document["results"]}
    missing = [
        f"{benchmark} {label}" for _, benchmark, label in KEY_ROWS if (benchmark, label) not in rows
    ]
    if missing:
        raise ValueError(
            f"the results hold no {', '.join(missing)}: a history row needs a full run "
            "(latency, oneway, bw up to 256M, rate and batch; not --quick)"
        )
    commit = commit or meta.get("commit")
    if not commit:
        raise ValueError("the results record no commit: name the one measured (--commit REV)")
    cpu = meta.get("cpu_model")
    if cpu is None:  # a JSON from before it was recorded: this machine's, if it ran here
        cpu = cpu_model() if meta.get("host") == platform.node() else "CPU not recorded"
    cells = [
        meta["time"][:10],
        f"`{commit}`",
        f"{cpu}, {meta['cpus']} CPUs",
        str(meta.get("runs", 1)),
        *(f"{format_ratio(rows[benchmark, label]['ratio'])}×" for _, benchmark, label in KEY_ROWS),
        load_cell(meta.get("load")),
    ]
    return f"| {' | '.join(cells)} |"


def append_history(readme, row):
    """Append `row` to the History table of the file `readme`, under the rows before it."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(HISTORY_BEGIN), text.find(HISTORY_END)
    if start < 0 or end < start or HISTORY_HEADER not in text[start:end]:
        raise ValueError(
            f"{readme} has no history table ({HISTORY_BEGIN!r}, its header, {HISTORY_END!r})"
        )
    readme.write_text(f"{text[:end].rstrip()}\n{row}\n\n{text[end:]}", encoding="utf-8")


def add_history(results, commit=None):
    """Append the row of the JSON file `results` to `HISTORY`; return 0, or 1 with the reason why not."""
    try:
        with open(results, encoding="utf-8") as f:
            row = history_row(json.load(f), commit)
        append_history(HISTORY, row)
    except (OSError, ValueError) as exc:
        print(f"bench/run.py: no history row from {results}: {exc}", file=sys.stderr)
        return 1
    print(f"history: {HISTORY}\n{row}")
    return 0


def record_commit(results, commit):
    """Record `commit` in the metadata of the JSON file `results`."""
    with open(results, encoding="utf-8") as f:
        document = json.load(f)
    document["meta"]["commit"] = commit
    with open(results, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1, ensure_ascii=False)


def main(argv):
    """Run the benchmarks with `argv` (or only add a history row); return the exit status.

    That of ``conveyor bench``; 1 if a history row was asked for and could
    not be added (``--history-from``: 0 or 1).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--readme", action="store_true")
    parser.add_argument("--history", action="store_true")
    parser.add_argument("--history-from", metavar="FILE.json")
    parser.add_argument("--commit", metavar="REV")
    args, bench_options = parser.parse_known_args(argv)
    if args.history_from is not None:
        return add_history(args.history_from, args.commit)
    commit = args.commit or checkout_commit()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / time.strftime("osu-%Y%m%d-%H%M%S")
    results, table = stem.with_suffix(".json"), stem.with_suffix(".md")
    options = ["--json", str(results), "--markdown", str(table)]
    if importlib.util.find_spec("matplotlib") is not None:
        options += ["--plot", f"{stem}.png"]
    # conveyor bench times each run out and ends every rank on a hang or
    # Ctrl-C; it runs in this process so that the README can follow.
    status = conveyor(["bench", *options, *bench_options])
    if results.exists() and commit is not None:
        record_commit(results, commit)
    if args.readme and table.exists():
        rewrite_readme(README, table.read_text(encoding="utf-8"))
        print(f"figures: {README}")
    if args.history and results.exists():
        status = add_history(results) or status
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
