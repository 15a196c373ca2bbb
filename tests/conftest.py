"""The harness for multi-rank tests: real processes under mpiexec, with a timeout.

``mpirun(n, case, *args)`` runs ``case`` (a module-level function of the
calling test file) on ``n`` ranks. A hang is a failure: on timeout the whole
process group is killed and the test fails with what the ranks printed.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ENTRY = HERE / "_mpi_entry.py"


def mpiexec():
    found = os.environ.get("CONVEYOR_MPIEXEC") or shutil.which(
        "mpiexec", path=os.path.dirname(sys.executable)
    ) or shutil.which("mpiexec")
    if not found:
        pytest.fail("no mpiexec found (install the mpich wheel or set CONVEYOR_MPIEXEC)")
    return found


def run_mpi(n, case, *args, timeout=60, env=None, check=True):
    """Run `case` on `n` ranks; return the CompletedProcess."""
    source = sys.modules[case.__module__].__file__
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(ENTRY), source, case.__name__]
    cmd += [str(a) for a in args]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{case.__name__} on {n} ranks hung (killed after {timeout} s)\n"
                    f"--- stdout\n{out}\n--- stderr\n{err}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"{case.__name__} on {n} ranks failed (exit {proc.returncode})\n"
                    f"--- stdout\n{out}\n--- stderr\n{err}")
    return result


@pytest.fixture
def mpirun():
    return run_mpi


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda n: f"np{n}")
def nranks(request):
    return request.param
