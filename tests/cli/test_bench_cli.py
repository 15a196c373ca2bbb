"""``conveyor bench``: the command runs every contestant and reports them.

These tests check structure, never speed: a quick run's figures are noise.
Each run is a real ``mpiexec -n 2`` job under a timeout.
"""

import json
import os
import sys

import pytest

from conveyor.__main__ import main
from conveyor._bench import plan

from conftest import mpiexec, run_command

# Table rows each benchmark of --which produces.
ROWS_OF = {
    "latency": {"latency"},
    "oneway": {"oneway"},
    "bw": {"bw", "bw-vs-pickle"},
    "rate": {"rate", "rate-vs-pickle", "rate-w64"},
    "batch": {"batch"},
    "agg-latency": {"agg-latency"},
}
ROW_KEYS = {
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
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")


def run_ok(cmd, cwd, timeout=120):
    """Run `cmd` (a hang fails the test); return its stdout once it exited 0."""
    result = run_command(cmd, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def check_results(path, which, reps):
    """Check the JSON of a run of `which`: metadata, and positive figures for every contestant."""
    with open(path) as f:
        data = json.load(f)
    meta = data["meta"]
    assert meta["which"] == which
    assert meta["plan"]["reps"] == reps
    for key in ("time", "mpi", "mpi4py", "conveyor", "wall_seconds"):
        assert key in meta
    rows = data["results"]
    assert {row["benchmark"] for row in rows} == set().union(*(ROWS_OF[w] for w in which))
    for row in rows:
        assert set(row) == ROW_KEYS, row["benchmark"]
        for side in ("baseline", "conveyor"):
            samples = row[f"{side}_samples"]
            assert len(samples) == reps, row
            assert all(value > 0 for value in samples), row
            assert row[f"{side}_median"] > 0, row
        assert row["ratio"] > 0
        assert row["passed"] in (True, False, None)
        assert (row["target"] is None) == (row["passed"] is None)
    return rows


def test_python_m_conveyor_bench_quick_runs_every_benchmark(tmp_path):
    out_json = tmp_path / "bench.json"
    out = run_ok(
        [sys.executable, "-m", "conveyor", "bench", "--quick", "--json", str(out_json)],
        cwd=tmp_path,
    )
    rows = check_results(out_json, list(plan.BENCHMARKS), plan.QUICK.reps)
    assert {row["label"] for row in rows if row["benchmark"] == "batch"} == {
        "10k items",
        "100k items",
        "1M items",
    }
    assert "ratio" in out and "targets met" in out
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


# Stands for mpiexec and the benchmark ranks: writes the JSON of a run in which
# one row missed its target, as rank 0 would, and prints its table row.
FAKE_RANKS = """#!{python}
import json, sys
rows = [dict(benchmark="latency", label="8 B int", passed=False),
        dict(benchmark="oneway", label="8 B int", passed=True)]
with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
    json.dump({{"meta": {{}}, "results": rows}}, f)
print("latency 8 B int ... FAIL")
"""


@pytest.mark.parametrize("quick", [False, True])
def test_a_missed_target_fails_the_run(tmp_path, capfd, quick):
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(FAKE_RANKS.format(python=sys.executable))
    fake.chmod(0o755)
    status = main(
        ["bench", "--which", "latency,oneway", "--mpiexec", str(fake)] + ["--quick"] * quick
    )
    out, err = capfd.readouterr()
    assert "latency 8 B int ... FAIL" in out
    if quick:  # its figures are noise: a miss is shown, not judged
        assert status == 0
        assert "missed" not in err
    else:
        assert status == 1
        assert "conveyor bench: 1 target(s) missed: latency 8 B int" in err


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
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "usage: conveyor" in err
    assert message in err
