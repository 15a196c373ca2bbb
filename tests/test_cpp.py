"""Builds the C++ unit tests of the native core and runs them under mpiexec."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import mpiexec

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def core_tests(tmp_path_factory):
    cxx = os.environ.get("MPICXX") or shutil.which("mpicxx", path=os.path.dirname(sys.executable)) or shutil.which("mpicxx")
    if not cxx:
        pytest.fail("no mpicxx found to build the C++ unit tests")
    binary = tmp_path_factory.mktemp("cpp") / "test_core"
    sources = ["tests/cpp/test_core.cpp", "csrc/conveyor/engine.cpp", "csrc/conveyor/route.cpp"]
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-Icsrc", *sources, "-o", str(binary)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_native_core(core_tests, n):
    proc = subprocess.run([mpiexec(), "-n", str(n), str(core_tests)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 0 failed checks" in proc.stdout
