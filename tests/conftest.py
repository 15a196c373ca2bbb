"""The harness for multi-rank tests: real processes under mpiexec, with a timeout.

``mpirun(n, case, *args)`` runs ``case`` (a module-level function of the
calling test file) on ``n`` ranks. A hang is a failure: on timeout each
rank logs its messenger's state and prints its stacks (`explain_hang`),
then the whole process group is killed and the test fails with what the
ranks printed.
"""

import functools
import importlib.util
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
ENTRY = HERE / "_mpi_entry.py"


def mpiexec():
    """The mpiexec ``conveyor run`` would use (`conveyor.cli.launch.find_mpiexec`)."""
    from conveyor.cli.launch import find_mpiexec

    found = find_mpiexec()
    if not found:
        pytest.fail("no mpiexec found (install the mpich wheel or set CONVEYOR_MPIEXEC)")
    return found


@functools.cache
def mpiexec_is_open_mpi():
    """Whether `mpiexec` is Open MPI's (it says so in ``--version``)."""
    version = subprocess.run([mpiexec(), "--version"], capture_output=True, text=True, timeout=30)
    return "Open MPI" in version.stdout


@functools.cache
def mpiexec_passes_end_of_input():
    """Whether the end of mpiexec's standard input reaches rank 0.

    MPICH's passes it on; Open MPI 5.0's never does (openpmix/openpmix#4024),
    so a rank that reads its input to the end waits forever.
    """
    from conveyor.cli.launch import mpiexec_environment

    proc = subprocess.Popen(
        [mpiexec(), "-n", "1", "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=mpiexec_environment(),
        start_new_session=True,
    )
    proc.stdin.close()
    try:
        return proc.wait(timeout=10) == 0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def require_end_of_input():
    """Skip the test unless the end of mpiexec's input reaches rank 0."""
    if not mpiexec_passes_end_of_input():
        pytest.skip("this mpiexec never passes the end of its input on (Open MPI 5.0)")


# Open MPI's mpiexec reports the first rank that exited with a non-zero
# status in a block between lines of dashes; MPICH's says nothing.
_NONZERO_EXIT_REPORT = re.compile(
    r"^-+\n\w+ detected that one or more processes exited with non-zero status,\n.*?^-+\n",
    re.MULTILINE | re.DOTALL,
)


def without_exit_report(stderr):
    """`stderr` less the report Open MPI's mpiexec adds when a rank exits non-zero."""
    return _NONZERO_EXIT_REPORT.sub("", stderr)


def run_command(cmd, timeout=60, env=None, cwd=None, nranks=None):
    """Run `cmd` in its own process group; return the CompletedProcess.

    It runs in the environment ``conveyor run`` starts mpiexec in
    (`conveyor.cli.launch.mpiexec_environment`, with each rank's share of
    the cores for BLAS if `nranks` is given), with `env` added. A hang
    is a failure: on timeout its Python processes say where they are
    (`explain_hang`), the whole group is killed, and the test fails with
    what the command printed.
    """
    from conveyor.cli.launch import kill_group, mpiexec_environment, rank_threads

    # conveyor run inside a Slurm allocation would start ranks with srun: the
    # suite uses mpiexec unless a test says otherwise (tests/cli/test_cli_slurm.py).
    full_env = mpiexec_environment(
        {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            "CONVEYOR_LAUNCHER": "mpiexec",
            **(env or {}),
        },
        threads=None if nranks is None else rank_threads(nranks),
    )
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=no_core_files,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        explain_hang(proc.pid)
        try:
            out, err = proc.communicate(timeout=ABORT_GRACE)
        except subprocess.TimeoutExpired:
            kill_group(proc)  # its descendants too: ranks sit in sessions of their own
            out, err = proc.communicate()
        pytest.fail(f"{cmd} hung (killed after {timeout} s)\n--- stdout\n{out}\n--- stderr\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# How long a hung command's ranks get to log their state (SIGUSR1), then to
# print their stacks (SIGABRT), and mpiexec to pass on what they wrote
# before the whole group is killed.
STATE_GRACE = 1
ABORT_GRACE = 5


def no_core_files():
    """In the command's process, before it starts: its SIGABRT (`explain_hang`) writes no core file."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def explain_hang(root):
    """Make every Python process descended from process `root` say where it hangs.

    A hang that is only killed says nothing of where it hung. A process
    with an open messenger logs its state on SIGUSR1 (what it waits for,
    `conveyor._diagnostics.watch`); then every Python process prints each
    thread's stack on SIGABRT (the fault handler, ``PYTHONFAULTHANDLER``,
    set by `run_command`). Descendants, not `root`'s process group: MPICH's
    proxy starts each rank in a session of its own. The other processes
    (mpiexec, its proxies) are stopped meanwhile, or they would kill the
    ranks at the first one's death, before the others have spoken; what the
    ranks write waits in their pipes until the launchers go on.
    """
    from conveyor.cli.launch import descendants

    found = [root, *descendants(root)]
    pythons = [pid for pid in found if program(pid).startswith(b"python")]
    launchers = [pid for pid in found if pid not in pythons]
    for pid in launchers:
        signal_quietly(pid, signal.SIGSTOP)
    try:
        watched = [pid for pid in pythons if catches(pid, signal.SIGUSR1)]
        for pid in watched:
            signal_quietly(pid, signal.SIGUSR1)
        if watched:
            time.sleep(STATE_GRACE)
        for pid in pythons:
            signal_quietly(pid, signal.SIGABRT)
        deadline = time.monotonic() + ABORT_GRACE
        while not all(ended(pid) for pid in pythons) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for pid in launchers:
            signal_quietly(pid, signal.SIGCONT)


def program(pid):
    """The name of the program process `pid` runs (its argv[0]), or b"" once it ended."""
    try:
        argv0 = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except (FileNotFoundError, ProcessLookupError):
        return b""
    return os.path.basename(argv0)


def ended(pid):
    """Whether process `pid` has ended (gone, or a zombie its stopped parent has not reaped)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(") ", 1)[1].startswith("Z")


def catches(pid, signum):
    """Whether process `pid` has a handler of its own for `signum` (its SigCgt mask)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def signal_quietly(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # it ended meanwhile


def run_mpi(n, case, *args, timeout=60, env=None, check=True):
    """Run `case` on `n` ranks; return the CompletedProcess."""
    source = sys.modules[case.__module__].__file__
    cmd = [mpiexec(), "-n", str(n), sys.executable, str(ENTRY), source, case.__name__]
    cmd += [str(a) for a in args]
    result = run_command(cmd, timeout=timeout, env=env, nranks=n)
    if check and result.returncode != 0:
        pytest.fail(
            f"{case.__name__} on {n} ranks failed (exit {result.returncode})\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


EXAMPLES = ROOT / "examples"


def load_script(path, name):
    """Import the program at `path` as module `name`, without running it (its functions are tested directly)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name):
    """Import ``examples/<name>.py`` as a module."""
    return load_script(EXAMPLES / f"{name}.py", name)


def run_example(name, nranks, *args, timeout=60):
    """Run ``examples/<name>.py`` on `nranks` ranks (None: plain python); fail on a hang."""
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)]
    if nranks is not None:
        command = [mpiexec(), "-n", str(nranks), *command]
    return run_command(command, timeout=timeout, nranks=nranks)


@pytest.fixture
def mpirun():
    return run_mpi


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda n: f"np{n}")
def nranks(request):
    return request.param


def pytest_addoption(parser):
    parser.addoption(
        "--scale",
        action="store_true",
        help="also run the many-rank tests marked 'scale' (tests/scale: 16, 32 and 64 ranks)",
    )


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``scale`` unless ``--scale`` asks for them (``make test-scale``)."""
    if config.getoption("--scale"):
        return
    skip = pytest.mark.skip(reason="a many-rank test: run with --scale (make test-scale)")
    for item in items:
        if item.get_closest_marker("scale") is not None:
            item.add_marker(skip)
