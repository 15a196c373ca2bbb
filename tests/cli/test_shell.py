"""``conveyor shell`` and ``conveyor script``: the command language and its sessions.

The parser is tested in-process, without MPI. The interpreter runs
in-process on a job of one rank, then for real: scripts under ``mpiexec -n
3`` (``python -m conveyor`` and the console script), and interactive
sessions driven through a pseudo-terminal. Every subprocess runs in its own
session under a timeout; a hang fails the test.
"""

import errno
import fcntl
import io
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

import conveyor as cv
from conveyor.__main__ import main
from conveyor.cli import frontend, interpreter, launch, service
from conveyor.cli.grammar import COMMANDS, ShellError, parse

from conftest import (
    ROOT,
    mpiexec,
    mpiexec_is_open_mpi,
    require_end_of_input,
    without_exit_report,
)

CONSOLE_SCRIPT = os.path.join(os.path.dirname(sys.executable), "conveyor")
DOCS = ROOT / "docs"
TIMEOUT = 60


# -- the parser, without MPI ----------------------------------------------------


@pytest.mark.parametrize(
    "line, name, args",
    [
        ("put 1 kmers/42 a.npy", "put", {"rank": 1, "name": "kmers/42", "file": "a.npy"}),
        ("get 2 kmers/42", "get", {"rank": 2, "name": "kmers/42"}),
        ("get 2 kmers/42 out.npy", "get", {"rank": 2, "name": "kmers/42", "file": "out.npy"}),
        ("copy kmers/42 from 1 to 2", "copy", {"name": "kmers/42", "src": 1, "dests": [2]}),
        (
            "copy k from 1 to 2,3,0 as k2",
            "copy",
            {"name": "k", "src": 1, "dests": [2, 3, 0], "newname": "k2"},
        ),
        (
            "COPY k FROM 1 TO 2 AS k2",
            "copy",
            {"name": "k", "src": 1, "dests": [2], "newname": "k2"},
        ),
        ("move k from 3 to 0", "move", {"name": "k", "src": 3, "dests": [0]}),
        ("rm 0 'my item'", "rm", {"rank": 0, "name": "my item"}),
        ('rm 0 "a # b"  # a comment', "rm", {"rank": 0, "name": "a # b"}),
        ("rm 1 sample#1 # only this is a comment", "rm", {"rank": 1, "name": "sample#1"}),
        ("rm 1 'x'#y#z", "rm", {"rank": 1, "name": "x#y#z"}),
        ("rm 1 \\#x", "rm", {"rank": 1, "name": "#x"}),
        ('rm 1 "a\\"#b" #', "rm", {"rank": 1, "name": 'a"#b'}),
        ("echo '#' \"#\" #", "echo", {"text": "# #"}),
        ("echo a\\ b#c", "echo", {"text": "a b#c"}),
        ("ls", "ls", {}),
        ("ls 3", "ls", {"where": [3]}),
        ("ls all", "ls", {"where": [0, 1, 2, 3]}),
        ("stats ALL", "stats", {"where": [0, 1, 2, 3]}),
        ("capacity 1", "capacity", {"rank": 1}),
        ("capacity 1 64k", "capacity", {"rank": 1, "bytes": 65536}),
        ("capacity 1 2GiB", "capacity", {"rank": 1, "bytes": 2 << 30}),
        ("capacity 1 none", "capacity", {"rank": 1, "bytes": None}),
        ("ranks", "ranks", {}),
        ("echo", "echo", {}),
        ("echo  hello   'big  world' ", "echo", {"text": "hello big  world"}),
        ("help", "help", {}),
        ("help cp", None, None),  # an unknown command to explain: error, below
        ("help EXIT", "help", {"command": "quit"}),
        ("quit", "quit", {}),
        ("exit", "quit", {}),
        ("  ls\t0 \n", "ls", {"where": [0]}),
    ],
)
def test_parse_good_lines(line, name, args):
    if name is None:
        with pytest.raises(ShellError, match="help: COMMAND: unknown command 'cp'"):
            parse(line, 4)
        return
    call = parse(line, 4)
    assert call.command.name == name
    assert call.args == args


