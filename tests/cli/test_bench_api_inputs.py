"""bench/api_inputs.py: every bad argument to the public API gets a clear error, and loses nothing.

The whole survey runs (a few seconds on 2 ranks); its table is the README's
bad-input figures. The classifier is checked on its own, so that an
unclear message cannot pass for a clear one.
"""

import json
import sys

import pytest

from conftest import ROOT, load_script, run_command

SCRIPT = ROOT / "bench" / "api_inputs.py"


def load_survey():
    return load_script(SCRIPT, "api_inputs")


def test_every_bad_argument_gets_a_clear_error(tmp_path):
    out = tmp_path / "probes.json"
    result = run_command([sys.executable, str(SCRIPT), "--json", str(out)], timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == len(load_survey().probes())
    assert {row["outcome"] for row in rows} == {"clear"} and not any(row["lost"] for row in rows)
    assert f"| **all** | {len(rows)} | {len(rows)} | 0 | 0 | 0 | 0 | 0 |" in result.stdout


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (ValueError("rank -1 must be >= 0"), "clear"),
        (KeyError("no item 'x'"), "clear"),
        (TypeError("f(): incompatible function arguments. The following ..."), "unclear"),
        (TypeError("'NoneType' object is not subscriptable"), "unclear"),
        (AttributeError("'int' object has no attribute 'get'"), "unclear"),
        (ValueError(""), "unclear"),
        (RuntimeError("std::bad_alloc"), "unclear"),
    ],
)
def test_the_classifier(error, outcome):
    assert load_survey().classify(error) == outcome
