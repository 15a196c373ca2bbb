"""``conveyor run -n N script.py ARG ...``: scripts on several ranks, failures, timeouts.

Every run is a real mpiexec job, started by the console script under a
timeout of its own (`conftest.run_command`).
"""

import json
import os
import sys
import textwrap
import time

import pytest

import conveyor as cv
from conveyor.__main__ import main
from conveyor.cli import launch

from conftest import run_command

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")


def conveyor_run(tmp_path, source, *options, args=(), timeout=60):
    """Write `source` to script.py and run it with ``conveyor run``; return the CompletedProcess."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    cmd = [CONSOLE_SCRIPT, "run", *options, "script.py", *args]
    return run_command(cmd, timeout=timeout, cwd=tmp_path)


def test_two_ranks_pass_and_get_the_arguments(tmp_path):
    result = conveyor_run(
        tmp_path,
        """
        import sys
        import conveyor as cv
        with cv.Messenger() as m:
            print(f"rank {m.rank} of {m.size}: {sys.argv}", flush=True)
            m.wait_quiet()
        """,
        "-n",
        "2",
        args=["a b", "--flag", "-n", "7"],
    )
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"rank {rank} of 2: ['script.py', 'a b', '--flag', '-n', '7']" in result.stdout
    assert "conveyor run:" not in result.stderr


def test_a_failing_rank_is_named_with_its_status(tmp_path):
    result = conveyor_run(
        tmp_path,
        """
        import conveyor as cv
        with cv.Messenger() as m:
            if m.rank == 1:
                raise ValueError("rank one is broken")
            m.wait_quiet()
        """,
        "-n",
        "2",
    )
    assert result.returncode == 1
    assert "conveyor run: rank 1 failed with exit status 1" in result.stderr
    # conveyor's excepthook aborts the job: rank 0, waiting for rank 1, is stopped.
    assert "conveyor run: rank 0 did not finish: stopped by mpiexec" in result.stderr
    # The traceback is the user's, as python would print it.
    assert 'File "script.py", line 5, in <module>' in result.stderr
    assert "ValueError: rank one is broken" in result.stderr
    assert "runpy" not in result.stderr and "script_rank" not in result.stderr


def test_exit_status_of_the_failing_rank(tmp_path):
    result = conveyor_run(
        tmp_path,
        """
        import sys
        import conveyor as cv
        with cv.Messenger() as m:
            rank = m.rank
        sys.exit(3 if rank == 0 else 0)
        """,
        "-n",
        "2",
    )
    assert result.returncode == 3
    assert "conveyor run: rank 0 failed with exit status 3" in result.stderr
    assert "rank 1" not in result.stderr


def test_a_rank_leaving_by_os_exit_0_fails_the_run(tmp_path):
    # MPICH's mpiexec kills the other ranks and exits with 0 when a rank
    # leaves by os._exit(0) before MPI_Finalize: conveyor run said nothing
    # and exited with 0.
    result = conveyor_run(
        tmp_path,
        """
        import os
        import conveyor as cv
        with cv.Messenger() as m:
            if m.rank == 1:
                os._exit(0)
            m.wait_quiet()  # waits for rank 1, until mpiexec kills this rank
        """,
        "-n",
        "3",
    )
    assert result.returncode != 0
    assert "conveyor run: rank 1 did not finish" in result.stderr, result.stderr


def alive(pid):
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads processes from /proc")
def test_a_hang_is_killed_after_the_timeout(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    started = time.monotonic()
    result = conveyor_run(
        tmp_path,
        """
        import os, sys, time
        import conveyor as cv
        with cv.Messenger() as m:
            with open(os.path.join(sys.argv[1], str(os.getpid())), "w") as f:
                f.write(str(os.getpgid(0)))
            print(f"rank {m.rank} hangs", flush=True)
            time.sleep(600)
        """,
        "-n",
        "2",
        "--timeout",
        "3",
        args=[str(pids)],
    )
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - started < 30
    assert (
        "conveyor run: still running after 3 s: asked every rank for its state, then killed every rank"
        in result.stderr
    )
    # Asked first: each rank logged its messenger's state and where it was.
    for rank in (0, 1):
        assert f"conveyor: rank {rank} of 2 (inline)" in result.stderr, result.stderr
    assert result.stderr.count("time.sleep(600)") == 2, result.stderr
    ranks = {int(path.name): int(path.read_text()) for path in pids.iterdir()}
    assert len(ranks) == 2, result
    groups = set(ranks.values())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # Nothing left: neither the ranks nor any process of their groups.
        left = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if alive(pid) and (pid in ranks or _group(pid) in groups)
        ]
        if not left:
            break
        time.sleep(0.1)
    assert not left


def _group(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_prefix_marks_every_line_with_its_rank(tmp_path):
    result = conveyor_run(
        tmp_path,
        """
        import sys
        import conveyor as cv
        with cv.Messenger() as m:
            print(f"out of {m.rank}\\nsecond line of {m.rank}")
            print(f"err of {m.rank}", file=sys.stderr)
            m.wait_quiet()
        sys.stdout.write("no newline")
        """,
        "-n",
        "2",
        "--prefix",
    )
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"[{rank}] out of {rank}\n" in result.stdout
        assert f"[{rank}] second line of {rank}\n" in result.stdout
        assert f"[{rank}] err of {rank}\n" in result.stderr
    assert all(line.startswith(("[0] ", "[1] ")) for line in result.stdout.splitlines())
    assert result.stdout.count("no newline") == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "script.py"], "the following arguments are required: -n/--np"),
        (["run", "-n", "0", "script.py"], "must be at least 1"),
        (["run", "-n", "2", "no-such-script.py"], "no such file: 'no-such-script.py'"),
        (["run", "-n", "2", "--timeout", "soon", "script.py"], "'soon' is not a number"),
        (["run", "-n", "2", "--mpiexec", "/no/such/mpiexec", "script.py"], "is not an executable"),
    ],
)
def test_usage_errors(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text("")
    for variable in launch.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_inside_an_mpi_job_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PMI_RANK", "0")
    (tmp_path / "script.py").write_text("")
    with pytest.raises(SystemExit):
        main(["run", "-n", "2", str(tmp_path / "script.py")])
    assert "already a rank started by mpiexec" in capsys.readouterr().err


def test_the_finder_prefers_conveyor_mpiexec(monkeypatch, tmp_path):
    fake = tmp_path / "my-mpiexec"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CONVEYOR_MPIEXEC", str(fake))
    assert launch.find_mpiexec() == str(fake)
    assert launch.find_mpiexec("sh").endswith("/sh")  # --mpiexec wins
    monkeypatch.delenv("CONVEYOR_MPIEXEC")
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        assert launch.find_mpiexec() == beside


THREADS_SCRIPT = """
import json, os
import conveyor as cv
with cv.Messenger() as m:
    threads = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    os.write(1, f"threads {m.rank} {json.dumps(threads)}\\n".encode())  # one write: whole lines
    m.wait_quiet()