@pytest.mark.parametrize("line", ["", "   ", "# only a comment", "\n", "  #ls 1", "\t# 'x"])
def test_parse_blank_lines(line):
    assert parse(line, 4) is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("frobnicate 1", "unknown command 'frobnicate' (type 'help' for the list)"),
        ("lst", "unknown command 'lst'; did you mean 'ls'?"),
        ("co from 1 to 2", "unknown command 'co'; did you mean 'copy'?"),
        ("e", "unknown command 'e'; did you mean 'echo' or 'exit'?"),
        ("put 1 name", "put: missing FILE.npy (usage: put RANK NAME FILE.npy)"),
        ("put", "put: missing RANK (usage: put RANK NAME FILE.npy)"),
        ("put 1 n f.npy extra", "put: unexpected 'extra' (usage: put RANK NAME FILE.npy)"),
        ("put 4 n f.npy", "put: RANK: rank 4 is out of range 0..3"),
        ("put -1 n f.npy", "put: RANK: '-1' is not a rank (an integer in 0..3)"),
        ("put one n f.npy", "put: RANK: 'one' is not a rank (an integer in 0..3)"),
        ("put 1.0 n f.npy", "put: RANK: '1.0' is not a rank"),
        ("put 1 '' f.npy", "put: NAME: an item name must not be empty"),
        (
            "copy k from 1 2",
            "copy: expected 'to', not '2' (usage: copy NAME from SRC to "
            "DEST[,DEST...] [as NEWNAME])",
        ),
        ("copy k from 1 to", "copy: missing DEST[,DEST...]"),
        ("copy k from 1 to 2 as", "copy: missing NEWNAME"),
        ("copy k from 1 to 2 into k2", "copy: unexpected 'into'"),
        ("copy k 1 to 2", "copy: expected 'from', not '1'"),
        ("copy k from 1 to 2,2", "copy: DEST[,DEST...]: rank 2 is given twice in '2,2'"),
        ("copy k from 1 to 2,", "copy: DEST[,DEST...]: '2,' is not a list of ranks"),
        ("move k from 1 to 9", "move: DEST[,DEST...]: rank 9 is out of range 0..3"),
        ("ls 1 2", "ls: unexpected '2' (usage: ls [RANK|all])"),
        ("ls everything", "ls: RANK|all: 'everything' is not a rank"),
        ("capacity 1 lots", "capacity: BYTES|none: 'lots' is not a number of bytes"),
        ("ranks 1", "ranks: unexpected '1' (usage: ranks)"),
        ("quit now", "quit: unexpected 'now' (usage: quit)"),
        ("echo 'unclosed", "cannot split the line: no closing quotation"),
    ],
)
def test_parse_bad_lines(line, message):
    with pytest.raises(ShellError) as info:
        parse(line, 4)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_usage_is_made_from_the_grammar():
    usages = {command.name: command.usage for command in COMMANDS}
    assert usages == {
        "put": "put RANK NAME FILE.npy",
        "get": "get RANK NAME [FILE.npy]",
        "copy": "copy NAME from SRC to DEST[,DEST...] [as NEWNAME]",
        "move": "move NAME from SRC to DEST[,DEST...] [as NEWNAME]",
        "rm": "rm RANK NAME",
        "ls": "ls [RANK|all]",
        "stats": "stats [RANK|all]",
        "capacity": "capacity RANK [BYTES|none]",
        "ranks": "ranks",
        "echo": "echo [TEXT...]",
        "help": "help [COMMAND]",
        "quit": "quit",
    }


def test_docs_show_every_command():
    text = (DOCS / "shell.rst").read_text()
    for command in COMMANDS:
        assert f"``{command.usage}``" in text, command.usage
    assert "shell" in (DOCS / "index.rst").read_text().split("toctree")[1]


