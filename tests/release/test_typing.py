"""The public API is typed: what mypy infers for a user's program, and a typed program that runs.

`make lint` checks the package, the examples and ``typing/user_program.py``
with ``mypy --strict`` from the source tree; here mypy sees the installed
package, as a user's mypy does (through its ``py.typed``).
"""

import pathlib
import sys

import pytest

from conftest import mpiexec, run_command

HERE = pathlib.Path(__file__).resolve().parent
USER_PROGRAM = HERE / "typing" / "user_program.py"

# What a user's program declares, then (expression, the type mypy reveals for it).
DECLARATIONS = """\
import asyncio
import numpy as np
import conveyor as cv

m = cv.Messenger()
msg: cv.Message
fut: cv.Future[int]
stream: cv.Stream[str]
x: cv.DistArray

@m.on("tag")
def handler(msg: cv.Message) -> int:
    return 1

async def await_answer(fut: cv.Future[int]) -> int:
    return await fut
"""
REVEALS = [
    ('m.request(0, "tag", 1)', "conveyor._future.Future[Any]"),
    ('m.request(cv.Address(0, "tag"), 1)', "conveyor._future.Future[Any]"),
    ("fut.result(timeout=1.0)", "int"),
    ("fut.exception()", "BaseException | None"),
    ("asyncio.run(await_answer(fut))", "int"),
    ('m.request_stream(0, "tag")', "conveyor._future.Stream[Any]"),
    ("next(stream)", "str"),
    ('asyncio.run(m.arequest(0, "tag"))', "Any"),
    ("msg.payload", "Any"),
    ("msg.reply_to", "conveyor._carriage.Address | None"),
    ('cv.Address(0, "tag").ref', "int | None"),
    ("m.rank", "int"),
    ("handler", "def (msg: conveyor._message.Message) -> int"),
    ('m.sender("tag")', "conveyor._sender.Sender"),
    ('m.fetch(1, "item")', "conveyor._future.Future[Any]"),
    (
        'm.order(1, cv.Move("item", to=2))',
        "conveyor._future.Future[dict[str, Any]]",
    ),
    ('m.table("t").put("key", 1)', "conveyor._future.Future[None]"),
    ('m.table("t").wait(("key", 1))', "conveyor._future.Future[Any]"),
    ("m.array(np.arange(4))", "conveyor._darray.array.DistArray"),
    ("cv.dcall(np.sqrt, x) + 1", "conveyor._darray.array.DistArray"),
    ("x.chunks[0]", "conveyor._chunks.ChunkRef"),
]
# Calls mypy must refuse: (call, the error code it reports).
ERRORS = [
    ('m.send(0, 5, "a tag is a str")', "call-overload"),
    ('m.request(cv.Address(0, "tag"), 1, 2)', "call-overload"),
    ('cv.Address("0", "tag")', "arg-type"),
    ('m.table("t").put(1.5, "a float is no key")', "arg-type"),
]


def run_mypy(tmp_path, source):
    """Run mypy --strict on `source` in `tmp_path` (no config there); return its report lines."""
    pytest.importorskip("mypy")
    program = tmp_path / "program.py"
    program.write_text(source)
    result = run_command(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", program.name],
        timeout=300,
        cwd=tmp_path,
    )
    return result.stdout.splitlines()


def test_reveal_types(tmp_path):
    lines = DECLARATIONS.splitlines()
    first = len(lines) + 1
    lines += [f"reveal_type({expression})" for expression, _ in REVEALS]
    report = run_mypy(tmp_path, "\n".join(lines) + "\n")
    revealed = {}
    for line in report:
        _, number, kind, text = line.split(":", 3)
        assert kind.strip() == "note" and "Revealed type is" in text, report
        revealed[int(number) - first] = text.split("Revealed type is ", 1)[1].strip('"')
    for index, (expression, expected) in enumerate(REVEALS):
        assert revealed.get(index) == expected, (expression, revealed.get(index), expected)


def test_type_errors(tmp_path):
    lines = DECLARATIONS.splitlines()
    first = len(lines) + 1
    lines += [call for call, _ in ERRORS]
    report = run_mypy(tmp_path, "\n".join(lines) + "\n")
    codes = {}
    for line in report:
        _, number, kind, text = line.split(":", 3)
        if kind.strip() == "error":
            codes.setdefault(int(number) - first, []).append(text.rsplit("[", 1)[1].rstrip("]"))
    for index, (call, code) in enumerate(ERRORS):
        assert code in codes.get(index, []), (call, codes.get(index), report)


def test_stubs_mirror_the_compiled_modules():
    # mypy's stubtest imports each compiled module and compares it with its
    # stub, name by name and signature by signature. mpi4py.MPI goes first,
    # as conveyor._native loads it: it loads the libmpi the extensions use.
    pytest.importorskip("mypy")
    script = "import sys, mpi4py.MPI, mypy.stubtest; sys.exit(mypy.stubtest.main())"
    command = [sys.executable, "-c", script, "--allowlist", str(HERE / "stubtest-allowlist.txt")]
    result = run_command([*command, "conveyor._core", "conveyor._mpi"], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_futures_are_generic_at_run_time():
    import conveyor as cv

    assert cv.Future[int].__origin__ is cv.Future
    assert cv.Stream[str].__origin__ is cv.Stream


@pytest.mark.parametrize("nranks", [None, 1, 3], ids=["python", "np1", "np3"])
def test_typed_user_program_runs(nranks):
    command = [sys.executable, str(USER_PROGRAM)]
    if nranks is not None:
        command = [mpiexec(), "-n", str(nranks), *command]
    result = run_command(command, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASS") == (nranks or 1), result.stdout
