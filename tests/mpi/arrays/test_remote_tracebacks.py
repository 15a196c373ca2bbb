"""Remote tracebacks name the user's own file, line and source text.

Functions given to dcall and dmap travel by value (they may be lambdas or
live in ``__main__``); the traceback of an error they raise on another rank
must still point into the user's script, as a local one would. The script
is run as ``__main__`` under mpiexec, as users run theirs.
"""

import re
import sys
import textwrap

import pytest

from conftest import mpiexec, run_command

SCRIPT = textwrap.dedent("""\
    import numpy as np

    import conveyor as cv


    def module_level(a):
        raise LookupError("from module_level")  # marker: module level


    def make_closure(limit):
        def closure(a):
            if a.max() >= limit:
                raise KeyError("from closure")  # marker: closure
            return a
        return closure


    with cv.Messenger() as m:
        with m.driver(0) as d:
            if d is not None:
                owner = 1 % m.size
                x = d.array(np.arange(6), chunks=1, ranks=[owner])
                calls = {
                    "module level": lambda: d.dcall(module_level, x).collect(),
                    "closure": lambda: d.dcall(make_closure(0), x).collect(),
                    "lambda": lambda: d.dmap(
                        lambda a: a[10 ** 9], x).collect(),  # marker: lambda
                }
                for name, call in calls.items():
                    try:
                        call()
                    except cv.RemoteError as error:
                        assert error.rank == owner, error.rank
                        print(f"=== {name}")
                        print(error.remote_traceback)
                    else:
                        raise AssertionError(f"{name}: no error")
""")


def marked_line(marker):
    lines = SCRIPT.splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.endswith(f"# marker: {marker}"))


@pytest.mark.parametrize("n", [1, 2])
def test_tracebacks_show_the_users_file_line_and_source(tmp_path, n):
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    result = run_command([mpiexec(), "-n", str(n), sys.executable, str(script)], timeout=120)
    assert result.returncode == 0, result.stderr
    sections = dict(re.findall(r"=== ([^\n]+)\n(.*?)(?=\n=== |\Z)", result.stdout, re.S))
    assert sorted(sections) == ["closure", "lambda", "module level"], result.stdout
    for name, marker in (
        ("module level", "module level"),
        ("closure", "closure"),
        ("lambda", "lambda"),
    ):
        text = sections[name]
        line = marked_line(marker)
        assert f'File "{script}", line {line}' in text, text
        assert f"# marker: {marker}" in text, text  # the source line itself
        assert "<dynamic-code>" not in text
