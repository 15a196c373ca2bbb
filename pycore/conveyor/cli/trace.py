"""``conveyor trace merge`` and ``conveyor trace plot``: the traces of ``Messenger(trace=...)``.

``merge`` joins the ranks' files into one Chrome trace (pid = rank) with an
arrow (a flow) from each send to its delivery, for Perfetto or
``chrome://tracing``; ``plot`` draws one as ranks × time with matplotlib.
Neither imports MPI.
"""

import sys

from .._bench.plot import INSTALL_HINT, MatplotlibMissing, require_matplotlib

# Arrows drawn at most: beyond, a plot of a long run is only ink.
MAX_ARROWS = 2000


def add_arguments(parser):
    """Add the ``merge`` and ``plot`` subcommands of ``conveyor trace`` to `parser`."""
    commands = parser.add_subparsers(
        title="commands", dest="trace_command", metavar="COMMAND", required=True
    )
    merge = commands.add_parser(
        "merge",
        help="join the ranks' trace files into one timeline",
        description="Join the trace files of the ranks (written by "
        "Messenger(trace='run.%r.json')) into one Chrome trace, one process per rank, "
        "with each send joined to its delivery by an arrow. Open it in Perfetto "
        "(ui.perfetto.dev) or chrome://tracing.",
    )
    merge.add_argument("traces", nargs="+", metavar="TRACE", help="a rank's trace file")
    merge.add_argument("-o", "--output", required=True, metavar="FILE", help="the merged trace")
    merge.set_defaults(run=run_merge)
    plot = commands.add_parser(
        "plot",
        help="draw a trace as ranks × time (needs matplotlib)",
        description="Draw the handler spans of each rank against time, the waits "
        "below them, and an arrow per message from its send to its delivery "
        f"(at most {MAX_ARROWS}). TRACE may be the ranks' files or a merged one. "
        f"Needs matplotlib: {INSTALL_HINT}.",
    )
    plot.add_argument("traces", nargs="+", metavar="TRACE", help="a trace file")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the picture")
    plot.set_defaults(run=run_plot)


def _read(paths):
    from .._trace import read_traces

    try:
        return read_traces(paths)
    except (OSError, ValueError) as exc:
        print(f"conveyor trace: {exc}", file=sys.stderr)
        return None


def run_merge(args):
    """Run ``conveyor trace merge``; return the exit status (1 if a file cannot be read)."""
    import json

    merged = _read(args.traces)
    if merged is None:
        return 1
    with open(args.output, "w") as f:
        json.dump(merged, f, separators=(",", ":"))
    ranks = len({e["pid"] for e in merged["traceEvents"]})
    flows = sum(1 for e in merged["traceEvents"] if e["ph"] == "s")
    print(f"{args.output}: {ranks} ranks, {len(merged['traceEvents'])} events, {flows} messages")
    return 0


def run_plot(args):
    """Run ``conveyor trace plot``; return the exit status (1 if it cannot draw)."""
    try:
        require_matplotlib()
    except MatplotlibMissing as exc:
        print(f"conveyor trace plot: {exc}", file=sys.stderr)
        return 1
    merged = _read(args.traces)
    if merged is None:
        return 1
    plot_trace(merged, args.output)
    print(f"plot: {args.output}")
    return 0


def plot_trace(trace, path):
    """Draw `trace` (a merged Chrome trace) to `path`: ranks × time, spans and arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = trace["traceEvents"]
    ranks = sorted({e["pid"] for e in events})
    row = {rank: i for i, rank in enumerate(ranks)}
    spans = {"handler": {}, "delivery": {}, "wait": {}}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in spans:
            # Milliseconds; a span too short to see is drawn a pixel or so wide.
            spans[e["cat"]].setdefault(e["pid"], []).append((e["ts"] / 1000, e["dur"] / 1000))
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.8 * len(ranks)))
    styles = {
        "wait": (-0.3, 0.15, "tab:gray", "waits (result, wait_quiet)"),
        "handler": (-0.1, 0.4, "tab:blue", "handlers"),
        "delivery": (-0.1, 0.4, "tab:green", "answers"),
    }
    for category, (offset, height, color, label) in styles.items():
        for rank, bars in spans[category].items():
            ax.broken_barh(
                bars, (row[rank] + offset, height), facecolors=color, label=label, linewidth=0
            )
            label = None  # one legend entry per category
    starts = {}
    arrows = 0
    for e in events:
        if e.get("ph") == "s":
            starts[e["id"]] = e
        elif e.get("ph") == "f" and e["id"] in starts and arrows < MAX_ARROWS:
            s = starts.pop(e["id"])
            ax.annotate(
                "",
                xy=(e["ts"] / 1000, row[e["pid"]] + 0.1),
                xytext=(s["ts"] / 1000, row[s["pid"]] + 0.1),
                arrowprops={"arrowstyle": "->", "color": "tab:orange", "alpha": 0.5, "lw": 0.6},
            )
            arrows += 1
    ax.set_yticks(range(len(ranks)), [f"rank {rank}" for rank in ranks])
    ax.set_ylim(len(ranks) - 0.5, -0.5)
    ax.set_xlabel("time (ms)")
    ax.set_title(f"conveyor trace: {len(ranks)} ranks, {arrows} message arrows")
    if any(spans.values()):
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
