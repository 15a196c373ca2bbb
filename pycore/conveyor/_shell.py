"""``conveyor shell`` and ``conveyor script``: a command language over the ranks' item stores.

Every rank of the job runs this module. Rank 0 reads commands (typed at a
prompt, or from a script file) and carries them out with ordinary conveyor
messages; the other ranks serve those messages until rank 0 says ``quit``.

The language is parsed, never evaluated: a line is split into tokens with
`shlex` (quotes and ``#`` comments as in a POSIX shell), its first token
names a command of `COMMANDS`, and the rest must match that command's
grammar, a sequence of keywords, placeholders and optional groups from
which its usage text is also made. `parse` does that without MPI.

Remote work uses receivers registered on every rank under ``shell.*`` tags
(`Service`); copies and moves are orders (`conveyor.Copy`, `conveyor.Move`),
so an item goes from its rank straight to the destinations.

``conveyor shell -n N`` starts the ranks itself under ``mpiexec`` and keeps
the terminal: it reads lines (with readline), passes them to rank 0 through
``mpiexec``'s standard input, and shows rank 0's answers, which end with a
marker line (`launch`).
"""

import difflib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys

__all__ = ["COMMANDS", "Call", "Command", "ShellError", "Service", "Shell", "parse"]

# Tags of the receivers every rank registers (the "conveyor." prefix is reserved).
TAG_PUT = "shell.put"
TAG_RM = "shell.rm"
TAG_LS = "shell.ls"
TAG_STATS = "shell.stats"
TAG_INFO = "shell.info"
TAG_CAPACITY = "shell.capacity"
TAG_QUIT = "shell.quit"

# Seconds a command waits for an answer by default (0: no limit).
DEFAULT_TIMEOUT = 60.0

# Starts the lines rank 0 writes for the front end of ``conveyor shell -n N``:
# "ready SIZE" once the job runs, "done" after each command.
MARK = "\x1econveyor-shell:"

# Environment variables a rank started by mpiexec has (MPICH/hydra, Open MPI, PMIx, Slurm).
_MPI_RANK_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class ShellError(Exception):
    """A command cannot be parsed or carried out; ``str()`` is the one-line message."""


# -- the grammar -------------------------------------------------------------


class Placeholder:
    """An argument of a command's grammar.

    Parameters
    ----------
    display : str
        How usage texts show it (``"DEST[,DEST...]"``).
    convert : callable
        ``convert(token, size)`` returns the value of a token in a job of
        `size` ranks or raises `ShellError`. None for `rest`.
    rest : bool
        It takes every remaining token (joined by single spaces).
    """

    def __init__(self, display, convert=None, rest=False):
        self.display = display
        self.convert = convert
        self.rest = rest


def _rank(token, size):
    if not re.fullmatch(r"[0-9]+", token):
        raise ShellError(f"{token!r} is not a rank (an integer in 0..{size - 1})")
    rank = int(token)
    if rank >= size:
        raise ShellError(f"rank {rank} is out of range 0..{size - 1}")
    return rank


def _ranks(token, size):
    ranks = []
    for part in token.split(","):
        if not part:
            raise ShellError(f"{token!r} is not a list of ranks (such as 2 or 2,3)")
        rank = _rank(part, size)
        if rank in ranks:
            raise ShellError(f"rank {rank} is given twice in {token!r}")
        ranks.append(rank)
    return ranks


def _where(token, size):
    if token.lower() == "all":
        return list(range(size))
    return [_rank(token, size)]


def _name(token, size):
    if not token:
        raise ShellError("an item name must not be empty")
    return token


