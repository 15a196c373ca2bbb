"""Reading lines at the shell's prompt: readline's history and completion, and Ctrl-C.

Used by whichever process owns the terminal: rank 0 of ``conveyor shell``,
or the front end of ``conveyor shell -n N``.
"""

import os
import signal

from .grammar import BY_NAME

__all__ = ["claim_ctrl_c", "enable_line_editing"]


def claim_ctrl_c():
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

    names = sorted(BY_NAME)

    def complete(text, state):
        before = readline.get_line_buffer()[: readline.get_begidx()].split()
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
