"""The tutorial's programs print what its pages show.

Each ``docs/tutorial/*.out`` is a transcript a page includes: the command
(``$ conveyor run -n 4 hello.py``), then what it prints. The program is
run with that command, from the folder that holds it (docs/tutorial, or
examples for the DistArray step), and must print those lines.
"""

import os
import shlex
import sys

import pytest

from conftest import EXAMPLES, ROOT, run_command

TUTORIAL = ROOT / "docs" / "tutorial"
CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")


@pytest.mark.parametrize("transcript", sorted(TUTORIAL.glob("*.out")), ids=lambda p: p.stem)
def test_the_program_prints_what_its_page_shows(transcript):
    command, *expected = transcript.read_text().splitlines()
    program, *args = shlex.split(command.removeprefix("$ "))
    assert program == "conveyor", command
    script = next(arg for arg in args if arg.endswith(".py"))
    folder = TUTORIAL if (TUTORIAL / script).exists() else EXAMPLES
    # Buffered output: unbuffered, print writes a line's text and its newline
    # apart, and the lines of different ranks could interleave mid-line.
    result = run_command(
        [CONSOLE_SCRIPT, *args], timeout=120, cwd=folder, env={"PYTHONUNBUFFERED": ""}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The ranks print in any order; the transcripts list their lines sorted.
    assert sorted(result.stdout.splitlines()) == sorted(expected), result.stdout