def _path(token, size):
    if not token:
        raise ShellError("a file name must not be empty")
    return os.path.expanduser(token)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(token, size):
    if token.lower() == "none":
        return None
    match = re.fullmatch(r"([0-9]+)([kmgt]?)(?:i?b)?", token, re.IGNORECASE)
    if match is None:
        raise ShellError(f"{token!r} is not a number of bytes (such as 4096, 64k, 2G or none)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _command_name(token, size):
    return _lookup(token).name


PLACEHOLDERS = {
    "RANK": Placeholder("RANK", _rank),
    "SRC": Placeholder("SRC", _rank),
    "DESTS": Placeholder("DEST[,DEST...]", _ranks),
    "WHERE": Placeholder("RANK|all", _where),
    "NAME": Placeholder("NAME", _name),
    "NEWNAME": Placeholder("NEWNAME", _name),
    "FILE": Placeholder("FILE.npy", _path),
    "BYTES": Placeholder("BYTES|none", _bytes),
    "COMMAND": Placeholder("COMMAND", _command_name),
    "TEXT": Placeholder("TEXT...", rest=True),
}


class Command:
    """A command of the language: its name, grammar and help.

    Parameters
    ----------
    name : str
        The name typed first on the line.
    grammar : tuple
        What follows the name, in order: lowercase strings are keywords
        typed as they are (``"from"``), uppercase strings are keys of
        `PLACEHOLDERS` (their value is ``Call.args[key.lower()]``), and a
        nested tuple is an optional group, present when its first keyword
        is the next token (or, if it starts with a placeholder, when a
        token is left).
    summary : str
        One line for ``help``.
    details : str
        More lines for ``help COMMAND``.
    aliases : tuple of str
        Other names of the command.
    """

    def __init__(self, name, grammar, summary, details="", aliases=()):
        self.name = name
        self.grammar = grammar
        self.summary = summary
        self.details = details
        self.aliases = aliases

    @property
    def usage(self):
        """The usage text made from the grammar (``copy NAME from SRC to ...``)."""
        return " ".join([self.name, *_show(self.grammar)]).strip()

    def __repr__(self):
        return f"Command({self.usage!r})"


def _show(grammar):
    parts = []
    for element in grammar:
        if isinstance(element, tuple):
            parts.append("[" + " ".join(_show(element)) + "]")
        elif element.islower():
            parts.append(element)
        else:
            parts.append(PLACEHOLDERS[element].display)
    return parts


COMMANDS = [
    Command("put", ("RANK", "NAME", "FILE"),
            "store the array of a .npy file at RANK under NAME",
            "Rank 0 reads FILE.npy (numpy's format; pickled object arrays are refused)\n"
            "and sends the array to RANK, which stores it under NAME, replacing any item\n"
            "of that name."),
    Command("get", ("RANK", "NAME", ("FILE",)),
            "show an item of RANK, or save it to a .npy file",
            "Fetches the item to rank 0 and prints its dtype, shape, size and a preview;\n"
            "with FILE.npy, saves it there instead."),
    Command("copy", ("NAME", "from", "SRC", "to", "DESTS", ("as", "NEWNAME")),
            "copy an item from rank SRC to other ranks",
            "Orders SRC to send its item NAME to each DEST, which stores it under NAME\n"
            "(or NEWNAME). The data goes from SRC to the destinations directly."),
    Command("move", ("NAME", "from", "SRC", "to", "DESTS", ("as", "NEWNAME")),
            "move an item from rank SRC to other ranks",
            "Like copy, then SRC deletes its item once every destination holds it.\n"
            "Moving an item to its own rank needs a NEWNAME (a rename)."),
    Command("rm", ("RANK", "NAME"), "delete an item of RANK"),
    Command("ls", (("WHERE",),), "list the items of one rank or all (default: all)",
            "Shows each item's name, dtype, shape and bytes, and each rank's total."),
    Command("stats", (("WHERE",),), "show the message counters of one rank or all (default: all)"),
    Command("capacity", ("RANK", ("BYTES",)), "show or set the store capacity of RANK",
            "BYTES is a number with an optional k, M, G or T suffix (powers of 1024),\n"
            "or none for no limit. An item that would exceed it is refused."),
    Command("ranks", (), "list the ranks: host, process id, items and bytes"),
    Command("echo", (("TEXT",),), "print TEXT"),
    Command("help", (("COMMAND",),), "list the commands, or explain one"),
    Command("quit", (), "end the session on every rank (also: exit, end of input)",
            aliases=("exit",)),
]

_BY_NAME = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}


