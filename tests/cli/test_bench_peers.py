"""bench/peers.py: conveyor side by side with mpi4py.futures, Dask and Ray.

Structure only, never speed: a tiny run of the contestants that ``make
test`` installs (conveyor and mpi4py.futures, each an ``mpiexec -n 2``
job) under a timeout, whose JSON and table must hold every row; and the
summary, skipping and README code on figures made up here. Ray is never
needed.
"""

import importlib.util
import json
import sys

import pytest

from conftest import ROOT, load_script, run_command

SCRIPT = ROOT / "bench" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    """bench/peers.py as a module (its functions, without running it)."""
    return load_script(SCRIPT, "bench_peers")


def test_conveyor_and_mpi4py_futures_side_by_side(tmp_path):
    out_json, out_md = tmp_path / "peers.json", tmp_path / "peers.md"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--only",
        "conveyor,mpi4py",
        "--which",
        "task,echo",
        "--runs",
        "2",
        "--reps",
        "2",
        "--iters",
        "20",
        "--timeout",
        "60",
        "--settle",
        "0",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    result = run_command(cmd, timeout=150, cwd=tmp_path)
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    data = json.loads(out_json.read_text())
    meta = data["meta"]
    assert meta["runs"] == 2 and meta["reps"] == 2 and meta["which"] == ["task", "echo"]
    assert meta["skipped"] == {} and meta["failed"] == {}
    assert meta["versions"]["MPI"]
    assert len(data["runs"]) == 2 and all(
        set(run) == {"conveyor", "mpi4py"} for run in data["runs"]
    )
    rows = {(r["benchmark"], r["contestant"], r["way"]): r for r in data["rows"]}
    ways = [("conveyor", "executor"), ("conveyor", "actor"), ("conveyor", "request")]
    ways.append(("mpi4py", "executor"))
    assert set(rows) == {(b, c, w) for b in ("task", "echo") for c, w in ways}
    for row in rows.values():
        assert row["unit"] == "µs" and len(row["runs"]) == 2
        assert 0 < row["min"] <= row["median"] <= row["max"]
        if row["contestant"] == "conveyor":
            assert row["ratio"] is None
        else:  # against cv.Executor, within each run
            assert row["counterpart"] == "conveyor/executor"
            assert len(row["ratio"]["runs"]) == 2 and row["ratio"]["median"] > 0
    assert rows["task", "conveyor", "executor"]["passed"] in (True, False)
    assert rows["echo", "mpi4py", "executor"]["passed"] in (True, False)
    assert rows["echo", "mpi4py", "executor"]["target"] == "ratio >= 20x"
    assert rows["task", "mpi4py", "executor"]["passed"] is None
    assert "mpi4py.futures MPIPoolExecutor, 1 worker" in result.stdout
    table = out_md.read_text()
    assert "| conveyor `cv.Executor`, 2 ranks |" in table and "64 MiB argument" in table
    assert "Target: a no-op `cv.Executor` task in at most 20 µs" in table


def test_a_missing_peer_is_skipped_with_its_reason(peers, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        peers.importlib.util, "find_spec", lambda name: None if name == "ray" else real(name)
    )
    assert "requirements-peers.txt" in peers.why_skipped("ray", "mpiexec")
    assert peers.why_skipped("dask", "mpiexec") is None
    assert "no mpiexec" in peers.why_skipped("mpi4py", None)


def test_summary_medians_ranges_ratios_and_targets(peers):
    def part(**ways):  # µs per round trip, one repetition each
        return {"samples": {w: {"task": [v], "echo": [v]} for w, v in ways.items()}}

    runs = [
        {
            "conveyor": part(executor=10.0, actor=20.0, request=5.0),
            "ray": part(task=300, actor=500),
        },
        {
            "conveyor": part(executor=30.0, actor=20.0, request=5.0),
            "ray": part(task=300, actor=300),
        },
        {
            "conveyor": part(executor=20.0, actor=40.0, request=5.0),
            "ray": part(task=300, actor=400),
        },
    ]
    rows = peers.summarize(runs, ["conveyor", "ray"], ["task", "echo"])
    by = {(r["benchmark"], r["contestant"], r["way"]): r for r in rows}
    task = by["task", "conveyor", "executor"]
    assert (task["median"], task["min"], task["max"]) == pytest.approx((20, 10, 30))
    assert task["passed"] is True and task["target"] == "<= 20 µs"
    ray_task = by["echo", "ray", "task"]  # against cv.Executor, run by run: 30, 10, 15
    assert ray_task["ratio"]["runs"] == pytest.approx([30, 10, 15])
    assert ray_task["ratio"]["median"] == pytest.approx(15) and ray_task["passed"] is False
    ray_actor = by["echo", "ray", "actor"]  # against conveyor's actor: 25, 15, 10
    assert ray_actor["ratio"]["median"] == pytest.approx(15)
    assert (ray_actor["ratio"]["min"], ray_actor["ratio"]["max"]) == pytest.approx((10, 25))
    assert by["task", "ray", "actor"]["passed"] is None  # the 20x target is the 8-byte one's
    assert ("array", "ray", "task") not in by


def test_readme_table_is_rewritten_between_its_markers(peers, tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{peers.BEGIN}\nold table\n{peers.END}\nafter\n")
    monkeypatch.setattr(peers, "README", readme)
    peers.rewrite_readme("| new |\n")
    assert readme.read_text() == f"before\n{peers.BEGIN}\n\n| new |\n\n{peers.END}\nafter\n"
    assert peers.BEGIN in (ROOT / "README.md").read_text()
