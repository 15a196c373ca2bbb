"""Helpers shared by the test files (imported by them, also under mpiexec)."""

import math
import resource

import numpy as np


def world():
    """mpi4py's COMM_WORLD, for the cases that run under mpiexec (imported there only)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def peak_rss_mib():
    """This process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
