"""bench/soak.py: a few seconds of the soak on 3 ranks, and its judge of values and memory.

The run checks that every kind of work goes round and is checked, and that
nothing is left behind; never speed, and not the leak bound (a few seconds
hold no steady state: the bound is checked on records made up here).
"""

import argparse
import json
import sys

import numpy as np

from conftest import ROOT, load_script, mpiexec, run_command

SCRIPT = ROOT / "bench" / "soak.py"
soak = load_script(SCRIPT, "soak")

KINDS = (
    "small_received",
    "notes_received",
    "requests",
    "large_received",
    "table_puts",
    "table_waits",
    "table_deletes",
    "fetches",
    "copies",
    "moves",
    "dcalls",
    "dmaps",
    "collects",
    "rounds",
)


def test_a_short_soak(tmp_path):
    out = tmp_path / "soak.json"
    small = ["--small", "2000", "--notes", "20", "--requests", "20", "--large", "2"]
    small += ["--large-mib", "2", "--keys", "10", "--rows", "1000"]
    cmd = [mpiexec(), "-n", "3", sys.executable, str(SCRIPT), "--seconds", "3", "--warmup", "1"]
    cmd += small + ["--leak-mib", "1024", "--json", str(out)]
    result = run_command(cmd, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "values, counts, leftovers and memory: PASS" in result.stdout
    document = json.loads(out.read_text())
    assert document["passed"] is True and document["problems"] == []
    per_rank = document["per_rank"]
    assert [r["rank"] for r in per_rank] == [0, 1, 2]
    rounds = per_rank[0]["counts"]["rounds"]
    for r in per_rank:
        counts = r["counts"]
        assert all(counts[kind] > 0 for kind in KINDS), counts
        assert counts["rounds"] == rounds
        # Every message of every round arrived, exactly: 2 other ranks sent them.
        assert counts["small_received"] == counts["small_sent"] == 2 * 2000 * rounds
        assert counts["large_received"] == counts["large_sent"] == 2 * 2 * rounds
        assert r["problems"] == [] and r["problem_count"] == 0
        assert r["left"] == {
            "chunk_table": dict.fromkeys(r["left"]["chunk_table"], 0),
            "store_items": [],
            "table_keys": 0,
        }
        assert r["rss_start_mib"] > 0 and r["rss_end_mib"] > 0 and r["rss_samples"]


def test_values_out_of_sequence_lost_or_wrong_are_problems():
    checks = soak.Checks(3)
    checks.small(1, 0)
    checks.small(1, 2)  # 1 lost
    checks.small(2, 0)
    checks.small(2, 0)  # repeated
    assert len(checks.problems) == 2
    assert "from rank 1: number 2, expected 1" in checks.problems[0]
    assert "from rank 2: number 0, expected 1" in checks.problems[1]

    checks = soak.Checks(3)
    array = soak.pattern(1, 0, soak.MiB)
    array[12345] += 1
    checks.large(1, (0, array))
    note = soak.note_of(2, 0)
    note["v"] = note["v"].astype(np.int32)  # the same values, another dtype
    checks.note(2, note)
    checks.note(2, {**soak.note_of(2, 1), "x": 1 / 7 + 1e-12})
    assert len(checks.problems) == 3, checks.problems
    assert checks.problems[0].startswith("large array 0 from rank 1")

    # A round's end: rank 0 got everything of rank 1 but one large array of rank 2.
    args = argparse.Namespace(small=1, notes=1, large=2)
    checks = soak.Checks(3)
    for source in (1, 2):
        checks.small(source, 0)
        checks.note(source, soak.note_of(source, 0))
        checks.large(source, (0, soak.pattern(source, 0, soak.MiB)))
    checks.large(1, (1, soak.pattern(1, 1, soak.MiB)))
    assert checks.problems == []
    checks.all_arrived(0, args, 0, 3)
    assert checks.problems == ["round 0: 1 large arrays from rank 2, 2 sent"]


def passing_rank(rank=0):
    """A rank's record of a soak that passed."""
    return {
        "rank": rank,
        "problems": [],
        "problem_count": 0,
        "stats": dict.fromkeys(soak.MUST_BE_ZERO, 0),
        "left": {
            "chunk_table": {"chunks": 0, "pending": 0, "foreign": 0},
            "store_items": [],
            "table_keys": 0,
        },
        "rss_start_mib": 150.0,
        "rss_end_mib": 190.0,
        "cache_start_mib": 12.0,
        "cache_end_mib": 43.0,
    }


def test_the_verdict():
    assert soak.verdict([passing_rank(0), passing_rank(1)], leak_mib=16) == []
    # 40 MiB more resident, 31 of them the buffer cache: 9 MiB grown.
    assert soak.leaked_mib(passing_rank()) == 9.0
    found = soak.verdict([passing_rank(0), passing_rank(1)], leak_mib=8)
    assert found == [
        f"rank {r}: RSS grew 9.0 MiB over the steady state, besides the buffer cache (bound 8 MiB)"
        for r in (0, 1)
    ]
    bad = passing_rank(2)
    bad["left"]["chunk_table"]["foreign"] = 1
    bad["left"]["store_items"] = ["soak.moved"]
    bad["stats"]["handler_errors"] = 3
    bad["problems"], bad["problem_count"] = ["a wrong value"], 25
    bad["rss_start_mib"] = None
    assert soak.verdict([passing_rank(0), bad], leak_mib=16) == [
        "rank 2: a wrong value",
        "rank 2: 24 more problems",
        "rank 2: stats()['handler_errors'] is 3",
        "rank 2: left in the chunk table: {'chunks': 0, 'pending': 0, 'foreign': 1}",
        "rank 2: left ['soak.moved'] in the store, 0 table keys",
        "rank 2: no RSS sample after the warm-up (run longer)",
    ]


def test_steady_state_is_medians_of_the_first_and_last_tenth():
    # One sample far off at each end is not the start or the end.
    rss = [300.0] + [100.0] * 14 + [110.0] * 14 + [10.0]
    samples = [(t, mib, 5.0 + t) for t, mib in enumerate(rss)]
    assert soak.steady_rss(samples) == {
        "rss_start_mib": 100.0,
        "rss_end_mib": 110.0,
        "cache_start_mib": 6.0,
        "cache_end_mib": 33.0,
    }
    assert soak.steady_rss([])["rss_start_mib"] is None
