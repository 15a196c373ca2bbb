"""Leaving the job: what the process does for its messengers when it exits, early or not.

This is the process's business, not one messenger's: the state here (the
messengers still open, whether the process is in a multi-rank job, how a
messenger's block was left) is global, and is read by Python's ``atexit``
and ``sys.excepthook``, after the messengers' own code has run. So it lives
below `_messenger`, which tells it when a messenger opens (`watch`), closes
(`unwatch`) or is abandoned by an exception (`abandoned`).

At exit (Python's ``atexit`` handlers run before mpi4py finalizes MPI),
every messenger still open stops its threads and writes its trace.
MPICH's mpiexec ends the job when a rank dies, but not when one finalizes
and exits early: the others would wait for it for ever. So a rank that
leaves a multi-rank job early (`_leaving_early`) aborts it, and, unless a
messenger was made with ``abort_on_error=False``, an uncaught exception
aborts it at once (`_install_abort_hook`).
"""

from __future__ import annotations

import atexit
import sys
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from . import _diagnostics, _failures

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["Watched", "abandoned", "open_messengers", "unwatch", "watch"]


class Watched(Protocol):
    """What leaving needs of a messenger: its transport (engine, failure detector, trace)."""

    @property
    def _transport(self) -> Transport: ...


# Messengers not closed yet: their background threads must stop before MPI
# is finalized at exit (mpi4py finalizes after Python's atexit handlers).
_open_messengers: weakref.WeakSet[Watched] = weakref.WeakSet()
# Set once a messenger is made in a job of more than one rank: leaving such
# a job early leaves the other ranks waiting for this one.
_in_multi_rank_job = False
# Whether an exception left a messenger's block (which then closed it
# without the collective close the other ranks wait in).
_abandoned = False
# A SystemExit that left a messenger's block: (what it was, the exit code).
# It is no uncaught exception (no excepthook sees it), yet the rank leaves.
_exiting: tuple[str, int] | None = None

_abort_hook_installed = False
_ABORT_GRACE_SECONDS = 0.2


def watch(messenger: Watched, abort_on_error: bool) -> None:
    """Stop `messenger` at exit unless it closes first; abort a multi-rank job left early.

    Parameters
    ----------
    messenger : Watched
        A messenger just made.
    abort_on_error : bool
        Abort the job at once on an uncaught exception (see `_install_abort_hook`).
    """
    from mpi4py import MPI

    global _in_multi_rank_job
    _open_messengers.add(messenger)
    if MPI.COMM_WORLD.Get_size() > 1:
        _in_multi_rank_job = True
        if abort_on_error:
            _install_abort_hook()


def unwatch(messenger: Watched) -> None:
    """Forget `messenger`, which has stopped (closed or abandoned)."""
    _open_messengers.discard(messenger)


def open_messengers() -> list[Watched]:
    """The messengers of this process that are open, in no particular order."""
    return list(_open_messengers)


def abandoned(exc: BaseException | None) -> None:
    """Note that `exc` left a messenger's block, abandoning it without a collective close."""
    global _abandoned, _exiting
    _abandoned = True
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) and exc.code != 0 else 1
        _exiting = (f"left a messenger's block by {exc!r}", code)


def _exit_code(exc_type: type[BaseException]) -> int:
    """The exit status of a job aborted for an uncaught exception: 130 for Ctrl-C, as shells do."""
    return 130 if issubclass(exc_type, KeyboardInterrupt) else 1


@atexit.register
def _at_exit() -> None:
    leaving = _leaving_early()
    for messenger in list(_open_messengers):
        if messenger._transport.failures is not None:
            messenger._transport.failures.stop()
        messenger._transport.engine.close()
        _write_trace(messenger)
    if leaving is not None:
        _abort_job(*leaving)
    if _failures.failure_seen():
        _failures.exit_without_finalize()


def _write_trace(messenger: Watched) -> None:
    # What a messenger that is not closed has traced so far (an exit
    # without close, an uncaught exception), written if it can be.
    tracer = messenger._transport.tracer
    if tracer is not None:
        tracer.write_safely()


def _leaving_early() -> tuple[str, int] | None:
    """Why this rank leaves a job whose other ranks may wait for it, with an exit code; or None.

    An uncaught exception that was not already aborting the job (the
    messenger was made with ``abort_on_error=False``) and a SystemExit out
    of a messenger's block are such early exits; a program that ends with a
    messenger left open but no error is not.
    """
    if not _in_multi_rank_job:
        return None
    uncaught = getattr(sys, "last_value", None)  # set by Python when one ended the program
    if uncaught is not None and (_open_messengers or _abandoned):
        return f"raised an uncaught {type(uncaught).__name__}", _exit_code(type(uncaught))
    return _exiting


def _abort_job(why: str, code: int) -> None:
    """Log that this rank `why`, then abort the MPI job with exit status `code`."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    _diagnostics.logger.critical(
        "conveyor: rank %d of %d %s: aborting the job (exit status %d), whose other ranks "
        "would wait for it",
        world.Get_rank(),
        world.Get_size(),
        why,
        code,
    )
    sys.stderr.flush()
    # mpiexec may drop what a rank wrote just before MPI_Abort (MPICH's
    # hydra, seen in CI: a traceback cut after its first line): give its
    # I/O forwarding a moment to carry the traceback out first.
    time.sleep(_ABORT_GRACE_SECONDS)
    world.Abort(code)


def _install_abort_hook() -> None:
    """Make an uncaught exception print its traceback, then abort the MPI job."""
    global _abort_hook_installed
    if _abort_hook_installed:
        return
    previous = sys.excepthook

    def abort_job(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        previous(exc_type, exc, tb)
        for messenger in list(_open_messengers):
            _write_trace(messenger)
        _abort_job(f"raised an uncaught {exc_type.__name__}", _exit_code(exc_type))

    sys.excepthook = abort_job
    _abort_hook_installed = True
