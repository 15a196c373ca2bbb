"""``conveyor bench --plot``: draw the summarized rows (matplotlib is an optional extra)."""

import math

INSTALL_HINT = "pip install 'conveyor-mpi[plot]'"

BASELINE_COLOR = "tab:gray"
CONVEYOR_COLOR = "tab:blue"


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
    # The tick label names the baseline by its MPI call: "Isend", "pickle send", ...
    name = row["baseline"]
    for call in ("Isend", "pickle send", "Send/Recv", "Send", "aggregate=False"):
        if call in name:
            return call
    return name


def _bar_panel(ax, rows, title, unit):
    """Grouped bars, baseline vs conveyor, one group per row, ratio above each group."""
    width = 0.38
    xs = range(len(rows))
    baseline = [row["baseline_median"] for row in rows]
    conveyor = [row["conveyor_median"] for row in rows]
    ax.bar([x - width / 2 for x in xs], baseline, width, color=BASELINE_COLOR, label="baseline")
    ax.bar([x + width / 2 for x in xs], conveyor, width, color=CONVEYOR_COLOR, label="conveyor")
    for x, row in zip(xs, rows):
        top = max(row["baseline_median"], row["conveyor_median"])
        ax.annotate(
            f"{row['ratio']:.2f}×",
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
    ax.plot(
        sizes,
        [row["baseline_median"] for row in rows],
        "o-",
        color=BASELINE_COLOR,
        label="mpi4py Isend",
    )
    ax.plot(
        sizes,
        [row["conveyor_median"] for row in rows],
        "o-",
        color=CONVEYOR_COLOR,
        label="conveyor send",
    )
    for row in rows:
        ax.annotate(
            f"{row['ratio']:.2f}×",
            (row["size_bytes"], row["conveyor_median"]),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    for row in pickle_rows:
        ax.plot(
            [row["size_bytes"]],
            [row["baseline_median"]],
            "x",
            color="tab:red",
            label="mpi4py pickle send",
        )
        ax.annotate(
            f"conveyor: {row['ratio']:.1f}×",
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


def plot_results(results, image_path):
    """Draw the rows of a results JSON to `image_path`, one panel per kind of benchmark.

    Parameters
    ----------
    results : list of dict
        The ``"results"`` rows of ``conveyor bench --json`` (`summary.summarize`).
    image_path : str
        Where to write the image; its extension picks the format (``.png``).
    """
    require_matplotlib()
    # A Figure without pyplot draws off-screen: no display, no global state.
    from matplotlib.figure import Figure

    def rows_of(*benchmarks):
        return [row for row in results if row["benchmark"] in benchmarks]

    panels = []
    if rows_of("latency", "oneway", "agg-latency"):
        panels.append(
            lambda ax: _bar_panel(
                ax,
                [
                    dict(row, label=f"{row['benchmark']}\n{row['label']}")
                    for row in rows_of("latency", "oneway", "agg-latency")
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
    if not panels:
        raise ValueError("the results hold no benchmark to plot")

    columns = 2 if len(panels) > 1 else 1
    lines = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(6.5 * columns, 4.5 * lines), constrained_layout=True)
    axes = list(fig.subplots(lines, columns, squeeze=False).flat)
    for draw, ax in zip(panels, axes):
        draw(ax)
    for ax in axes[len(panels) :]:  # the empty cell of an odd number of panels
        ax.set_visible(False)
    fig.suptitle("conveyor vs mpi4py, medians; ratio = conveyor / baseline")
    fig.savefig(image_path, dpi=110)
