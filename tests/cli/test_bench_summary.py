"""``conveyor bench --runs N``: medians and ranges over runs, their verdicts, tables and plot.

Everything here works on given run results: no MPI, no timing.
"""

import pytest

from conveyor._bench import machine, summary

from _helpers import bench_row, bench_run


def three_runs():
    """Three runs of four rows; the 1 MiB bandwidth's median ratio misses its target."""
    rows = {
        "latency": [  # ratios 1.5, 2.1, 1.4: one run misses ≤ 2, the median does not
            bench_row("latency", "8 B int", "µs", 2.0, conveyor, ("<=", 2.0))
            for conveyor in (3.0, 4.2, 2.8)
        ],
        "rate": [
            bench_row("rate", "8 B int", "msgs/s", 1e6, conveyor, (">=", 3.0))
            for conveyor in (6.0e6, 6.5e6, 2.5e6)
        ],
        "bw-64k": [
            bench_row("bw", "64 KiB", "MB/s", 8000.0, conveyor) for conveyor in (6800, 7200, 7600)
        ],
        "bw-1m": [  # ratios 0.847, 0.962, 0.885: one run meets ≥ 0.9, the median does not
            bench_row("bw", "1 MiB", "MB/s", 12990.0, conveyor, (">=", 0.9))
            for conveyor in (11000, 12500, 11500)
        ],
    }
    return [
        bench_run([rows[name][run] for name in ("latency", "bw-64k", "bw-1m", "rate")], minute=run)
        for run in range(3)
    ]


def test_a_row_is_the_median_over_the_runs_with_the_range_of_its_ratio():
    runs = three_runs()
    rows = summary.summarize([run["results"] for run in runs])
    assert [(row["benchmark"], row["label"]) for row in rows] == [
        ("latency", "8 B int"),
        ("bw", "64 KiB"),
        ("bw", "1 MiB"),
        ("rate", "8 B int"),
    ]
    latency = rows[0]
    assert latency["ratio"] == pytest.approx(1.5)
    assert (latency["ratio_min"], latency["ratio_max"]) == pytest.approx((1.4, 2.1))
    assert latency["baseline_median"] == 2.0 and latency["conveyor_median"] == 3.0
    assert latency["ratios"] == pytest.approx([1.5, 2.1, 1.4])  # in the order of the runs
    assert latency["conveyor_medians"] == [3.0, 4.2, 2.8]
    assert latency["baseline_medians"] == [2.0, 2.0, 2.0]
    for field in summary.IDENTITY:
        assert latency[field] == runs[0]["results"][0][field]
    # The median ratio is judged: one run's miss does not fail a row, nor one hit pass it.
    assert [row["passed"] for row in rows] == [True, None, False, True]


def test_the_verdict_judges_the_median_ratio_not_the_ratio_of_the_medians():
    # Ratios 0.95, 1.2, 0.8: median 0.95 misses ≥ 1, while the medians'
    # ratio, 2.4 / 2, would meet it.
    runs = [
        [bench_row("bw", "1 MiB", "MB/s", baseline, conveyor, (">=", 1.0))]
        for baseline, conveyor in ((1.0, 0.95), (2.0, 2.4), (3.0, 2.4))
    ]
    (row,) = summary.summarize(runs)
    assert row["ratio"] == pytest.approx(0.95)
    assert row["conveyor_median"] / row["baseline_median"] == pytest.approx(1.2)
    assert row["passed"] is False


def test_one_run_is_its_own_summary():
    (run,) = three_runs()[:1]
    rows = summary.summarize([run["results"]])
    for mine, theirs in zip(rows, run["results"]):
        assert mine["ratio"] == mine["ratio_min"] == mine["ratio_max"] == theirs["ratio"]
        assert mine["passed"] == theirs["passed"]


def test_runs_of_other_comparisons_are_refused():
    runs = three_runs()
    with pytest.raises(ValueError, match="run 2 holds other comparisons"):
        summary.summarize([runs[0]["results"], runs[1]["results"][1:]])
    with pytest.raises(ValueError, match="no runs"):
        summary.summarize([])