def test_parse_never_evaluates():
    # Python in a line is only words: the parser has no way to run it.
    with pytest.raises(ShellError, match="unknown command"):
        parse("__import__('os').system('true')", 2)
    with pytest.raises(ShellError, match=r"ls: RANK\|all: '__import__"):
        parse("ls __import__('os')", 2)


# -- the command line, in-process ------------------------------------------------


def test_dash_n_inside_an_mpi_job_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("PMI_RANK", "0")
    with pytest.raises(SystemExit) as info:
        main(["shell", "-n", "2"])
    assert info.value.code == 2
    assert "already a rank started by mpiexec" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shell", "-n", "0"], "must be at least 1"),
        (["shell", "--mpiexec", "mpiexec"], "--mpiexec: only with -n N"),
        (["script", "f.cv", "--timeout", "soon"], "'soon' is not a number"),
        (["script", "no-such-script.cv", "-n", "2"], "no such file: 'no-such-script.cv'"),
        (["shell", "-n", "2", "--mpiexec", "/no/such/mpiexec"], "is not an executable"),
    ],
)
def test_usage_errors(argv, message, capsys, monkeypatch):
    for variable in launch.RANK_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# -- the interpreter in-process, on a job of one rank ---------------------------


@pytest.fixture
def shell():
    out, err = io.StringIO(), io.StringIO()
    with cv.Messenger() as m:
        service.Service(m)
        yield interpreter.Shell(m, out=out, err=err, timeout=10)


def run_lines(shell, *lines):
    """Run `lines`; return (stdout, stderr) they produced and whether each succeeded."""
    start_out, start_err = shell.out.tell(), shell.err.tell()
    ok = [shell.execute(line) for line in lines]
    shell.out.seek(start_out)
    shell.err.seek(start_err)
    return shell.out.read(), shell.err.read(), ok


def test_one_rank_session(shell, tmp_path):
    data = np.arange(12, dtype=np.int32).reshape(3, 4)
    np.save(tmp_path / "a.npy", data)
    out, err, ok = run_lines(
        shell,
        f"put 0 a {tmp_path / 'a.npy'}",
        "copy a from 0 to 0 as 'b c'",
        "move a from 0 to 0 as d",
        "ls",
        f"get 0 'b c' {tmp_path / 'back'}",
        "get 0 d",
        "rm 0 d",
        "ls 0",
    )
    assert err == "" and all(ok)
    lines = out.splitlines()
    assert lines[0] == "put a at rank 0: int32 (3, 4), 48 bytes"
    assert lines[1] == "copied a from rank 0 to rank 0 as 'b c' (48 bytes)"
    assert lines[2] == "moved a from rank 0 to rank 0 as d (48 bytes)"
    assert lines[3] == "rank 0: 2 items, 96 bytes"
    assert re.fullmatch(r"  'b c'\s+int32\s+\(3, 4\)\s+48 bytes", lines[4])
    assert re.fullmatch(r"  d\s+int32\s+\(3, 4\)\s+48 bytes", lines[5])
    saved = tmp_path / "back.npy"
    assert lines[6] == f"saved 'b c' from rank 0 (int32 (3, 4), 48 bytes) to {saved}"
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), data)
    assert lines[7] == "d at rank 0: int32 (3, 4), 48 bytes"
    assert "[[ 0  1  2  3]" in out
    assert "removed d at rank 0" in out
    assert out.endswith("rank 0: 1 item, 48 bytes\n  'b c'  int32  (3, 4)  48 bytes\n")
    assert shell.m.store.keys() == {"b c"}