def _lookup(word):
    command = _BY_NAME.get(word.lower())
    if command is None:
        # A prefix ("co") suggests what it starts; a typo ("lst") the closest name.
        close = [name for name in sorted(_BY_NAME) if name.startswith(word.lower())]
        close = close or difflib.get_close_matches(word.lower(), list(_BY_NAME), n=1)
        if close:
            hint = "; did you mean " + " or ".join(map(repr, close[:3])) + "?"
        else:
            hint = " (type 'help' for the list)"
        raise ShellError(f"unknown command {word!r}{hint}")
    return command


class Call:
    """A parsed line: the `Command` and its argument values.

    Attributes
    ----------
    command : Command
    args : dict
        The value of each placeholder given, under its lowercase key
        (``"rank"``, ``"dests"``, ...); placeholders of absent optional
        groups are missing.
    """

    def __init__(self, command, args):
        self.command = command
        self.args = args

    def __repr__(self):
        return f"Call({self.command.name!r}, {self.args!r})"


def _starts(group, tokens, pos):
    if pos >= len(tokens):
        return False
    first = group[0]
    return tokens[pos].lower() == first if isinstance(first, str) and first.islower() else True


def _match(grammar, tokens, pos, size, args):
    # Returns the position after the tokens `grammar` took; raises
    # (_Usage, message) for a shape error, ShellError for a bad value.
    for element in grammar:
        if isinstance(element, tuple):
            if _starts(element, tokens, pos):
                pos = _match(element, tokens, pos, size, args)
        elif element.islower():
            if pos >= len(tokens):
                raise _Usage(f"missing '{element}'")
            if tokens[pos].lower() != element:
                raise _Usage(f"expected '{element}', not {tokens[pos]!r}")
            pos += 1
        else:
            placeholder = PLACEHOLDERS[element]
            if placeholder.rest:
                args[element.lower()] = " ".join(tokens[pos:])
                pos = len(tokens)
                continue
            if pos >= len(tokens):
                raise _Usage(f"missing {placeholder.display}")
            try:
                args[element.lower()] = placeholder.convert(tokens[pos], size)
            except ShellError as exc:
                raise ShellError(f"{placeholder.display}: {exc}") from None
            pos += 1
    return pos


class _Usage(Exception):
    pass


def _strip_comment(line):
    """`line` up to its comment: a ``#`` that starts an unquoted word, as in sh.

    (shlex's own comments also start inside a word: ``sample#1`` would be
    read as ``sample``.)
    """
    quote = None
    word_start = True
    i = 0
    while i < len(line):
        c = line[i]
        if quote is None:
            if c == "\\":
                i += 2
                word_start = False
                continue
            if c == "#" and word_start:
                return line[:i]
            if c in "'\"":
                quote = c
            word_start = c.isspace()
        elif c == quote:
            quote = None
        elif c == "\\" and quote == '"':
            i += 1  # the next character is escaped
        i += 1
    return line


def parse(line, size):
    """Parse one line of the command language for a job of `size` ranks.

    Parameters
    ----------
    line : str
        The line, as typed or read (a trailing newline is ignored).
    size : int
        The number of ranks, which bounds the ranks a line may name.

    Returns
    -------
    Call or None
        The command and its arguments; None for a blank or comment line.

    Raises
    ------
    ShellError
        For an unknown command, a wrong number or order of arguments (the
        message ends with the command's usage) or a bad value.
    """
    try:
        tokens = shlex.split(_strip_comment(line), comments=False, posix=True)
    except ValueError as exc:  # an unclosed quotation, a trailing backslash
        raise ShellError(f"cannot split the line: {str(exc).lower()}") from None
    if not tokens:
        return None
    command = _lookup(tokens[0])
    args = {}
    try:
        end = _match(command.grammar, tokens, 1, size, args)
        if end < len(tokens):
            raise _Usage(f"unexpected {tokens[end]!r}")
    except _Usage as exc:
        raise ShellError(f"{command.name}: {exc} (usage: {command.usage})") from None
    except ShellError as exc:
        raise ShellError(f"{command.name}: {exc}") from None
    return Call(command, args)


# -- the ranks' side ---------------------------------------------------------


