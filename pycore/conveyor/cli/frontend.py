"""The front end of ``conveyor shell -n N``: the terminal stays here, rank 0 runs under mpiexec.

It reads lines (with readline), passes them to rank 0 through
``mpiexec``'s standard input, and shows rank 0's answers, which end with a
`MARK` line: ``MARK + "ready SIZE"`` once the job runs, ``MARK + "done"``
after each command.
"""

import signal
import sys

from .line_editing import claim_ctrl_c, enable_line_editing

__all__ = ["MARK", "front_end", "prompt", "relay"]

# Starts the lines rank 0 writes for the front end (a control character no answer prints).
MARK = "\x1econveyor-shell:"


def prompt(size):
    """The prompt of a session of `size` ranks: ``conveyor[4 ranks]> ``."""
    return f"conveyor[{size} {'rank' if size == 1 else 'ranks'}]> "


def relay(proc):
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
        print(
            "\nconveyor shell: the command is still running; Ctrl-C again ends the session",
            file=sys.stderr,
            flush=True,
        )

    mark = MARK.encode()
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                return None
            if line.startswith(mark):
                return line[len(mark) :].decode("utf-8", "replace").strip()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)


def front_end(proc):
    """Run the session against `proc`, mpiexec with rank 0's pipes; return mpiexec's status."""
    ready = relay(proc)
    if ready is None or not ready.startswith("ready "):
        return proc.wait()
    text = prompt(int(ready.split()[1]))
    claim_ctrl_c()
    if sys.stdin.isatty():
        enable_line_editing()
    while True:
        try:
            line = input(text)
        except EOFError:
            print(flush=True)
            # Ended with ``quit``, not only by closing rank 0's input: Open
            # MPI 5's mpiexec never passes the end of its input on
            # (openpmix/openpmix#4024).
            _send(proc, "quit")
            break
        except KeyboardInterrupt:
            print(flush=True)
            continue
        if not line.strip():
            continue
        if not _send(proc, line) or relay(proc) is None:  # quit, or the job ended
            break
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    while relay(proc) is not None:
        pass
    return proc.wait()


def _send(proc, line):
    """Pass `line` to rank 0; False if the job has ended."""
    try:
        proc.stdin.write(line.encode("utf-8", "surrogateescape") + b"\n")
        proc.stdin.flush()
    except BrokenPipeError:
        return False
    return True
