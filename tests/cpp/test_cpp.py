"""Builds the C++ unit tests of the native core and runs them (under mpiexec where they use MPI)."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, mpiexec, run_command

CORE = ROOT / "csrc" / "conveyor"
# The one room of the core that talks to MPI; every other room is pure C++.
ENGINE = CORE / "engine"


def core_sources(mpi):
    """The pure C++ core's sources, found as setup.py finds the extension's (a
    glob, no list to keep): all of csrc/conveyor, or all but the engine."""
    sources = sorted(CORE.glob("**/*.cpp"))
    if not mpi:
        sources = [p for p in sources if ENGINE not in p.parents]
    return [str(p.relative_to(ROOT)) for p in sources]


def compile_test(binary, name, cxx, flags, sources):
    cmd = [cxx, "-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *flags, "-Icsrc"]
    cmd += [f"tests/cpp/{name}.cpp", *sources, "-o", str(binary)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.fixture(scope="module")
def core_tests(tmp_path_factory):
    cxx = (
        os.environ.get("MPICXX")
        or shutil.which("mpicxx", path=os.path.dirname(sys.executable))
        or shutil.which("mpicxx")
    )
    if not cxx:
        pytest.fail("no mpicxx found to build the C++ unit tests")
    binary = tmp_path_factory.mktemp("cpp") / "test_core"
    return compile_test(binary, "test_core", cxx, [], core_sources(mpi=True))


@pytest.fixture(scope="module")
def chunk_tests(tmp_path_factory):
    # A plain compiler, and an mpi.h that fails the build if anything outside
    # the engine includes it (even a system MPI's, on the default include path).
    cxx = os.environ.get("CXX") or shutil.which("c++")
    if not cxx:
        pytest.fail("no C++ compiler (CXX, c++) found to build the C++ unit tests")
    tmp = tmp_path_factory.mktemp("cpp")
    (tmp / "mpi.h").write_text('#error "only csrc/conveyor/engine/ may include mpi.h"\n')
    return compile_test(
        tmp / "test_chunks", "test_chunks", cxx, [f"-I{tmp}"], core_sources(mpi=False)
    )


def test_only_the_engine_includes_mpi():
    # What the MPI-free build of the chunk tests cannot see: headers no
    # source of theirs includes (wire.hpp), and the bindings.
    for path in sorted((ROOT / "csrc").glob("**/*.[ch]pp")):
        if ENGINE in path.parents:
            continue
        text = path.read_text()
        assert "<mpi.h>" not in text, (
            f"{path.relative_to(ROOT)} includes mpi.h: only {ENGINE.relative_to(ROOT)}/ may"
        )
        if CORE in path.parents:
            assert "conveyor/engine/" not in text, (
                f"{path.relative_to(ROOT)}: a pure kernel includes the engine"
            )


def check_passed(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 0 failed checks" in proc.stdout


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_native_core(core_tests, n):
    check_passed(run_command([mpiexec(), "-n", str(n), str(core_tests)], timeout=120))


def test_chunks_and_alignment(chunk_tests):
    # No MPI calls: one process, no mpiexec.
    check_passed(subprocess.run([str(chunk_tests)], capture_output=True, text=True, timeout=120))
