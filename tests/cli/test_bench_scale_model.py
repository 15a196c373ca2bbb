"""bench/scale_model.py: structure of a small run, and what its model must obey (never speed).

A calibration of a few thousand messages (jobs of 2, 3 and 4 ranks), a
check against bench/relay.py at 4 ranks, predictions at a few rank counts.
"""

import importlib.util
import json
import math
import sys

from conftest import ROOT, run_command

SCRIPT = ROOT / "bench" / "scale_model.py"
MODES = {"direct", "host", "grid2d"}
RANKS = (64, 256, 1024, 4096)


def test_a_small_run(tmp_path):
    out = tmp_path / "model.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--calibration-items",
        "4000",
        "--check",
        "4",
        "--check-items",
        "2000",
        "--items",
        "100000",
        "--ranks",
        ",".join(map(str, RANKS)),
        "--json",
        str(out),
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        cmd += ["--plot", str(tmp_path / "model.png")]
    result = run_command(cmd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert "model vs bench/relay.py" in result.stdout and "predictions" in result.stdout
    if "--plot" in cmd:
        assert (tmp_path / "model.png").stat().st_size > 0

    constants = document["constants"]
    for key in ("t_send", "t_deliver", "tau_alone", "tau_shared", "sharing"):
        assert constants[key] > 0, key
    # A relayed message travels in short form: less than in a direct batch,
    # for all the origin and destination it carries.
    assert constants["entry_bytes"] > constants["relay_entry_bytes"] > 8

    check = document["check"]
    assert {e["measured"]["mode"] for e in check} == MODES
    for entry in check:
        assert entry["measured"]["ranks"] == entry["model"]["ranks"] == 4
        assert set(entry["error_percent"]) >= {"mpi_messages", "bytes", "seconds"}
        # Bytes follow from counts alone: the model has them nearly exactly.
        assert abs(entry["error_percent"]["bytes"]) < 10

    rows = {(p["mode"], p["ranks"]): p for p in document["predictions"]}
    assert set(rows) == {(mode, p) for mode in MODES for p in RANKS}
    for p in rows.values():
        for key in ("mpi_messages", "bytes", "seconds", "batch_memory_bytes", "next_hops"):
            assert p[key] > 0, (p["mode"], p["ranks"], key)
        assert 1 <= p["hops"] <= 2
        assert p["messages_per_mpi_message"] >= 1
    for mode in MODES:
        for small, large in zip(RANKS, RANKS[1:]):
            a, b = rows[(mode, small)], rows[(mode, large)]
            # More ranks: no fewer batches open, nor bytes per rank, nor hops.
            assert b["batch_memory_bytes"] >= a["batch_memory_bytes"]
            assert b["bytes"] >= a["bytes"] * 0.99
            assert b["hops"] >= a["hops"]
    for p in RANKS:
        direct, grid = rows[("direct", p)], rows[("grid2d", p)]
        assert direct["next_hops"] == p and direct["hops"] == 1
        assert grid["next_hops"] <= 2 * math.isqrt(p) + 1
        assert grid["batch_memory_bytes"] < direct["batch_memory_bytes"]
        # Relayed messages cross MPI up to twice, each time in short form.
        short = constants["relay_entry_bytes"] / constants["entry_bytes"]
        assert (
            direct["bytes"] * short < grid["bytes"] < direct["bytes"] * short * grid["hops"] * 1.1
        )
    # Direct's MPI messages grow with P (its batches empty out); grid2d's stay fewer.
    assert [rows[("direct", p)]["mpi_messages"] for p in RANKS] == sorted(
        rows[("direct", p)]["mpi_messages"] for p in RANKS
    )
    assert rows[("grid2d", RANKS[-1])]["mpi_messages"] < rows[("direct", RANKS[-1])]["mpi_messages"]
