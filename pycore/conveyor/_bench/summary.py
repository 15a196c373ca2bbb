"""Several runs of ``conveyor bench`` as one set of figures, and the tables that show them.

Each run is a fresh two-rank job whose rows hold each side's median over its
repetitions and their ratio. Over the runs, a row's figure is the median of
the runs' values and its range their lowest and highest; the target judges
the median ratio, so one unlucky run neither fails nor passes a row alone.
Nothing here imports MPI: the launcher uses it, and so do the ranks.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from . import machine

Row = dict[str, Any]
Document = dict[str, Any]

# What the README's table calls each benchmark, in the order it lists them
# (headline figures first); later rows of one benchmark say "same".
DESCRIPTIONS = {
    "rate": "message rate, one `s.send(1, i)` per item, vs `comm.Isend` (osu_mbw_mr)",
    "rate-vs-pickle": "same, vs pickle-based `comm.send`",
    "rate-w64": "same, held to osu's window of 64 per ack",
    "batch": "`send_many`, items/s delivered to the handler, vs `comm.Send` of the array",
    "agg-latency": "lone message, aggregation on vs `aggregate=False` (one-way)",
    "latency": "ping-pong latency, `request`/reply vs `Send`/`Recv` (one-way)",
    "latency-vs-handled": "same, an array, vs mpi4py receiving into a new array per message",
    "oneway": "one-way, `m.send` to a handler that sends back",
    "oneway-vs-handled": "same, an array, vs mpi4py receiving into a new array per message",
    "bw": "bandwidth (osu_bw) vs a window of `comm.Isend`",
    "bw-vs-handled": "same, vs mpi4py handing each message to a Python call",
    "bw-vs-pickle": "bandwidth vs pickle-based `comm.send`",
    "served-latency": '`request`/reply, `Messenger(serve="thread")` vs the default (one-way)',
    "served-rate": 'message rate, `serve="thread"` vs the default',
    "task-latency": "`cv.Executor` task round trip vs a `request` to a receiver",
    "task-pipelined": "same, many tasks in flight: time per task",
}

# A run's row fields that name what was compared; equal in every run.
IDENTITY = (
    "benchmark",
    "label",
    "size_bytes",
    "payload",
    "unit",
    "better",
    "baseline",
    "conveyor",
    "target",
)
# Fields of a run's meta that describe that run alone, left out of the summary's.
PER_RUN_META = (
    "argv",
    "time",
    "wall_seconds",
    "messenger_stats_rank0",
    "messenger_stats_rank1",
    "load",
)

# The console table of several runs (`table_lines`): one run's (osu's Report)
# without the range.
COLUMNS = ("benchmark", "size", "baseline", "conveyor", "ratio", "range", "target", "result")
WIDTHS = (14, 12, 18, 18, 8, 13, 7, 6)

MARKDOWN_HEADER = (
    "| benchmark | message | mpi4py | conveyor | ratio (range) | target |\n"
    "|---|---|---|---|---|---|\n"
)


def meets(target: Mapping[str, Any], ratio: float) -> bool:
    """Whether `ratio` meets `target` (``{"op": "<=" or ">=", "ratio": bound}``)."""
    bound = float(target["ratio"])
    return ratio <= bound if target["op"] == "<=" else ratio >= bound


def format_target(target: Mapping[str, Any] | None, none: str = "-") -> str:
    """Format a target as ``≤ 2×`` or ``≥ 0.9×``; `none` where a row has none."""
    if target is None:
        return none
    return f"{'≤' if target['op'] == '<=' else '≥'} {target['ratio']:g}×"


def format_result(passed: bool | None) -> str:
    """``PASS``, ``FAIL``, or ``-`` for a row without target."""
    return "-" if passed is None else ("PASS" if passed else "FAIL")


def format_ratio(ratio: float) -> str:
    """Format a ratio with three significant digits down to hundredths: ``0.93``, ``22.4``."""
    return f"{ratio:.{2 if ratio < 10 else 1 if ratio < 100 else 0}f}"


def format_value(value: float, unit: str) -> str:
    """Format a median for the console; counts per second read best in millions."""
    if unit in ("msgs/s", "items/s"):
        return f"{value / 1e6:,.2f} M{unit}"
    return f"{value:,.{2 if value < 1000 else 0}f} {unit}"


def format_line(cells: Sequence[str], widths: Sequence[int] = WIDTHS) -> str:
    """One line of the console table: `cells` right-aligned in their columns."""
    return "  ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths))


def summarize(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """Merge the rows of several runs into one row per comparison.

    Parameters
    ----------
    runs : sequence of sequences of dict
        The ``"results"`` rows of each run's JSON (``python -m
        conveyor._bench.osu --json``), all of the same benchmarks.

    Returns
    -------
    list of dict
        One row per comparison, in the runs' order: the fields of `IDENTITY`;
        ``baseline_median``, ``conveyor_median`` and ``ratio``, the medians
        over the runs of those values; ``ratio_min`` and ``ratio_max``;
        ``passed``, the median ratio judged against the target (None
        without one); and the runs' own values as ``baseline_medians``,
        ``conveyor_medians`` and ``ratios``.

    Raises
    ------
    ValueError
        If there are no runs, or they do not hold the same comparisons.
    """
    if not runs:
        raise ValueError("no runs to summarize")

    def key(row: Row) -> tuple[str, str]:
        return row["benchmark"], row["label"]

    keys = [key(row) for row in runs[0]]
    for number, rows in enumerate(runs[1:], start=2):
        if [key(row) for row in rows] != keys:
            raise ValueError(f"run {number} holds other comparisons than run 1")
    summary = []
    for i, first in enumerate(runs[0]):
        sides = {
            field: [rows[i][field] for rows in runs]
            for field in ("baseline_median", "conveyor_median", "ratio")
        }
        ratio = statistics.median(sides["ratio"])
        summary.append(
            {
                **{field: first[field] for field in IDENTITY},
                "baseline_median": statistics.median(sides["baseline_median"]),
                "conveyor_median": statistics.median(sides["conveyor_median"]),
                "ratio": ratio,
                "ratio_min": min(sides["ratio"]),
                "ratio_max": max(sides["ratio"]),
                "passed": None if first["target"] is None else meets(first["target"], ratio),
                "baseline_medians": sides["baseline_median"],
                "conveyor_medians": sides["conveyor_median"],
                "ratios": sides["ratio"],
            }
        )
    return summary


def combine(runs: Sequence[Document]) -> Document:
    """Return the JSON document of several runs: ``{"meta", "results", "runs"}``.

    ``results`` is `summarize` of the runs' rows; ``runs`` holds each run's
    own document, every sample included; ``meta`` is the first run's,
    without what belongs to one run, plus ``runs`` (their number), the
    start of the first and the wall time of all, and ``load``, the
    machine's load over the runs (`machine.combine`), when every run
    recorded its own.
    """
    meta = {k: v for k, v in runs[0]["meta"].items() if k not in PER_RUN_META}
    meta.update(
        runs=len(runs),
        time=runs[0]["meta"]["time"],
        wall_seconds=sum(run["meta"]["wall_seconds"] for run in runs),
    )
    if all("load" in run["meta"] for run in runs):
        meta["load"] = machine.combine([run["meta"]["load"] for run in runs])
    return {
        "meta": meta,
        "results": summarize([run["results"] for run in runs]),
        "runs": list(runs),
    }


def table_lines(rows: Sequence[Row]) -> list[str]:
    """The console table of summarized `rows`: medians, ratio range, target, PASS/FAIL."""
    lines = [format_line(COLUMNS), format_line(["-" * width for width in WIDTHS])]
    for row in rows:
        lines.append(
            format_line(
                [
                    row["benchmark"],
                    row["label"],
                    format_value(row["baseline_median"], row["unit"]),
                    format_value(row["conveyor_median"], row["unit"]),
                    f"{format_ratio(row['ratio'])}×",
                    f"{format_ratio(row['ratio_min'])}–{format_ratio(row['ratio_max'])}",
                    format_target(row["target"]),
                    format_result(row["passed"]),
                ]
            )
        )
    return lines


def _figure(value: float) -> str:
    # Three significant digits below 1000 (two decimals below 1: 0.97), four
    # above with thousands separators (12,990): the README's precision.
    if value >= 1000:
        value = round(value, 3 - math.floor(math.log10(value)))
        return f"{value:,.0f}"
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f}"


def _markdown_value(value: float, unit: str) -> str:
    if unit in ("msgs/s", "items/s"):
        return f"{_figure(value / 1e6)} M/s"
    return f"{_figure(value)} {unit}"


def _mpi_name(library_version: str) -> str:
    # "MPICH Version:      5.0.2\nMPICH Release date: ..." -> "MPICH 5.0.2";
    # "Open MPI v4.1.5, package: ..." -> "Open MPI v4.1.5".
    first = library_version.splitlines()[0].split(",")[0] if library_version else "MPI"
    return " ".join(first.replace("Version:", "").split())


def markdown(document: Document) -> str:
    """The figures of `document` (from `combine`) as the README shows them.

    A caption (runs, repetitions, machine and versions) and a Markdown
    table: one line per row, in the order of `DESCRIPTIONS`, each side's
    median, the median ratio with its range over the runs, and the target;
    the ratio of a row with a target is bold, and a missed target says
    **FAIL**. The caption says how busy other work kept the machine; if a
    run counted as busy, a bold WARNING follows it.
    """
    meta, rows = document["meta"], document["results"]
    order = {benchmark: i for i, benchmark in enumerate(DESCRIPTIONS)}
    rows = sorted(rows, key=lambda row: order.get(row["benchmark"], len(order)))
    runs = meta["runs"]
    reps = meta["plan"]["reps"]
    repetitions = f"{reps} repetition{'s' if reps > 1 else ''}"
    if runs > 1:
        what = f"Medians of {runs} runs of `conveyor bench`, each the median of {repetitions}"
        spread = "; in parentheses, the lowest and highest over the runs"
    else:
        what = f"One run of `conveyor bench`, medians of {repetitions}"
        spread = ""
    setup = (
        f"{meta['cpus']} CPUs ({meta['host']}), {_mpi_name(meta['mpi'])}, "
        f"Python {meta['python']}, mpi4py {meta['mpi4py']}, numpy {meta['numpy']}, "
        f"conveyor {meta['conveyor']}, {meta['time'][:10]}"
    )
    caption = f"{what}; {setup}. A ratio is conveyor / mpi4py within one run{spread}."
    load = meta.get("load")
    if load is not None:  # not in the JSON of a run before the load was recorded
        caption += f" {machine.markdown_sentence(load)}"
        if load["warning"] is not None:
            caption += f"\n\n{machine.markdown_warning(load['warning'])}"
    lines = []
    previous = None
    for row in rows:
        benchmark = row["benchmark"]
        description = "same" if benchmark == previous else DESCRIPTIONS.get(benchmark, benchmark)
        previous = benchmark
        ratio = f"{format_ratio(row['ratio'])}×"
        if row["target"] is not None:
            ratio = f"**{ratio}**"
        if runs > 1:
            ratio += f" ({format_ratio(row['ratio_min'])}–{format_ratio(row['ratio_max'])})"
        target = format_target(row["target"], none="–")
        if row["passed"] is False:
            target += " **FAIL**"
        cells = [
            description,
            row["label"],
            _markdown_value(row["baseline_median"], row["unit"]),
            _markdown_value(row["conveyor_median"], row["unit"]),
            ratio,
            target,
        ]
        lines.append(f"| {' | '.join(cells)} |\n")
    return f"{caption}\n\n{MARKDOWN_HEADER}{''.join(lines)}"