def _describe(item):
    """(dtype or type name, shape or None) of an item."""
    import numpy as np

    if isinstance(item, (np.ndarray, np.generic)):
        return str(item.dtype), list(item.shape)
    return type(item).__name__, None


class Service:
    """The receivers of the shell, registered on every rank of `messenger`.

    Rank 0 sends requests to them (including to itself); `serve` runs the
    other ranks until rank 0 sends ``shell.quit``.
    """

    def __init__(self, messenger):
        self.m = messenger
        self.done = False
        for tag, handler in [
            (TAG_PUT, self._put), (TAG_RM, self._rm), (TAG_LS, self._ls),
            (TAG_STATS, self._stats), (TAG_INFO, self._info),
            (TAG_CAPACITY, self._capacity), (TAG_QUIT, self._quit),
        ]:
            messenger.on(tag)(handler)

    def serve(self):
        """Handle messages until ``shell.quit`` comes."""
        while not self.done:
            self.m.progress(0.5)

    def quit_others(self):
        """Tell every other rank to stop serving."""
        for rank in range(self.m.size):
            if rank != self.m.rank:
                self.m.send(rank, TAG_QUIT)

    def _put(self, msg):
        name, item = msg.payload
        self.m.store.put(name, item)
        return _item_bytes(item)

    def _rm(self, msg):
        self.m.store.delete(msg.payload)

    def _ls(self, msg):
        store = self.m.store
        items = []
        for name in sorted(store.keys()):
            item = store.get(name)
            kind, shape = _describe(item)
            items.append([name, kind, shape, _item_bytes(item)])
        return {"items": items, "nbytes": store.nbytes, "capacity": store.capacity}

    def _stats(self, msg):
        return self.m.stats()

    def _info(self, msg):
        store = self.m.store
        return {"host": socket.gethostname(), "pid": os.getpid(), "items": len(store),
                "nbytes": store.nbytes, "capacity": store.capacity}

    def _capacity(self, msg):
        if msg.payload != "get":
            self.m.store.capacity = msg.payload
        return {"capacity": self.m.store.capacity, "nbytes": self.m.store.nbytes}

    def _quit(self, msg):
        self.done = True


def _item_bytes(item):
    from ._store import item_bytes

    return item_bytes(item)


# -- rank 0: the interpreter -------------------------------------------------


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
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
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
        return f"conveyor[{_plural(self.m.size, 'rank')}]> "

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
        import conveyor as cv

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
        self.say(f"put {_q(name)} at rank {rank}: {array.dtype} {_shape_text(array.shape)}, "
                 f"{nbytes} bytes")

    def _do_get(self, args):
        import numpy as np

        rank, name = args["rank"], args["name"]
        item = self._wait(self.m.fetch(rank, name), rank, missing=name)
        kind, shape = _describe(item)
        summary = f"{kind} {_shape_text(shape)}, {_item_bytes(item)} bytes"
        if "file" in args:
            if shape is None:
                raise ShellError(f"{name} at rank {rank} is a {kind}, not an array: "
                                 "only arrays can be saved")
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
            self.say(np.array2string(np.asarray(item), threshold=10, edgeitems=3,
                                     max_line_width=78))
        else:
            text = repr(item)
            self.say(text if len(text) <= 200 else text[:197] + "...")

    def _transfer(self, args, move):
        import conveyor as cv

        name, src, dests = args["name"], args["src"], args["dests"]
        new = args.get("newname", name)
        if move and src in dests and new == name:
            raise ShellError(f"{name} is already at rank {src}: moving it there needs "
                             "'as NEWNAME' (a rename)")
        kind = cv.Move if move else cv.Copy
        answer = self._wait(self.m.order(src, kind(name, to=dests, as_name=new)), src,
                            missing=name)
        renamed = f" as {_q(new)}" if new != name else ""
        verb = "moved" if move else "copied"
        self.say(f"{verb} {_q(name)} from rank {src} to {_ranks_text(dests)}{renamed} "
                 f"({answer['bytes']} bytes)")

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
            rows = [[_q(name), kind, _shape_text(shape), f"{nbytes} bytes"]
                    for name, kind, shape, nbytes in items]
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
            rows.append([f"rank {rank}", f"host {info['host']}", f"pid {info['pid']}",
                         _plural(info["items"], "item"), f"{info['nbytes']} bytes"])
        for line in _columns(rows, indent="  "):
            self.say(line)

    def _do_echo(self, args):
        # Control characters could forge the front end's marker lines.
        self.say("".join(c if c.isprintable() else "?" for c in args.get("text", "")))

    def _do_help(self, args):
        if "command" in args:
            command = _BY_NAME[args["command"]]
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
        self.say(f"RANK is 0..{self.m.size - 1}. Quote names with spaces (\"a b\"). "
                 "A word starting with # begins a comment.")

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
            _claim_ctrl_c()
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
        rank, message = int(passed.group(1)), message[passed.end():]
    if exc.remote_type == "KeyError":
        if missing is not None:
            return f"rank {rank} has no item {missing!r}"
        message = message.strip("\"'")
    return f"rank {rank}: {exc.remote_type}: {message}"