def test_one_rank_errors_go_on(shell, tmp_path):
    np.save(tmp_path / "objects.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", a=np.arange(3))
    (tmp_path / "text.npy").write_text("not numpy\n")
    np.save(tmp_path / "big.npy", np.zeros(100))
    out, err, ok = run_lines(
        shell,
        "bogus",
        "put 0 x " + str(tmp_path / "missing.npy"),
        "put 0 x " + str(tmp_path / "objects.npy"),
        "put 0 x " + str(tmp_path / "archive.npz"),
        "put 0 x " + str(tmp_path / "text.npy"),
        "get 0 nothing",
        "rm 0 nothing",
        "copy nothing from 0 to 0 as y",
        "capacity 0 100",
        "put 0 big " + str(tmp_path / "big.npy"),
        "capacity 0 none",
        "echo still here",
    )
    assert ok == [False] * 8 + [True, False, True, True]
    errors = err.splitlines()
    assert len(errors) == 9
    assert all(line.startswith("error: ") for line in errors)
    assert "unknown command 'bogus'" in errors[0]
    assert "put: cannot read" in errors[1] and "No such file or directory" in errors[1]
    assert "Object arrays cannot be loaded when allow_pickle=False" in errors[2]
    assert "is an .npz archive" in errors[3]
    assert "text.npy' is not a .npy file" in errors[4]
    assert errors[5] == "error: get: rank 0 has no item 'nothing'"
    assert errors[6] == "error: rm: rank 0 has no item 'nothing'"
    assert errors[7] == "error: copy: rank 0 has no item 'nothing'"
    assert errors[8].startswith("error: put: rank 0: StoreFullError: storing 'big' (800 bytes)")
    assert "rank 0: capacity 100 bytes, 0 bytes held" in out
    assert out.endswith("still here\n")
    assert shell.failures == 9


def test_one_rank_refuses_a_move_that_would_lose_the_item(shell):
    shell.m.store.put("k", np.arange(3))
    out, err, ok = run_lines(shell, "move k from 0 to 0")
    assert ok == [False]
    assert "moving it there needs 'as NEWNAME'" in err
    assert "k" in shell.m.store


def test_one_rank_help(shell):
    out, err, ok = run_lines(shell, "help", "help copy", "help exit")
    assert all(ok) and err == ""
    for command in COMMANDS:
        assert re.search(rf"^  {command.name}\s+{re.escape(command.summary)}$", out, re.M)
    assert "usage: copy NAME from SRC to DEST[,DEST...] [as NEWNAME]" in out
    assert "usage: quit\n" in out and "also: exit" in out


def test_script_stops_on_error_and_reports_line_numbers(shell):
    status = shell.run_script(
        ["echo a\n", "# comment\n", "nope\n", "echo b\n"], "s.cv", echo=True, stop_on_error=True
    )
    assert status == 1
    shell.out.seek(0)
    shell.err.seek(0)
    assert shell.out.read() == "conveyor[1 rank]> echo a\na\nconveyor[1 rank]> nope\n"
    assert shell.err.read() == "error: s.cv:3: unknown command 'nope' (type 'help' for the list)\n"


def test_move_to_the_holding_rank_keeps_the_item():
    """A Move whose destination is the rank that holds the item does not lose it.

    (Found while writing the shell: ``ItemService._complete`` deleted the
    item after storing it again, and reported success; fixed in 881b411.
    The shell refuses such a move anyway, see above.)
    """
    with cv.Messenger() as m:
        m.store.put("x", np.arange(3))
        answer = m.order(m.rank, cv.Move("x", to=m.rank)).result(timeout=10)
        assert answer["to"] == [m.rank]
        assert "x" in m.store, "the move reported success and deleted the only copy"


# -- scripts under mpiexec -------------------------------------------------------


def run_command(cmd, cwd, stdin=None, timeout=TIMEOUT, env=None):
    """Run `cmd` in its own session; return (status, stdout, stderr); fail on a hang.

    It runs in the environment ``conveyor run`` starts mpiexec in.
    """
    full_env = launch.mpiexec_environment(
        dict(os.environ, CONVEYOR_SHELL_HISTORY="", **(env or {}))
    )
    for variable in launch.RANK_VARIABLES:
        full_env.pop(variable, None)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd} hung (killed after {timeout} s)\n--- stdout\n{out}\n--- stderr\n{err}")
    return proc.returncode, out, err


