"""Distributed arrays: DistArray, dcall, dmap, dreduce and the driver, at 1, 2 and 4 ranks.

Everything runs under mpiexec with a timeout, one case per rank count and
theme: the property tests (hypothesis against numpy, run by the driver),
the API and its errors, the race of a call that needs the chunks of one
still being computed on the same rank, the freeing of chunks whose
references went everywhere, and the driver and SPMD models. Chunk ranks are
computed ``% size``, so every case runs at any rank count. Each case ends
with `nothing_left`: after the arrays are gone, no chunk, foreign reference,
published state or handler error remains on any rank. No assertion depends
on timing; sleeps only make the race likely.
"""

import gc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv
from conveyor._chunks import STATES

RECYCLING = "longer object length is not a multiple of shorter object length"


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"np{n}")
def nranks(request):
    return request.param


def world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def recycled(a, n):
    """`a`'s rows recycled to `n` rows, as R does (np.resize, by rows)."""
    return np.take(a, np.arange(n) % len(a), axis=0)


def near_equal(total, count):
    """The documented default chunking: `count` near-equal chunks, the larger first."""
    base, extra = divmod(total, count)
    return [base + (k < extra) for k in range(count)]


def lengths(x):
    return [ref.length for ref in x.chunks]


def owners(x):
    return [ref.owner for ref in x.chunks]


def same(got, want):
    """Equal values, dtype and shape."""
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
    np.testing.assert_array_equal(got, want)


def recycling_warnings(caught):
    """The RecyclingWarnings among `caught`, after checking they name this file."""
    found = [w for w in caught if issubclass(w.category, cv.RecyclingWarning)]
    for w in found:
        assert str(w.message) == RECYCLING
        assert w.filename == __file__, (w.filename, w.lineno)  # the caller's line
    return len(found)


def chunks_everywhere(m):
    """Collective, once quiet: the chunks held over all ranks (resolved or failed)."""
    stats = m.chunk_stats()
    return world().allreduce(stats["chunks"] + stats["failed"])


def nothing_left(m):
    """Collective: once the arrays are gone, nothing of them remains on this rank."""
    for _ in range(2):
        gc.collect()
        m.wait_quiet()
    stats = m.chunk_stats()
    assert stats == dict.fromkeys(stats, 0), (m.rank, stats)
    assert m.table(STATES).local_keys() == [], m.table(STATES).local_keys()
    counts = m.stats()
    for key in ("handler_errors", "payloads_undecodable", "unknown_tag", "pending_requests",
                "open_requests"):
        assert counts[key] == 0, (m.rank, key, counts[key])


def run_case(mpirun, nranks, case, *args, timeout=60):
    result = mpirun(nranks, case, *args, timeout=timeout)
    # A handler that raised, or a release that failed, prints a traceback.
    assert "Traceback" not in result.stderr, result.stderr
    return result


# -- properties: dcall and dmap against numpy ----------------------------------


def f2(a, b):
    return a * 3 - b


def f3(a, b, c):
    return a - 2 * b + c


@st.composite
def dcall_cases(draw, size):
    """(function, operands, keyword or None): 2-3 operands, at least one distributed.

    An operand is ``("scalar", value)``, ``("local", array)`` or
    ``("dist", array, chunk sizes, chunk ranks)``; arrays are all 1-D or all
    2-D with the same columns, 0 to 12 rows.
    """
    count = draw(st.integers(2, 3))
    kinds = draw(st.lists(st.sampled_from(["dist", "local", "scalar"]), min_size=count,
                          max_size=count))
    kinds[draw(st.integers(0, count - 1))] = "dist"
    columns = draw(st.sampled_from([None, 1, 3]))
    operands = []
    for kind in kinds:
        if kind == "scalar":
            operands.append(("scalar", draw(st.integers(-9, 9))))
            continue
        rows = draw(st.integers(0, 12))
        shape = (rows,) if columns is None else (rows, columns)
        value = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) * draw(
            st.integers(1, 5)) + draw(st.integers(-50, 50))
        if kind == "local":
            operands.append(("local", value))
            continue
        cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=3)))
        sizes = np.diff([0] + cuts + [rows]).tolist()
        ranks = draw(st.lists(st.integers(0, size - 1), min_size=len(sizes), max_size=len(sizes)))
        operands.append(("dist", value, sizes, ranks))
    function = draw(st.sampled_from([np.add, f2, lambda a, b: a * b + 1]) if count == 2
                    else st.sampled_from([f3, lambda a, b, c: a * b - c]))
    keyword = draw(st.sampled_from([None, "b" if count == 2 else "c"]))
    if keyword is not None and function not in (f2, f3):
        keyword = None  # np.add and the lambdas are called positionally only here
    return function, operands, keyword


def expected_dcall(function, operands):
    """numpy's answer with R's rules: (result, whether R warns)."""
    values = [op[1] for op in operands]
    rows = [len(v) for kind, v, *_ in operands if kind != "scalar"]
    if 0 in rows:
        return function(*[v if kind == "scalar" else v[:0] for (kind, *_), v in zip(operands, values)]), False
    longest = max(rows)
    args = [v if kind == "scalar" else recycled(v, longest) for (kind, *_), v in zip(operands, values)]
    return function(*args), any(longest % n for n in rows)


