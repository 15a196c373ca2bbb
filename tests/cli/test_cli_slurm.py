"""``conveyor run`` inside a Slurm allocation: srun starts the ranks, unless told otherwise.

Slurm is not installed here. A stand-in ``srun`` on ``PATH`` records the
arguments it was given and starts the command with the real mpiexec, with
``-n`` from its ``--ntasks``: what is tested is the command line that
``conveyor run`` builds and what it says; the ranks still run under real
mpiexec, with real MPI.
"""

import json
import os
import shutil
import sys
import textwrap

import pytest

from conveyor.__main__ import main
from conveyor.cli import launch, run

from conftest import mpiexec, run_command

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")

# Records its arguments and working directory, then runs the command under
# mpiexec, as srun runs its tasks (its own options left out).
FAKE_SRUN = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open({record!r}, "w") as f:
    json.dump({{"argv": args, "cwd": os.getcwd()}}, f)
ntasks = args[args.index("--ntasks") + 1]
command = [a for a in args[args.index("--ntasks") + 2 :] if not a.startswith("--kill-on-bad-exit")]
os.execv({mpiexec!r}, [{mpiexec!r}, "-n", ntasks, *command])
"""

SCRIPT = """
import sys
import conveyor as cv
with cv.Messenger() as m:
    print(f"rank {m.rank} of {m.size}: {sys.argv[1:]}", flush=True)
    m.wait_quiet()
    rank = m.rank
sys.exit(3 if rank == 1 and "fail" in sys.argv else 0)
"""


@pytest.fixture
def slurm(tmp_path):
    """A directory holding the stand-in srun, and the file it records to."""
    record = tmp_path / "srun.json"
    return stand_in_srun(tmp_path, FAKE_SRUN, record=str(record)), record


def in_allocation(bin_dir, **more):
    """The environment of a job step: SLURM_JOB_ID set, `bin_dir` first on PATH."""
    path = os.pathsep.join(p for p in (bin_dir and str(bin_dir), os.defpath) if p)
    return {"SLURM_JOB_ID": "4242", "PATH": path, "CONVEYOR_LAUNCHER": "", **more}


def stand_in_srun(tmp_path, template, **fields):
    """Put an srun made of `template` (formatted with python, mpiexec and `fields`) in tmp_path/bin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text(template.format(python=sys.executable, mpiexec=mpiexec(), **fields))
    srun.chmod(0o755)
    return bin_dir


def said(result, *lines):
    """Check that ``conveyor run`` said each of `lines` on standard error."""
    for line in lines:
        assert f"conveyor run: {line}" in result.stderr, (line, result.stderr)


def conveyor_run(tmp_path, env, *argv, script=SCRIPT):
    """Write `script` to script.py and run ``conveyor run ARGV`` in tmp_path with `env`."""
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    return run_command([CONSOLE_SCRIPT, "run", *argv], timeout=90, env=env, cwd=tmp_path)


def test_inside_an_allocation_srun_starts_the_ranks(slurm, tmp_path):
    bin_dir, record = slurm
    result = conveyor_run(
        tmp_path, in_allocation(bin_dir), "-n", "3", "script.py", "a b", "-n", "7"
    )
    assert result.returncode == 0, result.stderr
    for rank in range(3):
        assert f"rank {rank} of 3: ['a b', '-n', '7']" in result.stdout
    assert (
        "conveyor run: inside Slurm job 4242: starting the ranks with srun "
        "(--launcher mpiexec or CONVEYOR_LAUNCHER=mpiexec starts them with mpiexec)"
    ) in result.stderr
    argv = json.loads(record.read_text())["argv"]
    status_dir = argv[6]
    assert argv == [
        "--ntasks",
        "3",
        "--kill-on-bad-exit=1",
        sys.executable,
        "-m",
        "conveyor.cli.script_rank",
        status_dir,
        "script.py",
        "a b",
        "-n",
        "7",
    ]
    # The ranks' statuses go to the working directory, which a cluster's nodes
    # share; it is gone afterwards.
    assert os.path.dirname(status_dir) == str(tmp_path)
    assert os.path.basename(status_dir).startswith(".conveyor-run-")
    assert not os.path.exists(status_dir)


def test_srun_tasks_get_the_cpus_of_their_task_for_blas(slurm, tmp_path, monkeypatch):
    """Under srun each rank's BLAS and OpenMP get --cpus-per-task threads, else 1."""
    bin_dir, _ = slurm
    for variable in launch.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    script = """
    import os
    import conveyor as cv
    with cv.Messenger() as m:
        seen = os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS")
        os.write(1, f"threads {m.rank} {seen[0]} {seen[1]}\\n".encode())  # one write: whole lines
        m.wait_quiet()
    """
    for cpus, expected in (("3", "3"), (None, "1")):
        env = in_allocation(bin_dir, **({"SLURM_CPUS_PER_TASK": cpus} if cpus else {}))
        result = conveyor_run(tmp_path, env, "-n", "2", "script.py", script=script)
        assert result.returncode == 0, result.stderr
        for rank in (0, 1):
            assert f"threads {rank} {expected} {expected}" in result.stdout


