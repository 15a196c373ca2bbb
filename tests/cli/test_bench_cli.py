"""``conveyor bench``: the command runs every contestant and reports them.

These tests check structure, never speed: a quick run's figures are noise.
Each run is a real ``mpiexec -n 2`` job under a timeout, except where a fake
mpiexec stands for the ranks, to give runs chosen figures or make them fail,
hang or be interrupted.
"""

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conveyor.__main__ import main
from conveyor._bench import machine, plan, summary
from conveyor.cli.launch import THREAD_VARIABLES, rank_threads

from _helpers import bench_row, bench_run
from conftest import ROOT, load_script, mpiexec, run_command

# Table rows each benchmark of --which produces.
ROWS_OF = {
    "latency": {"latency", "latency-vs-handled"},
    "oneway": {"oneway", "oneway-vs-handled"},
    "bw": {"bw", "bw-vs-handled", "bw-vs-pickle"},
    "rate": {"rate", "rate-vs-pickle", "rate-w64"},
    "batch": {"batch"},
    "agg-latency": {"agg-latency"},
    "served": {"served-latency", "served-rate"},
    "executor": {"task-latency", "task-pipelined"},
    "rate-trace": {"rate-trace"},
}
RUN_ROW_KEYS = {
    "benchmark",
    "label",
    "size_bytes",
    "payload",
    "unit",
    "better",
    "baseline",
    "conveyor",
    "baseline_median",
    "conveyor_median",
    "ratio",
    "target",
    "passed",
    "baseline_samples",
    "conveyor_samples",
}
SUMMARY_ROW_KEYS = (RUN_ROW_KEYS - {"baseline_samples", "conveyor_samples"}) | {
    "ratio_min",
    "ratio_max",
    "baseline_medians",
    "conveyor_medians",
    "ratios",
}
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")


LOAD_KEYS = {
    "cpus",
    "ranks",
    "loadavg_before",
    "loadavg_after",
    "sample_seconds",
    "others_before",
    "others_during",
    "own_during",
    "limit",
    "busy",
}


@pytest.fixture(autouse=True)
def no_second_before_a_run(monkeypatch):
    """Runs started in this process read the machine without waiting a second first."""
    monkeypatch.setattr(machine, "SAMPLE_SECONDS", 0.0)


