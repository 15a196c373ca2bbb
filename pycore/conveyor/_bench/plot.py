"""``conveyor bench --plot``: draw the summarized rows (matplotlib is an optional extra).

The rows are those of `summary.summarize`: medians over the runs, with each
run's own values, whose lowest and highest the plot draws as error bars.
"""

import math

from .summary import format_ratio, format_target

INSTALL_HINT = "pip install 'conveyor-mpi[plot]'"

BASELINE_COLOR = "tab:gray"
CONVEYOR_COLOR = "tab:blue"
FAIL_COLOR = "tab:red"


class MatplotlibMissing(ImportError):
    """Plotting was asked for but matplotlib is not installed."""


def require_matplotlib():
    """Raise `MatplotlibMissing` (saying how to install it) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MatplotlibMissing(
            f"plotting needs matplotlib, which is not installed ({INSTALL_HINT})"
        ) from exc


def _short_baseline(row):
    # The tick label names the baseline by its MPI call: "Isend", "pickle", ...
    name = row["baseline"]
    for call in ("Isend", "pickle", "Send/Recv", "Send", "aggregate=False"):
        if call in name:
            return call
    return name


def _spread(rows, median, runs):
    """Error bars from each row's `median` field down and up to its lowest and highest run.

    Returns matplotlib's ``[[below, ...], [above, ...]]``, or None after a
    single run, which has no range.
    """
    if all(len(row[runs]) == 1 for row in rows):
        return None
    return [
        [row[median] - min(row[runs]) for row in rows],
        [max(row[runs]) - row[median] for row in rows],
    ]


def _bar_panel(ax, rows, title, unit):
    """Grouped bars, baseline vs conveyor, one group per row, ratio above each group."""
    width = 0.38
    xs = range(len(rows))
    for side, shift, color in (
        ("baseline", -width / 2, BASELINE_COLOR),
        ("conveyor", width / 2, CONVEYOR_COLOR),
    ):
        ax.bar(
            [x + shift for x in xs],
            [row[f"{side}_median"] for row in rows],
            width,
            yerr=_spread(rows, f"{side}_median", f"{side}_medians"),
            capsize=3,
            color=color,
            label=side,
        )
    for x, row in zip(xs, rows):
        top = max(row["baseline_medians"] + row["conveyor_medians"])
        ax.annotate(
            f"{format_ratio(row['ratio'])}×",
            (x, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{row['label']}\nvs {_short_baseline(row)}" for row in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)


def _bandwidth_panel(ax, rows, pickle_rows):
    """Bandwidth against message size, baseline and conveyor, ratios at the conveyor points."""
    sizes = [row["size_bytes"] for row in rows]
    for side, color, label in (
        ("baseline", BASELINE_COLOR, "mpi4py Isend"),
        ("conveyor", CONVEYOR_COLOR, "conveyor send"),
    ):
        ax.errorbar(
            sizes,
            [row[f"{side}_median"] for row in rows],
            yerr=_spread(rows, f"{side}_median", f"{side}_medians"),
            fmt="o-",
            capsize=3,
            color=color,
            label=label,
        )
    for row in rows:
        ax.annotate(
            f"{format_ratio(row['ratio'])}×",
            (row["size_bytes"], row["conveyor_median"]),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    for row in pickle_rows:
        ax.errorbar(
            [row["size_bytes"]],
            [row["baseline_median"]],
            yerr=_spread([row], "baseline_median", "baseline_medians"),
            fmt="x",
            capsize=3,
            color="tab:red",
            label="mpi4py pickle send",
        )
        ax.annotate(
            f"conveyor: {format_ratio(row['ratio'])}×",
            (row["size_bytes"], row["baseline_median"]),
            xytext=(-5, 5),
            textcoords="offset points",
            ha="right",
            fontsize=8,
        )
    ax.set_xscale("log", base=2)
    ax.margins(x=0.08)  # room for the ratios at both ends
    ax.set_xticks(sizes)
    ax.set_xticklabels([row["label"] for row in rows], fontsize=8)
    ax.set_title("Bandwidth (osu_bw)", fontsize=10)
    ax.set_xlabel("message size")
    ax.set_ylabel("MB/s")
    ax.legend(fontsize=8)


def _ratio_panel(ax, rows):
    """Every row's median ratio with its range over the runs, its target, and FAIL in red.

    One line per row, top to bottom, on a log scale: ratios of rates and of
    times side by side, each judged by its own target.
    """
    ys = range(len(rows))
    for failed in (False, True):
        chosen = [(y, row) for y, row in zip(ys, rows) if (row["passed"] is False) == failed]
        if not chosen:
            continue
        ax.errorbar(
            [row["ratio"] for _, row in chosen],
            [y for y, _ in chosen],
            xerr=_spread([row for _, row in chosen], "ratio", "ratios"),
            fmt="o",
            capsize=3,
            color=FAIL_COLOR if failed else CONVEYOR_COLOR,
            label="FAIL" if failed else "median ratio, bar: lowest–highest run",
        )
    targeted = [(y, row) for y, row in zip(ys, rows) if row["target"] is not None]
    if targeted:
        ax.scatter(
            [row["target"]["ratio"] for _, row in targeted],
            [y for y, _ in targeted],
            marker="|",
            s=250,
            color="black",
            label="target",
            zorder=3,
        )
    for y, row in targeted:
        failed = row["passed"] is False
        ax.annotate(
            format_target(row["target"]) + (" FAIL" if failed else ""),
            (max(row["ratios"] + [row["target"]["ratio"]]), y),
            xytext=(8, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=FAIL_COLOR if failed else "black",
            fontweight="bold" if failed else "normal",
        )
    ax.axvline(1.0, color=BASELINE_COLOR, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    # Ticks at powers of two around every ratio and bound, labelled as ratios.
    values = [1.0] + [v for row in rows for v in row["ratios"]]
    values += [row["target"]["ratio"] for _, row in targeted]
    low, high = math.floor(math.log2(min(values))), math.ceil(math.log2(max(values)))
    ticks = [2.0**k for k in range(low, high + 1)]
    ax.set_xticks(ticks, [f"{tick:g}×" for tick in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlim(ticks[0] / 1.2, ticks[-1] * 1.6)  # room for the target texts on the right
    ax.set_yticks(list(ys), [f"{row['benchmark']} {row['label']}" for row in rows], fontsize=8)
    for label, row in zip(ax.get_yticklabels(), rows):
        if row["passed"] is False:
            label.set_color(FAIL_COLOR)
    ax.invert_yaxis()  # the first row on top
    ax.set_title("Ratio conveyor / baseline and its target", fontsize=10)
    # Below the ticks, in one line: inside the panel it would hide rows.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)


def draw(results):
    """Return a matplotlib Figure of summarized rows: the ratios, then one panel per kind.

    Parameters
    ----------
    results : list of dict
        The ``"results"`` rows of ``conveyor bench --json`` (`summary.summarize`).
    """
    require_matplotlib()
    # A Figure without pyplot draws off-screen: no display, no global state.
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("the results hold no benchmark to plot")

    def rows_of(*benchmarks):
        return [row for row in results if row["benchmark"] in benchmarks]

    panels = []
    if rows_of("latency", "oneway", "agg-latency", "served-latency", "task-latency"):
        panels.append(
            lambda ax: _bar_panel(
                ax,
                [
                    dict(row, label=f"{row['benchmark']}\n{row['label']}")
                    for row in rows_of(
                        "latency", "oneway", "agg-latency", "served-latency", "task-latency"
                    )
                ],
                "Latency, one-way (lower is better)",
                "µs",
            )
        )
    if rows_of("bw"):
        panels.append(lambda ax: _bandwidth_panel(ax, rows_of("bw"), rows_of("bw-vs-pickle")))
    if rows_of("rate", "rate-vs-pickle"):
        panels.append(
            lambda ax: _bar_panel(
                ax,
                rows_of("rate", "rate-vs-pickle"),
                "Message rate, one 8 B message per send (osu_mbw_mr)",
                "messages/s",
            )
        )
    if rows_of("batch"):
        panels.append(
            lambda ax: _bar_panel(
                ax, rows_of("batch"), "Batches of uint64 items via send_many", "items/s"
            )
        )

    columns = 2 if len(panels) > 1 else 1
    lines = math.ceil(len(panels) / columns)
    ratio_height = 1.0 + 0.3 * len(results)
    fig = Figure(figsize=(6.5 * columns, ratio_height + 4.5 * lines), constrained_layout=True)
    grid = fig.add_gridspec(1 + lines, columns, height_ratios=[ratio_height] + [4.5] * lines)
    _ratio_panel(fig.add_subplot(grid[0, :]), results)
    for i, draw_panel in enumerate(panels):
        draw_panel(fig.add_subplot(grid[1 + i // columns, i % columns]))
    runs = len(results[0]["ratios"])
    fig.suptitle(
        f"conveyor vs mpi4py, medians of {runs} run{'s' if runs > 1 else ''}"
        + ("; error bars: lowest and highest run" if runs > 1 else "")
        + "; ratio = conveyor / baseline"
    )
    return fig


def plot_results(results, image_path):
    """Draw summarized rows (see `draw`) to `image_path`; its extension picks the format."""
    draw(results).savefig(image_path, dpi=110)