def check_dcall_properties(m, max_examples):
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(dcall_cases(m.size))
    def dcall_is_numpy_with_recycling(case):
        function, operands, keyword = case
        args = [m.array(op[1], chunks=op[2], ranks=op[3]) if op[0] == "dist" else op[1]
                for op in operands]
        want, warns = expected_dcall(function, operands)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if keyword is None:
                result = cv.dcall(function, *args)
            else:
                result = cv.dcall(function, *args[:-1], **{keyword: args[-1]})
        assert recycling_warnings(caught) == int(warns)  # exactly when R warns, once
        assert isinstance(result, cv.DistArray)
        same(result.collect(), want)
        assert len(result) == len(want) and result.shape == want.shape and result.dtype == want.dtype
        if len(want) == 0:
            return
        # The target's chunking: the longest DistArray, ties to most chunks, then the first.
        dists = [(len(op[1]), len(op[2]), -i, arg) for i, (op, arg) in enumerate(zip(operands, args))
                 if op[0] == "dist"]
        rows, _, _, target = max(dists, key=lambda d: d[:3])
        if rows == len(want):
            assert lengths(result) == lengths(target) and owners(result) == owners(target)
        else:  # a local array is longest: it was split one chunk per rank
            assert lengths(result) == near_equal(len(want), m.size)
            assert owners(result) == list(range(m.size))
        assert [ref.offset for ref in result.chunks] == np.cumsum([0] + lengths(result))[:-1].tolist()

    dcall_is_numpy_with_recycling()


@st.composite
def dmap_cases(draw, size):
    """Operands of dmap: DistArrays of 0-4 chunks, lists of 0-4 items, or a scalar."""
    count = draw(st.integers(1, 3))
    kinds = draw(st.lists(st.sampled_from(["dist", "list", "scalar"]), min_size=count,
                          max_size=count))
    kinds[draw(st.integers(0, count - 1))] = "dist"
    operands = []
    for i, kind in enumerate(kinds):
        if kind == "scalar":
            operands.append(("scalar", draw(st.integers(-9, 9))))
            continue
        chunks = draw(st.integers(0, 4))
        if kind == "list":
            operands.append(("list", [100 * i + k for k in range(chunks)]))
            continue
        sizes = draw(st.lists(st.integers(0, 3), min_size=chunks, max_size=chunks))
        ranks = draw(st.lists(st.integers(0, size - 1), min_size=chunks, max_size=chunks))
        operands.append(("dist", np.arange(sum(sizes), dtype=np.int64) + 1000 * i, sizes, ranks))
    return operands


def split(a, sizes):
    """`a` cut into pieces of `sizes` rows."""
    ends = np.cumsum(sizes, dtype=int)
    return [a[end - size:end] for size, end in zip(sizes, ends)]


def concatenated(*items):
    return np.concatenate([np.atleast_1d(np.asarray(item, dtype=np.int64)) for item in items])


def check_dmap_properties(m, max_examples):
    @settings(max_examples=max_examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(dmap_cases(m.size))
    def dmap_is_mapply(operands):
        args = [m.array(op[1], chunks=op[2], ranks=op[3]) if op[0] == "dist" else op[1]
                for op in operands]
        pieces = [split(op[1], op[2]) if op[0] == "dist" else op[1] for op in operands]
        counts = [len(p) for (kind, *_), p in zip(operands, pieces) if kind != "scalar"]
        if 0 in counts and any(counts):
            with pytest.raises(ValueError):
                cv.dmap(concatenated, *args)
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = cv.dmap(concatenated, *args)
        if not any(counts):
            assert result.chunks == [] and len(result) == 0 and recycling_warnings(caught) == 0
            return
        most = max(counts)
        assert recycling_warnings(caught) == int(any(most % n for n in counts))
        want = [concatenated(*[p if kind == "scalar" else p[i % len(p)]
                               for (kind, *_), p in zip(operands, pieces)]) for i in range(most)]
        assert len(result) == sum(len(w) for w in want)  # learned from the owners
        assert lengths(result) == [len(w) for w in want]
        same(result.collect(), np.concatenate(want))
        widest = next(a for a, op in zip(args, operands) if op[0] == "dist" and len(op[2]) == most) \
            if most in [len(op[2]) for op in operands if op[0] == "dist"] \
            else next(a for a in args if isinstance(a, cv.DistArray))
        assert owners(result) == [owners(widest)[i % len(widest.chunks)] for i in range(most)]

    dmap_is_mapply()


def case_properties(max_examples):
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_dcall_properties(m, int(max_examples))
                check_dmap_properties(m, int(max_examples) // 2)
        nothing_left(m)


def test_properties(mpirun, nranks):
    run_case(mpirun, nranks, case_properties, 40, timeout=90)



# -- freeing ---------------------------------------------------------------------


def check_results_dropped_at_once(m):
    # Results nobody keeps, whose chunks are on the driver's rank too: their
    # tasks may arrive after the chunks were freed, and must do nothing.
    size = m.size
    x = m.array(np.arange(12), chunks=4, ranks=[0, size - 1, 0, 1 % size])
    cv.dcall(np.negative, x)
    np.exp(x)
    kept = cv.dcall(np.add, x, 1)
    kept = cv.dcall(np.add, x, kept)  # the first result dropped, used by the second
    x.rebalance()
    cv.dmap(np.sum, x)
    same(kept.collect(), np.arange(12) * 2 + 1)


def case_freeing():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_results_dropped_at_once(m)
        nothing_left(m)


def test_freeing(mpirun, nranks):
    run_case(mpirun, nranks, case_freeing)
