"""OSU-style micro-benchmarks: conveyor side by side with raw mpi4py.

Run on exactly two ranks::

    mpiexec -n 2 python -m conveyor._bench.osu [--which latency,oneway,bw] [--reps 9]
                                               [--max-size 256M] [--json FILE]

Every benchmark measures conveyor and its raw mpi4py baseline in the same
mpiexec run, rotating their order every repetition (so machine noise hits
all of them), and reports the median of the repetitions and their ratio:

latency
    osu_latency: ping-pong of an 8-byte payload, one-way latency = round
    trip / 2. conveyor: ``m.request(1, "echo", x).result()`` answered by a
    handler that returns the payload, once with a 1-element float64 numpy
    array and once with a Python int (both 8 bytes of data). Raw:
    ``comm.Send``/``comm.Recv`` of a preallocated 8-byte numpy buffer.
oneway
    The same ping-pong built from fire-and-forget sends: rank 0 ``m.send``,
    rank 1's handler ``m.send``-s the payload back, rank 0 waits in
    ``m.progress``. Same payloads, same raw baseline.
bw
    osu_bw: rank 0 sends a window of messages of one size, rank 1 acknowledges
    the whole window, bandwidth = bytes sent / time. conveyor: a window of
    ``m.send(1, "sink", arr)``, then ``m.request(1, "ack").result()`` (per-pair
    order puts the ack behind the window's data). Raw: ``comm.Isend`` window,
    ``Waitall``, 4-byte ack. At 16 MiB the pickle-based ``comm.send``/``recv``
    is measured too.

Rank 0 prints a table; ``--json`` writes every sample for later analysis.
"""

import argparse
import json
import statistics
import sys
import time

import mpi4py
import numpy as np
from mpi4py import MPI

import conveyor as cv

from .runinfo import run_metadata

KiB = 1 << 10
MiB = 1 << 20

# Ratio targets: (comparison, bound). Latencies are conveyor/raw (lower is
# better); bandwidths are conveyor/baseline (higher is better).
TARGETS = {
    "latency": ("<=", 2.0),
    "oneway": ("<=", 1.5),
    "bw": (">=", 0.9),
    "bw-vs-pickle": (">=", 3.0),
}
BW_TARGET_MIN_SIZE = 1 * MiB  # below this, per-message costs dominate: no target
PICKLE_SIZE = 16 * MiB

# osu_bw's window of 64 messages, capped so a window stays within this many
# bytes: conveyor delivers each message in its own freshly allocated array,
# so the receiver may hold a whole window at once.
BW_WINDOW = 64
BW_WINDOW_BYTES = 256 * MiB
# Bytes moved per timed run (at least two windows): enough for a stable
# figure at every size while keeping the whole run short.
BW_RUN_BYTES = 1024 * MiB

# The 8-byte payloads of the latency benchmarks: a numpy array is what the raw
# side sends, an int shows the cost of the messaging itself without numpy's.
PAYLOADS = {"array": np.zeros(1, dtype=np.float64), "int": 1}

TIMEOUT = 60.0  # seconds any single wait may take before the run is declared hung
TAG = 7  # raw mpi4py traffic; conveyor uses its own communicator


