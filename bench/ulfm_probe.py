"""What the other ranks see when one dies, with mpi4py alone (docs/fault-tolerance.rst).

Rank 2 of 3 dies half a second after a barrier (``exit``: ``os._exit(0)``;
``kill``: SIGKILL; ``stop``: SIGSTOP, alive but silent). Ranks 0 and 1, with
``ERRORS_RETURN`` on a duplicate of ``COMM_WORLD``, wait for it in a
receive (``blocking``: ``Recv``; ``irecv``: a tested ``Irecv``; ``irecv-any``
and ``probe-any``: from ``ANY_SOURCE``) at most ``PROBE_S`` seconds (20),
print what ended the wait and when, then try a non-blocking allreduce over
every rank, and a communicator of the two left (ULFM's ``Shrink`` if
``--shrink``, else ``MPI_Comm_create_group``). Run it under each launcher::

    mpiexec -n 3 python bench/ulfm_probe.py exit blocking                   # MPICH: the job ends
    mpiexec -disable-auto-cleanup -n 3 python bench/ulfm_probe.py exit irecv
    mpiexec --with-ft ulfm -n 3 python bench/ulfm_probe.py kill blocking --shrink   # Open MPI
    mpiexec --enable-recovery -n 3 python bench/ulfm_probe.py exit irecv
"""

import os
import signal
import sys
import time

import numpy as np
from mpi4py import MPI

LIMIT = float(os.environ.get("PROBE_S", "20"))


def wait(rank, what, start, complete):
    """Call `complete()` until it returns True, an MPI error or LIMIT s; print which."""
    while True:
        try:
            if complete():
                print(f"{rank}: {what} completed after {time.time() - start:.2f} s", flush=True)
                return
        except MPI.Exception as e:
            print(
                f"{rank}: {what} failed after {time.time() - start:.2f} s: {e.Get_error_string()}",
                flush=True,
            )
            return
        if time.time() - start > LIMIT:
            print(f"{rank}: {what} still waiting after {LIMIT:g} s", flush=True)
            return
        time.sleep(0.01)


def main():
    how, receive = sys.argv[1], sys.argv[2]
    shrink = "--shrink" in sys.argv
    comm = MPI.COMM_WORLD.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    rank = comm.Get_rank()
    comm.Barrier()
    if rank == 2:
        time.sleep(0.5)
        if how == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(0)
    buf = np.zeros(1, dtype=np.int64)
    source = MPI.ANY_SOURCE if receive.endswith("-any") else 2
    start = time.time()
    if receive == "blocking":
        wait(rank, "Recv from rank 2", start, lambda: comm.Recv(buf, source, 5) or True)
    elif receive == "probe-any":
        wait(rank, "Probe(ANY_SOURCE)", start, lambda: comm.Probe(source, 5) or True)
    else:
        request = comm.Irecv(buf, source, 5)
        wait(rank, f"Irecv from {source}", start, request.Test)
    start = time.time()
    out = np.zeros(1, dtype=np.int64)
    try:
        request = comm.Iallreduce(buf, out)
        wait(rank, "Iallreduce over all", start, request.Test)
    except MPI.Exception as e:
        print(f"{rank}: Iallreduce failed: {e.Get_error_string()}", flush=True)
    start = time.time()
    try:
        if shrink:
            comm.Ack_failed()
            left = comm.Shrink()
        else:
            left = comm.Create_group(comm.Get_group().Excl([2]))
        total = left.allreduce(1)
        print(
            f"{rank}: {left.Get_size()} ranks left, allreduce {total}, {time.time() - start:.2f} s",
            flush=True,
        )
    except MPI.Exception as e:
        print(f"{rank}: no communicator of the ranks left: {e.Get_error_string()}", flush=True)
    start = time.time()
    MPI.Finalize()
    print(f"{rank}: MPI_Finalize returned after {time.time() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
