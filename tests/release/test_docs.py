"""The documentation builds without a single warning (what ``make docs`` checks)."""

import subprocess
import sys

import pytest

from conftest import ROOT

BUILD = ROOT / "docs" / "build_docs.py"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    proc = subprocess.run(
        [sys.executable, str(BUILD), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"sphinx exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
