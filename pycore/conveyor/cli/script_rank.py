"""What each rank of ``conveyor run`` executes: the user's script, as ``python script.py`` would.

``python -m conveyor.cli.script_rank STATUS_DIR [--prefix] SCRIPT [ARG ...]``
runs SCRIPT as ``__main__`` in this process (so the process mpiexec
started is the rank, as it would be without ``conveyor run``), then writes
its exit status to ``STATUS_DIR/RANK``, from which the launcher tells which
ranks failed. With ``--prefix`` every line the rank writes to standard
output or error is prefixed ``[RANK] ``: a forked child copies them from
pipes, so this works under any mpiexec (MPICH's and Open MPI's tag output
differently, or not at all) and also prefixes what C code and MPI print.
"""

import os
import runpy
import select
import sys

from .launch import rank_of_task


def prefix_output(prefix):
    """Route file descriptors 1 and 2 through a child process that prefixes each line.

    The child ends when every writer of the pipes is gone: when this
    process exits, however it exits.
    """
    pipes = {target: os.pipe() for target in (1, 2)}
    if os.fork() == 0:
        try:
            keep = sorted({1, 2} | {read for read, write in pipes.values()})
            # Hold nothing else of the rank's (its PMI socket, standard input, the write ends).
            os.closerange(0, keep[0])
            for low, high in zip(keep, keep[1:] + [os.sysconf("SC_OPEN_MAX")]):
                os.closerange(low + 1, high)
            _copy_prefixed(
                prefix.encode(), {read: target for target, (read, write) in pipes.items()}
            )
        finally:
            os._exit(0)
    for target, (read, write) in pipes.items():
        os.close(read)
        os.dup2(write, target)
        os.close(write)


def _copy_prefixed(prefix, routes):
    # routes: pipe read end -> the descriptor its prefixed lines go to.
    pending = {fd: b"" for fd in routes}
    while pending:
        ready, _, _ = select.select(list(pending), [], [])
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            *lines, rest = (pending[fd] + chunk).split(b"\n")
            text = b"".join(prefix + line + b"\n" for line in lines)
            if chunk:
                pending[fd] = rest
            else:
                del pending[fd]
                if rest:  # the last line had no newline
                    text += prefix + rest
            view = memoryview(text)
            while view:
                view = view[os.write(routes[fd], view) :]


def run_script(path, args, finished):
    """Run the file `path` as ``__main__`` with ``sys.argv[1:] = args``; return its exit status.

    ``finished(status)`` is called as soon as the status is known: before
    an uncaught exception is printed, since printing it may end the
    process (conveyor's `sys.excepthook` aborts the MPI job, so that no
    rank waits forever for this one). The exception is printed as Python
    prints it, without this module's and runpy's frames, and gives status 1.
    """
    sys.argv = [path, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        # As Python does: None is 0, an int is the status, anything else is printed and is 1.
        if exc.code is None or isinstance(exc.code, int):
            status = int(exc.code or 0)
        else:
            print(exc.code, file=sys.stderr)
            status = 1
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # ours and runpy's: the user's traceback starts in the script
        finished(1)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return 1
    else:
        status = 0
    finished(status)
    return status


def main(argv=None):
    """Run the script of ``conveyor run`` on this rank; return its exit status."""
    status_dir, *rest = sys.argv[1:] if argv is None else argv
    prefix = rest[0] == "--prefix"
    path, *args = rest[prefix:]
    rank = rank_of_task()
    if prefix:
        prefix_output(f"[{'?' if rank is None else rank}] ")

    def finished(status):
        sys.stdout.flush()
        if rank is not None:
            try:
                with open(os.path.join(status_dir, str(rank)), "w") as f:
                    f.write(str(status))
            except OSError:  # a node that does not see it: the launcher says so
                pass

    return run_script(path, args, finished)


if __name__ == "__main__":
    sys.exit(main())