def test_combine_keeps_every_run_and_the_shared_metadata():
    runs = three_runs()
    document = summary.combine(runs)
    assert document["runs"] == runs  # every sample of every run
    assert document["results"] == summary.summarize([run["results"] for run in runs])
    meta = document["meta"]
    assert meta["runs"] == 3
    assert meta["time"] == runs[0]["meta"]["time"]
    assert meta["wall_seconds"] == 180.0
    assert meta["plan"] == runs[0]["meta"]["plan"] and meta["mpi4py"] == "4.1.2"
    for per_run in ("argv", "messenger_stats_rank0"):
        assert per_run not in meta


def test_the_markdown_table_is_the_readmes():
    assert summary.markdown(summary.combine(three_runs())) == (
        "Medians of 3 runs of `conveyor bench`, each the median of 9 repetitions; "
        "2 CPUs (testhost), MPICH 5.0.2, Python 3.11.7, mpi4py 4.1.2, numpy 2.4.6, "
        "conveyor 0.1.0, 2026-12-04. A ratio is conveyor / mpi4py within one run; "
        "in parentheses, the lowest and highest over the runs.\n"
        "\n"
        "| benchmark | message | mpi4py | conveyor | ratio (range) | target |\n"
        "|---|---|---|---|---|---|\n"
        "| message rate, one `s.send(1, i)` per item, vs `comm.Isend` (osu_mbw_mr) "
        "| 8 B int | 1.00 M/s | 6.00 M/s | **6.00×** (2.50–6.50) | ≥ 3× |\n"
        "| ping-pong latency, `request`/reply vs `Send`/`Recv` (one-way) "
        "| 8 B int | 2.00 µs | 3.00 µs | **1.50×** (1.40–2.10) | ≤ 2× |\n"
        "| bandwidth (osu_bw) vs a window of `comm.Isend` "
        "| 64 KiB | 8,000 MB/s | 7,200 MB/s | 0.90× (0.85–0.95) | – |\n"
        "| same | 1 MiB | 12,990 MB/s | 11,500 MB/s | **0.89×** (0.85–0.96) | ≥ 0.9× **FAIL** |\n"
    )


def with_loads(runs, others_during):
    """`runs` with a load recorded in each: other work `others_during` each run, none before."""
    for run, during in zip(runs, others_during):
        run["meta"]["load"] = machine.record(2, [0.3, 0.2, 0.1], [1.9, 0.6, 0.2], 0.01, during, 1.9)
    return runs


def test_combine_summarizes_the_load_of_the_runs():
    runs = with_loads(three_runs(), [0.05, 0.85, 0.1])
    document = summary.combine(runs)
    load = document["meta"]["load"]
    assert load == machine.combine([run["meta"]["load"] for run in runs])
    assert load["busy_runs"] == [2]
    assert load["warning"].startswith("WARNING: busy machine in run 2 of 3: ")
    assert [run["meta"]["load"]["busy"] for run in document["runs"]] == [False, True, False]
    # Runs recorded before the load was have none to summarize.
    assert "load" not in summary.combine(three_runs())["meta"]


def test_the_markdown_of_a_busy_machine_warns_above_the_table():
    text = summary.markdown(summary.combine(with_loads(three_runs(), [0.05, 0.85, 0.1])))
    caption, warning, table = text.split("\n\n")
    assert caption.endswith(
        "Other work kept at most 0.01 CPUs busy before a run and 0.85 during one "
        "(busy above 0.20); 1-minute load average 0.30–1.90, the benchmark's own ranks "
        "included."
    )
    assert warning == (
        "**WARNING: busy machine in run 2 of 3**: other work kept up to 0.85 CPUs busy, "
        "more than the 0.20 allowed beside the benchmark's 2 ranks on 2 CPUs; these figures "
        "are not a quiet machine's"
    )
    assert table.startswith(summary.MARKDOWN_HEADER)


