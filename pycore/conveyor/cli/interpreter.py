"""The interpreter rank 0 runs: `Shell` carries out parsed commands on the ranks.

Remote work is requests to the receivers of `service`, registered on every
rank; copies and moves are orders (`conveyor.Copy`, `conveyor.Move`), so
an item goes from its rank straight to the destinations.
"""

import re
import shlex
import sys

import conveyor as cv

from .._store import item_bytes
from .frontend import MARK, prompt
from .grammar import BY_NAME, COMMANDS, ShellError, parse
from .line_editing import claim_ctrl_c, enable_line_editing
from .service import (
    TAG_CAPACITY,
    TAG_INFO,
    TAG_LS,
    TAG_PUT,
    TAG_RM,
    TAG_STATS,
    describe,
)

__all__ = ["DEFAULT_TIMEOUT", "Shell"]

# Seconds a command waits for an answer by default (0: no limit).
DEFAULT_TIMEOUT = 60.0


def _q(name):
    """An item name as it would be typed: quoted if it has spaces or shell characters."""
    return shlex.quote(name)


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ranks_text(ranks):
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(map(str, ranks))


def _shape_text(shape):
    return "-" if shape is None else str(tuple(shape))


def _columns(rows, indent="", right=()):
    """Lines of `rows` (lists of str) in aligned columns; `right` columns right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


class Shell:
    """The interpreter that rank 0 runs: carries out parsed commands.

    Parameters
    ----------
    messenger : conveyor.Messenger
        Its rank gives the orders; a `Service` must be registered on every
        rank of it.
    out, err : file, optional
        Where results and ``error: ...`` lines go (standard output and
        standard error by default).
    timeout : float, optional
        Seconds to wait for each answer from a rank; None or 0: no limit.

    Attributes
    ----------
    failures : int
        The number of commands that failed so far.
    finished : bool
        ``quit`` was run.
    """

    def __init__(self, messenger, out=None, err=None, timeout=DEFAULT_TIMEOUT):
        self.m = messenger
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.timeout = timeout or None
        self.failures = 0
        self.finished = False

    @property
    def prompt(self):
        """The prompt, ``conveyor[4 ranks]> ``."""
        return prompt(self.m.size)

    def say(self, text=""):
        """Print a line of results."""
        print(text, file=self.out, flush=True)

    def error(self, message, where=""):
        """Report a failed command with one ``error:`` line and count it."""
        self.failures += 1
        print(f"error: {where}{message}", file=self.err, flush=True)

    def execute(self, line, where=""):
        """Parse and carry out one line; report its error, if any.

        Parameters
        ----------
        line : str
            One line of the command language.
        where : str, optional
            Put before the message of an error (``"FILE:LINE: "``).

        Returns
        -------
        bool
            False if the command failed (blank and comment lines succeed).
        """
        try:
            call = parse(line, self.m.size)
        except ShellError as exc:
            self.error(str(exc), where)
            return False
        if call is None:
            return True
        name = call.command.name
        try:
            getattr(self, "_do_" + name)(call.args)
        except ShellError as exc:
            self.error(f"{name}: {exc}", where)
            return False
        except Exception as exc:  # a bug, or something unforeseen: the session goes on
            self.error(f"{name}: {type(exc).__name__}: {exc}", where)
            return False
        return True

    # -- waiting for ranks ----------------------------------------------------

    def _wait(self, future, rank, missing=None):
        """The answer of `future` from `rank`, or a `ShellError` that says why not."""
        try:
            return future.result(timeout=self.timeout)
        except cv.TimeoutError:
            raise ShellError(f"no answer from rank {rank} within {self.timeout:g} s") from None
        except cv.RemoteError as exc:
            raise ShellError(_remote_text(exc, missing)) from None

    def _ask(self, ranks, tag, payload=None):
        """Send the request to every rank of `ranks` at once; their answers in order."""
        futures = [(rank, self.m.request(rank, tag, payload)) for rank in ranks]
        return [self._wait(future, rank) for rank, future in futures]

    # -- the commands -------------------------------------------------------------

    def _do_put(self, args):
        import numpy as np

        rank, name, path = args["rank"], args["name"], args["file"]
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic[:4] == b"PK\x03\x04":
                raise ShellError(f"{path!r} is an .npz archive; give one .npy file")
            if magic != b"\x93NUMPY":
                raise ShellError(f"{path!r} is not a .npy file")
            array = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise ShellError(f"cannot read {path!r}: {exc.strerror or exc}") from None
        except (ValueError, EOFError) as exc:
            raise ShellError(f"cannot load {path!r}: {exc}") from None
        nbytes = self._wait(self.m.request(rank, TAG_PUT, (name, array)), rank)
        self.say(
            f"put {_q(name)} at rank {rank}: {array.dtype} {_shape_text(array.shape)}, "
            f"{nbytes} bytes"
        )

    def _do_get(self, args):
        import numpy as np

        rank, name = args["rank"], args["name"]
        item = self._wait(self.m.fetch(rank, name), rank, missing=name)
        kind, shape = describe(item)
        summary = f"{kind} {_shape_text(shape)}, {item_bytes(item)} bytes"
        if "file" in args:
            if shape is None:
                raise ShellError(
                    f"{name} at rank {rank} is a {kind}, not an array: only arrays can be saved"
                )
            path = args["file"]
            if not path.endswith(".npy"):
                path += ".npy"  # what np.save does
            try:
                np.save(path, np.asarray(item), allow_pickle=False)
            except OSError as exc:
                raise ShellError(f"cannot write {path!r}: {exc.strerror or exc}") from None
            self.say(f"saved {_q(name)} from rank {rank} ({summary}) to {path}")
            return
        self.say(f"{_q(name)} at rank {rank}: {summary}")
        if shape is not None:
            self.say(
                np.array2string(np.asarray(item), threshold=10, edgeitems=3, max_line_width=78)
            )
        else:
            text = repr(item)
            self.say(text if len(text) <= 200 else text[:197] + "...")

    def _transfer(self, args, move):
        name, src, dests = args["name"], args["src"], args["dests"]
        new = args.get("newname", name)
        if move and src in dests and new == name:
            raise ShellError(
                f"{name} is already at rank {src}: moving it there needs 'as NEWNAME' (a rename)"
            )
        kind = cv.Move if move else cv.Copy
        answer = self._wait(self.m.order(src, kind(name, to=dests, as_name=new)), src, missing=name)
        renamed = f" as {_q(new)}" if new != name else ""
        verb = "moved" if move else "copied"
        self.say(
            f"{verb} {_q(name)} from rank {src} to {_ranks_text(dests)}{renamed} "
            f"({answer['bytes']} bytes)"
        )

    def _do_copy(self, args):
        self._transfer(args, move=False)

    def _do_move(self, args):
        self._transfer(args, move=True)

    def _do_rm(self, args):
        rank, name = args["rank"], args["name"]
        self._wait(self.m.request(rank, TAG_RM, name), rank, missing=name)
        self.say(f"removed {_q(name)} at rank {rank}")

    def _do_ls(self, args):
        ranks = args.get("where", list(range(self.m.size)))
        for rank, listing in zip(ranks, self._ask(ranks, TAG_LS)):
            items = listing["items"]
            if not items:
                head = "no items"
            else:
                head = f"{_plural(len(items), 'item')}, {listing['nbytes']} bytes"
            if listing["capacity"] is not None:
                head += f" (capacity {listing['capacity']} bytes)"
            self.say(f"rank {rank}: {head}")
            rows = [
                [_q(name), kind, _shape_text(shape), f"{nbytes} bytes"]
                for name, kind, shape, nbytes in items
            ]
            for line in _columns(rows, indent="  ", right={3}) if rows else ():
                self.say(line)

    def _do_stats(self, args):
        ranks = args.get("where", list(range(self.m.size)))
        answers = self._ask(ranks, TAG_STATS)
        keys = list(answers[0])
        for stats in answers[1:]:
            keys += [key for key in stats if key not in keys]
        rows = [["counter"] + [f"rank {rank}" for rank in ranks]]
        rows += [[key] + [str(stats.get(key, "-")) for stats in answers] for key in keys]
        for line in _columns(rows, right=set(range(1, len(ranks) + 1))):
            self.say(line)

    def _do_capacity(self, args):
        rank = args["rank"]
        value = args["bytes"] if "bytes" in args else "get"
        answer = self._wait(self.m.request(rank, TAG_CAPACITY, value), rank)
        limit = "none" if answer["capacity"] is None else f"{answer['capacity']} bytes"
        self.say(f"rank {rank}: capacity {limit}, {answer['nbytes']} bytes held")

    def _do_ranks(self, args):
        ranks = list(range(self.m.size))
        self.say(_plural(self.m.size, "rank"))
        rows = []
        for rank, info in zip(ranks, self._ask(ranks, TAG_INFO)):
            rows.append(
                [
                    f"rank {rank}",
                    f"host {info['host']}",
                    f"pid {info['pid']}",
                    _plural(info["items"], "item"),
                    f"{info['nbytes']} bytes",
                ]
            )
        for line in _columns(rows, indent="  "):
            self.say(line)

    def _do_echo(self, args):
        # Control characters could forge the front end's marker lines.
        self.say("".join(c if c.isprintable() else "?" for c in args.get("text", "")))

    def _do_help(self, args):
        if "command" in args:
            command = BY_NAME[args["command"]]
            self.say(f"usage: {command.usage}")
            self.say(f"  {command.summary}")
            for line in command.details.splitlines():
                self.say(f"  {line}")
            if command.aliases:
                self.say(f"  also: {', '.join(command.aliases)}")
            return
        self.say("commands (help COMMAND for its usage):")
        width = max(len(command.name) for command in COMMANDS)
        for command in COMMANDS:
            self.say(f"  {command.name.ljust(width)}  {command.summary}")
        self.say(
            f'RANK is 0..{self.m.size - 1}. Quote names with spaces ("a b"). '
            "A word starting with # begins a comment."
        )

    def _do_quit(self, args):
        self.finished = True

    # -- sessions -------------------------------------------------------------

    def interact(self, frontend=False):
        """Read and run commands from standard input until ``quit`` or its end.

        Parameters
        ----------
        frontend : bool
            Standard input comes from the front end of ``conveyor shell -n N``:
            read plain lines without prompting, and write a marker line
            before each read.

        Returns
        -------
        int
            0: the exit status of an interactive session.
        """
        if not frontend:
            claim_ctrl_c()
            if sys.stdin.isatty():
                enable_line_editing()
        first = True
        while not self.finished:
            if frontend:
                self.say(MARK + (f"ready {self.m.size}" if first else "done"))
                first = False
                line = sys.stdin.readline()
                if not line:
                    break
            else:
                try:
                    line = input(self.prompt)
                except EOFError:
                    self.say()
                    break
                except KeyboardInterrupt:  # cancels the line, not the session
                    self.say()
                    continue
            try:
                self.execute(line)
            except KeyboardInterrupt:
                self.error("interrupted")
        return 0

    def run_script(self, lines, source="<script>", echo=False, stop_on_error=False):
        """Run the lines of a script, reporting errors with their line number.

        Parameters
        ----------
        lines : iterable of str
            The script's lines.
        source : str
            The script's name in error messages (``error: SOURCE:LINE: ...``).
        echo : bool
            Print each command, after the prompt, before running it.
        stop_on_error : bool
            Stop at the first command that fails.

        Returns
        -------
        int
            The exit status: 0 if every command succeeded, else 1.
        """
        for number, line in enumerate(lines, 1):
            text = line.rstrip("\r\n")
            if echo and text.strip() and not text.lstrip().startswith("#"):
                self.say(self.prompt + text)
            ok = self.execute(text, where=f"{source}:{number}: ")
            if self.finished or (stop_on_error and not ok):
                break
        return 1 if self.failures else 0


def _remote_text(exc, missing=None):
    """One line for a `conveyor.RemoteError`; `missing` names the item a KeyError is about."""
    rank, message = exc.rank, exc.remote_message
    passed = re.match(r"rank ([0-9]+): ", message)
    if passed:  # an error another rank passed on: name the rank it happened on
        rank, message = int(passed.group(1)), message[passed.end() :]
    if exc.remote_type == "KeyError":
        if missing is not None:
            return f"rank {rank} has no item {missing!r}"
        message = message.strip("\"'")
    return f"rank {rank}: {exc.remote_type}: {message}"