def parse_size(text):
    """Parse ``65536``, ``64K``, ``16M`` or ``1G`` into bytes."""
    units = {"K": KiB, "M": MiB, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def format_size(n):
    """Format a byte count the way the table shows it: ``64 KiB``, ``8 B``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


class Peer:
    """The conveyor side of both ranks: handlers and the counters they keep.

    Rank 1 serves until its counters reach what rank 0 will send, so both
    ranks know when a run ends without any extra message.
    """

    def __init__(self, m):
        self.m = m
        self.served = 0  # messages rank 1 handled in the current run
        self.pongs = 0  # "oneway" answers rank 0 received

        m.on("echo")(self._echo)
        m.on("ping")(self._ping)
        m.on("pong")(self._pong)
        m.on("sink")(self._sink)
        m.on("ack")(self._ack)

    def _echo(self, msg):
        self.served += 1
        return msg.payload

    def _ping(self, msg):
        self.served += 1
        self.m.send(msg.source, "pong", msg.payload)

    def _pong(self, msg):
        self.pongs += 1

    def _sink(self, msg):
        pass  # dropping the payload frees its receive buffer, as a consumer would

    def _ack(self, msg):
        self.served += 1

    def serve(self, count):
        """Rank 1: handle messages until `count` counted ones have arrived."""
        self.served = 0
        deadline = time.monotonic() + TIMEOUT
        while self.served < count:
            self.m.progress(1.0)
            if time.monotonic() > deadline:
                raise cv.TimeoutError(f"rank 1 served {self.served} of {count} messages")


# Each run_* function runs on both ranks and returns rank 0's elapsed seconds
# for `iters` timed iterations after `warmup` untimed ones (rank 1: None).


def run_raw_pingpong(comm, iters, warmup):
    buf = np.zeros(1, dtype=np.float64)
    other = 1 - comm.rank
    elapsed = None
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        if comm.rank == 0:
            comm.Send(buf, other, TAG)
            comm.Recv(buf, other, TAG)
        else:
            comm.Recv(buf, other, TAG)
            comm.Send(buf, other, TAG)
    if comm.rank == 0:
        elapsed = time.perf_counter() - start
    return elapsed


def run_cv_request(peer, x, iters, warmup):
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        return None
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        x = m.request(1, "echo", x).result(timeout=TIMEOUT)
    return time.perf_counter() - start


def run_cv_oneway(peer, x, iters, warmup):
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        return None
    peer.pongs = 0
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        m.send(1, "ping", x)
        deadline = time.monotonic() + TIMEOUT
        while peer.pongs <= i:
            m.progress(1.0)
            if time.monotonic() > deadline:
                raise cv.TimeoutError("no pong from rank 1")
    return time.perf_counter() - start


def bw_shape(size):
    """(window, timed iterations, warm-up iterations) for one message size."""
    window = max(1, min(BW_WINDOW, BW_WINDOW_BYTES // size))
    iters = max(2, BW_RUN_BYTES // (window * size))
    return window, iters, max(1, iters // 10)


def run_mpi4py_bw(comm, window, iters, warmup, send_window, receive_window):
    """Time osu_bw's loop: rank 0 sends a window of messages, rank 1 acks it.

    Returns rank 0's elapsed seconds for the `iters` timed windows (None on rank 1).
    """
    ack = np.zeros(1, dtype=np.int32)
    start = None
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        if comm.rank == 0:
            send_window()
            comm.Recv(ack, 1, TAG)
        else:
            receive_window()
            comm.Send(ack, 0, TAG)
    return time.perf_counter() - start if comm.rank == 0 else None


def run_raw_bw(comm, arr, window, iters, warmup):
    def send_window():
        MPI.Request.Waitall([comm.Isend(arr, 1, TAG) for _ in range(window)])

    def receive_window():
        # osu_bw receives the whole window into one buffer.
        MPI.Request.Waitall([comm.Irecv(arr, 0, TAG) for _ in range(window)])

    return run_mpi4py_bw(comm, window, iters, warmup, send_window, receive_window)


def run_pickle_bw(comm, arr, window, iters, warmup):
    def send_window():
        for _ in range(window):
            comm.send(arr, 1, TAG)

    def receive_window():
        for _ in range(window):
            comm.recv(source=0, tag=TAG)

    return run_mpi4py_bw(comm, window, iters, warmup, send_window, receive_window)


def run_cv_bw(peer, arr, window, iters, warmup):
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)  # counts the acks; the window's data precedes each
        return None
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        for _ in range(window):
            m.send(1, "sink", arr)
        m.request(1, "ack").result(timeout=TIMEOUT)
    return time.perf_counter() - start


def measure(contestants, reps, comm):
    """Run each contestant `reps` times, rotating their order every repetition.

    Returns {name: [rank 0's elapsed seconds, ...]} (empty lists on rank 1).
    A barrier starts every run so both ranks enter it together.
    """
    samples = {name: [] for name in contestants}
    names = list(contestants)
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            comm.Barrier()
            elapsed = contestants[name]()
            if elapsed is not None:
                samples[name].append(elapsed)
    return samples


def verdict(benchmark, ratio):
    op, bound = TARGETS[benchmark]
    met = ratio <= bound if op == "<=" else ratio >= bound
    return f"{'≤' if op == '<=' else '≥'} {bound:g}×", met


class Report:
    """Rank 0's table and JSON rows."""

    COLUMNS = ("benchmark", "size", "mpi4py", "conveyor", "ratio", "target", "met")
    WIDTHS = (14, 10, 14, 14, 7, 7, 4)

    def __init__(self, enabled):
        self.enabled = enabled
        self.rows = []

    def line(self, cells):
        if self.enabled:
            print("  ".join(f"{c:>{w}}" for c, w in zip(cells, self.WIDTHS)), flush=True)

    def header(self):
        self.line(self.COLUMNS)
        self.line(["-" * w for w in self.WIDTHS])

    def add(self, benchmark, size, unit, baseline, conveyor, *, baseline_name, payload=None,
            targeted=True):
        """Record one comparison; `baseline`/`conveyor` are per-repetition values."""
        if not self.enabled:
            return
        base, mine = statistics.median(baseline), statistics.median(conveyor)
        ratio = mine / base
        target, met = verdict(benchmark, ratio) if targeted else ("-", None)
        self.rows.append({
            "benchmark": benchmark,
            "size_bytes": size,
            "payload": payload,
            "unit": unit,
            "baseline": baseline_name,
            "baseline_median": base,
            "conveyor_median": mine,
            "ratio": ratio,
            "target": target,
            "met": met,
            "baseline_samples": baseline,
            "conveyor_samples": conveyor,
        })
        met_text = "-" if met is None else ("yes" if met else "NO")
        label = format_size(size) + (f" {payload}" if payload else "")
        self.line([benchmark, label, f"{base:,.2f} {unit}", f"{mine:,.2f} {unit}",
                   f"{ratio:.2f}×", target, met_text])


def bench_latency(kind, peer, comm, report, reps, iters):
    warmup = max(1, iters // 10)
    conveyor_run = run_cv_request if kind == "latency" else run_cv_oneway
    contestants = {"raw": lambda: run_raw_pingpong(comm, iters, warmup)}
    for name, x in PAYLOADS.items():
        contestants[name] = lambda x=x: conveyor_run(peer, x, iters, warmup)
    samples = measure(contestants, reps, comm)
    # One-way latency in µs: half a round trip.
    one_way = {k: [t / iters / 2 * 1e6 for t in v] for k, v in samples.items()}
    for name in PAYLOADS:
        report.add(kind, 8, "µs", one_way["raw"], one_way[name], baseline_name="mpi4py Send/Recv",
                   payload=name)


def bench_bw(peer, comm, report, reps, sizes):
    for size in sizes:
        window, iters, warmup = bw_shape(size)
        arr = np.ones(size, dtype=np.uint8)  # touched, so no page faults are timed
        contestants = {
            "raw": lambda: run_raw_bw(comm, arr, window, iters, warmup),
            "conveyor": lambda: run_cv_bw(peer, arr, window, iters, warmup),
        }
        if size == PICKLE_SIZE:
            contestants["pickle"] = lambda: run_pickle_bw(comm, arr, window, iters, warmup)
        samples = measure(contestants, reps, comm)
        # MB/s with MB = 10**6 bytes, as osu_bw reports.
        rate = {k: [size * window * iters / t / 1e6 for t in v] for k, v in samples.items()}
        report.add("bw", size, "MB/s", rate["raw"], rate["conveyor"],
                   baseline_name="mpi4py Isend/Recv", targeted=size >= BW_TARGET_MIN_SIZE)
        if size == PICKLE_SIZE:
            report.add("bw-vs-pickle", size, "MB/s", rate["pickle"], rate["conveyor"],
                       baseline_name="mpi4py pickle send/recv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", default="latency,oneway,bw",
                        help="comma-separated benchmarks: latency, oneway, bw (default: all)")
    parser.add_argument("--reps", type=int, default=9,
                        help="repetitions per measurement; medians are reported (default 9)")
    parser.add_argument("--iters", type=int, default=20000,
                        help="timed ping-pongs per latency repetition (default 20000)")
    parser.add_argument("--min-size", type=parse_size, default=64 * KiB,
                        help="smallest bandwidth message (default 64K)")
    parser.add_argument("--max-size", type=parse_size, default=256 * MiB,
                        help="largest bandwidth message; sizes go up by 4x (default 256M)")
    parser.add_argument("--json", metavar="FILE", help="write all samples and medians to FILE")
    args = parser.parse_args(argv)
    which = [w.strip() for w in args.which.split(",") if w.strip()]
    unknown = set(which) - {"latency", "oneway", "bw"}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.reps < 1 or args.iters < 1:
        parser.error("--reps and --iters must be at least 1")

    comm = MPI.COMM_WORLD
    if comm.size != 2:
        if comm.rank == 0:
            print(f"osu.py needs exactly 2 ranks (mpiexec -n 2), not {comm.size}", file=sys.stderr)
        return 2

    sizes = []
    size = args.min_size
    while size <= args.max_size:
        sizes.append(size)
        size *= 4

    report = Report(enabled=comm.rank == 0)
    started = time.perf_counter()
    with cv.Messenger() as m:
        peer = Peer(m)
        report.header()
        for kind in which:
            if kind == "bw":
                bench_bw(peer, comm, report, args.reps, sizes)
            else:
                bench_latency(kind, peer, comm, report, args.reps, args.iters)
    wall = time.perf_counter() - started

    if comm.rank == 0:
        print(f"\n{args.reps} repetitions each, medians; wall time {wall:.0f} s", flush=True)
        if args.json:
            meta = run_metadata(reps=args.reps, latency_iters=args.iters, wall_seconds=wall)
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": report.rows}, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