def test_the_markdown_of_a_quiet_machine_states_its_load_without_warning():
    text = summary.markdown(summary.combine(with_loads(three_runs()[:1], [0.03])))
    caption, table = text.split("\n\n")
    assert caption.endswith(
        "Other work kept at most 0.01 CPUs busy before the run and 0.03 during it "
        "(busy above 0.20); 1-minute load average 0.30–1.90, the benchmark's own ranks "
        "included."
    )
    assert "WARNING" not in text


def test_the_markdown_of_one_run_has_no_ranges():
    text = summary.markdown(summary.combine(three_runs()[:1]))
    assert text.startswith("One run of `conveyor bench`, medians of 9 repetitions; 2 CPUs")
    assert "in parentheses" not in text and "–" not in text.replace("| – |", "")
    assert "| **1.50×** | ≤ 2× |" in text


@pytest.mark.parametrize(
    "value, text",
    [
        (0.974, "0.97"),
        (1.923, "1.92"),
        (76.24, "76.2"),
        (982.4, "982"),
        (1553.4, "1,553"),
        (12987.0, "12,990"),
        (20714.0, "20,710"),
    ],
)
def test_markdown_figures_have_the_readmes_precision(value, text):
    assert summary._figure(value) == text


@pytest.mark.parametrize(
    "ratio, text", [(0.934, "0.93"), (6.274, "6.27"), (22.43, "22.4"), (108.4, "108")]
)
def test_ratios_keep_three_significant_digits(ratio, text):
    assert summary.format_ratio(ratio) == text


def test_the_console_table_shows_ranges_and_verdicts():
    lines = summary.table_lines(summary.summarize([run["results"] for run in three_runs()]))
    assert lines[0].split() == list(summary.COLUMNS)
    bw = lines[4].split()
    assert bw[:3] == ["bw", "1", "MiB"]
    assert bw[-4:] == ["0.85–0.96", "≥", "0.9×", "FAIL"]
    assert lines[2].split()[-4:] == ["1.40–2.10", "≤", "2×", "PASS"]
    assert lines[3].split()[-2:] == ["-", "-"]  # no target


def ratio_axes(fig):
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith("Ratio")]
    return ax


def errorbars(ax):
    from matplotlib.container import ErrorbarContainer

    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_the_plot_draws_ranges_as_error_bars_targets_and_fail_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from conveyor._bench import plot

    rows = summary.combine(three_runs())["results"]
    fig = plot.draw(rows)
    ax = ratio_axes(fig)
    bars = {container.get_label(): container for container in errorbars(ax)}
    assert set(bars) == {"median ratio, bar: lowest–highest run", "FAIL"}
    # One horizontal bar per row, from its lowest to its highest run's ratio.
    ranges = {}
    for container in bars.values():
        assert container.has_xerr
        (lines,) = container.lines[2]
        for (low, y), (high, _) in lines.get_segments():
            ranges[round(y)] = (low, high)
    assert ranges == {
        y: pytest.approx((row["ratio_min"], row["ratio_max"])) for y, row in enumerate(rows)
    }
    assert list(bars["FAIL"].lines[0].get_ydata()) == [2]  # the 1 MiB row
    (targets,) = [c for c in ax.collections if c.get_label() == "target"]
    assert [list(xy) for xy in targets.get_offsets()] == [[2.0, 0], [0.9, 2], [3.0, 3]]
    texts = [text.get_text() for text in ax.texts]
    assert "≥ 0.9× FAIL" in texts and "≤ 2×" in texts and "≥ 3×" in texts
    colors = {label.get_text(): label.get_color() for label in ax.get_yticklabels()}
    assert colors["bw 1 MiB"] == plot.FAIL_COLOR != colors["bw 64 KiB"]
    # The panels of the values draw each side's range over the runs too.
    others = [a for a in fig.axes if a is not ax]
    assert others and all(c.has_yerr for a in others for c in errorbars(a))

    png = tmp_path / "bench.png"
    plot.plot_results(rows, png)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_plot_of_one_run_has_no_error_bars():
    pytest.importorskip("matplotlib")
    from conveyor._bench import plot

    fig = plot.draw(summary.combine(three_runs()[:1])["results"])
    for ax in fig.axes:
        for container in errorbars(ax):
            assert not container.has_xerr and not container.has_yerr
