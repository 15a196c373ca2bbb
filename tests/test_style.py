"""Format is a tool, not a review: the C++ sources match the repository's .clang-format."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_clang_format():
    # The one requirements-dev.txt pins, next to this interpreter: another
    # version may format differently.
    binary = shutil.which("clang-format", path=os.path.dirname(sys.executable))
    if binary is None:
        pytest.skip("clang-format is not installed in this environment (see requirements-dev.txt)")
    files = sorted(
        str(path.relative_to(ROOT))
        for folder in ("csrc", "tests/cpp")
        for path in (ROOT / folder).glob("**/*")
        if path.suffix in (".cpp", ".hpp")
    )
    proc = subprocess.run([binary, "--dry-run", "-Werror", *files], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, "run clang-format -i on these files:\n" + proc.stderr
