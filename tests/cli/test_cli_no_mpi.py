"""``import conveyor``, ``conveyor --help`` and the launchers never initialise MPI.

Each check runs in a fresh interpreter, which fails if ``mpi4py.MPI`` was
imported by the time it is done: importing it initialises MPI.
"""

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

import conveyor
from conveyor.cli import launch

from conftest import run_command

NO_MPI = "assert 'mpi4py.MPI' not in sys.modules, 'mpi4py.MPI was imported'"


def run_main(tmp_path, argv, stdin=""):
    """Run ``conveyor.__main__.main(argv)`` in a new interpreter, then check that MPI was never imported."""
    code = textwrap.dedent(f"""
        import sys
        from conveyor.__main__ import main
        try:
            status = main({argv!r})
        except SystemExit as exc:
            status = exc.code
        {NO_MPI}
        sys.exit(status)
        """)
    env = {"CONVEYOR_SHELL_HISTORY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_environment(), **env},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=120)
    except subprocess.TimeoutExpired:
        launch.kill_group(proc)
        pytest.fail(f"conveyor {argv} hung")
    assert "mpi4py.MPI was imported" not in err, err
    return proc.returncode, out, err


def _clean_environment():
    return {k: v for k, v in os.environ.items() if k not in launch.RANK_VARIABLES}


def test_import_conveyor_and_its_version():
    result = run_command(
        [sys.executable, "-c", f"import conveyor, sys; conveyor.__version__; {NO_MPI}"]
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["run", "--help"], ["bench", "--help"], ["shell", "--help"], ["script", "--help"]],
)
def test_help(tmp_path, argv):
    status, out, err = run_main(tmp_path, argv)
    assert status == 0, err
    assert out.startswith("usage: conveyor")


def test_version(tmp_path):
    status, out, err = run_main(tmp_path, ["--version"])
    assert status == 0, err
    assert out == f"conveyor {conveyor.__version__}\n"
    assert conveyor.__version__ == importlib.metadata.version("conveyor-mpi")


def test_run_launcher(tmp_path):
    # One write per line: the ranks' output may interleave between writes.
    (tmp_path / "ok.py").write_text(
        "import conveyor as cv\nwith cv.Messenger() as m:\n"
        "    print(f'rank {m.rank} of {m.size}', flush=True)\n"
    )
    status, out, err = run_main(tmp_path, ["run", "-n", "2", "ok.py"])
    assert status == 0, err
    assert "rank 1 of 2" in out


def test_shell_and_script_launchers(tmp_path):
    status, out, err = run_main(tmp_path, ["shell", "-n", "2"], stdin="ranks\nquit\n")
    assert status == 0, err
    assert "2 ranks" in out
    (tmp_path / "s.cv").write_text("echo hello\n")
    status, out, err = run_main(tmp_path, ["script", "s.cv", "-n", "2"])
    assert status == 0, err
    assert "hello" in out


def test_the_public_names_resolve_on_first_use():
    code = textwrap.dedent(f"""
        import sys
        import conveyor as cv
        {NO_MPI}
        from conveyor import Messenger, TimeoutError
        assert issubclass(TimeoutError, cv.ConveyorError)
        assert all(getattr(cv, name) is not None for name in cv.__all__)
        assert set(cv.__all__) <= set(dir(cv))
        try:
            cv.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError("cv.NoSuchThing did not raise")
        """)
    result = run_command([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
