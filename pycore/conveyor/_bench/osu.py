"""OSU-style micro-benchmarks: conveyor side by side with raw mpi4py.

The per-rank program of ``conveyor bench``. Run on exactly two ranks::

    mpiexec -n 2 python -m conveyor._bench.osu [--which latency,oneway,bw,...]
                                               [--reps 9] [--quick] [--json FILE]

Every benchmark measures conveyor and its baseline in the same mpiexec run,
rotating their order every repetition (so machine noise hits all of them),
and reports the median of the repetitions and their ratio:

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

    For both, a second baseline receives each message into a new array and
    calls a function with it, as conveyor hands its handler an array of its
    own (`run_handled_pingpong`; rows ``latency-vs-handled`` and
    ``oneway-vs-handled``, the array payload, no target).
bw
    osu_bw: rank 0 sends a window of messages of one size, rank 1 acknowledges
    the whole window, bandwidth = bytes sent / time. conveyor: a window of
    ``m.send(1, "sink", arr)``, then ``m.request(1, "ack").result()`` (per-pair
    order puts the ack behind the window's data). Raw: ``comm.Isend`` window,
    ``Waitall``, 4-byte ack. At 16 MiB (or the largest size below it) the
    pickle-based ``comm.send``/``recv`` is measured too; below 1 MiB, a
    receiver that hands each message to Python, as conveyor does
    (`run_handled_windows`).
rate
    osu_mbw_mr with one pair: rank 0 sends a window of 8-byte messages, rank
    1 receives them all and acknowledges the window; rate = messages / time
    on rank 0. ``comm.Isend`` of an 8-byte numpy buffer uses osu_mbw_mr's
    window of 64 (rank 1 posts 64 ``Irecv``; every request must complete
    before the next window). Senders that need no request per message
    stream, with one ack per 4096 messages: conveyor's
    ``s = m.sender("rate"); s.send(1, i)`` (a Python int, aggregation on,
    then the ack request) and pickle-based ``comm.send`` (rank 1 calls
    ``comm.recv``; then a 4-byte ``Send``/``Recv`` ack). The ``rate-w64``
    row (no target) shows conveyor held to the window of 64, where each
    window ends in a round trip.
batch
    Batches of n uint64 items (10,000, 100,000 and 1,000,000): rank 0 sends a
    window of ``s.send_many(dests, items)`` (every item to rank 1), then the
    ack request; rank 1's handler counts ``len(msg.payload)``; rate = items
    delivered / time. Baseline: ``comm.Send`` of the same 8·n-byte array per
    batch into a preallocated ``comm.Recv`` buffer, then a 4-byte ack.
agg-latency
    The oneway ping-pong of a Python int through a Messenger with
    aggregation on, against one with ``aggregate=False``: what aggregation
    costs a message that is sent alone.
rate-trace
    The rate stream (``s.send(1, i)``, 4096 per ack request) through a
    Messenger with ``trace=`` set, against the untraced one: what tracing
    costs per message (each send and each delivery is recorded). The
    traces go to a temporary directory, removed afterwards.

Each benchmark runs in Messengers of its own, made before it and closed
after it, so that none inherits the state another left (`run_kind`). Rank 0
prints a table; ``--json`` writes metadata, medians and every sample.
"""

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

import conveyor as cv

from .._native import core
from .plan import MiB, add_run_options, format_size, plan_from
from .runinfo import run_metadata
from .summary import format_line, format_ratio, format_result, format_target, format_value, meets

# Ratio targets per table row: (comparison, bound). Times are conveyor/baseline
# (lower is better); rates are conveyor/baseline (higher is better).
TARGETS = {
    "latency": ("<=", 2.0),
    "oneway": ("<=", 1.5),
    "bw": (">=", 0.9),
    "bw-vs-pickle": (">=", 3.0),
    "rate": (">=", 3.0),
    "rate-vs-pickle": (">=", 3.0),  # rate-w64 has none: a round trip per 64 messages
    "agg-latency": ("<=", 2.0),
    "rate-trace": (">=", 0.85),  # tracing on costs at most 15% of the message rate
}
BW_TARGET_MIN_SIZE = 1 * MiB  # below this, per-message costs dominate: no target
PICKLE_SIZE = 16 * MiB

# osu_bw's window of 64 messages, capped so a window stays within this many
# bytes: conveyor delivers each message in its own freshly allocated array,
# so the receiver may hold a whole window at once.
BW_WINDOW = 64
BW_WINDOW_BYTES = 256 * MiB