def _claim_ctrl_c():
    """Make Ctrl-C raise `KeyboardInterrupt` even if SIGINT was ignored at start.

    A process started in the background by a non-interactive shell (``cmd
    &``, some CI harnesses) inherits SIGINT ignored, and Python then leaves
    it so; at a prompt, Ctrl-C must cancel the line all the same.
    """
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread: leave it as it is
        pass


def enable_line_editing():
    """Turn on readline for `input`: history, and completion of command names.

    The history is kept in ``$CONVEYOR_SHELL_HISTORY`` (default
    ``~/.conveyor_shell_history``; empty: not kept). Does nothing where
    readline is missing.
    """
    try:
        import readline
    except ImportError:
        return
    import atexit

    names = sorted(_BY_NAME)

    def complete(text, state):
        before = readline.get_line_buffer()[:readline.get_begidx()].split()
        if before and before != ["help"]:
            return None  # a command name is the first word, or help's argument
        matches = [name + " " for name in names if name.startswith(text.lower())]
        return matches[state] if state < len(matches) else None

    readline.set_completer(complete)
    readline.set_completer_delims(" \t")
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    path = os.environ.get("CONVEYOR_SHELL_HISTORY", "~/.conveyor_shell_history")
    if not path:
        return
    path = os.path.expanduser(path)
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save():
        try:
            readline.write_history_file(path)
        except OSError:
            pass

    atexit.register(save)


# -- the command line ----------------------------------------------------------


def add_arguments(parser, script):
    """Add the options of ``conveyor shell`` (`script` False) or ``conveyor script``."""
    from ._bench.osu import positive_int

    if script:
        parser.add_argument("file", metavar="FILE",
                            help="the script to run ('-': standard input)")
    parser.add_argument("-n", "--np", type=positive_int, metavar="N", dest="nranks",
                        help="start N ranks under mpiexec (default: run as the rank "
                             "that mpiexec started, or as a job of one rank)")
    parser.add_argument("--mpiexec", metavar="PATH",
                        help="with -n: the mpiexec to use (default: the one next to this "
                             "Python, then $CONVEYOR_MPIEXEC, then PATH)")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="how long a command waits for a rank's answer "
                             f"(default {DEFAULT_TIMEOUT:g}; 0: no limit)")
    if script:
        parser.add_argument("--stop-on-error", action="store_true",
                            help="stop at the first command that fails (default: go on)")
        parser.add_argument("--echo", action="store_true",
                            help="print each command, after the prompt, before running it")
    else:
        import argparse

        # Rank 0 of `conveyor shell -n N`: stdin and stdout belong to the front end.
        parser.add_argument("--frontend", action="store_true", help=argparse.SUPPRESS)