def test_a_failing_rank_is_named_under_srun(slurm, tmp_path):
    bin_dir, record = slurm
    result = conveyor_run(
        tmp_path, in_allocation(bin_dir), "-n", "2", "--prefix", "script.py", "fail"
    )
    assert result.returncode == 3, result.stderr
    assert "conveyor run: rank 1 failed with exit status 3" in result.stderr
    assert "conveyor run: srun exited with status" in result.stderr
    assert "[0] rank 0 of 2: ['fail']" in result.stdout
    assert "--prefix" in json.loads(record.read_text())["argv"]


@pytest.mark.parametrize(
    "options, variables",
    [
        (["--launcher", "mpiexec"], {}),
        ([], {"CONVEYOR_LAUNCHER": "mpiexec"}),
        (["--mpiexec", "MPIEXEC"], {}),
    ],
    ids=["flag", "variable", "explicit-mpiexec"],
)
def test_mpiexec_can_be_forced_inside_an_allocation(slurm, tmp_path, options, variables):
    bin_dir, record = slurm
    options = [mpiexec() if option == "MPIEXEC" else option for option in options]
    env = in_allocation(bin_dir, **variables)
    result = conveyor_run(tmp_path, env, "-n", "2", *options, "script.py")
    assert result.returncode == 0, result.stderr
    assert "rank 1 of 2" in result.stdout
    assert not record.exists()  # srun was never started
    assert "conveyor run:" not in result.stderr


def test_without_srun_on_path_mpiexec_starts_the_ranks(tmp_path):
    env = in_allocation(None)
    assert shutil.which("srun", path=env["PATH"]) is None
    result = conveyor_run(tmp_path, env, "-n", "2", "script.py")
    assert (result.returncode, "rank 1 of 2" in result.stdout) == (0, True), result.stderr
    said(result, "inside Slurm job 4242, but srun is not on PATH: starting the ranks with mpiexec")


# Runs the command under mpiexec as a child, and on SIGTERM records it and
# passes it on, as srun ends its tasks when told to stop.
FAKE_SRUN_TERM = """#!{python}
import os, signal, subprocess, sys
args = sys.argv[1:]
ntasks = args[args.index("--ntasks") + 1]
command = [a for a in args[args.index("--ntasks") + 2 :] if not a.startswith("--kill-on-bad-exit")]
child = subprocess.Popen([{mpiexec!r}, "-n", ntasks, *command])
def stop(signum, frame):
    with open({record!r}, "w") as f:
        f.write(signal.Signals(signum).name)
    child.send_signal(signum)
    try:
        child.wait(timeout=5)
    finally:
        os._exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
# As srun does, other signals (SIGUSR1: "where are you?") go on to the tasks.
signal.signal(signal.SIGUSR1, lambda signum, frame: child.send_signal(signum))
sys.exit(child.wait())
"""


def test_on_timeout_srun_is_told_to_stop_first(tmp_path):
    # srun's tasks run on other nodes, out of reach of our process group:
    # srun gets SIGTERM, which it passes on to them, before its group is killed.
    record = tmp_path / "signal"
    bin_dir = stand_in_srun(tmp_path, FAKE_SRUN_TERM, record=str(record))
    hang = """
        import time
        import conveyor as cv
        with cv.Messenger() as m:
            print(f"rank {m.rank} hangs", flush=True)
            time.sleep(600)
        """
    env = in_allocation(bin_dir)
    result = conveyor_run(tmp_path, env, "-n", "2", "--timeout", "3", "script.py", script=hang)
    assert result.returncode == 124, result.stderr
    assert (
        "conveyor run: still running after 3 s: asked every rank for its state, then killed every rank"
        in result.stderr
    )
    assert result.stderr.count("conveyor: rank ") == 2, result.stderr  # each told where it was
    assert record.read_text() == "SIGTERM"


# As FAKE_SRUN, but the ranks cannot see the status directory while they
# run: it is moved away and back, as for tasks on a node without it.
FAKE_SRUN_UNSHARED = """#!{python}
import os, subprocess, sys
args = sys.argv[1:]
ntasks = args[args.index("--ntasks") + 1]
command = [a for a in args[args.index("--ntasks") + 2 :] if not a.startswith("--kill-on-bad-exit")]
status_dir = command[command.index("conveyor.cli.script_rank") + 1]
os.rename(status_dir, status_dir + ".away")
try:
    status = subprocess.call([{mpiexec!r}, "-n", ntasks, *command])
finally:
    os.rename(status_dir + ".away", status_dir)
sys.exit(status)
"""


