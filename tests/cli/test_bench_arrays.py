"""bench/arrays.py: issue 17's four operations in conveyor, Heat, Dask and numpy.

Structure only, never speed: a tiny run on 4 ranks under a timeout, whose
JSON must hold every contestant's timings, values that agree, and a verdict
per operation. Heat and Dask are skipped by the script where they are not
installed (Heat never is by `make test`); the test checks whichever ran.
"""

import importlib.util
import json
import sys

import pytest

from conftest import ROOT, mpiexec, run_command

SCRIPT = ROOT / "bench" / "arrays.py"
N = 100_000
OPS = ("add_sum", "mask_sum", "std", "rebalance")


def run_arrays(tmp_path, *options, timeout=180):
    """Run the script on 4 ranks with a tiny --n; return its JSON, stdout and table."""
    out_json, out_md = tmp_path / "arrays.json", tmp_path / "arrays.md"
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
        "--markdown",
        str(out_md),
        *options,
    ]
    result = run_command(cmd, timeout=timeout, cwd=tmp_path)
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    with open(out_json) as f:
        return json.load(f), result.stdout, out_md.read_text()


def check_timed(row, ops=OPS):
    for op in ops:
        assert len(row[op]["s"]) == 1 and row[op]["median_s"] > 0
        assert row[op]["min_s"] <= row[op]["median_s"] <= row[op]["max_s"]
    if "rebalance" in ops:
        assert row["rebalance"]["chunks"] == [N // 4] * 4


def installed(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_contestants_agree(tmp_path):
    data, out, table = run_arrays(tmp_path)
    assert data["meta"]["n"] == N and data["meta"]["ranks"] == 4
    assert data["x_chunks"] == [N // 4] * 4 and len(data["y_chunks"]) == 7
    assert sum(data["heat_y_chunks"]) == N and len(data["heat_y_chunks"]) == 4
    check_timed(data["conveyor"])
    check_timed(data["numpy"], OPS[:3])
    # x and y uniform in [0, 1): the sums are about n, n / 2 * 3 / 4 and n / 2
    assert data["numpy"]["add_sum"]["value"] == pytest.approx(N, rel=0.05)
    assert data["numpy"]["mask_sum"]["value"] == pytest.approx(N * 3 / 8, rel=0.05)
    assert data["numpy"]["std"]["value"] == pytest.approx(12**-0.5, rel=0.05)
    assert data["agree"] is True and "values agree (rtol 1e-09)" in out
    ran = []
    for peer, modules in (("heat", ("heat", "torch")), ("dask", ("distributed",))):
        if installed(*modules) and not isinstance(data[peer], str):
            check_timed(data[peer])
            ran.append(peer)
        else:
            assert isinstance(data[peer], str) and f"{peer} skipped" in out
    for op in OPS:
        verdict = data["verdicts"][op]
        if ran:
            assert verdict["peer"] in ran and verdict["ratio"] > 0
            assert verdict["passed"] == (verdict["ratio"] <= 0.5)
        else:
            assert verdict is None
    assert table.count("\n") == 6 and "conveyor / faster peer" in table


def test_only_conveyor_and_numpy(tmp_path):
    data, out, _ = run_arrays(tmp_path, "--only", "conveyor,numpy")
    assert data["heat"] == data["dask"] == "not asked for (--only)"
    assert all(v is None for v in data["verdicts"].values())
    check_timed(data["conveyor"])