def _seconds(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def run(parser, args, script):
    """Run ``conveyor shell`` or ``conveyor script`` with parsed `args`.

    Returns
    -------
    int
        The exit status (see `Shell.run_script` and `Shell.interact`); 2 if
        the script cannot be read, 130 after Ctrl-C.
    """
    if args.nranks is not None:
        if any(variable in os.environ for variable in _MPI_RANK_VARIABLES):
            parser.error("argument -n: this process is already a rank started by mpiexec; "
                         "leave -n out (or run without mpiexec)")
        return launch(parser, args, script)
    if args.mpiexec is not None:
        parser.error("argument --mpiexec: only with -n N")
    return run_rank(args, script)


def run_rank(args, script):
    """Be one rank of the job: rank 0 runs the session, the others serve it."""
    import conveyor as cv

    with cv.Messenger() as m:
        service = Service(m)
        if m.rank != 0:
            # mpiexec passes Ctrl-C to every rank: only rank 0 acts on it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            service.serve()
            return 0
        # A session prints its errors in order with its prompts and results,
        # which mpiexec forwards on one stream; a script keeps them apart.
        shell = Shell(m, err=sys.stderr if script else sys.stdout, timeout=args.timeout)
        try:
            if not script:
                if getattr(args, "frontend", False):
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                return shell.interact(frontend=getattr(args, "frontend", False))
            try:
                if args.file == "-":
                    lines, source = sys.stdin.readlines(), "<stdin>"
                else:
                    with open(args.file, encoding="utf-8") as f:
                        lines, source = f.readlines(), args.file
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                print(f"error: cannot read the script {args.file!r}: {reason}",
                      file=sys.stderr, flush=True)
                return 2
            try:
                return shell.run_script(lines, source, echo=args.echo,
                                        stop_on_error=args.stop_on_error)
            except KeyboardInterrupt:
                shell.error("interrupted: the script stopped")
                return 130
        finally:
            service.quit_others()


def launch(parser, args, script):
    """Start the ranks under mpiexec (``-n N``) and wait for them.

    ``conveyor script FILE -n N`` just runs ``mpiexec -n N`` with this
    Python on the same arguments. ``conveyor shell -n N`` is the front end
    of the session: it reads lines here, with readline, sends them to rank
    0 through mpiexec's standard input and prints rank 0's answers up to
    its marker line, so Ctrl-C only cancels the line being typed.

    Returns
    -------
    int
        mpiexec's exit status; 130 if the session was ended with Ctrl-C.
    """
    from ._bench.launch import require_mpiexec

    mpiexec = require_mpiexec(parser, args.mpiexec)
    cmd = [mpiexec, "-n", str(args.nranks), sys.executable, "-m", "conveyor"]
    options = ["--timeout", repr(args.timeout)]
    if script:
        if args.file != "-" and not os.path.isfile(args.file):
            parser.error(f"argument FILE: no such file: {args.file!r}")
        # The ranks start in this directory: the path stays as the user wrote it.
        options += ["--stop-on-error"] * args.stop_on_error + ["--echo"] * args.echo
        proc = subprocess.Popen(cmd + ["script", args.file, *options])
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                pass  # mpiexec passes it to the ranks: rank 0 stops the script
    proc = subprocess.Popen(cmd + ["shell", "--frontend", *options], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        return _front_end(proc)
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _relay(proc):
    """Copy rank 0's output here up to its next marker; return the marker's text.

    None if the job ended. The first Ctrl-C while a command runs is
    reported; the second raises `KeyboardInterrupt`, which ends the session.
    """
    interrupts = 0

    def interrupted(signum, frame):
        # A handler rather than `except KeyboardInterrupt` around the read:
        # Ctrl-C may come at any point of the loop. The read goes on after it.
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        print("\nconveyor shell: the command is still running; "
              "Ctrl-C again ends the session", file=sys.stderr, flush=True)

    mark = MARK.encode()
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith(mark):
                return line[len(mark):].decode("utf-8", "replace").strip()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)


def _front_end(proc):
    ready = _relay(proc)
    if ready is None or not ready.startswith("ready "):
        return proc.wait()
    size = int(ready.split()[1])
    prompt = f"conveyor[{_plural(size, 'rank')}]> "
    _claim_ctrl_c()
    if sys.stdin.isatty():
        enable_line_editing()
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print(flush=True)
            break
        except KeyboardInterrupt:
            print(flush=True)
            continue
        if not line.strip():
            continue
        try:
            proc.stdin.write(line.encode("utf-8", "surrogateescape") + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            break
        if _relay(proc) is None:  # quit, or the job ended
            break
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    while _relay(proc) is not None:
        pass
    return proc.wait()