SCRIPT = """\
# put, copy, move, list, remove, with mistakes along the way
echo start
put 1 kmers/42 kmers.npy
put 1 big big.npy
copy kmers/42 from 1 to 2
frobnicate 3
copy big from 1 to 0,2 as big2
put 3 x kmers.npy
ls
move kmers/42 from 2 to 0
copy kmers/42 from 1
get 2 kmers/42
get 0 kmers/42 back.npy
get 2 big2 big_back.npy
rm 1 kmers/42
rm 1 kmers/42
capacity 2 1k
copy big from 1 to 2
ls all
stats 2
echo end
quit
echo after quit
"""


def check_script_run(status, out, err, cwd, kmers, big):
    errors = without_exit_report(err).splitlines()
    assert errors == [
        "error: s.cv:6: unknown command 'frobnicate' (type 'help' for the list)",
        "error: s.cv:8: put: RANK: rank 3 is out of range 0..2",
        "error: s.cv:11: copy: missing 'to' (usage: copy NAME from SRC to DEST[,DEST...] "
        "[as NEWNAME])",
        "error: s.cv:12: get: rank 2 has no item 'kmers/42'",
        "error: s.cv:16: rm: rank 1 has no item 'kmers/42'",
        "error: s.cv:18: copy: rank 2: StoreFullError: storing 'big' (80000 bytes) would "
        "exceed the store's capacity of 1024 bytes (80000 held)",
    ], err
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "start" and lines[-1] == "end"
    assert "after quit" not in out
    assert "put kmers/42 at rank 1: uint64 (1000,), 8000 bytes" in lines
    assert "put big at rank 1: float64 (100, 100), 80000 bytes" in lines
    assert "copied kmers/42 from rank 1 to rank 2 (8000 bytes)" in lines
    assert "copied big from rank 1 to ranks 0,2 as big2 (80000 bytes)" in lines
    assert "moved kmers/42 from rank 2 to rank 0 (8000 bytes)" in lines
    assert "removed kmers/42 at rank 1" in lines
    assert "rank 2: capacity 1024 bytes, 80000 bytes held" in lines
    # The first ls, then the second: what each rank holds.
    listings = re.findall(r"^(rank \d: (?:no items|\d+ items?).*\n(?:  .*\n)*)", out, re.M)
    assert len(listings) == 6
    first, second = listings[:3], listings[3:6]
    assert first[0] == "rank 0: 1 item, 80000 bytes\n  big2  float64  (100, 100)  80000 bytes\n"
    assert first[1].startswith("rank 1: 2 items, 88000 bytes\n")
    assert re.search(r"  big\s+float64  \(100, 100\)  80000 bytes\n", first[1])
    assert re.search(r"  kmers/42\s+uint64\s+\(1000,\)\s+8000 bytes\n", first[1])
    assert first[2].startswith("rank 2: 2 items, 88000 bytes\n")
    assert second[0].startswith("rank 0: 2 items, 88000 bytes\n")
    assert second[1] == "rank 1: 1 item, 80000 bytes\n  big  float64  (100, 100)  80000 bytes\n"
    assert second[2] == (
        "rank 2: 1 item, 80000 bytes (capacity 1024 bytes)\n"
        "  big2  float64  (100, 100)  80000 bytes\n"
    )
    # stats 2: one column of counters.
    assert re.search(r"^counter\s+rank 2$", out, re.M)
    assert re.search(r"^store_items\s+1$", out, re.M)
    assert re.search(r"^store_bytes\s+80000$", out, re.M)
    # The saved files hold what was put; the 80 KB array went zero-copy.
    np.testing.assert_array_equal(np.load(cwd / "back.npy"), kmers)
    np.testing.assert_array_equal(np.load(cwd / "big_back.npy"), big)


def write_inputs(tmp_path):
    kmers = np.random.default_rng(1).integers(0, 2**63, 1000, dtype=np.uint64)
    big = np.random.default_rng(2).random((100, 100))
    np.save(tmp_path / "kmers.npy", kmers)
    np.save(tmp_path / "big.npy", big)
    (tmp_path / "s.cv").write_text(SCRIPT)
    return kmers, big