def run_ok(cmd, cwd, timeout=120):
    """Run `cmd` (a hang fails the test); return its stdout once it exited 0."""
    result = run_command(cmd, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def check_results(path, which, reps, runs=1):
    """Check the JSON of `runs` runs of `which`: metadata, runs, summary.

    Every run must hold positive figures for every contestant, and the
    summary one row per comparison with its range over the runs.
    """
    with open(path) as f:
        data = json.load(f)
    meta = data["meta"]
    assert meta["which"] == which
    assert meta["plan"]["reps"] == reps
    assert meta["runs"] == runs
    for key in ("time", "mpi", "mpi4py", "conveyor", "wall_seconds", "cpu_model"):
        assert key in meta
    assert len(data["runs"]) == runs
    # The machine's load around each run, and over the runs.
    for run in data["runs"]:
        assert set(run["meta"]["load"]) == LOAD_KEYS
    assert meta["load"]["runs"] == runs
    busy = [number for number, run in enumerate(data["runs"], 1) if run["meta"]["load"]["busy"]]
    assert meta["load"]["busy_runs"] == busy
    assert (meta["load"]["warning"] is None) == (not busy)
    benchmarks = set().union(*(ROWS_OF[w] for w in which))
    for run in data["runs"]:
        assert run["meta"]["which"] == which
        assert {row["benchmark"] for row in run["results"]} == benchmarks
        for row in run["results"]:
            assert set(row) == RUN_ROW_KEYS, row["benchmark"]
            for side in ("baseline", "conveyor"):
                samples = row[f"{side}_samples"]
                assert len(samples) == reps, row
                assert all(value > 0 for value in samples), row
                assert row[f"{side}_median"] > 0, row
            assert row["ratio"] > 0
    rows = data["results"]
    assert [(row["benchmark"], row["label"]) for row in rows] == [
        (row["benchmark"], row["label"]) for row in data["runs"][0]["results"]
    ]
    for row in rows:
        assert set(row) == SUMMARY_ROW_KEYS, row["benchmark"]
        assert len(row["ratios"]) == runs
        assert 0 < row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
        assert row["passed"] in (True, False, None)
        assert (row["target"] is None) == (row["passed"] is None)
    return rows


def test_python_m_conveyor_bench_quick_runs_every_benchmark(tmp_path):
    out_json = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "conveyor", "bench", "--quick", "--json", str(out_json)]
    result = run_command(cmd, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = check_results(out_json, list(plan.BENCHMARKS), plan.QUICK.reps)
    # A progress line per benchmark on stderr, none in the table.
    n = len(plan.BENCHMARKS)
    for number, name in enumerate(plan.BENCHMARKS, 1):
        assert f"conveyor bench: [{number}/{n}] {name}" in result.stderr
    assert "conveyor bench: [" not in out
    assert {row["label"] for row in rows if row["benchmark"] == "batch"} == {
        "10k items",
        "100k items",
        "1M items",
    }
    assert "ratio" in out and "targets met" in out
    assert "machine load (" in out.split("targets met")[1]  # under the table
    assert f"results: {out_json}" in out


def test_console_script_runs_with_an_explicit_mpiexec(tmp_path):
    assert os.path.exists(CONSOLE_SCRIPT), "the conveyor console script is not installed"
    out_json = tmp_path / "rate.json"
    run_ok(
        [
            CONSOLE_SCRIPT,
            "bench",
            "--quick",
            "--which",
            "rate,agg-latency",
            "--reps",
            "1",
            "--mpiexec",
            mpiexec(),
            "--json",
            str(out_json),
        ],
        cwd=tmp_path,
    )
    check_results(out_json, ["rate", "agg-latency"], 1)


def test_each_benchmark_runs_in_messengers_of_its_own(tmp_path, monkeypatch):
    for variable in THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    out_json = tmp_path / "bench.json"
    iters = 100
    argv = ["--which", "bw,latency,agg-latency", "--reps", "1", "--iters", str(iters)]
    run_ok(
        [sys.executable, "-m", "conveyor", "bench", "--quick", *argv, "--json", str(out_json)],
        cwd=tmp_path,
    )
    meta = json.loads(out_json.read_text())["runs"][0]["meta"]
    # Each rank's BLAS had its share of the cores, as under conveyor run.
    share = str(rank_threads(2))
    assert {v: meta["env"].get(v) for v in THREAD_VARIABLES} == dict.fromkeys(
        THREAD_VARIABLES, share
    )
    stats, receiver = meta["messenger_stats_rank0"], meta["messenger_stats_rank1"]
    assert list(stats) == list(receiver) == ["bw", "latency", "agg-latency"]
    # Rank 0's messages per ping-pong run: warm-up and timed. A Messenger
    # shared by the benchmarks would count those of the others too.
    per_run = max(1, iters // 10) + iters
    assert set(stats["latency"]) == {"aggregate"}
    assert stats["latency"]["aggregate"]["messages_sent"] == 2 * per_run  # array and int
    assert set(stats["agg-latency"]) == {"aggregate", "no_aggregate"}
    for messenger in stats["agg-latency"].values():
        assert messenger["messages_sent"] == per_run
    # Rank 1 keeps freed 1 MiB receive buffers of bw for reuse (process-wide);
    # the next benchmark starts without them.
    assert receiver["bw"]["aggregate"]["buffer_cache_bytes"] >= 1 << 20
    assert receiver["latency"]["aggregate"]["buffer_cache_bytes"] == 0


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    out = run_ok(
        [
            sys.executable,
            "-m",
            "conveyor",
            "bench",
            "--quick",
            "--reps",
            "1",
            "--which",
            "latency,bw,rate,batch",
            "--plot",
            str(png),
        ],
        cwd=tmp_path,
    )
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"plot: {png}" in out


def test_plot_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--quick", "--plot", str(tmp_path / "bench.png")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "--plot" in err and "matplotlib" in err and "pip install 'conveyor-mpi[plot]'" in err
    assert not (tmp_path / "bench.png").exists()


def test_runs_are_separate_jobs_summarized_in_the_json_and_the_markdown(tmp_path):
    out_json, table = tmp_path / "bench.json", tmp_path / "bench.md"
    out = run_ok(
        [
            sys.executable,
            "-m",
            "conveyor",
            "bench",
            "--quick",
            "--which",
            "latency",
            "--reps",
            "1",
            "--iters",
            "100",
            "--runs",
            "2",
            "--json",
            str(out_json),
            "--markdown",
            str(table),
        ],
        cwd=tmp_path,
    )
    assert out.count("$ ") == 2  # two mpiexec jobs
    assert "run 1 of 2" in out and "run 2 of 2" in out
    assert "medians of 2 runs" in out
    check_results(out_json, ["latency"], 1, runs=2)
    text = table.read_text()
    assert text.startswith(
        "Medians of 2 runs of `conveyor bench`, each the median of 1 repetition;"
    )
    assert "| benchmark | message | mpi4py | conveyor | ratio (range) | target |" in text
    assert text.count("| 8 B ") == 3  # the array, the int and the array against a handler
    assert f"table: {table}" in out


# Stands for mpiexec and the benchmark ranks. Run n (counted in a file) does
# what the n-th entry of a JSON list says: a document to write as rank 0
# would, an exit status, or "hang".
FAKE_RANKS = """#!{python}
import json, os, sys, time
script = {script!r}
with open(script) as f:
    runs = json.load(f)
counter = script + ".count"
n = int(open(counter).read()) if os.path.exists(counter) else 0
with open(counter, "w") as f:
    f.write(str(n + 1))
run = runs[n]
if run == "hang":
    with open(script + ".hung", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)
if isinstance(run, int):
    sys.exit(run)
with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
    json.dump(run, f)
print("fake run", n + 1)
"""


def fake_mpiexec(tmp_path, runs):
    """An mpiexec whose successive runs do what `runs` says (see FAKE_RANKS)."""
    script = tmp_path / "runs.json"
    script.write_text(json.dumps(runs))
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(FAKE_RANKS.format(python=sys.executable, script=str(script)))
    fake.chmod(0o755)
    return fake


def fake_runs_started(fake):
    return int((fake.parent / "runs.json.count").read_text())


def hung_fake_was_killed(fake):
    """Whether the run that hung (it wrote its pid) has gone."""
    pid = int((fake.parent / "runs.json.hung").read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def latency_run(int_conveyor, array_conveyor=1.0):
    """A run whose latency rows have the given conveyor figures against a baseline of 1 µs."""
    return bench_run(
        [
            bench_row("latency", "8 B array", "µs", 1.0, array_conveyor, ("<=", 2.0)),
            bench_row("latency", "8 B int", "µs", 1.0, int_conveyor, ("<=", 2.0)),
        ]
    )


def machine_reads(monkeypatch, busy_ticks):
    """Make the machine's readings say it kept `busy_ticks` of every 200 ticks busy, on 2 CPUs."""
    counter = itertools.count()
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    monkeypatch.setattr(
        machine, "machine_ticks", lambda: (lambda n: (busy_ticks * n, 200 * n))(next(counter))
    )


@pytest.mark.parametrize("busy", [False, True])
def test_a_busy_machine_is_warned_of_under_the_table_in_the_json_and_the_markdown(
    tmp_path, monkeypatch, capfd, busy
):
    # Other work keeps 1.8 of 2 CPUs busy before each run (and, the fake
    # ranks taking next to nothing, during it), or none.
    machine_reads(monkeypatch, 180 if busy else 0)
    fake = fake_mpiexec(tmp_path, [latency_run(1.5), latency_run(1.5)])
    out_json, table = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["bench", "--which", "latency", "--runs", "2", "--mpiexec", str(fake)]
    assert main(argv + ["--json", str(out_json), "--markdown", str(table)]) == 0
    out, _ = capfd.readouterr()
    lines = out.splitlines()
    # Each run's load follows its table (the fake's output), the runs' the summary.
    for number in (1, 2):
        at = lines.index(f"fake run {number}")
        assert lines[at + 1].startswith("machine load (2 CPUs): other work kept ")
        if busy:
            assert lines[at + 2].startswith("WARNING: busy machine: other work kept up to 1.80")
    at = next(i for i, line in enumerate(lines) if line.startswith("machine load over 2 runs"))
    assert lines.index("medians of 2 runs; range = lowest and highest ratio of a run") < at
    data = json.loads(out_json.read_text())
    assert [run["meta"]["load"]["busy"] for run in data["runs"]] == [busy, busy]
    assert data["meta"]["load"]["busy_runs"] == ([1, 2] if busy else [])
    warning = data["meta"]["load"]["warning"]
    text = table.read_text()
    if busy:
        assert warning.startswith("WARNING: busy machine in runs 1, 2 of 2: ")
        assert lines[at + 1] == warning
        assert "\n\n**WARNING: busy machine in runs 1, 2 of 2**: other work kept up to 1.80" in text
    else:
        assert warning is None
        assert "WARNING" not in out and "WARNING" not in text
        assert "Other work kept at most 0.00 CPUs busy before a run" in text


@pytest.mark.parametrize("quick", [False, True])
def test_a_missed_target_fails_the_run(tmp_path, capfd, quick):
    fake = fake_mpiexec(tmp_path, [latency_run(3.0)])
    status = main(["bench", "--which", "latency", "--mpiexec", str(fake)] + ["--quick"] * quick)
    out, err = capfd.readouterr()
    assert "fake run 1" in out
    if quick:  # its figures are noise: a miss is shown, not judged
        assert status == 0
        assert "missed" not in err
    else:
        assert status == 1
        assert "conveyor bench: 1 target(s) missed: latency 8 B int" in err


@pytest.mark.parametrize(
    "conveyor, status",
    [
        ((3.0, 1.5, 1.5), 0),  # one run misses ≤ 2×: the median meets it
        ((3.0, 1.5, 2.5), 1),  # two runs miss it: so does the median
    ],
)
def test_the_median_of_the_runs_is_judged(tmp_path, capfd, conveyor, status):
    fake = fake_mpiexec(tmp_path, [latency_run(c) for c in conveyor])
    table = tmp_path / "bench.md"
    argv = ["bench", "--which", "latency", "--runs", "3", "--mpiexec", str(fake)]
    assert main(argv + ["--markdown", str(table)]) == status
    out, err = capfd.readouterr()
    assert fake_runs_started(fake) == 3
    assert "medians of 3 runs" in out
    (line,) = [
        line for line in out.splitlines() if line.split()[:4] == ["latency", "8", "B", "int"]
    ]
    assert line.split()[-1] == ("PASS" if status == 0 else "FAIL")
    assert ("**FAIL**" in table.read_text()) == (status == 1)
    assert ("target(s) missed: latency 8 B int" in err) == (status == 1)


@pytest.mark.parametrize(
    "second, status, message",
    [
        (3, 3, None),  # the ranks failed: their status
        (
            "hang",
            124,
            "still running after 1 s: asked every rank for its state, then killed every rank",
        ),
    ],
)
def test_a_failed_run_ends_the_command_and_writes_nothing(tmp_path, capfd, second, status, message):
    fake = fake_mpiexec(tmp_path, [latency_run(1.5), second, latency_run(1.5)])
    out_json = tmp_path / "bench.json"
    argv = ["bench", "--which", "latency", "--runs", "3", "--timeout", "1"]
    assert main(argv + ["--mpiexec", str(fake), "--json", str(out_json)]) == status
    _, err = capfd.readouterr()
    assert fake_runs_started(fake) == 2
    assert not out_json.exists()
    if message:
        assert message in err
        assert hung_fake_was_killed(fake)


def test_ctrl_c_ends_the_run_and_starts_no_other(tmp_path):
    fake = fake_mpiexec(tmp_path, [latency_run(1.5), "hang", latency_run(1.5)])
    cmd = [sys.executable, "-m", "conveyor", "bench", "--which", "latency", "--runs", "3"]
    proc = subprocess.Popen(
        cmd + ["--mpiexec", str(fake)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # As from a terminal's shell, whatever started pytest: a background
        # job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "runs.json.hung").exists():  # run 2 is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C at a terminal sends
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, (out, err)
    assert "conveyor bench: interrupted: killed" in err
    assert fake_runs_started(fake) == 2
    assert hung_fake_was_killed(fake)


def load_bench_runner():
    """bench/run.py (``make bench``, ``make figures``) as a module."""
    return load_script(ROOT / "bench" / "run.py", "bench_run")


README_WITH_FIGURES = """# Project

## Measured figures

Prose before.

{begin}

| old | table |

{end}

Prose after.
"""


@pytest.mark.parametrize("readme", [False, True])
def test_make_figures_rewrites_the_readmes_table_and_make_bench_does_not(
    tmp_path, monkeypatch, capfd, readme
):
    runner = load_bench_runner()
    results, readme_path = tmp_path / "results", tmp_path / "README.md"
    before = README_WITH_FIGURES.format(begin=runner.BEGIN, end=runner.END)
    readme_path.write_text(before)
    monkeypatch.setattr(runner, "RESULTS", results)
    monkeypatch.setattr(runner, "README", readme_path)
    fake = fake_mpiexec(tmp_path, [latency_run(1.2), latency_run(3.0)])
    argv = ["--runs", "2", "--which", "latency", "--mpiexec", str(fake)]
    status = runner.main(["--readme"] * readme + argv)
    capfd.readouterr()
    assert status == 1  # the median of 1.2 and 3.0 misses ≤ 2×
    (table,) = results.glob("osu-*.md")
    assert {path.suffix for path in results.iterdir()} >= {".json", ".md"}
    if not readme:
        assert readme_path.read_text() == before
        return
    text = table.read_text()
    assert "**FAIL**" in text
    assert readme_path.read_text() == before.replace("| old | table |\n", text)


def test_rewriting_a_readme_without_the_markers_fails(tmp_path):
    runner = load_bench_runner()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n{runner.BEGIN}\n")
    with pytest.raises(ValueError, match="has no"):
        runner.rewrite_readme(readme, "| table |\n")
    assert readme.read_text() == f"# Project\n\n{runner.BEGIN}\n"


# The key rows of a history row, with the ratios of `full_run` (conveyor / baseline).
KEY_RATIOS = {
    ("latency", "8 B array"): ("µs", 1.77),
    ("latency", "8 B int"): ("µs", 1.62),
    ("oneway", "8 B array"): ("µs", 1.34),
    ("oneway", "8 B int"): ("µs", 1.18),
    ("bw", "1 MiB"): ("MB/s", 0.84),
    ("bw", "16 MiB"): ("MB/s", 0.812),
    ("bw", "64 MiB"): ("MB/s", 0.7),
    ("bw", "256 MiB"): ("MB/s", 0.66),
    ("rate", "8 B int"): ("msgs/s", 5.42),
    ("batch", "1M items"): ("items/s", 0.49),
}
EXPECTED_RATIOS = "| 1.77× | 1.18× | 0.84× | 0.81× | 0.70× | 0.66× | 5.42× | 0.49× |"


def full_run(skip=()):
    """A run's JSON with the rows of `KEY_RATIOS` (but those of `skip`), baselines of 10."""
    return bench_run(
        [
            bench_row(benchmark, label, unit, 10.0, 10.0 * ratio)
            for (benchmark, label), (unit, ratio) in KEY_RATIOS.items()
            if (benchmark, label) not in skip
        ]
    )


def history_readme(runner, tmp_path, monkeypatch):
    """A README with an empty History table, which the runner appends to."""
    readme = tmp_path / "README.md"
    table = f"{runner.HISTORY_BEGIN}\n\n{runner.HISTORY_HEADER}\n{runner.HISTORY_END}"
    readme.write_text(f"# Benchmarks\n\n## History\n\nProse.\n\n{table}\n\n## Next\n")
    monkeypatch.setattr(runner, "HISTORY", readme)
    return readme


def results_file(tmp_path, runs, name="results.json", **meta):
    """The JSON of `runs` (``conveyor bench --json``) with `meta` added, in `tmp_path`."""
    document = summary.combine(runs)
    document["meta"].update(meta)
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_a_history_row_holds_the_key_ratios_of_the_json_under_the_header(
    tmp_path, monkeypatch, capsys
):
    runner = load_bench_runner()
    readme = history_readme(runner, tmp_path, monkeypatch)
    before = readme.read_text()
    runs = [full_run(), full_run()]
    for run, during in zip(runs, (0.02, 0.05)):
        run["meta"]["load"] = machine.record(2, [0.1] * 3, [1.9] * 3, 0.01, during, 1.9)
    first = results_file(tmp_path, runs, commit="abc1234", cpu_model="Test CPU 9000")
    assert runner.main(["--history-from", str(first)]) == 0
    row = (
        "| 2026-12-04 | `abc1234` | Test CPU 9000, 2 CPUs | 2 "
        f"{EXPECTED_RATIOS} quiet: others ≤ 0.05 CPUs |"
    )
    assert f"{row}\n" in capsys.readouterr().out
    header_end = before.index(runner.HISTORY_END)
    assert readme.read_text() == f"{before[:header_end].rstrip()}\n{row}\n\n{before[header_end:]}"
    # A later row goes under it; a busy run is named.
    runs = [full_run(), full_run(), full_run()]
    for run, during in zip(runs, (0.02, 0.85, 0.05)):
        run["meta"]["load"] = machine.record(2, [0.1] * 3, [1.9] * 3, 0.01, during, 1.9)
    second = results_file(tmp_path, runs, "second.json", cpu_model="Test CPU 9000")
    assert runner.main(["--history-from", str(second), "--commit", "def5678"]) == 0
    lines = readme.read_text().splitlines()
    at = lines.index(runner.HISTORY_HEADER.splitlines()[1])
    assert lines[at + 1] == row
    assert lines[at + 2].startswith("| 2026-12-04 | `def5678` | Test CPU 9000, 2 CPUs | 3 |")
    assert lines[at + 2].endswith("| **busy**: run 2 of 3 |")
    assert lines[at + 3 :] == ["", runner.HISTORY_END, "", "## Next"]


@pytest.mark.parametrize(
    "skip, message",
    [
        # --quick: bandwidth up to 1 MiB.
        (
            {("bw", "16 MiB"), ("bw", "64 MiB"), ("bw", "256 MiB")},
            "bw 16 MiB, bw 64 MiB, bw 256 MiB",
        ),
        ({("batch", "1M items")}, "batch 1M items"),
    ],
)
def test_a_json_without_the_key_rows_is_refused(tmp_path, monkeypatch, capsys, skip, message):
    runner = load_bench_runner()
    readme = history_readme(runner, tmp_path, monkeypatch)
    before = readme.read_text()
    results = results_file(tmp_path, [full_run(skip)], commit="abc1234")
    assert runner.main(["--history-from", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"no history row from {results}: the results hold no {message}: " in err
    assert "a history row needs a full run" in err
    assert readme.read_text() == before


def test_a_json_without_a_commit_needs_one_named(tmp_path, monkeypatch, capsys):
    runner = load_bench_runner()
    readme = history_readme(runner, tmp_path, monkeypatch)
    results = results_file(tmp_path, [full_run()])  # before the commit was recorded
    assert runner.main(["--history-from", str(results)]) == 1
    assert "the results record no commit: name the one measured (--commit REV)" in (
        capsys.readouterr().err
    )
    assert runner.main(["--history-from", str(results), "--commit", "0123abc"]) == 0
    # Nor a load or CPU recorded: said so (the CPU is this machine's if it ran here).
    (row,) = [line for line in readme.read_text().splitlines() if "`0123abc`" in line]
    assert row.endswith(f"{EXPECTED_RATIOS} not recorded |")
    assert "| CPU not recorded, 2 CPUs |" in row  # the JSON's host is not this one


def test_a_readme_without_the_history_table_is_refused(tmp_path):
    runner = load_bench_runner()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\n{runner.HISTORY_BEGIN}\n\n{runner.HISTORY_END}\n")
    with pytest.raises(ValueError, match="has no history table"):
        runner.append_history(readme, "| row |")


def test_the_benchmarks_readme_has_the_history_table(tmp_path):
    runner = load_bench_runner()
    readme = tmp_path / "README.md"
    before = (ROOT / "bench" / "README.md").read_text()
    readme.write_text(before)
    runner.append_history(readme, "| a row |")
    text = readme.read_text()
    at = text.index("| a row |\n")
    assert text.index(runner.HISTORY_HEADER) < at < text.index(runner.HISTORY_END)
    assert text.replace("| a row |\n", "", 1) == before


def test_make_figures_records_the_commit_and_appends_the_history_row(tmp_path, monkeypatch, capfd):
    runner = load_bench_runner()
    readme = history_readme(runner, tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(runner, "README", tmp_path / "unused.md")
    monkeypatch.setattr(runner, "checkout_commit", lambda: "feed123-dirty")
    fake = fake_mpiexec(tmp_path, [full_run()])
    assert runner.main(["--history", "--mpiexec", str(fake)]) == 0
    capfd.readouterr()
    (results,) = (tmp_path / "results").glob("osu-*.json")
    assert json.loads(results.read_text())["meta"]["commit"] == "feed123-dirty"
    (row,) = [line for line in readme.read_text().splitlines() if "`feed123-dirty`" in line]
    assert EXPECTED_RATIOS in row


def test_the_commit_is_the_checkouts_and_says_when_tracked_files_changed(tmp_path):
    runner = load_bench_runner()
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "tracked").write_text("1")
    subprocess.run([*git, "add", "tracked"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short=7", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    (tmp_path / "untracked").write_text("")
    assert runner.checkout_commit(tmp_path) == head
    (tmp_path / "tracked").write_text("2")
    assert runner.checkout_commit(tmp_path) == f"{head}-dirty"
    assert runner.checkout_commit(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["bench", "--which", "latency,nope"], "unknown benchmark 'nope'"),
        (["bench", "--which", ","], "name at least one of"),
        (["bench", "--reps", "0"], "--reps: must be at least 1"),
        (["bench", "--iters", "many"], "--iters: not an integer"),
        (["bench", "--max-size", "12X"], "--max-size: not a size"),
        (["bench", "--min-size", "4M", "--max-size", "1M"], "larger than --max-size"),
        (
            ["bench", "--mpiexec", "/nonexistent/mpiexec"],
            "--mpiexec: '/nonexistent/mpiexec' is not",
        ),
        (["bench", "--json", "/nonexistent/dir/out.json"], "--json: the directory"),
        (["bench", "--markdown", "/nonexistent/dir/out.md"], "--markdown: the directory"),
        (["bench", "--runs", "0"], "--runs: must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "usage: conveyor" in err
    assert message in err
