"""Builds the C++ unit tests of the native core and runs them (under mpiexec where they use MPI)."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import mpiexec

ROOT = pathlib.Path(__file__).resolve().parent.parent


def build(tmp_path_factory, name, sources):
    cxx = (
        os.environ.get("MPICXX")
        or shutil.which("mpicxx", path=os.path.dirname(sys.executable))
        or shutil.which("mpicxx")
    )
    if not cxx:
        pytest.fail("no mpicxx found to build the C++ unit tests")
    binary = tmp_path_factory.mktemp("cpp") / name
    sources = [f"tests/cpp/{name}.cpp", *sources]
    cmd = [
        cxx,
        "-std=c++17",
        "-O1",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Icsrc",
        *sources,
        "-o",
        str(binary),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.fixture(scope="module")
def core_tests(tmp_path_factory):
    return build(
        tmp_path_factory, "test_core", ["csrc/conveyor/engine.cpp", "csrc/conveyor/route.cpp"]
    )


@pytest.fixture(scope="module")
def chunk_tests(tmp_path_factory):
    return build(
        tmp_path_factory, "test_chunks", ["csrc/conveyor/align.cpp", "csrc/conveyor/chunks.cpp"]
    )


def check_passed(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 0 failed checks" in proc.stdout


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_native_core(core_tests, n):
    check_passed(
        subprocess.run(
            [mpiexec(), "-n", str(n), str(core_tests)], capture_output=True, text=True, timeout=120
        )
    )


def test_chunks_and_alignment(chunk_tests):
    # No MPI calls: one process, no mpiexec.
    check_passed(subprocess.run([str(chunk_tests)], capture_output=True, text=True, timeout=120))