def test_script_under_mpiexec(tmp_path):
    kmers, big = write_inputs(tmp_path)
    status, out, err = run_command(
        [mpiexec(), "-n", "3", sys.executable, "-m", "conveyor", "script", "s.cv"], tmp_path
    )
    check_script_run(status, out, err, tmp_path, kmers, big)


def test_console_script_launches_the_ranks(tmp_path):
    kmers, big = write_inputs(tmp_path)
    status, out, err = run_command([CONSOLE_SCRIPT, "script", "s.cv", "-n", "3"], tmp_path)
    check_script_run(status, out, err, tmp_path, kmers, big)


def test_script_echo_stop_on_error_and_stdin(tmp_path):
    require_end_of_input()
    script = "echo one\nls 1\nrm 1 missing\necho never\n"
    status, out, err = run_command(
        [mpiexec(), "-n", "2", CONSOLE_SCRIPT, "script", "-", "--echo", "--stop-on-error"],
        tmp_path,
        stdin=script,
    )
    assert status == 1, err
    assert out == (
        "conveyor[2 ranks]> echo one\none\nconveyor[2 ranks]> ls 1\n"
        "rank 1: no items\nconveyor[2 ranks]> rm 1 missing\n"
    )
    assert without_exit_report(err) == "error: <stdin>:3: rm: rank 1 has no item 'missing'\n"


def test_script_without_errors_exits_0_and_unreadable_script_exits_2(tmp_path):
    (tmp_path / "ok.cv").write_text("echo fine\nranks\n")
    status, out, err = run_command(
        [mpiexec(), "-n", "2", sys.executable, "-m", "conveyor", "script", "ok.cv"], tmp_path
    )
    assert (status, err) == (0, "")
    assert out.startswith("fine\n2 ranks\n  rank 0  host ")
    status, out, err = run_command(
        [mpiexec(), "-n", "2", sys.executable, "-m", "conveyor", "script", "nope.cv"], tmp_path
    )
    assert status == 2
    assert "error: cannot read the script 'nope.cv': No such file or directory" in err


def test_shell_reads_piped_commands_until_end_of_input(tmp_path):
    require_end_of_input()
    status, out, err = run_command(
        [mpiexec(), "-n", "2", sys.executable, "-m", "conveyor", "shell"],
        tmp_path,
        stdin="ls\nbogus\necho ok\n",
    )
    assert status == 0, err
    # Errors are on standard output, in order with the prompts.
    assert out == (
        "conveyor[2 ranks]> rank 0: no items\nrank 1: no items\n"
        "conveyor[2 ranks]> error: unknown command 'bogus' (type 'help' for the list)\n"
        "conveyor[2 ranks]> ok\nconveyor[2 ranks]> \n"
    )


# -- interactive sessions through a pseudo-terminal ------------------------------


class Terminal:
    """A command run on a new pseudo-terminal, its controlling terminal."""

    def __init__(self, cmd, cwd, env, sigint=signal.SIG_DFL):
        master, slave = os.openpty()
        full_env = launch.mpiexec_environment(dict(os.environ, TERM="dumb", **env))
        for variable in launch.RANK_VARIABLES:
            full_env.pop(variable, None)

        def take_terminal():  # in the child, after setsid
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # As from a terminal's shell, whatever started pytest (a
            # background job inherits SIGINT ignored), unless told otherwise.
            signal.signal(signal.SIGINT, sigint)
            signal.signal(signal.SIGQUIT, signal.SIG_DFL)

        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=full_env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=take_terminal,
        )
        os.close(slave)
        self.fd = master
        self.seen = b""  # everything read
        self.pending = b""  # read, not yet matched
        self.deadline = time.monotonic() + TIMEOUT

    def _read(self, wait):
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:  # EIO: every process closed the terminal
            if exc.errno != errno.EIO:
                raise
            data = b""
        self.seen += data
        self.pending += data
        return bool(data)

    def expect(self, text):
        """Wait for `text`; return what came before it and it, as str (newlines as \\n)."""
        found = self.wait_for(text, self.deadline - time.monotonic())
        if found is None:
            self.fail(f"no {text!r}")
        return found

    def wait_for(self, text, seconds):
        """`expect` for at most `seconds`; None if `text` did not come."""
        pattern = text.replace("\n", "\r\n").encode()  # the terminal's newlines
        until = min(self.deadline, time.monotonic() + seconds)
        while pattern not in self.pending:
            if time.monotonic() > until or not self._read(0.1):
                return None
        before, _, self.pending = self.pending.partition(pattern)
        return (before + pattern).decode().replace("\r\n", "\n")

    def send(self, data):
        os.write(self.fd, data.encode())

    def finish(self):
        """Read to the end; return the exit status."""
        while self._read(0.1):
            if time.monotonic() > self.deadline:
                self.fail("the session did not end")
        try:
            return self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.fail("the process did not exit")

    def fail(self, why):
        self.close()
        pytest.fail(f"{why}; the terminal showed:\n{self.seen.decode(errors='replace')}")

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.fd)


