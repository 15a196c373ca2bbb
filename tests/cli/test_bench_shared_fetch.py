"""bench/shared_fetch.py: structure, and the memory it measures (never speed).

A small run on 3 ranks: readers of a shared item add about one item to the
job's memory, readers of a plain one a copy each.
"""

import json
import sys

from conftest import ROOT, mpiexec, run_command

SCRIPT = ROOT / "bench" / "shared_fetch.py"


def test_a_small_run(tmp_path):
    out = tmp_path / "shared.json"
    cmd = [mpiexec(), "-n", "3", sys.executable, str(SCRIPT), "--mib", "32", "--reps", "1"]
    result = run_command(cmd + ["--json", str(out)], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert set(document["rows"]) == {"plain", "shared"} and document["ratio"] > 0
    footprint = document["footprint_mib"]
    assert footprint["plain"] >= 2 * 32 * 0.9  # two readers, a copy each
    assert footprint["shared"] <= 32 * 1.1  # one item between them
    assert "plain / shared" in result.stdout