RATE_WINDOW = 64  # osu_mbw_mr's window, for the requests comm.Isend must complete
# Messages per acknowledged window for the senders that need no request per
# message (conveyor's send, pickle's blocking comm.send): a stream, as
# either would be used, with one ack per window to time it.
RATE_STREAM = 4096

BATCH_SIZES = (10_000, 100_000, 1_000_000)  # items of 8 bytes per send_many call
# Batches per window: up to 64, fewer for large batches, so a window holds
# at most this many items.
BATCH_WINDOW_ITEMS = 2_000_000

# The 8-byte payloads of the latency benchmarks: a numpy array is what the raw
# side sends, an int shows the cost of the messaging itself without numpy's.
PAYLOADS = {"array": np.zeros(1, dtype=np.float64), "int": 1}

TIMEOUT = 60.0  # seconds any single wait may take before the run is declared hung
TAG = 7  # raw mpi4py traffic; conveyor uses its own communicators


def format_count(n):
    """Format an item count compactly: ``10k``, ``1M``, ``1500``."""
    for suffix, scale in (("M", 1_000_000), ("k", 1000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


class Peer:
    """The conveyor side of both ranks of one Messenger: handlers and their counters.

    Rank 1 serves until its counters reach what rank 0 will send, so both
    ranks know when a run ends without any extra message.
    """

    def __init__(self, m):
        self.m = m
        self.served = 0  # echo, ping and ack messages rank 1 handled in the current run
        self.pongs = 0  # "oneway" answers rank 0 received
        self.received = 0  # messages ("sink", "rate") or items ("batch") rank 1 received

        m.on("echo")(self._echo)
        m.on("ping")(self._ping)
        m.on("pong")(self._pong)
        m.on("sink")(self._count_message)
        m.on("rate")(self._count_message)
        m.on("batch")(self._count_items)
        m.on("ack")(self._ack)

    def _echo(self, msg):
        self.served += 1
        return msg.payload

    def _ping(self, msg):
        self.served += 1
        self.m.send(msg.source, "pong", msg.payload)

    def _pong(self, msg):
        self.pongs += 1

    def _count_message(self, msg):
        # Dropping the payload frees its receive buffer, as a consumer would.
        self.received += 1

    def _count_items(self, msg):
        self.received += len(msg.payload)

    def _ack(self, msg):
        self.served += 1

    def serve(self, count, counted=None):
        """Rank 1: handle messages until `count` counted ones have arrived.

        ``counted()`` says how many so far (by default the messages these
        handlers counted). The counters start at 0 and are reset (`reset`)
        only once a run has settled: a messenger served by its own thread
        may count the next run's first messages before its program reaches
        this call.
        """
        deadline = time.monotonic() + TIMEOUT
        # self.served read inline: a call here would add to every round trip timed.
        while (self.served if counted is None else counted()) < count:
            self.m.progress(1.0)
            if time.monotonic() > deadline:
                done = self.served if counted is None else counted()
                raise cv.TimeoutError(f"rank 1 served {done} of {count} messages")

    def reset(self):
        """Zero the counters, between runs (no message in flight)."""
        self.served = self.received = self.pongs = 0


# Each run_* function runs on both ranks and returns rank 0's elapsed seconds
# for `iters` timed iterations after `warmup` untimed ones (rank 1: None).


def settled(peer, elapsed):
    """Return `elapsed` once no message of `peer` is in flight on either rank (collective).

    With aggregation, rank 1's last answer of a run may still be buffered
    when its serving loop ends: `Messenger.wait_quiet` sends it, and no
    message of one run is left to be handled in the next. The counters are
    reset then.
    """
    peer.m.wait_quiet()
    peer.reset()
    return elapsed


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


def run_handled_pingpong(comm, iters, warmup):
    """`run_raw_pingpong`, each message received the way a handler needs it.

    Each rank receives into a new array (``comm.Recv``), calls a function
    with it and sends that array back: the least a receiver does that hands
    every message to Python as an array of its own, as conveyor's handlers
    get one. (The loop is written out, as `run_raw_pingpong`'s: a call
    shared by both would add to every leg timed.)
    """
    buf = np.zeros(1, dtype=np.float64)
    other = 1 - comm.rank
    elapsed = None
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        if comm.rank == 0:
            comm.Send(buf, other, TAG)
            buf = np.empty_like(buf)
            comm.Recv(buf, other, TAG)
            _handle(buf)
        else:
            buf = np.empty_like(buf)
            comm.Recv(buf, other, TAG)
            _handle(buf)
            comm.Send(buf, other, TAG)
    if comm.rank == 0:
        elapsed = time.perf_counter() - start
    return elapsed


def run_cv_request(peer, x, iters, warmup):
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        return settled(peer, None)
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        x = m.request(1, "echo", x).result(timeout=TIMEOUT)
    return settled(peer, time.perf_counter() - start)


def run_cv_oneway(peer, x, iters, warmup):
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        return settled(peer, None)
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        m.send(1, "ping", x)
        deadline = time.monotonic() + TIMEOUT
        while peer.pongs <= i:
            m.progress(1.0)
            if time.monotonic() > deadline:
                raise cv.TimeoutError("no pong from rank 1")
    return settled(peer, time.perf_counter() - start)


def bw_shape(size, run_bytes):
    """(window, timed iterations, warm-up iterations) for one message size."""
    window = max(1, min(BW_WINDOW, BW_WINDOW_BYTES // size))
    iters = max(2, run_bytes // (window * size))
    return window, iters, max(1, iters // 10)


def run_mpi4py_windows(comm, iters, warmup, send_window, receive_window):
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


def isend_window(comm, arr, window):
    """osu_bw's sending side: a window of ``comm.Isend(arr)`` to rank 1, then wait for all."""
    MPI.Request.Waitall([comm.Isend(arr, 1, TAG) for _ in range(window)])


def run_raw_isend_windows(comm, arr, window, iters, warmup):
    """osu_bw / osu_mbw_mr: windows of ``comm.Isend(arr)``."""

    def send_window():
        isend_window(comm, arr, window)

    def receive_window():
        # osu_bw receives the whole window into one buffer.
        MPI.Request.Waitall([comm.Irecv(arr, 0, TAG) for _ in range(window)])

    return run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)


def run_handled_windows(comm, arr, window, iters, warmup):
    """osu_bw's window of ``comm.Isend``, received the way a handler needs it.

    Rank 1 learns each message's size from the message (``comm.Mprobe``),
    as conveyor does, receives it into a new array of that size and calls a
    function with it, which drops it: the least a receiver does that hands
    every message to Python as an array of its own. (``comm.Recv`` into an
    array of the known size was slower at 64 KiB, 0.86–0.89× of osu_bw
    against 0.91–0.97×; 64 ``Irecv`` into arrays of their own, the window
    posted at once, slower from 256 KiB: 16 MiB of buffers pass through the
    cache.)
    """

    def send_window():
        isend_window(comm, arr, window)

    status = MPI.Status()

    def receive_window():
        for _ in range(window):
            message = comm.Mprobe(0, TAG, status)
            buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
            message.Recv(buf)
            _handle(buf)

    return run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)


def _handle(arr):
    """The handler of the ``run_handled_*`` receivers: a call with the array, which it leaves be."""


def run_raw_send_windows(comm, arr, window, iters, warmup):
    """Windows of blocking ``comm.Send(arr)`` into one preallocated buffer."""
    buf = np.empty_like(arr)

    def send_window():
        for _ in range(window):
            comm.Send(arr, 1, TAG)

    def receive_window():
        for _ in range(window):
            comm.Recv(buf, 0, TAG)

    return run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)


def run_pickle_windows(comm, make_item, window, iters, warmup):
    """Windows of pickle-based ``comm.send(make_item(i))``, one message each."""

    def send_window():
        for i in range(window):
            comm.send(make_item(i), 1, TAG)

    def receive_window():
        for _ in range(window):
            comm.recv(source=0, tag=TAG)

    return run_mpi4py_windows(comm, iters, warmup, send_window, receive_window)


def run_cv_windows(peer, send_window, delivered_per_window, iters, warmup):
    """conveyor's osu_bw loop: `send_window()`, then a request that rank 1 acks.

    Per-pair order puts the ack behind the window's data, so once rank 1 has
    served the last ack it has received everything: it checks that its
    handlers counted ``delivered_per_window`` per window.
    """
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        expected = delivered_per_window * (warmup + iters)
        if peer.received != expected:
            raise cv.ConveyorError(
                f"rank 1 received {peer.received} of {expected} messages or items"
            )
        return settled(peer, None)
    for i in range(warmup + iters):
        if i == warmup:
            start = time.perf_counter()
        send_window()
        m.request(1, "ack").result(timeout=TIMEOUT)
    return settled(peer, time.perf_counter() - start)


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
    """Return (target as data or None, passed: True, False or None)."""
    if benchmark not in TARGETS:
        return None, None
    op, bound = TARGETS[benchmark]
    target = {"op": op, "ratio": bound}
    return target, meets(target, ratio)


class Report:
    """Rank 0's table and JSON rows."""

    COLUMNS = ("benchmark", "size", "baseline", "conveyor", "ratio", "target", "result")
    WIDTHS = (18, 12, 18, 18, 8, 7, 6)

    def __init__(self, enabled):
        self.enabled = enabled
        self.rows = []
        self.contestants = {}  # benchmark -> (baseline, conveyor) descriptions, for the legend

    def line(self, cells):
        if self.enabled:
            print(format_line(cells, self.WIDTHS), flush=True)

    def progress(self, text):
        """Say which benchmark runs now, on stderr: a line of its own, off the table's stream."""
        if self.enabled:
            print(f"conveyor bench: {text}", file=sys.stderr, flush=True)

    def header(self):
        self.line(self.COLUMNS)
        self.line(["-" * w for w in self.WIDTHS])

    def add(
        self,
        benchmark,
        label,
        size,
        unit,
        baseline,
        conveyor,
        *,
        baseline_name,
        conveyor_name,
        payload=None,
        targeted=True,
    ):
        """Record one comparison; `baseline`/`conveyor` are per-repetition values."""
        if not self.enabled:
            return
        base, mine = statistics.median(baseline), statistics.median(conveyor)
        ratio = mine / base
        target, passed = verdict(benchmark, ratio) if targeted else (None, None)
        self.rows.append(
            {
                "benchmark": benchmark,
                "label": label,
                "size_bytes": size,
                "payload": payload,
                "unit": unit,
                "better": "lower" if unit == "µs" else "higher",
                "baseline": baseline_name,
                "conveyor": conveyor_name,
                "baseline_median": base,
                "conveyor_median": mine,
                "ratio": ratio,
                "target": target,
                "passed": passed,
                "baseline_samples": baseline,
                "conveyor_samples": conveyor,
            }
        )
        self.contestants.setdefault(benchmark, (baseline_name, conveyor_name))
        self.line(
            [
                benchmark,
                label,
                format_value(base, unit),
                format_value(mine, unit),
                f"{format_ratio(ratio)}×",
                format_target(target),
                format_result(passed),
            ]
        )

    def legend(self):
        """Print what each benchmark compared and how many targets were met."""
        if not self.enabled:
            return
        print("\nbaseline vs conveyor:", flush=True)
        for benchmark, (baseline, conveyor) in self.contestants.items():
            print(f"  {benchmark:>18}: {baseline}  vs  {conveyor}")
        judged = [row["passed"] for row in self.rows if row["passed"] is not None]
        print(f"ratio = conveyor / baseline; targets met: {sum(judged)} of {len(judged)}")


def bench_latency(kind, peer, comm, report, plan):
    iters = plan.latency_iters
    warmup = max(1, iters // 10)
    if kind == "latency":
        conveyor_run, conveyor_name = run_cv_request, 'm.request(1, "echo", x).result()'
    else:
        conveyor_run, conveyor_name = run_cv_oneway, 'm.send(1, "ping", x), m.progress()'
    contestants = {
        "raw": lambda: run_raw_pingpong(comm, iters, warmup),
        "handled": lambda: run_handled_pingpong(comm, iters, warmup),
    }
    for name, x in PAYLOADS.items():
        contestants[name] = lambda x=x: conveyor_run(peer, x, iters, warmup)
    samples = measure(contestants, plan.reps, comm)
    # One-way latency in µs: half a round trip.
    one_way = {k: [t / iters / 2 * 1e6 for t in v] for k, v in samples.items()}
    for name in PAYLOADS:
        report.add(
            kind,
            f"8 B {name}",
            8,
            "µs",
            one_way["raw"],
            one_way[name],
            baseline_name="mpi4py Send/Recv",
            conveyor_name=conveyor_name,
            payload=name,
        )
    # An array per message, as conveyor's handler gets: what numpy costs
    # the baseline itself.
    report.add(
        f"{kind}-vs-handled",
        "8 B array",
        8,
        "µs",
        one_way["handled"],
        one_way["array"],
        baseline_name="mpi4py Send, Recv into a new array and a call per message",
        conveyor_name=conveyor_name,
        payload="array",
        targeted=False,
    )


def bench_bw(peer, comm, report, plan):
    sizes = plan.bw_sizes()
    # The pickle comparison is defined at 16 MiB; shorter runs use their
    # largest size below it (shown without target).
    pickle_size = max((s for s in sizes if s <= PICKLE_SIZE), default=None)
    m = peer.m
    for size in sizes:
        window, iters, warmup = bw_shape(size, plan.bw_run_bytes)
        arr = np.ones(size, dtype=np.uint8)  # touched, so no page faults are timed

        def send_window():
            for _ in range(window):
                m.send(1, "sink", arr)

        contestants = {
            "raw": lambda: run_raw_isend_windows(comm, arr, window, iters, warmup),
            "conveyor": lambda: run_cv_windows(peer, send_window, window, iters, warmup),
        }
        if size == pickle_size:
            contestants["pickle"] = lambda: run_pickle_windows(
                comm, lambda i: arr, window, iters, warmup
            )
        if size < BW_TARGET_MIN_SIZE:
            contestants["handled"] = lambda: run_handled_windows(comm, arr, window, iters, warmup)
        samples = measure(contestants, plan.reps, comm)
        # MB/s with MB = 10**6 bytes, as osu_bw reports.
        rate = {k: [size * window * iters / t / 1e6 for t in v] for k, v in samples.items()}
        conveyor_name = 'm.send(1, "sink", arr) window + ack request'
        report.add(
            "bw",
            format_size(size),
            size,
            "MB/s",
            rate["raw"],
            rate["conveyor"],
            baseline_name="mpi4py Isend window + ack",
            conveyor_name=conveyor_name,
            targeted=size >= BW_TARGET_MIN_SIZE,
        )
        if size < BW_TARGET_MIN_SIZE:
            report.add(
                "bw-vs-handled",
                format_size(size),
                size,
                "MB/s",
                rate["handled"],
                rate["conveyor"],
                baseline_name="mpi4py Isend window, Mprobe, Recv into a new array, a call per message",
                conveyor_name=conveyor_name,
                targeted=False,
            )
        if size == pickle_size:
            report.add(
                "bw-vs-pickle",
                format_size(size),
                size,
                "MB/s",
                rate["pickle"],
                rate["conveyor"],
                baseline_name="mpi4py pickle send/recv window + ack",
                conveyor_name=conveyor_name,
                targeted=size == PICKLE_SIZE,
            )


def bench_rate(peer, comm, report, plan):
    messages = RATE_WINDOW * plan.rate_windows
    sender = peer.m.sender("rate")

    def contestant(window, run):
        iters = max(2, messages // window)
        return lambda: run(window, iters, max(1, iters // 10))

    def conveyor_windows(window, iters, warmup):
        def send_window():
            for i in range(window):
                sender.send(1, i)

        return run_cv_windows(peer, send_window, window, iters, warmup)

    windows = {
        "isend": RATE_WINDOW,
        "pickle": RATE_STREAM,
        "conveyor": RATE_STREAM,
        "conveyor-w64": RATE_WINDOW,
    }
    isend = np.zeros(1, dtype=np.uint64)
    contestants = {
        "isend": contestant(
            RATE_WINDOW, lambda w, n, u: run_raw_isend_windows(comm, isend, w, n, u)
        ),
        "pickle": contestant(RATE_STREAM, lambda w, n, u: run_pickle_windows(comm, int, w, n, u)),
        "conveyor": contestant(RATE_STREAM, conveyor_windows),
        "conveyor-w64": contestant(RATE_WINDOW, conveyor_windows),
    }
    samples = measure(contestants, plan.reps, comm)
    rate = {}
    for name, times in samples.items():
        window = windows[name]
        sent = window * max(2, messages // window)
        rate[name] = [sent / t for t in times]
    stream = f's = m.sender("rate"); s.send(1, i), {RATE_STREAM} per ack request'
    report.add(
        "rate",
        "8 B int",
        8,
        "msgs/s",
        rate["isend"],
        rate["conveyor"],
        baseline_name=f"mpi4py Isend (8 B numpy), windows of {RATE_WINDOW} + ack",
        conveyor_name=stream,
        payload="int",
    )
    report.add(
        "rate-vs-pickle",
        "8 B int",
        8,
        "msgs/s",
        rate["pickle"],
        rate["conveyor"],
        baseline_name=f"mpi4py pickle comm.send, {RATE_STREAM} per ack",
        conveyor_name=stream,
        payload="int",
    )
    report.add(
        "rate-w64",
        "8 B int",
        8,
        "msgs/s",
        rate["isend"],
        rate["conveyor-w64"],
        baseline_name=f"mpi4py Isend (8 B numpy), windows of {RATE_WINDOW} + ack",
        conveyor_name=f"s.send(1, i), {RATE_WINDOW} per ack request (osu_mbw_mr's window)",
        payload="int",
    )


def bench_batch(peer, comm, report, plan):
    sender = peer.m.sender("batch")
    for n in BATCH_SIZES:
        window = max(1, min(BW_WINDOW, BATCH_WINDOW_ITEMS // n))
        iters = max(2, plan.batch_run_items // (window * n))
        warmup = max(1, iters // 10)
        items = np.arange(n, dtype=np.uint64)
        dests = np.ones(n, dtype=np.int64)  # every item to rank 1

        def send_window():
            for _ in range(window):
                sender.send_many(dests, items)

        contestants = {
            "raw": lambda: run_raw_send_windows(comm, items, window, iters, warmup),
            "conveyor": lambda: run_cv_windows(peer, send_window, window * n, iters, warmup),
        }
        samples = measure(contestants, plan.reps, comm)
        rate = {k: [n * window * iters / t for t in v] for k, v in samples.items()}
        report.add(
            "batch",
            f"{format_count(n)} items",
            8 * n,
            "items/s",
            rate["raw"],
            rate["conveyor"],
            baseline_name="mpi4py Send of the 8·n-byte array window + ack",
            conveyor_name="s.send_many(dests, items) window + ack request",
        )


def bench_agg_latency(aggregated, plain, comm, report, plan):
    iters = plan.latency_iters
    warmup = max(1, iters // 10)
    contestants = {
        "plain": lambda: run_cv_oneway(plain, 1, iters, warmup),
        "aggregated": lambda: run_cv_oneway(aggregated, 1, iters, warmup),
    }
    samples = measure(contestants, plan.reps, comm)
    one_way = {k: [t / iters / 2 * 1e6 for t in v] for k, v in samples.items()}
    report.add(
        "agg-latency",
        "8 B int",
        8,
        "µs",
        one_way["plain"],
        one_way["aggregated"],
        baseline_name="oneway, Messenger(aggregate=False)",
        conveyor_name="oneway, Messenger() with aggregation on",
        payload="int",
    )


# Executor tasks: counted on rank 1 by the module as imported by its name.
# Run as ``python -m``, this module is __main__, whose functions would
# travel by value, each with globals of its own.
_tasks_run = 0


def counted_task(x):
    """An executor benchmark's task: count it, return its argument."""
    global _tasks_run
    _tasks_run += 1
    return x


def run_cv_tasks(peer, executor, iters, warmup, pipelined):
    """Rank 0: `iters` tasks through `executor`, each awaited or all at once; rank 1 runs them."""
    m = peer.m
    named = importlib.import_module("conveyor._bench.osu")
    if m.rank == 1:
        peer.serve(warmup + iters, lambda: named._tasks_run)
        named._tasks_run = 0
        return settled(peer, None)
    task = named.counted_task
    for _ in range(warmup):
        executor.submit(task, 1).result(timeout=TIMEOUT)
    start = time.perf_counter()
    if pipelined:
        futures = [executor.submit(task, 1) for _ in range(iters)]
        for future in futures:
            future.result(timeout=TIMEOUT)
    else:
        for _ in range(iters):
            executor.submit(task, 1).result(timeout=TIMEOUT)
    return settled(peer, time.perf_counter() - start)


def run_cv_requests_pipelined(peer, iters, warmup):
    """The plain-request baseline of pipelined tasks: `iters` requests, then their answers."""
    m = peer.m
    if m.rank == 1:
        peer.serve(warmup + iters)
        return settled(peer, None)
    for _ in range(warmup):
        m.request(1, "echo", 1).result(timeout=TIMEOUT)
    start = time.perf_counter()
    futures = [m.request(1, "echo", 1) for _ in range(iters)]
    for future in futures:
        future.result(timeout=TIMEOUT)
    return settled(peer, time.perf_counter() - start)


def bench_executor(peer, comm, report, plan):
    """A task through cv.Executor against a plain request to a registered receiver."""
    iters = plan.latency_iters
    warmup = max(1, iters // 10)
    executor = peer.m.executor(ranks=[1])
    contestants = {
        "request": lambda: run_cv_request(peer, 1, iters, warmup),
        "task": lambda: run_cv_tasks(peer, executor, iters, warmup, False),
        "requests": lambda: run_cv_requests_pipelined(peer, iters, warmup),
        "tasks": lambda: run_cv_tasks(peer, executor, iters, warmup, True),
    }
    samples = measure(contestants, plan.reps, comm)
    per = {k: [t / iters * 1e6 for t in v] for k, v in samples.items()}  # µs per task
    report.add(
        "task-latency",
        "8 B int",
        8,
        "µs",
        per["request"],
        per["task"],
        baseline_name='m.request(1, "echo", 1).result(), round trip',
        conveyor_name="ex.submit(f, 1).result(), round trip (Executor(ranks=[1]))",
        payload="int",
    )
    report.add(
        "task-pipelined",
        "8 B int",
        8,
        "µs",
        per["requests"],
        per["tasks"],
        baseline_name=f'{iters} m.request(1, "echo", 1), then their results: per request',
        conveyor_name=f"{iters} ex.submit(f, 1), then their results: per task",
        payload="int",
    )


def run_cv_stream(peer, iters):
    """The rate stream: `iters` windows of RATE_STREAM ``s.send(1, i)``, each acknowledged."""
    sender = peer.m.sender("rate")

    def send_window():
        for i in range(RATE_STREAM):
            sender.send(1, i)

    return run_cv_windows(peer, send_window, RATE_STREAM, iters, 1)


def stream_windows(plan):
    """How many RATE_STREAM windows a stream of the rate benchmark's size takes."""
    return max(2, RATE_WINDOW * plan.rate_windows // RATE_STREAM)


def bench_served(inline, comm, report, plan):
    """A request round trip and a message stream, served by a thread against inline."""
    with cv.Messenger(serve="thread") as m:
        served = Peer(m)
        iters = plan.latency_iters
        warmup = max(1, iters // 10)
        rate_iters = stream_windows(plan)

        def stream(peer):
            return run_cv_stream(peer, rate_iters)

        comm.Barrier()  # both ranks' receivers exist before either sends
        contestants = {
            "inline": lambda: run_cv_request(inline, 1, iters, warmup),
            "served": lambda: run_cv_request(served, 1, iters, warmup),
            "inline-rate": lambda: stream(inline),
            "served-rate": lambda: stream(served),
        }
        samples = measure(contestants, plan.reps, comm)
    one_way = {k: [t / iters / 2 * 1e6 for t in samples[k]] for k in ("inline", "served")}
    report.add(
        "served-latency",
        "8 B int",
        8,
        "µs",
        one_way["inline"],
        one_way["served"],
        baseline_name='Messenger(): m.request(1, "echo", x).result()',
        conveyor_name='Messenger(serve="thread"): the same',
        payload="int",
    )
    sent = RATE_STREAM * rate_iters
    report.add(
        "served-rate",
        "8 B int",
        8,
        "msgs/s",
        [sent / t for t in samples["inline-rate"]],
        [sent / t for t in samples["served-rate"]],
        baseline_name=f"Messenger(): s.send(1, i), {RATE_STREAM} per ack request",
        conveyor_name='Messenger(serve="thread"): the same',
        payload="int",
    )


def bench_rate_trace(untraced, comm, report, plan):
    """The rate stream through a traced Messenger against the untraced one."""
    iters = stream_windows(plan)
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-trace-") as directory:
        with cv.Messenger(trace=os.path.join(directory, "rate.%r.json")) as m:
            traced = Peer(m)
            comm.Barrier()  # both ranks' receivers exist before either sends
            contestants = {
                "untraced": lambda: run_cv_stream(untraced, iters),
                "traced": lambda: run_cv_stream(traced, iters),
            }
            samples = measure(contestants, plan.reps, comm)
    sent = RATE_STREAM * iters
    report.add(
        "rate-trace",
        "8 B int",
        8,
        "msgs/s",
        [sent / t for t in samples["untraced"]],
        [sent / t for t in samples["traced"]],
        baseline_name=f"Messenger(): s.send(1, i), {RATE_STREAM} per ack request",
        conveyor_name='Messenger(trace="rate.%r.json"): the same, every send and delivery traced',
        payload="int",
    )


def run_kind(kind, comm, report, plan):
    """Run benchmark `kind` in Messengers of its own; return their stats, of each rank.

    The Messengers are made for this benchmark and closed after it, and
    the cache of receive buffers, which is the process's, starts empty, so
    it inherits no other benchmark's state (open aggregation batches,
    cached buffers of other sizes, statistics): what ``--which`` runs
    before it changes only what MPI and the Python process keep.

    Returns
    -------
    list of dict or None
        On rank 0, ``[rank 0's, rank 1's]``, each ``{"aggregate": stats}``
        plus ``"no_aggregate"`` for ``agg-latency``; None on rank 1.
    """
    # Freed receive buffers of 1 MiB and more are kept for the process, not
    # for a Messenger: drop them (the next Messenger sets the limit again).
    core.engine.set_buffer_cache_limit(0)
    with contextlib.ExitStack() as messengers:
        aggregated = Peer(messengers.enter_context(cv.Messenger(aggregate=True)))
        plain = None
        if kind == "agg-latency":
            plain = Peer(messengers.enter_context(cv.Messenger(aggregate=False)))
        if kind in ("latency", "oneway"):
            bench_latency(kind, aggregated, comm, report, plan)
        elif kind == "bw":
            bench_bw(aggregated, comm, report, plan)
        elif kind == "rate":
            bench_rate(aggregated, comm, report, plan)
        elif kind == "batch":
            bench_batch(aggregated, comm, report, plan)
        elif kind == "agg-latency":
            bench_agg_latency(aggregated, plain, comm, report, plan)
        elif kind == "served":
            bench_served(aggregated, comm, report, plan)
        elif kind == "executor":
            bench_executor(aggregated, comm, report, plan)
        elif kind == "rate-trace":
            bench_rate_trace(aggregated, comm, report, plan)
        stats = {"aggregate": aggregated.m.stats()}
        if plain is not None:
            stats["no_aggregate"] = plain.m.stats()
    return comm.gather(stats, root=0)


def run(plan, which, comm, report):
    """Run the benchmarks named in `which` on both ranks, each in fresh Messengers (`run_kind`).

    Returns, on rank 0, each rank's Messenger stats per benchmark: a list
    of ``{kind: {"aggregate": ..., "no_aggregate": ...}}`` (the second for
    ``agg-latency`` only), rank 0's then rank 1's; None on rank 1.
    """
    report.header()
    stats = {}
    for number, kind in enumerate(which, 1):
        report.progress(f"[{number}/{len(which)}] {kind}")
        stats[kind] = run_kind(kind, comm, report, plan)
    if comm.rank != 0:
        return None
    return [{kind: ranks[rank] for kind, ranks in stats.items()} for rank in (0, 1)]


def main(argv=None):
    """Run the benchmarks on this rank; rank 0 prints the table and writes the JSON.

    Returns
    -------
    int
        The exit status: 0, or 2 for bad options or a rank count other than 2.
    """
    parser = argparse.ArgumentParser(
        prog="python -m conveyor._bench.osu", description=__doc__.split("\n\n")[0]
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    try:
        plan = plan_from(args)
    except ValueError as exc:
        parser.error(str(exc))

    comm = MPI.COMM_WORLD
    if comm.size != 2:
        if comm.rank == 0:
            print(
                f"the benchmarks need exactly 2 ranks (mpiexec -n 2), not {comm.size}",
                file=sys.stderr,
            )
        return 2

    report = Report(enabled=comm.rank == 0)
    started = time.perf_counter()
    stats = run(plan, args.which, comm, report)
    wall = time.perf_counter() - started

    if comm.rank == 0:
        report.legend()
        print(f"{plan.reps} repetitions each, medians; wall time {wall:.0f} s", flush=True)
        if args.json:
            meta = run_metadata(
                plan=dataclasses.asdict(plan),
                which=args.which,
                wall_seconds=wall,
                messenger_stats_rank0=stats[0],
                messenger_stats_rank1=stats[1],
            )
            with open(args.json, "w") as f:
                json.dump({"meta": meta, "results": report.rows}, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