def test_ranks_that_cannot_report_are_listed_with_why(tmp_path):
    bin_dir = stand_in_srun(tmp_path, FAKE_SRUN_UNSHARED)
    result = conveyor_run(tmp_path, in_allocation(bin_dir), "-n", "2", "script.py")
    # The script ran and ended well on both ranks, which could not say so.
    assert "rank 1 of 2" in result.stdout and "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    said(
        result,
        "rank 0 did not finish: stopped by srun",
        "a rank reports its status in the working directory: one on a node "
        "that does not share it is listed as not finished",
    )


# -- choosing the launcher, in this process (no rank is started) --------------------


@pytest.fixture
def no_slurm(monkeypatch, tmp_path):
    """No Slurm allocation, no launcher asked for, no rank: a clean command line."""
    for variable in ("SLURM_JOB_ID", "CONVEYOR_LAUNCHER", *launch.RANK_VARIABLES):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "script.py").write_text("")
    return monkeypatch


def chosen(argv):
    """What `run.choose_launcher` picks for ``conveyor run ARGV``: (program's name, srun?)."""
    from conveyor.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["run", *argv, "script.py"])
    path, srun = run.choose_launcher(parser, args)
    return os.path.basename(path), srun


def test_the_choice_of_launcher(no_slurm, tmp_path, capsys):
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n")
    srun.chmod(0o755)
    no_slurm.setenv("PATH", os.pathsep.join([str(tmp_path), os.environ["PATH"]]))
    assert chosen(["-n", "2"]) == ("mpiexec", False)  # srun on PATH, but no allocation
    no_slurm.setenv("SLURM_JOB_ID", "7")
    assert chosen(["-n", "2"]) == ("srun", True)
    assert "inside Slurm job 7: starting the ranks with srun" in capsys.readouterr().err
    assert chosen(["-n", "2", "--launcher", "srun"]) == ("srun", True)
    assert chosen(["-n", "2", "--launcher", "mpiexec"]) == ("mpiexec", False)
    assert chosen(["-n", "2", "--mpiexec", "sh"]) == ("sh", False)
    no_slurm.setenv("CONVEYOR_LAUNCHER", "mpiexec")
    assert chosen(["-n", "2"]) == ("mpiexec", False)
    assert chosen(["-n", "2", "--launcher", "auto"]) == ("srun", True)  # the flag wins
    assert capsys.readouterr().err.count("starting the ranks with srun") == 1  # auto only


def test_launch_commands():
    rank = ["python", "-m", "conveyor.cli.script_rank", "d", "s.py"]
    assert run.launch_command("/bin/srun", True, 64, rank) == [
        "/bin/srun",
        "--ntasks",
        "64",
        "--kill-on-bad-exit=1",
        *rank,
    ]
    assert run.launch_command("mpiexec", False, 64, rank) == ["mpiexec", "-n", "64", *rank]


@pytest.mark.parametrize(
    "argv, variables, message",
    [
        (["--launcher", "srun"], {}, "this is not a Slurm allocation (no SLURM_JOB_ID)"),
        (
            ["--launcher", "srun"],
            {"SLURM_JOB_ID": "7"},
            "the launcher is srun, but srun is not on PATH",
        ),
        (["--launcher", "ssh"], {}, "argument --launcher: invalid choice: 'ssh'"),
        (
            [],
            {"CONVEYOR_LAUNCHER": "ssh"},
            "CONVEYOR_LAUNCHER='ssh': say 'auto', 'mpiexec', 'srun'",
        ),
        (
            ["--launcher", "srun", "--mpiexec", "sh"],
            {"SLURM_JOB_ID": "7"},
            "--mpiexec names an mpiexec, but the launcher is srun",
        ),
    ],
)
def test_launcher_usage_errors(no_slurm, capsys, argv, variables, message):
    no_slurm.setenv("PATH", os.defpath)  # no srun
    for name, value in variables.items():
        no_slurm.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["run", "-n", "2", *argv, "script.py"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_task_of_srun_knows_its_rank(no_slurm):
    assert launch.rank_of_task() is None
    no_slurm.setenv("SLURM_PROCID", "5")
    assert launch.rank_of_task() == 5
    assert not launch.inside_mpi_job()  # an sbatch script has SLURM_PROCID=0 too
    no_slurm.setenv("PMI_RANK", "2")  # mpiexec's inside an allocation: its own wins
    assert launch.rank_of_task() == 2