@pytest.fixture
def terminal():
    terminals = []

    def start(cmd, cwd, sigint=signal.SIG_DFL, **env):
        terminals.append(Terminal(cmd, cwd, env, sigint))
        return terminals[-1]

    yield start
    for t in terminals:
        if t.fd is not None:
            try:
                t.close()
            except OSError:
                pass


def test_interactive_shell_with_its_own_ranks(terminal, tmp_path):
    """``conveyor shell -n 3``: readline at the front, Ctrl-C cancels lines, Ctrl-D quits."""
    np.save(tmp_path / "a.npy", np.arange(5, dtype=np.int16))
    history = tmp_path / "history"
    t = terminal(
        [CONSOLE_SCRIPT, "shell", "-n", "3"], tmp_path, CONVEYOR_SHELL_HISTORY=str(history)
    )
    prompt = "conveyor[3 ranks]> "
    t.expect(prompt)
    t.send("put 2 a a.npy\n")
    assert "put a at rank 2: int16 (5,), 10 bytes\n" in t.expect(prompt)
    t.send("copy a from 2 to 0,1\n")
    assert "copied a from rank 2 to ranks 0,1 (10 bytes)\n" in t.expect(prompt)
    t.send("bogus 1\n")
    assert "error: unknown command 'bogus' (type 'help' for the list)\n" in t.expect(prompt)
    t.send("rm 1 a")
    t.expect("rm 1 a")
    time.sleep(0.2)  # a person's pause
    t.send("\x03")  # Ctrl-C: the line is dropped, the session goes on
    if not t.wait_for(prompt, 5):
        # CPython's readline notices a SIGINT only while it waits for a key
        # in select(), not in the instant it spends on one (as in the Python
        # REPL): only a loaded machine typing for us can hit that instant.
        # Then it needs the next key; a second Ctrl-C is as harmless.
        t.send("\x03")
        t.expect(prompt)
    t.send("echo synced\n")
    t.expect("synced\n" + prompt)  # past any second prompt
    t.send("ls\n")
    listing = t.expect(prompt)
    assert "rank 0: 1 item, 10 bytes\n" in listing
    assert "rank 1: 1 item, 10 bytes\n" in listing  # the cancelled rm did not run
    t.send("get 0 a\n")
    assert "a at rank 0: int16 (5,), 10 bytes\n[0 1 2 3 4]\n" in t.expect(prompt)
    t.send("\x04")  # Ctrl-D: the end of the input ends the session on every rank
    assert t.finish() == 0
    assert "rank" not in t.pending.decode()  # nothing after the last prompt but a newline
    saved = history.read_text().splitlines()
    assert saved[-4:] == ["bogus 1", "echo synced", "ls", "get 0 a"]


