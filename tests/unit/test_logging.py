"""Everything the package reports goes through ``logging.getLogger("conveyor")``.

Read from the source: no module of the library prints or writes to
stdout/stderr (the command line and the benchmarks, whose output is for
their user, are programs, not the library), and Python warnings are raised
only where the caller made a mistake (the array layer's recycling and
numpy's degrees-of-freedom warning, which a caller of numpy would get).
"""

import ast
import pathlib

import conveyor

PACKAGE = pathlib.Path(conveyor.__file__).resolve().parent
PROGRAMS = ("cli", "_bench")  # their output is their user's
# The modules that may warnings.warn: R's RecyclingWarning of dcall (also
# from a task that planned its alignment, see ChunkLayer._planned), numpy's
# RuntimeWarnings of reductions.
CALLERS_MISTAKES = {"_darray/calls.py", "_darray/reductions.py", "_chunks.py"}


def library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] not in PROGRAMS:
            yield relative.as_posix(), ast.parse(path.read_text(), str(path))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_library_never_prints():
    found = [
        f"{name}:{node.lineno}: {function}"
        for name, tree in library_modules()
        for node, function in calls(tree)
        if function in ("print", "sys.stdout.write", "sys.stderr.write")
    ]
    assert found == []


def test_python_warnings_only_for_the_callers_mistakes():
    found = [
        f"{name}:{node.lineno}"
        for name, tree in library_modules()
        for node, function in calls(tree)
        if function == "warnings.warn" and name not in CALLERS_MISTAKES
    ]
    assert found == []


def test_the_modules_that_report_use_the_conveyor_logger():
    from conveyor._diagnostics import logger

    assert logger.name == "conveyor"
    loggers = {
        name
        for name, tree in library_modules()
        for node, function in calls(tree)
        if function == "logging.getLogger"
    }
    assert loggers == {"_diagnostics.py"}  # one logger, imported by the others