"""


def rank_threads_seen(result):
    """{rank: {variable: value}} from THREADS_SCRIPT's output."""
    assert result.returncode == 0, result.stderr
    lines = [
        line.split(" ", 2) for line in result.stdout.splitlines() if line.startswith("threads")
    ]
    return {int(rank): json.loads(seen) for _, rank, seen in lines}


def test_each_rank_gets_its_share_of_the_cores_for_blas(tmp_path, monkeypatch):
    """numpy's BLAS and OpenMP get cores // ranks threads a rank, unless the user said."""
    for variable in launch.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))
    seen = rank_threads_seen(conveyor_run(tmp_path, THREADS_SCRIPT, "-n", "2"))
    assert seen == {rank: dict.fromkeys(launch.THREAD_VARIABLES, share) for rank in (0, 1)}
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")  # the user's wins
    seen = rank_threads_seen(conveyor_run(tmp_path, THREADS_SCRIPT, "-n", "2"))
    for rank in (0, 1):
        assert seen[rank] == {
            "OMP_NUM_THREADS": share,
            "OPENBLAS_NUM_THREADS": "3",
            "MKL_NUM_THREADS": share,
        }


def test_threads_per_rank(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    assert launch.rank_threads(1) == cores
    assert launch.rank_threads(cores + 1) == 1  # more ranks than cores: never 0
    # srun's tasks run on other nodes: what the allocation gave each task, else 1.
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert launch.rank_threads(64, srun=True) == 4
    for unusable in ("", "0", "four"):
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", unusable)
        assert launch.rank_threads(64, srun=True) == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert launch.rank_threads(2, srun=True) == 1
    # Given no count, the environment is left as it was.
    assert not set(launch.THREAD_VARIABLES) & launch.mpiexec_environment({}).keys()
    assert launch.mpiexec_environment({"OMP_NUM_THREADS": "8"}, threads=2) == {
        **launch.mpiexec_environment({}),
        "OMP_NUM_THREADS": "8",
        "OPENBLAS_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }


# Stands for mpiexec: writes the environment it was started in to a JSON file.
# Records its environment, and reports each rank's status 0 as script_rank
# would (a rank that reports none did not finish).
FAKE_MPIEXEC = """#!{python}
import json, os, sys
with open({record!r}, "w") as f:
    json.dump(dict(os.environ), f)
status_dir = sys.argv[sys.argv.index("conveyor.cli.script_rank") + 1]
for rank in range(int(sys.argv[2])):
    with open(os.path.join(status_dir, str(rank)), "w") as f:
        f.write("0")
"""


def test_mpiexec_starts_with_what_open_mpi_needs(monkeypatch, tmp_path):
    """Open MPI's mpiexec starts ranks as root and beyond the cores only when told to."""
    record = tmp_path / "environment.json"
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(FAKE_MPIEXEC.format(python=sys.executable, record=str(record)))
    fake.chmod(0o755)
    (tmp_path / "script.py").write_text("")
    as_root = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    for variable in [*launch.RANK_VARIABLES, *as_root]:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PRTE_MCA_rmaps_default_mapping_policy", "core")  # the user's wins
    assert main(["run", "-n", "2", "--mpiexec", str(fake), str(tmp_path / "script.py")]) == 0
    environment = json.loads(record.read_text())
    assert environment["PRTE_MCA_rmaps_default_mapping_policy"] == "core"
    assert environment["OMPI_MCA_rmaps_base_oversubscribe"] == "1"
    if os.geteuid() == 0:
        assert as_root.items() <= environment.items()
    else:
        assert not as_root.keys() & environment.keys()


def test_one_rank_says_how_to_start_several():
    with cv.Messenger() as m:
        if m.size != 1:
            pytest.skip("needs a job of one rank")
        sender = m.sender("t")  # its send is checked natively
        for call in (
            lambda: m.send(1, "t", 1),
            lambda: m.request(1, "t", 1),
            lambda: sender.send(1, 1),
        ):
            with pytest.raises(ValueError) as info:
                call()
            message = str(info.value)
            assert "destination rank 1 is out of range 0..0: this job has 1 rank" in message
            assert "conveyor run -n 4 script.py" in message
            assert "mpiexec -n 4 python script.py" in message