def test_interactive_shell_under_mpiexec(terminal, tmp_path):
    """``mpiexec -n 2 conveyor shell``: rank 0 prompts, the first Ctrl-C cancels a line."""
    # Open MPI's mpiexec holds back a line until its end (a prompt has
    # none) unless told to pass output on as it comes.
    raw = ["--output", ":raw"] if mpiexec_is_open_mpi() else []
    t = terminal(
        [mpiexec(), *raw, "-n", "2", sys.executable, "-m", "conveyor", "shell"],
        tmp_path,
        CONVEYOR_SHELL_HISTORY="",
    )
    prompt = "conveyor[2 ranks]> "
    t.expect(prompt)
    t.send("ranks\n")
    assert re.search(
        r"2 ranks\n  rank 0  host \S+  pid \d+  0 items  0 bytes\n"
        r"  rank 1  host \S+  pid \d+  0 items  0 bytes\n",
        t.expect(prompt),
    )
    t.send("ls 5\n")
    assert "error: ls: RANK|all: rank 5 is out of range 0..1\n" in t.expect(prompt)
    t.send("echo cancelled")
    t.expect("echo cancelled")
    time.sleep(0.5)  # as a person would: rank 0 is back waiting for input when Ctrl-C comes
    t.send("\x03")
    if mpiexec_is_open_mpi():
        # Open MPI's mpiexec cannot pass SIGINT on to the ranks: it ends the job.
        assert t.finish() != 0
        return
    # MPICH's passes it to every rank: rank 0 drops the line.
    t.expect(prompt)
    t.send("echo kept\n")
    assert t.expect(prompt).endswith("kept\n" + prompt)
    t.send("quit\n")
    assert t.finish() == 0
    assert "cancelled\n" not in t.seen.decode().replace("\r\n", "\n")


def test_interactive_shell_of_one_rank(terminal, tmp_path):
    """``conveyor shell`` outside mpiexec: a job of one rank, with readline."""
    t = terminal([CONSOLE_SCRIPT, "shell"], tmp_path, CONVEYOR_SHELL_HISTORY="")
    prompt = "conveyor[1 rank]> "
    t.expect(prompt)
    t.send("help rm\n")
    assert "usage: rm RANK NAME\n" in t.expect(prompt)
    t.send("ls 1\n")
    assert "error: ls: RANK|all: rank 1 is out of range 0..0\n" in t.expect(prompt)
    t.send("exit\n")
    assert t.finish() == 0


FAKE_MPIEXEC = """\
#!{python}
# Stands for mpiexec and rank 0 of 'conveyor shell --frontend': takes one
# command, then works on it for far longer than the test lasts.
import os, sys, time
with open({pidfile!r}, "w") as f:
    f.write(str(os.getpid()))
print({mark!r} + "ready 2", flush=True)
line = sys.stdin.readline()
print("working on " + line.strip(), flush=True)
time.sleep(120)
"""


def test_front_end_ctrl_c_while_a_command_runs(terminal, tmp_path):
    """The first Ctrl-C while a command runs is reported, the second ends the session.

    The front end is started with SIGINT ignored, as a background job would
    be: at its prompt, Ctrl-C works all the same.
    """
    pidfile = tmp_path / "pid"
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(
        FAKE_MPIEXEC.format(python=sys.executable, pidfile=str(pidfile), mark=frontend.MARK)
    )
    fake.chmod(0o755)
    t = terminal(
        [CONSOLE_SCRIPT, "shell", "-n", "2", "--mpiexec", str(fake)],
        tmp_path,
        sigint=signal.SIG_IGN,
        CONVEYOR_SHELL_HISTORY="",
    )
    prompt = "conveyor[2 ranks]> "
    t.expect(prompt)
    t.send("echo x")
    t.expect("echo x")
    time.sleep(0.2)
    t.send("\x03")  # at the prompt: cancels the line
    t.expect(prompt)
    t.send("ls\n")
    t.expect("working on ls\n")
    t.send("\x03")
    t.expect("the command is still running; Ctrl-C again ends the session\n")
    t.send("\x03")
    assert t.finish() == 130
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # the launcher killed the job
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
