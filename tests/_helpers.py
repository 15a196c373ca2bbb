"""Helpers shared by the test files (imported by them, also under mpiexec)."""

import contextlib
import gc
import logging
import math
import resource
import struct

import numpy as np


def world():
    """mpi4py's COMM_WORLD, for the cases that run under mpiexec (imported there only)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def read_rows(m, ref, start, stop):
    """Rows [start, stop) of chunk `ref`, as a task reads them (serving until they come)."""
    from conveyor._chunks import layer_of

    got = []
    layer_of(m).rows(ref, start, stop, got.append, lambda error: got.append(error))
    while not got:
        m.progress(0.01)
    return got[0]


def peak_rss_mib():
    """This process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def conveyor_warnings():
    """Collect the texts of the warnings the ``conveyor`` logger logs in the block (a list)."""
    texts = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno == logging.WARNING:
                texts.append(record.getMessage())
            # Still to stderr, as with no handler: tests read the errors there.
            logging.lastResort.handle(record)

    handler = Collect()
    logging.getLogger("conveyor").addHandler(handler)
    try:
        yield texts
    finally:
        logging.getLogger("conveyor").removeHandler(handler)


def wait_quiet_warned(m):
    """`m.wait_quiet()`, collecting the warnings it logs (what dropped frames report); return their texts."""
    with conveyor_warnings() as texts:
        m.wait_quiet()
    return texts


def no_state_left(m):
    """After wait_quiet: no pending future, no open request, no MPI request. Return the stats."""
    stats = m.stats()
    for key in ("pending_requests", "open_requests", "pending_sends", "pending_receives"):
        assert stats[key] == 0, (key, stats)
    return stats


def same(a, b):
    """True if `a` and `b` are equal values of the same type (arrays: dtype and shape too).

    Containers are compared item by item, and NaN equals NaN.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def bare_header(kind, ref):
    """The header of a frame with no tag and no out-of-band data, as a forger writes it."""
    from conveyor._native import core

    word = 0xC0FE | (core.message.FRAME_VERSION << 16) | (kind << 24)
    return struct.pack("<IQQI", word, ref, 0, 0)


def bench_row(benchmark, label, unit, baseline, conveyor, target=None):
    """One row of a run's JSON as rank 0 of ``conveyor bench`` writes it.

    `target` is ``(op, bound)``, such as ``("<=", 2.0)``, or None.
    """
    ratio = conveyor / baseline
    passed = None
    if target is not None:
        op, bound = target
        passed = ratio <= bound if op == "<=" else ratio >= bound
    return {
        "benchmark": benchmark,
        "label": label,
        "size_bytes": 8,
        "payload": None,
        "unit": unit,
        "better": "lower" if unit == "µs" else "higher",
        "baseline": f"mpi4py's {benchmark}",
        "conveyor": f"conveyor's {benchmark}",
        "baseline_median": baseline,
        "conveyor_median": conveyor,
        "ratio": ratio,
        "target": None if target is None else {"op": target[0], "ratio": target[1]},
        "passed": passed,
        "baseline_samples": [baseline],
        "conveyor_samples": [conveyor],
    }


def bench_run(rows, minute=0):
    """A run's JSON document as rank 0 of ``conveyor bench`` writes it, holding `rows`."""
    return {
        "meta": {
            "argv": ["osu.py", "--json", "run.json"],
            "plan": {"reps": 9, "latency_iters": 20000},
            "which": sorted({row["benchmark"] for row in rows}),
            "wall_seconds": 60.0,
            "messenger_stats_rank0": {"aggregate": {"messages_sent": 1}},
            "time": f"2026-12-04T10:{minute:02d}:00+0000",
            "host": "testhost",
            "cpus": 2,
            "python": "3.11.7",
            "numpy": "2.4.6",
            "mpi4py": "4.1.2",
            "mpi": "MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 2026",
            "conveyor": "0.1.0",
            "env": {},
        },
        "results": rows,
    }


# -- distributed arrays (the cases of tests/mpi/arrays) ----------------------------


def lengths(x):
    """The lengths of the chunks of DistArray `x`, as known on this rank."""
    return [ref.length for ref in x.chunks]


def owners(x):
    """The ranks of the chunks of DistArray `x`."""
    return [ref.owner for ref in x.chunks]


def assert_array_same(got, want):
    """Equal values, dtype and shape."""
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
    np.testing.assert_array_equal(got, want)


def quiet(m):
    """Collective: collect the garbage and wait for the messages its releases sent, twice."""
    for _ in range(2):
        gc.collect()
        m.wait_quiet()


def nothing_left(m, handler_errors=0):
    """Collective: once the arrays are gone, nothing of them remains on this rank.

    Nor did any handler raise, but the `handler_errors` a case meant.
    """
    from conveyor._chunks import layer_of

    quiet(m)
    stats = m.chunk_stats()
    assert stats == dict.fromkeys(stats, 0), (m.rank, stats)
    published = layer_of(m).states.local_keys()  # what owners published of their chunks
    assert published == [], (m.rank, published)
    counts = m.stats()
    assert counts["handler_errors"] == handler_errors, (m.rank, counts["handler_errors"])
    for key in ("payloads_undecodable", "unknown_tag", "pending_requests", "open_requests"):
        assert counts[key] == 0, (m.rank, key, counts[key])


def run_case(mpirun, nranks, case, *args, timeout=60):
    """Run `case` on `nranks` ranks; fail if any rank printed a traceback."""
    result = mpirun(nranks, case, *args, timeout=timeout)
    # A handler that raised, or a release that failed, prints a traceback.
    assert "Traceback" not in result.stderr, result.stderr
    return result
