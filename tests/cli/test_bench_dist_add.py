"""bench/dist_add.py: conveyor's DistArray, Dask and numpy on the same ``(x + y).sum()``.

Structure only, never speed: a tiny run on 4 ranks under a timeout, whose
JSON must hold every contestant's timings and three sums that agree.
"""

import json
import sys

import pytest

from conftest import ROOT, mpiexec, run_command

SCRIPT = ROOT / "bench" / "dist_add.py"
N = 100_000


def run_dist_add(tmp_path, *options, timeout=90):
    """Run the script on 4 ranks with a tiny --n; return its JSON and stdout."""
    out_json = tmp_path / "dist_add.json"
    cmd = [
        mpiexec(),
        "-n",
        "4",
        sys.executable,
        str(SCRIPT),
        "--n",
        str(N),
        "--reps",
        "1",
        "--json",
        str(out_json),
        *options,
    ]
    result = run_command(cmd, timeout=timeout, cwd=tmp_path)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    with open(out_json) as f:
        return json.load(f), result.stdout


def check_contestant(row, reps=1):
    assert len(row["sum_s"]) == len(row["add_s"]) == reps
    assert all(t > 0 for t in row["sum_s"] + row["add_s"])
    assert row["sum_median_s"] > 0 and row["add_median_s"] > 0
    assert row["sum"] == pytest.approx(N, rel=0.05)  # x and y uniform in [0, 1): n / 2 each


def check_common(data):
    assert data["meta"]["n"] == N and data["meta"]["ranks"] == 4
    assert data["meta"]["x_chunks"] == [N // 4] * 4
    assert len(data["meta"]["y_chunks"]) == 7 and len(set(data["meta"]["y_chunks"])) > 1
    assert sum(data["meta"]["y_chunks"]) == N
    check_contestant(data["conveyor"])
    check_contestant(data["numpy"])
    assert data["conveyor"]["y_owners"] == [j % 4 for j in range(7)]
    assert len(data["conveyor"]["peak_rss_mib"]) == len(data["conveyor"]["peak_rss_built_mib"]) == 4
    assert len(data["idle_cpu_pct"]) == 3
    assert data["sums_agree"] is True
    assert data["ratio_numpy"]["sum"] > 0


def test_three_contestants_agree(tmp_path):
    pytest.importorskip("distributed")
    data, out = run_dist_add(tmp_path)
    check_common(data)
    check_contestant(data["dask"])
    assert data["dask"]["workers"] == 4
    assert data["dask"]["chunks"] == [data["meta"]["x_chunks"], data["meta"]["y_chunks"]]
    assert data["conveyor"]["sum"] == pytest.approx(data["dask"]["sum"], rel=1e-9)
    assert data["ratio_dask"]["sum"] > 0
    assert data["passed"] in (True, False)
    assert "target: conveyor <= 0.5x dask" in out and "sums agree (rtol 1e-09): yes" in out


def test_no_dask_skips_only_dask(tmp_path):
    data, out = run_dist_add(tmp_path, "--no-dask")
    check_common(data)
    assert data["dask"] is None and data["ratio_dask"] is None and data["passed"] is None
    assert "dask (--no-dask)" in out and "target" not in out
