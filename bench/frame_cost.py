"""What a header beside each array costs MPI itself: the floor under conveyor's bw at 64-256 KiB.

Usage (2 ranks)::

    mpiexec -n 2 python bench/frame_cost.py [--sizes 64K,256K] [--mib 512] [--reps 7]

conveyor sends each message as two MPI messages: its frame (a small
header: tag, dtype, shape) and the array's bytes, zero-copy. This runs
osu_bw's windows with mpi4py receivers that need the same, in one job,
their order rotated every repetition, and prints each one's median
bandwidth as a ratio of osu_bw's:

osu_bw
    ``Isend`` window into one preposted buffer (`osu.run_raw_isend_windows`).
probed
    each message's size from ``Mprobe``, received into a new array, a call
    with it (`osu.run_handled_windows`, conveyor bench's ``bw-vs-handled``).
header message
    a 64-byte header message before each array (conveyor's frame), each
    array into a new array of the size it announces, a call with it.
one message
    header and array sent as one MPI message of a non-contiguous datatype
    (each at its own address, from ``MPI_BOTTOM``), received into one
    buffer: what conveyor would send to spare the second message without
    copying the array.
"""

import argparse
import statistics

import numpy as np
from mpi4py import MPI

from conveyor._bench import osu
from conveyor.cli.arguments import byte_sizes, positive_int

HEADER_BYTES = 64


def run_header_message(comm, arr, window, iters, warmup):
    header = np.zeros(HEADER_BYTES, dtype=np.uint8)
    header[:8].view(np.int64)[0] = arr.nbytes  # the size it announces
    received = np.empty(HEADER_BYTES, dtype=np.uint8)

    def send_window():
        requests = []
        for _ in range(window):
            requests.append(comm.Isend(header, 1, osu.TAG + 1))
            requests.append(comm.Isend(arr, 1, osu.TAG))
        MPI.Request.Waitall(requests)

    def receive_window():
        for _ in range(window):
            comm.Recv(received, 0, osu.TAG + 1)
            buf = np.empty(int(received[:8].view(np.int64)[0]), dtype=np.uint8)
            comm.Recv(buf, 0, osu.TAG)
            osu._handle(buf)

    return osu.run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)


def run_one_message(comm, arr, window, iters, warmup):
    header = np.arange(HEADER_BYTES, dtype=np.uint8)
    blocks = [HEADER_BYTES, arr.nbytes]
    addresses = [MPI.Get_address(header), MPI.Get_address(arr)]
    datatype = MPI.BYTE.Create_hindexed(blocks, addresses).Commit()
    status = MPI.Status()
    # Once, untimed: the header and the array arrive, in that order, in one buffer.
    if comm.rank == 0:
        comm.Send([MPI.BOTTOM, 1, datatype], 1, osu.TAG)
    else:
        buf = np.empty(HEADER_BYTES + arr.nbytes, dtype=np.uint8)
        comm.Recv(buf, 0, osu.TAG)
        if not (
            np.array_equal(buf[:HEADER_BYTES], header) and np.array_equal(buf[HEADER_BYTES:], arr)
        ):
            raise SystemExit("one message: header and array did not arrive as sent")

    def send_window():
        MPI.Request.Waitall(
            [comm.Isend([MPI.BOTTOM, 1, datatype], 1, osu.TAG) for _ in range(window)]
        )

    def receive_window():
        for _ in range(window):
            message = comm.Mprobe(0, osu.TAG, status)
            buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
            message.Recv(buf)
            osu._handle(buf[HEADER_BYTES:])

    try:
        return osu.run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)
    finally:
        datatype.Free()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=byte_sizes, default="64K,256K", help="message sizes, comma-separated"
    )
    parser.add_argument("--mib", type=positive_int, default=512, help="MiB moved per repetition")
    parser.add_argument("--reps", type=positive_int, default=7, help="repetitions (median)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        raise SystemExit("frame_cost.py runs on 2 ranks (mpiexec -n 2)")
    for size in args.sizes:
        window, iters, warmup = osu.bw_shape(size, args.mib << 20)
        arr = np.ones(size, dtype=np.uint8)
        contestants = {
            "osu_bw": lambda: osu.run_raw_isend_windows(comm, arr, window, iters, warmup),
            "probed": lambda: osu.run_handled_windows(comm, arr, window, iters, warmup),
            "header message": lambda: run_header_message(comm, arr, window, iters, warmup),
            "one message": lambda: run_one_message(comm, arr, window, iters, warmup),
        }
        samples = osu.measure(contestants, args.reps, comm)
        if comm.rank == 0:
            base = statistics.median(samples["osu_bw"])
            mbs = size * window * iters / base / 1e6
            ratios = "  ".join(
                f"{name} {base / statistics.median(t):.2f}x"
                for name, t in samples.items()
                if name != "osu_bw"
            )
            print(f"{osu.format_size(size):>8}  osu_bw {mbs:,.0f} MB/s  {ratios}", flush=True)


if __name__ == "__main__":
    main()
