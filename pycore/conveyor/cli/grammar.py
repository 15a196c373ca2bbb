"""The shell's command language: its commands, their grammar, and the parser.

The language is parsed, never evaluated: a line is split into tokens with
`shlex` (quotes and ``#`` comments as in a POSIX shell), its first token
names a command of `COMMANDS`, and the rest must match that command's
grammar, a sequence of keywords, placeholders and optional groups from
which its usage text is also made. `parse` does that without MPI.
"""

import difflib
import os
import re
import shlex

from .arguments import parse_bytes

__all__ = ["BY_NAME", "COMMANDS", "Call", "Command", "ShellError", "lookup", "parse"]


class ShellError(Exception):
    """A command cannot be parsed or carried out; ``str()`` is the one-line message."""


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


def _bytes(token, size):
    if token.lower() == "none":
        return None
    try:
        return parse_bytes(token)
    except ValueError:
        raise ShellError(
            f"{token!r} is not a number of bytes (such as 4096, 64k, 2G or none)"
        ) from None


def _command_name(token, size):
    return lookup(token).name


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
    Command(
        "put",
        ("RANK", "NAME", "FILE"),
        "store the array of a .npy file at RANK under NAME",
        "Rank 0 reads FILE.npy (numpy's format; pickled object arrays are refused)\n"
        "and sends the array to RANK, which stores it under NAME, replacing any item\n"
        "of that name.",
    ),
    Command(
        "get",
        ("RANK", "NAME", ("FILE",)),
        "show an item of RANK, or save it to a .npy file",
        "Fetches the item to rank 0 and prints its dtype, shape, size and a preview;\n"
        "with FILE.npy, saves it there instead.",
    ),
    Command(
        "copy",
        ("NAME", "from", "SRC", "to", "DESTS", ("as", "NEWNAME")),
        "copy an item from rank SRC to other ranks",
        "Orders SRC to send its item NAME to each DEST, which stores it under NAME\n"
        "(or NEWNAME). The data goes from SRC to the destinations directly.",
    ),
    Command(
        "move",
        ("NAME", "from", "SRC", "to", "DESTS", ("as", "NEWNAME")),
        "move an item from rank SRC to other ranks",
        "Like copy, then SRC deletes its item once every destination holds it.\n"
        "Moving an item to its own rank needs a NEWNAME (a rename).",
    ),
    Command("rm", ("RANK", "NAME"), "delete an item of RANK"),
    Command(
        "ls",
        (("WHERE",),),
        "list the items of one rank or all (default: all)",
        "Shows each item's name, dtype, shape and bytes, and each rank's total.",
    ),
    Command("stats", (("WHERE",),), "show the message counters of one rank or all (default: all)"),
    Command(
        "capacity",
        ("RANK", ("BYTES",)),
        "show or set the store capacity of RANK",
        "BYTES is a number with an optional k, M, G or T suffix (powers of 1024),\n"
        "or none for no limit. An item that would exceed it is refused.",
    ),
    Command("ranks", (), "list the ranks: host, process id, items and bytes"),
    Command("echo", (("TEXT",),), "print TEXT"),
    Command("help", (("COMMAND",),), "list the commands, or explain one"),
    Command(
        "quit", (), "end the session on every rank (also: exit, end of input)", aliases=("exit",)
    ),
]

# Every name a command answers to, aliases included.
BY_NAME = {name: command for command in COMMANDS for name in (command.name, *command.aliases)}


def lookup(word):
    """The `Command` that `word` names (any case), or a `ShellError` suggesting one."""
    command = BY_NAME.get(word.lower())
    if command is None:
        # A prefix ("co") suggests what it starts; a typo ("lst") the closest name.
        close = [name for name in sorted(BY_NAME) if name.startswith(word.lower())]
        close = close or difflib.get_close_matches(word.lower(), list(BY_NAME), n=1)
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
    command = lookup(tokens[0])
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
