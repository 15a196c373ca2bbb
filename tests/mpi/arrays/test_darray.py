"""Distributed arrays: DistArray, dcall, dmap, dreduce and the driver, at 1, 2 and 4 ranks.

Everything runs under mpiexec with a timeout, one case per rank count and
theme: the property tests (hypothesis against numpy, run by the driver),
the API and its errors, the race of a call that needs the chunks of one
still being computed on the same rank, the freeing of chunks whose
references went everywhere, and the driver and SPMD models. Chunk ranks are
computed ``% size``, so every case runs at any rank count. Each case ends
with `nothing_left`: after the arrays are gone, no chunk, foreign reference,
published state or handler error remains on any rank. No assertion depends
on timing; sleeps only make races likely.
"""

import os
import tempfile
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv
from conveyor._chunks import layer_of
from conveyor._tags import CHUNK_TASK

from _helpers import (
    assert_array_same,
    lengths,
    nothing_left,
    owners,
    quiet,
    run_case,
    world,
)

RECYCLING = "longer object length is not a multiple of shorter object length"


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"np{n}")
def nranks(request):
    return request.param


def recycled(a, n):
    """`a`'s rows recycled to `n` rows, as R does (np.resize, by rows)."""
    return np.take(a, np.arange(n) % len(a), axis=0)


def near_equal(total, count):
    """The documented default chunking: `count` near-equal chunks, the larger first."""
    base, extra = divmod(total, count)
    return [base + (k < extra) for k in range(count)]


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
    kinds = draw(
        st.lists(st.sampled_from(["dist", "local", "scalar"]), min_size=count, max_size=count)
    )
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
            st.integers(1, 5)
        ) + draw(st.integers(-50, 50))
        if kind == "local":
            operands.append(("local", value))
            continue
        cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=3)))
        sizes = np.diff([0] + cuts + [rows]).tolist()
        ranks = draw(st.lists(st.integers(0, size - 1), min_size=len(sizes), max_size=len(sizes)))
        operands.append(("dist", value, sizes, ranks))
    function = draw(
        st.sampled_from([np.add, f2, lambda a, b: a * b + 1])
        if count == 2
        else st.sampled_from([f3, lambda a, b, c: a * b - c])
    )
    keyword = draw(st.sampled_from([None, "b" if count == 2 else "c"]))
    if keyword is not None and function not in (f2, f3):
        keyword = None  # np.add and the lambdas are called positionally only here
    return function, operands, keyword


def expected_dcall(function, operands):
    """numpy's answer with R's rules: (result, whether R warns)."""
    values = [op[1] for op in operands]
    rows = [len(v) for kind, v, *_ in operands if kind != "scalar"]
    if 0 in rows:
        empty = [v if kind == "scalar" else v[:0] for (kind, *_), v in zip(operands, values)]
        return function(*empty), False
    longest = max(rows)
    args = [
        v if kind == "scalar" else recycled(v, longest) for (kind, *_), v in zip(operands, values)
    ]
    return function(*args), any(longest % n for n in rows)


def unknown_lengths(a):
    """`a` as a result of dmap, whose chunk lengths are not known until computed."""
    return cv.dmap(np.copy, a)


def check_dcall_properties(m, max_examples, pending=False):
    """dcall against numpy; with `pending`, its DistArray operands' lengths are not known yet."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(dcall_cases(m.size))
    def dcall_is_numpy_with_recycling(case):
        function, operands, keyword = case
        args = [
            m.array(op[1], chunks=op[2], ranks=op[3]) if op[0] == "dist" else op[1]
            for op in operands
        ]
        if pending:
            args = [unknown_lengths(a) if isinstance(a, cv.DistArray) else a for a in args]
        want, warns = expected_dcall(function, operands)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if keyword is None:
                result = cv.dcall(function, *args)
            else:
                result = cv.dcall(function, *args[:-1], **{keyword: args[-1]})
            planned = pending and not any(op[0] == "local" and len(op[1]) == 0 for op in operands)
            if planned:  # nothing was waited for; R's warning comes where chunk 0 is planned
                assert all(ref.length is None for ref in result.chunks)
                collected = result.collect()
        if not planned:
            assert recycling_warnings(caught) == int(warns)  # exactly when R warns, once
        elif m.size == 1:
            said = [w for w in caught if issubclass(w.category, cv.RecyclingWarning)]
            assert len(said) == int(warns and len(want) > 0)
        assert isinstance(result, cv.DistArray)
        assert_array_same(collected if planned else result.collect(), want)
        assert (
            len(result) == len(want) and result.shape == want.shape and result.dtype == want.dtype
        )
        if planned:
            check_planned_chunking(m, operands, args, result, len(want))
            return
        if len(want) == 0:
            return
        # The target's chunking: the longest DistArray, ties to most chunks, then the first.
        dists = [
            (len(op[1]), len(op[2]), -i, arg)
            for i, (op, arg) in enumerate(zip(operands, args))
            if op[0] == "dist"
        ]
        rows, _, _, target = max(dists, key=lambda d: d[:3])
        if rows == len(want):
            assert lengths(result) == lengths(target) and owners(result) == owners(target)
        else:  # a local array is longest: it was split one chunk per rank
            assert lengths(result) == near_equal(len(want), m.size)
            assert owners(result) == list(range(m.size))
        assert [ref.offset for ref in result.chunks] == np.cumsum([0] + lengths(result))[
            :-1
        ].tolist()

    dcall_is_numpy_with_recycling()


def check_planned_chunking(m, operands, args, result, rows):
    """The documented chunking of a dcall planned by the owners: the chunk
    count and ranks of the argument with most chunks (numpy arrays with
    rows scattered first, one chunk per rank), its lengths if it is the
    longest, else the longest length split evenly (the smaller first)."""
    counts = [
        (len(a.chunks), owners(a), len(op[1]))
        if isinstance(a, cv.DistArray)
        else (m.size, list(range(m.size)), len(op[1]))
        for op, a in zip(operands, args)
        if op[0] != "scalar"
    ]
    count, ranks, target_rows = max(counts, key=lambda c: c[0])  # ties: the first
    assert owners(result) == ranks
    if target_rows == rows and rows:
        index = [c[0] for c in counts].index(count)
        op = [op for op in operands if op[0] != "scalar"][index]
        assert lengths(result) == (op[2] if op[0] == "dist" else near_equal(rows, m.size))
    else:
        bounds = [k * rows // count for k in range(count + 1)]
        assert lengths(result) == np.diff(bounds).tolist()


@st.composite
def dmap_cases(draw, size):
    """Operands of dmap: DistArrays of 0-4 chunks, lists of 0-4 items, or a scalar."""
    count = draw(st.integers(1, 3))
    kinds = draw(
        st.lists(st.sampled_from(["dist", "list", "scalar"]), min_size=count, max_size=count)
    )
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
    return [a[end - size : end] for size, end in zip(sizes, ends)]


def concatenated(*items):
    return np.concatenate([np.atleast_1d(np.asarray(item, dtype=np.int64)) for item in items])


def check_dmap_properties(m, max_examples):
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(dmap_cases(m.size))
    def dmap_is_mapply(operands):
        args = [
            m.array(op[1], chunks=op[2], ranks=op[3]) if op[0] == "dist" else op[1]
            for op in operands
        ]
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
        want = [
            concatenated(
                *[
                    p if kind == "scalar" else p[i % len(p)]
                    for (kind, *_), p in zip(operands, pieces)
                ]
            )
            for i in range(most)
        ]
        assert len(result) == sum(len(w) for w in want)  # learned from the owners
        assert lengths(result) == [len(w) for w in want]
        assert_array_same(result.collect(), np.concatenate(want))
        # Placed by the first DistArray with most chunks (a list may have more).
        dists = [a for a in args if isinstance(a, cv.DistArray)]
        widest = next((a for a in dists if len(a.chunks) == most), dists[0])
        assert owners(result) == [owners(widest)[i % len(widest.chunks)] for i in range(most)]

    dmap_is_mapply()


def case_properties(max_examples):
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_dcall_properties(m, int(max_examples))
                check_dcall_properties(m, int(max_examples) // 2, pending=True)
                check_dmap_properties(m, int(max_examples) // 2)
        nothing_left(m)


def test_properties(mpirun, nranks):
    run_case(mpirun, nranks, case_properties, 60, timeout=90)


# -- the API by example ----------------------------------------------------------


def wait_for_file(path, a):
    """Return `a` once `path` exists (polled): a chunk that cannot finish before its caller says so."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return a


def check_making_arrays(m):
    size = m.size
    a = np.arange(10.0)
    x = m.array(a)
    assert isinstance(x, cv.DistArray) and x.messenger is m
    assert len(x) == 10 and x.shape == (10,) and x.ndim == 1 and x.dtype == np.float64
    assert lengths(x) == near_equal(10, size) and owners(x) == list(range(size))
    assert all(isinstance(ref, cv.ChunkRef) for ref in x.chunks)
    assert [ref.offset for ref in x.chunks] == np.cumsum([0] + lengths(x))[:-1].tolist()
    assert x.resolve() is x and {ref.state for ref in x.chunks} == {"resolved"}
    assert_array_same(x.collect(), a)
    assert_array_same(np.asarray(x), a)
    a[:] = -1  # the array was copied
    assert_array_same(x.collect(), np.arange(10.0))
    assert "DistArray" in repr(x) and "ChunkRef" in repr(x.chunks[0])

    y = m.array(np.arange(7, dtype=np.int32), chunks=3, ranks=[2 % size, 0, 1 % size])
    assert lengths(y) == [3, 2, 2] and owners(y) == [2 % size, 0, 1 % size]
    z = m.array(np.arange(7, dtype=np.int32), chunks=[0, 5, 0, 2], ranks=[size - 1] * 4)
    assert lengths(z) == [0, 5, 0, 2] and owners(z) == [size - 1] * 4
    assert_array_same(z.collect(), np.arange(7, dtype=np.int32))

    # 2-D, chunked by rows.
    g = np.arange(24, dtype=np.int16).reshape(8, 3)
    x2 = m.array(g, chunks=[3, 0, 5])
    assert len(x2) == 8 and x2.shape == (8, 3) and x2.ndim == 2 and x2.dtype == np.int16
    assert_array_same(x2.collect(), g)
    # Empty arrays keep their dtype and columns.
    e = m.array(np.zeros((0, 3), dtype=np.uint8))
    assert len(e) == 0 and e.shape == (0, 3)
    assert_array_same(e.collect(), np.zeros((0, 3), dtype=np.uint8))
    assert_array_same(m.array(np.zeros(0), chunks=[]).collect(), np.zeros(0))
    # Other numeric and bool dtypes.
    for dtype in (np.bool_, np.uint64, np.complex64, np.float32):
        v = (np.arange(5) % 2).astype(dtype)
        assert_array_same(m.array(v, chunks=2).collect(), v)


def check_rebalance(m):
    size = m.size
    x = m.array(np.arange(11), chunks=[0, 11], ranks=[0, size - 1])
    r = x.rebalance()
    assert lengths(r) == near_equal(11, size) and owners(r) == list(range(size))
    assert_array_same(r.collect(), np.arange(11))
    r5 = x.rebalance(5)
    assert lengths(r5) == near_equal(11, 5) and owners(r5) == [k % size for k in range(5)]
    assert_array_same(r5.collect(), np.arange(11))
    g = np.arange(20).reshape(10, 2)
    assert_array_same(m.array(g, chunks=[1, 9]).rebalance(3).collect(), g)
    many = x.rebalance(15)  # more chunks than rows: some are empty
    assert lengths(many) == near_equal(11, 15)
    assert_array_same(many.collect(), np.arange(11))
    assert_array_same(cv.dcall(np.negative, x).rebalance(2).collect(), -np.arange(11))
    # No rows at all, in empty chunks or in none.
    for empty in (
        m.array(np.zeros(0)),
        m.array(np.zeros((0, 2), np.int8), chunks=[]),
        cv.dcall(np.negative, m.array(np.zeros(0, np.float32), chunks=[0, 0, 0])),
    ):
        r = empty.rebalance()
        assert lengths(r) == [0] * size and owners(r) == list(range(size))
        assert_array_same(r.collect(), empty.collect())


def check_from_local_single(m):
    # from_local is collective: the driver's own use only at one rank.
    if m.size == 1:
        local = np.arange(4.0)
        x = cv.DistArray.from_local(m, local)
        local[:] = 0
        assert lengths(x) == [4] and owners(x) == [0]
        assert_array_same(x.collect(), np.arange(4.0))


def check_dcall_examples(m):
    size = m.size
    x = m.array(np.arange(12), chunks=3, ranks=[k % size for k in (1, 2, 3)])
    # A shorter argument that does not fit a target chunk: one rotated period
    # per chunk (chunk 2 starts at row 8, row 3 of the argument's period of 5).
    y = m.array(np.arange(5) * 100, chunks=[2, 3], ranks=[0, size - 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = cv.dcall(np.add, x, y)
    assert recycling_warnings(caught) == 1
    assert_array_same(z.collect(), np.arange(12) + recycled(np.arange(5) * 100, 12))
    assert lengths(z) == lengths(x) and owners(z) == owners(x)
    # The result is the longest whichever side it is on; a multiple does not warn.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = cv.dcall(np.subtract, m.array(np.arange(4), chunks=4), x)
    assert recycling_warnings(caught) == 0
    assert_array_same(w.collect(), recycled(np.arange(4), 12) - np.arange(12))
    assert lengths(w) == lengths(x)
    # Ties: most chunks wins, then the first.
    a3 = m.array(np.arange(6), chunks=3)
    a2 = m.array(np.arange(6), chunks=2)
    assert lengths(cv.dcall(np.add, a2, a3)) == [2, 2, 2]
    b2 = m.array(np.arange(6), chunks=[1, 5], ranks=[size - 1, 0])
    t = cv.dcall(np.add, b2, a2)
    assert lengths(t) == [1, 5] and owners(t) == [size - 1, 0]
    # Local arrays are split at the target's boundaries, recycled too;
    # scalars, 0-d arrays and other values are passed whole.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = cv.dcall(
            lambda a, b, c, h, d, s: a + b * c + h + d + len(s),
            x,
            np.arange(7),
            10,
            np.float64(0.5),
            d=np.array(0.25),
            s="abc",
        )
    assert recycling_warnings(caught) == 1
    assert_array_same(v.collect(), np.arange(12) + recycled(np.arange(7), 12) * 10 + 0.75 + 3)
    # A local array longer than every DistArray is the target: scattered one chunk per rank.
    u = cv.dcall(np.multiply, m.array(np.arange(3), chunks=[3]), np.arange(9))
    assert lengths(u) == near_equal(9, size)
    assert_array_same(u.collect(), recycled(np.arange(3), 9) * np.arange(9))
    # The same array twice, and keyword arguments.
    assert_array_same(cv.dcall(f2, x, b=x).collect(), np.arange(12) * 2)
    # 2-D recycles rows; a 1-D array against 2-D rows through a function.
    g = np.arange(18).reshape(6, 3)
    rows = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = cv.dcall(np.multiply, m.array(g, chunks=[4, 2]), m.array(rows, chunks=[1, 3]))
    assert recycling_warnings(caught) == 1
    assert_array_same(h.collect(), g * recycled(rows, 6))
    assert h.shape == (6, 3)
    assert_array_same(
        cv.dcall(lambda m2, v: m2 * v[:, None], m.array(g), np.arange(3)).collect(),
        g * recycled(np.arange(3), 6)[:, None],
    )
    # R: a zero-length operand makes a zero-length result, without a warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = cv.dcall(np.add, x, np.zeros(0))
        e2 = cv.dcall(np.add, m.array(np.zeros((0, 3), np.float32)), np.ones((5, 3), np.float32))
    assert recycling_warnings(caught) == 0
    assert_array_same(e.collect(), np.zeros(0))
    assert_array_same(e2.collect(), np.zeros((0, 3), np.float32))
    # Chains of calls on results not computed yet.
    chain = x
    for k in range(5):
        chain = cv.dcall(lambda a, k=k: a + k, chain)
    assert_array_same(chain.collect(), np.arange(12) + 10)


def check_returns_at_once(m):
    # The function cannot finish before dcall has returned: a dcall that
    # waited for its chunks would hang here.
    path = os.path.join(
        tempfile.gettempdir(), f"conveyor-dcall-{os.getpid()}-{time.monotonic_ns()}"
    )
    x = m.array(np.arange(8), chunks=4, ranks=[k % m.size for k in range(4)])
    try:
        z = cv.dcall(wait_for_file, path, x)
        open(path, "w").close()
        assert_array_same(z.collect(), np.arange(8))
    finally:
        if os.path.exists(path):
            os.unlink(path)


def gated_trim(path, a):
    """`a` without its last row, once `path` exists: a chunk of unknown length that
    cannot be computed before its caller says so."""
    return wait_for_file(path, a)[:-1]


def gate_path():
    return os.path.join(tempfile.gettempdir(), f"conveyor-gate-{os.getpid()}-{time.monotonic_ns()}")


def check_planned_without_waiting(m):
    # dcall and dcall's chains on arguments whose lengths nobody knows yet
    # (dmap's, blocked until the caller opens the gate) return at once: a
    # dcall that waited for the lengths here would hang.
    size = m.size
    path = gate_path()
    x = m.array(np.arange(40.0), chunks=4, ranks=[(k + 1) % size for k in range(4)])
    try:
        g = cv.dmap(gated_trim, path, x)  # 4 chunks of 9 rows
        r = cv.dcall(np.add, g, 1)
        y = m.array(np.arange(72.0), chunks=2, ranks=[0, size - 1])
        r2 = cv.dcall(lambda p, q, s: p * q + s, r, g, y)  # y is longest: 72 rows over 4
        r3 = cv.dcall(np.negative, cv.dcall(np.add, r2, r2))
        assert [ref.length for ref in r3.chunks] == [None] * 4
        open(path, "w").close()
        trimmed = np.concatenate([np.arange(10.0 * k, 10.0 * k + 9) for k in range(4)])
        assert_array_same(r.collect(), trimmed + 1)
        assert lengths(r) == [9] * 4 and owners(r) == owners(x)
        want = np.tile((trimmed + 1) * trimmed, 2) + np.arange(72.0)
        assert_array_same(r2.collect(), want)
        assert lengths(r2) == [18] * 4 and owners(r2) == owners(x)
        assert_array_same(r3.collect(), -2 * want)
    finally:
        if os.path.exists(path):
            os.unlink(path)
    # Errors and zero lengths found where the lengths are published.
    bad = cv.dmap(lambda c: np.array(c.sum()), x)  # 0-d chunks: not rows
    with pytest.raises(cv.RemoteError, match="0-d array"):
        cv.dcall(np.add, bad, 1).collect()
    failing = cv.dmap(lambda c: c[int("x")], x)
    with pytest.raises(cv.RemoteError, match="invalid literal"):
        cv.dcall(np.add, failing, x).collect()
    empty = cv.dmap(lambda c: c[:0], x)
    assert_array_same(cv.dcall(np.add, empty, x).collect(), np.zeros(0))
    assert_array_same(cv.dcall(np.add, cv.dmap(np.copy, x), np.zeros(0)).collect(), np.zeros(0))


def check_dcall_from_a_handler(m):
    # A handler that calls dcall on chunks not computed yet. From 3 ranks
    # on, they are gated on a third rank, which only the driver opens once
    # the handler answered: a handler that waited for them would hang.
    size, path = m.size, gate_path()
    gated = size >= 3
    x = m.array(np.arange(12.0), chunks=3, ranks=[1 if gated else k % size for k in range(3)])
    if not gated:
        open(path, "w").close()
    try:
        g = cv.dmap(gated_trim, path, x)
        refs = m.request(size - 1, "add one", g.chunks).result(timeout=30)
        open(path, "w").close()
        result = cv.DistArray(layer_of(m), refs)
        assert_array_same(result.collect(), np.array([1.0, 2, 3, 5, 6, 7, 9, 10, 11]))
    finally:
        if os.path.exists(path):
            os.unlink(path)


def check_forged_plans(m):
    # Tasks whose plan does not match their inputs (forged with the layer's
    # own transport, as no user send can reach the reserved tag) fail their
    # chunk with a clear error; the owner serves on.
    layer, owner = layer_of(m), m.size - 1
    x = m.array(np.arange(4.0), chunks=2)
    forged = [
        ([("aligned", x.chunks)], (5, 0), "does not match its inputs"),
        ([("aligned", x.chunks)], (0, 1), "does not match its inputs"),
        ([("value", 1.0)], (0, 0), "does not match its inputs"),
        ([("aligned", x.chunks)], None, "aligned task input without a plan"),
        ([("aligned", x.chunks)], "plan", "does not match its inputs"),
        ([("aligned", x.chunks)], (0.5, 0), "does not match its inputs"),
    ]
    for args, plan, message in forged:
        ref, weight = layer.mint(owner, None, None)
        task = {"id": ref.id, "weight": weight if owner != m.rank else -1, "length": None}
        task.update(function=None, args=args, kwargs={}, plan=plan)
        layer.transport.send(owner, CHUNK_TASK, task)
        with pytest.raises(cv.RemoteError, match=message):
            cv.DistArray(layer, [ref]).collect()
    assert_array_same(cv.dcall(np.add, cv.dmap(np.copy, x), 1).collect(), np.arange(1.0, 5))


def check_assign_and_cache(m):
    x = m.array(np.arange(10), chunks=3)
    # assign=False: the values, as R's do.call(..., assign = FALSE).
    value = cv.dcall(np.multiply, x, 2, assign=False)
    assert_array_same(value, np.arange(10) * 2)
    # cache=True: an identical call returns the result still referenced.
    first = cv.dcall(np.multiply, x, 2, cache=True)
    assert cv.dcall(np.multiply, x, 2, cache=True) is first
    assert cv.dcall(np.multiply, x, 3, cache=True) is not first  # another argument
    assert cv.dcall(np.add, x, 2, cache=True) is not first  # another function
    assert cv.dcall(np.multiply, m.array(np.arange(10), chunks=3), 2, cache=True) is not first
    assert cv.dcall(np.multiply, x, 2) is not first  # not asked
    assert_array_same(first.collect(), np.arange(10) * 2)
    cached = cv.dcall(np.multiply, x, 2, cache=True, assign=False)
    assert_array_same(cached, np.arange(10) * 2)
    del first  # no longer referenced: computed again
    again = cv.dcall(np.multiply, x, 2, cache=True)
    assert_array_same(again.collect(), np.arange(10) * 2)


def check_chunk_dtypes_reconciled(m):
    # dmap's chunks may differ in dtype: the array's is numpy's promotion of them.
    x = m.array(np.arange(8), chunks=4)
    mixed = cv.dmap(lambda c, k: c.astype(k), x, [np.int8, np.float32, np.int16, np.int8])
    assert mixed.dtype == np.float32
    assert_array_same(mixed.collect(), np.arange(8, dtype=np.float32))
    assert mixed.sum() == 28
    ragged = cv.dmap(lambda c, k: c.reshape(-1, k), x, [1, 2, 1, 1])
    with pytest.raises(ValueError, match="differ in row shape"):
        _ = ragged.dtype


def check_warnings_name_the_caller(m):
    # With Python's default filter a warning shows once per place: each
    # recycling call below is a place of its own, here, whether it reaches
    # dcall directly, through the driver or through dmap.
    x = m.array(np.arange(5))
    y = m.array(np.arange(2))
    driver = cv.Driver(m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        cv.dcall(np.add, x, y)
        cv.dcall(np.multiply, x, y)
        driver.dcall(np.subtract, x, y)
        cv.dmap(np.add, m.array(np.arange(6), chunks=3), m.array(np.arange(4), chunks=2))
        cv.dcall(np.add, x, m.array(np.arange(1)))  # no warning: 5 is a multiple of 1
    assert recycling_warnings(caught) == 4
    assert sorted({w.lineno for w in caught}) == sorted(w.lineno for w in caught)


def check_operators(m):
    a = np.arange(1, 10, dtype=np.int64)
    b = np.arange(9, 0, -1, dtype=np.int64)
    x = m.array(a, chunks=3)
    y = m.array(b, chunks=[4, 5], ranks=[m.size - 1, 0])
    for op in (
        lambda p, q: p + q,
        lambda p, q: p - q,
        lambda p, q: p * q,
        lambda p, q: p / q,
        lambda p, q: p // q,
        lambda p, q: p % q,
        lambda p, q: p**2 + q,
        lambda p, q: p == q,
        lambda p, q: p != q,
        lambda p, q: p < q,
        lambda p, q: p <= q,
        lambda p, q: p > q,
        lambda p, q: p >= q,
    ):
        assert_array_same(op(x, y).collect(), op(a, b))
        assert_array_same(op(x, b).collect(), op(a, b))  # DistArray op numpy
        assert_array_same(op(a, y).collect(), op(a, b))  # numpy op DistArray: numpy defers to it
        assert_array_same(op(x, 3).collect(), op(a, 3))
        assert_array_same(op(3, y).collect(), op(3, b))  # reflected
    assert_array_same((-x).collect(), -a)
    assert_array_same(abs(x - 5).collect(), abs(a - 5))
    assert_array_same(((x > 2) & (x < 7)).collect(), (a > 2) & (a < 7))
    assert_array_same(((x < 2) | (x > 7)).collect(), (a < 2) | (a > 7))
    # numpy's ufuncs, one and two operands.
    assert_array_same(np.sqrt(x).collect(), np.sqrt(a))
    assert_array_same(np.maximum(x, y).collect(), np.maximum(a, b))
    assert_array_same(np.add(a, y).collect(), a + b)
    assert_array_same(np.logical_not(x > 3).collect(), a <= 3)
    assert isinstance(np.exp(x), cv.DistArray)
    with pytest.raises(TypeError):
        np.add(x, y, out=np.empty(9, np.int64))  # no out= for a DistArray
    with pytest.raises(TypeError):
        hash(x)  # == is elementwise


def check_reductions(m):
    a = np.array([3.0, -1.5, 7.0, 0.25, 2.0, -4.0, 5.5])
    x = m.array(a, chunks=[2, 0, 4, 1])
    for name in ("sum", "prod", "min", "max", "mean", "any", "all"):
        np.testing.assert_allclose(getattr(x, name)(), getattr(a, name)())
        assert np.asarray(getattr(x, name)()).dtype == np.asarray(getattr(a, name)()).dtype, name
    ints = np.array([4, 0, 9, 1], dtype=np.int32)
    xi = m.array(ints, chunks=4)
    for name in ("sum", "prod", "min", "max", "mean", "any", "all"):
        assert_array_same(np.asarray(getattr(xi, name)()), np.asarray(getattr(ints, name)()))
    assert_array_same(np.asarray((m.array(ints > 0)).sum()), np.asarray((ints > 0).sum()))
    # Through numpy's ufunc reductions.
    np.testing.assert_allclose(np.add.reduce(x), a.sum())
    np.testing.assert_allclose(np.maximum.reduce(x), a.max())
    # 2-D: all elements, or axis=0 (rows).
    g = np.arange(15, dtype=np.float64).reshape(5, 3) ** 1.5
    x2 = m.array(g, chunks=[2, 0, 3])
    for name in ("sum", "prod", "min", "max", "mean", "any", "all"):
        np.testing.assert_allclose(getattr(x2, name)(), getattr(g, name)())
        np.testing.assert_allclose(getattr(x2, name)(axis=0), getattr(g, name)(axis=0))
        assert np.shape(getattr(x2, name)(axis=0)) == (3,)
    np.testing.assert_allclose(np.add.reduce(x2, axis=0), g.sum(axis=0))
    with pytest.raises(ValueError):
        x2.sum(axis=2)  # numpy's AxisError, a ValueError
    # numpy's functions, which pass out= (and dtype= to sum, prod and mean).
    for name in ("sum", "prod", "min", "max", "mean", "any", "all"):
        np.testing.assert_allclose(getattr(np, name)(x2), getattr(np, name)(g))
        np.testing.assert_allclose(getattr(np, name)(x2, axis=0), getattr(np, name)(g, axis=0))
    assert_array_same(
        np.asarray(np.sum(xi, dtype=np.int8)), np.asarray(np.sum(ints, dtype=np.int8))
    )
    assert_array_same(
        np.asarray(xi.mean(dtype=np.float32)), np.asarray(ints.mean(dtype=np.float32))
    )
    with pytest.raises(TypeError, match="out="):
        np.sum(x, out=np.zeros(()))
    # On results not computed yet.
    np.testing.assert_allclose((x * 2).sum(), a.sum() * 2)
    # Empty arrays: as numpy, identities or its error.
    for empty in (m.array(np.zeros(0)), m.array(np.zeros(0), chunks=[]), m.array(np.zeros((0, 2)))):
        assert empty.sum() == 0 and empty.prod() == 1 and not empty.any() and empty.all()
        with pytest.raises(ValueError):
            empty.min()
        with pytest.raises(ValueError):
            empty.max()
    assert_array_same(m.array(np.zeros((0, 2), np.int64)).sum(axis=0), np.zeros(2, np.int64))
    with pytest.raises(ValueError):
        m.array(np.zeros((0, 2))).min(axis=0)


def check_dreduce(m):
    size = m.size
    digits = m.array(np.arange(1, 6), chunks=5, ranks=[(3 * k) % size for k in range(5)])
    # Folded in order: ((((1 * 10 + 2) * 10 + 3) * 10 + 4) * 10 + 5).
    assert_array_same(
        np.asarray(cv.dreduce(lambda acc, c: acc * 10 + c, digits)), np.array([12345])
    )
    assert_array_same(cv.dreduce(lambda p, q: np.concatenate([p, q]), digits), np.arange(1, 6))
    # The running value may have any shape, and be a 0-d array.
    assert cv.dreduce(lambda p, q: np.asarray(np.sum(p) + np.sum(q)), digits) == 15
    # A single chunk is returned as it is.
    assert_array_same(cv.dreduce(lambda p, q: 1 / 0, m.array(np.arange(3), chunks=1)), np.arange(3))
    # On a result not computed yet.
    assert_array_same(
        cv.dreduce(np.maximum, cv.dcall(np.negative, m.array(np.arange(8), chunks=[2, 2, 2, 2]))),
        np.array([0, -1]),
    )


def check_dmap_examples(m):
    size = m.size
    x = m.array(np.arange(10), chunks=[3, 3, 4], ranks=[k % size for k in (2, 0, 1)])
    # Chunk i with chunk i (and item i of a list); results of any length.
    r = cv.dmap(lambda c, k: c[:k], x, [1, 2, 3])
    assert [ref.length for ref in r.chunks] == [None] * 3  # not known yet
    assert len(r) == 6 and lengths(r) == [1, 2, 3] and owners(r) == owners(x)
    assert_array_same(r.collect(), np.array([0, 3, 4, 6, 7, 8]))
    assert r.dtype == x.dtype and r.shape == (6,)
    # Recycling of the shorter list of chunks, with R's warning.
    y = m.array(np.array([100, 200]), chunks=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = cv.dmap(lambda c, d: c + d, x, y)
    assert recycling_warnings(caught) == 1
    assert_array_same(
        s.collect(),
        np.concatenate([np.arange(3) + 100, np.arange(3, 6) + 200, np.arange(6, 10) + 100]),
    )
    # The argument with most chunks places the results; scalars go to every call.
    four = m.array(np.arange(4), chunks=4, ranks=[size - 1] * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = cv.dmap(lambda c, d, k: np.array([c.sum() + d.sum() + k]), y, four, k=1000)
    assert recycling_warnings(caught) == 0
    assert owners(t) == [size - 1] * 4
    assert_array_same(t.collect(), np.array([1100, 1201, 1102, 1203]))
    # Results of dmap feed dcall (aligned where their lengths are published).
    assert_array_same(cv.dcall(np.add, r, 1).collect(), np.array([1, 4, 5, 7, 8, 9]))
    # Zero lengths: all zero is an empty result; mixing is an error.
    empty = m.array(np.zeros(0), chunks=[])
    assert cv.dmap(np.sum, empty).chunks == [] and len(cv.dmap(np.sum, empty, [])) == 0
    with pytest.raises(ValueError):
        cv.dmap(np.add, empty, x)
    with pytest.raises(ValueError):
        cv.dmap(np.add, x, [])


def case_api():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                for check in (
                    check_making_arrays,
                    check_rebalance,
                    check_from_local_single,
                    check_dcall_examples,
                    check_returns_at_once,
                    check_warnings_name_the_caller,
                    check_operators,
                    check_reductions,
                    check_dreduce,
                    check_dmap_examples,
                ):
                    check(m)
        nothing_left(m)


def case_planned():
    """dcall on arguments of unknown lengths, aligned where they are published."""
    with cv.Messenger() as m:

        @m.on("add one")
        def add_one(msg):
            return cv.dcall(np.add, cv.DistArray(layer_of(m), msg.payload), 1).chunks

        with m.driver() as d:
            if d is not None:
                for check in (
                    check_planned_without_waiting,
                    check_dcall_from_a_handler,
                    check_forged_plans,
                    check_assign_and_cache,
                    check_chunk_dtypes_reconciled,
                ):
                    check(m)
        nothing_left(m)


# -- errors ------------------------------------------------------------------------


class Unloadable:
    """An argument that pickles but cannot be unpickled (a module missing on the remote rank)."""

    def __reduce__(self):
        return (cannot_load, ())


def cannot_load():
    raise ImportError("no module named 'only_on_the_driver'")


def raise_on_row(row, a):
    """Raise a LookupError in the chunk that holds row `row`, else return `a`."""
    if np.any(a == row):
        raise LookupError(f"row {row} is bad")
    return a


def raise_first_row(a):
    raise KeyError(f"first row {a[0]}")


def raise_in_odd_chunks(a):
    """Raise in chunks 1 and 3 of rows 0..11 in 4 chunks; chunk 1 later (to make that likely)."""
    chunk = int(a[0]) // 3
    if chunk == 1:
        time.sleep(0.2)
    if chunk % 2:
        raise KeyError(f"chunk {chunk}")
    return a


def check_remote_errors(m):
    size = m.size
    x = m.array(np.arange(12), chunks=4, ranks=[k % size for k in (1, 2, 3, 0)])
    bad = cv.dcall(raise_on_row, 7, x)  # row 7 is in chunk 2, on rank 3 % size
    assert len(bad) == 12 and bad.dtype == x.dtype  # known without the failed chunk
    for wait in (bad.resolve, bad.collect, bad.sum, bad.max, lambda: np.asarray(bad)):
        with pytest.raises(cv.RemoteError) as info:
            wait()
        error = info.value
        assert isinstance(error, cv.ConveyorError)
        assert error.rank == 3 % size and error.remote_type == "LookupError"
        assert error.remote_message == "row 7 is bad"
        assert (
            "raise_on_row" in error.remote_traceback
            and "raise LookupError" in error.remote_traceback
        )
        assert "row 7 is bad" in str(error)
    assert [ref.state for ref in bad.chunks][2] == "error"
    # The error travels on to what is computed from it, with its first cause.
    later = cv.dcall(np.add, bad, 1)
    for wait in (
        later.collect,
        lambda: cv.dreduce(np.add, later),
        lambda: cv.dmap(lambda c: c[:1], bad).collect(),
    ):
        with pytest.raises(cv.RemoteError) as info:
            wait()
        assert info.value.remote_type == "LookupError" and info.value.rank == 3 % size
    # The first error in order is raised, whatever the order they happened in.
    for wait in ("collect", "resolve", "sum"):
        with pytest.raises(cv.RemoteError) as info:
            getattr(cv.dcall(raise_first_row, x), wait)()
        assert info.value.remote_type == "KeyError" and info.value.rank == 1 % size
        assert info.value.remote_message == "'first row 0'"
    # Several errors: still the first in order, even when a later one comes first.
    y = m.array(np.arange(12), chunks=4, ranks=[0, 1 % size, 2 % size, 0])
    for wait in ("collect", "resolve", "sum"):
        with pytest.raises(cv.RemoteError) as info:
            getattr(cv.dcall(raise_in_odd_chunks, y), wait)()
        assert info.value.remote_message == "'chunk 1'" and info.value.rank == 1 % size
    # Functions that do not return one row per row, or not numbers.
    for f, kind, words in (
        (lambda a: a[:-1], "ValueError", "2 rows for 3 rows"),
        (lambda a: 1.0, "ValueError", "a scalar for 3 rows"),
        (lambda a: np.array([None] * len(a)), "TypeError", "dtype object"),
    ):
        with pytest.raises(cv.RemoteError) as info:
            cv.dcall(f, x).collect()
        assert info.value.remote_type == kind and words in info.value.remote_message
    # With a zero-length operand too: the call returns at once and its
    # function's errors, or a result of other than zero rows, come at collect.
    for args, kind, words in (
        ((raise_first_row, m.array(np.zeros(0))), "IndexError", "out of bounds"),
        ((lambda a, b: np.ones(3), x, np.zeros(0)), "ValueError", "3 rows for 0 rows"),
        ((lambda a, b: 1.0, x, m.array(np.zeros(0))), "ValueError", "a scalar for 0"),
    ):
        result = cv.dcall(*args)
        with pytest.raises(cv.RemoteError) as info:
            result.collect()
        assert info.value.remote_type == kind and words in info.value.remote_message
    # dmap chunks may have any length, but not 0 dimensions.
    with pytest.raises(TypeError):
        len(cv.dmap(np.sum, x))
    # An argument that cannot be read where the chunk is computed.
    with pytest.raises(cv.RemoteError) as info:
        cv.dcall(lambda a, u: a, x, Unloadable()).collect()
    assert (
        info.value.remote_type == "ImportError"
        and "only_on_the_driver" in info.value.remote_message
    )
    assert_array_same(x.collect(), np.arange(12))  # the rest goes on


def check_bad_arguments(m):
    size = m.size
    a = np.arange(6.0)
    for chunks in ([2, 2], [3, 4], [-1, 7], 0, -2, [7, -1]):
        with pytest.raises(ValueError):
            m.array(a, chunks=chunks)
    for ranks in ([0], [0, 0, 0], [size], [-1, 0], [0, size + 3]):
        with pytest.raises(ValueError):
            m.array(a, chunks=2, ranks=ranks)
    # Sizes and ranks are integers (numpy's too), never truncated.
    for chunks, ranks in (([3.9, 3.0], None), ([3, 3], [0.7, 0]), (np.array([3.0, 3.0]), None)):
        with pytest.raises(TypeError):
            m.array(a, chunks=chunks, ranks=ranks)
    y = m.array(a, chunks=np.array([3, 3]), ranks=np.array([size - 1, 0], dtype=np.uint8))
    assert lengths(y) == [3, 3] and owners(y) == [size - 1, 0]
    for shape in ((2, 2, 2), ()):
        with pytest.raises(ValueError):
            m.array(np.zeros(shape))
    for value in (np.array([None, 1], dtype=object), [{"a": 1}], np.zeros(2, dtype=[("a", "i4")])):
        with pytest.raises(TypeError):
            m.array(value)
    x = m.array(a)
    with pytest.raises(TypeError):
        cv.dcall(np.add, a, a)  # no DistArray at all
    with pytest.raises(TypeError):
        cv.dcall(np.add, 1, b=2)
    with pytest.raises(TypeError):
        cv.dmap(np.add, [a], 1)
    with pytest.raises(TypeError):
        cv.dreduce(np.add, a)
    with pytest.raises(ValueError):
        cv.dreduce(np.add, m.array(np.zeros(0), chunks=[]))
    with pytest.raises(ValueError):
        x.rebalance(0)
    with pytest.raises(ValueError):
        m.driver(root=size)
    with pytest.raises(ValueError):
        x.mean(axis=1)


def case_errors():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_remote_errors(m)
                check_bad_arguments(m)
        nothing_left(m)


# -- the race: a call that needs chunks still being computed on the same rank ----


def slow_double(a):
    time.sleep(0.05)  # long enough that the next call's tasks arrive meanwhile
    return a * 2


def check_race(m, rank):
    """z2 = dcall(f2, x, z1) issued while z1's chunks, on `rank` with x's, are computed."""
    size = m.size
    a = np.arange(40.0)
    x = m.array(a, chunks=4, ranks=[rank] * 4)
    z1 = cv.dcall(slow_double, x)
    z2 = cv.dcall(np.add, x, z1)
    assert {ref.state for ref in z1.chunks} == {"pending"}  # as far as the driver knows
    assert_array_same(z2.collect(), a * 3)
    assert_array_same(z1.collect(), a * 2)
    # x itself pending too, and z1 an argument of a call placed elsewhere:
    # another rank's tasks fetch z1's rows while `rank` computes them.
    x = cv.dcall(slow_double, m.array(a, chunks=4, ranks=[rank] * 4))
    z1 = cv.dcall(slow_double, x)
    y = m.array(a, chunks=5, ranks=[(rank + 1) % size] * 5)  # more chunks: the target
    z2 = cv.dcall(lambda p, q, r: p + q + r, y, z1, x)
    w = m.array(a, chunks=6, ranks=[rank] * 6)  # on `rank` again, waiting for all of it
    z3 = cv.dcall(lambda p, q, r: p + q - r, w, z1, z2)
    assert lengths(z2) == lengths(y) and owners(z3) == [rank] * 6
    assert_array_same(z3.collect(), -(a * 2))
    assert_array_same(z2.collect(), a + a * 4 + a * 2)
    # Recycled: every chunk of z2 needs pieces of several chunks of z1.
    z1 = cv.dcall(slow_double, m.array(a[:7], chunks=3, ranks=[rank] * 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z2 = cv.dcall(np.add, x, z1)
    assert recycling_warnings(caught) == 1
    assert_array_same(z2.collect(), a * 2 + recycled(a[:7] * 2, 40))
    # Operands of unknown length (dmap's), computed on `rank` while the
    # call's tasks, on `rank` too, plan their alignment.
    z1 = cv.dmap(slow_double, m.array(a, chunks=4, ranks=[rank] * 4))
    z2 = cv.dcall(np.add, cv.dmap(slow_double, z1), z1)
    z3 = cv.dcall(lambda p, q: p - q, x, z2)
    assert [ref.length for ref in z3.chunks] == [None] * 4 and owners(z3) == [rank] * 4
    assert_array_same(z3.collect(), a * 2 - a * 6)
    # dmap and reductions on chunks not computed yet.
    z1 = cv.dcall(slow_double, m.array(a, chunks=4, ranks=[rank] * 4))
    assert_array_same(cv.dmap(lambda p, q: p - q, z1, x).collect(), np.zeros(40))
    assert z1.sum() == a.sum() * 2 and cv.dreduce(np.maximum, z1).max() == 78


def case_race():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_race(m, 0)  # the driver's own rank
                if m.size > 1:
                    check_race(m, m.size - 1)  # another one
        nothing_left(m)


def case_reference_before_its_chunk():
    """A reference reaches the chunk's owner before the task that creates it.

    As when the reference is passed on through a third rank, which may beat
    the task: here it is held back until the owner has the reference.
    """
    with cv.Messenger() as m:
        held = []

        @m.on("hold")
        def hold(msg):
            ref = msg.payload
            assert ref.state == "pending" and "pending" in repr(ref)
            held.append(ref)
            return ref, m.chunk_stats()["placeholders"]  # and passed on at once

        with m.driver() as d:
            if d is not None:
                layer, owner = m._chunks, m.size - 1
                ref, weight = layer.mint(owner, 4)
                back, placeholders = m.request(owner, "hold", ref).result(timeout=10)
                assert placeholders == 1 and back.id == ref.id
                del back
                layer.transport.send(
                    owner,
                    CHUNK_TASK,
                    {
                        "id": ref.id,
                        "weight": weight,
                        "length": 4,
                        "function": None,
                        "args": [("value", np.arange(4))],
                        "kwargs": {},
                        "plan": None,
                    },
                )
                assert_array_same(cv.DistArray(layer, [ref]).collect(), np.arange(4))
                del ref
        held.clear()
        nothing_left(m)


@pytest.mark.parametrize("nranks", [2, 4])
def test_reference_before_its_chunk(mpirun, nranks):
    run_case(mpirun, nranks, case_reference_before_its_chunk)


# -- the driver model and SPMD -------------------------------------------------------


def case_driver():
    with cv.Messenger() as m:
        notes, refused = [], []

        @m.on("note")
        def note(msg):
            notes.append(msg.payload)

        @m.on("serve")
        def serve(msg):
            refused.append(msg.source)
            with m.driver(root=msg.source):
                pass  # a rank serving a driver from inside a handler: refused

        # Twice in a row with the same root, then with another.
        for turn, root in enumerate([0, 0, m.size - 1]):
            with m.driver(root=root) as d:
                if m.rank != root:
                    assert d is None
                else:
                    assert (
                        isinstance(d, cv.Driver) and d.messenger is m and f"rank {root}" in repr(d)
                    )
                    x = d.array(np.arange(20), chunks=2 * m.size)
                    y = d.dcall(np.multiply, x, turn + 1)
                    assert y.sum() == 190 * (turn + 1)
                    sums = d.dmap(lambda c: np.array([c.sum()]), y)
                    assert d.dreduce(np.add, sums) == [190 * (turn + 1)]
                    if m.size > 1:
                        with pytest.raises(cv.RemoteError) as info:
                            m.request((root + 1) % m.size, "serve").result(timeout=20)
                        assert info.value.remote_type == "ConveyorError"
                    del x, y, sums
                    for rank in range(m.size):
                        m.send(rank, "note", turn)  # the last thing before the root leaves
            if m.rank != root:
                assert turn in notes  # served until the root left
        for root in (-1, m.size):
            with pytest.raises(ValueError):
                m.driver(root=root)
        nothing_left(m, handler_errors=len(refused))


def case_spmd():
    # No driver: every rank makes the arrays together and calls on them itself.
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        for turn in range(3):
            local = np.arange(rank * 10, rank * 10 + rank + turn, dtype=np.int64)  # may be empty
            x = cv.DistArray.from_local(m, local)
            local[:] = -1  # copied
            whole = np.concatenate([np.arange(r * 10, r * 10 + r + turn) for r in range(size)])
            assert lengths(x) == [r + turn for r in range(size)] and owners(x) == list(range(size))
            assert len(x) == len(whole) and x.dtype == np.int64 and x.shape == whole.shape
            y = cv.dcall(np.multiply, x, rank + 1)  # each rank its own result
            assert_array_same(y.collect(), whole * (rank + 1))
            assert x.sum() == whole.sum()
            rows = np.full((rank % 2 + turn, 3), rank, dtype=np.float32)
            g = cv.DistArray.from_local(m, rows)
            assert g.shape == (sum(r % 2 + turn for r in range(size)), 3)
            assert_array_same(
                g.rebalance().collect(),
                np.concatenate(
                    [np.full((r % 2 + turn, 3), r, dtype=np.float32) for r in range(size)]
                ),
            )
            # Every rank scatters an array of its own at the same time.
            mine = m.array(
                np.arange(rank + turn + 3),
                chunks=size,
                ranks=[(rank + k) % size for k in range(size)],
            )
            assert_array_same((mine + x.sum()).collect(), np.arange(rank + turn + 3) + whole.sum())
        del x, y, g, mine
        # Pieces that do not fit together: an error on every rank, and nothing kept.
        last = rank == size - 1
        for local in (
            np.zeros(2, np.int32 if last else np.int64),
            np.zeros((2, 2 if last else 1)),
            np.zeros((1, 3)) if last else np.zeros(3),
        ):
            if size > 1:
                with pytest.raises(ValueError):
                    cv.DistArray.from_local(m, local)
        for local in (np.zeros((1, 1, 1)), np.zeros(())):
            with pytest.raises(ValueError):
                cv.DistArray.from_local(m, local)
        with pytest.raises(TypeError):
            cv.DistArray.from_local(m, np.array([None]))
        nothing_left(m)


def case_from_local_serves_while_it_waits_for_the_others():
    # from_local is collective, and its first call also makes the chunk
    # layer's communicator: a rank already there must still answer one that
    # asks it something before joining (bench/soak.py hung so: rank 2 in its
    # first from_local, rank 0 waiting for rank 2 to delete a table key).
    with cv.Messenger() as m:
        entered = []
        m.on("entering")(lambda msg: entered.append(msg.source))
        m.on("ask")(lambda msg: msg.payload + 1)
        m.barrier()
        for turn in range(2):  # the communicator's making, then from_local's own wait
            if m.rank == 1:
                m.send(0, "entering", turn)  # and straight in, serving nothing before
            elif m.rank == 0:
                while len(entered) <= turn:
                    m.progress(0.01)
                assert m.request(1, "ask", 41 + turn).result(timeout=30) == 42 + turn
            x = cv.DistArray.from_local(m, np.arange(m.rank, m.rank + 2))
            assert x.sum() == sum(2 * r + 1 for r in range(m.size))
        del x
        nothing_left(m)


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
    assert_array_same(kept.collect(), np.arange(12) * 2 + 1)


def check_references_travel(m):
    """Send the chunk references of two arrays around; return how many chunks they keep alive."""
    size, a, b = m.size, 1 % m.size, 2 % m.size
    x = m.array(np.arange(10), chunks=5, ranks=[k % size for k in range(5)])
    z = cv.dcall(slow_double, x)  # pending while its references travel
    for rank in range(size):
        m.send(rank, "hold", x.chunks)  # the driver's own rank too: home again
    m.send(a, "hold", {"pending": tuple(z.chunks), "one": [z.chunks[0]]})
    back = m.request(a, "echo", z.chunks + x.chunks).result(timeout=20)  # there and back
    assert [(r.id, r.owner, r.length, r.offset) for r in back] == [
        (r.id, r.owner, r.length, r.offset) for r in z.chunks + x.chunks
    ]
    m.send(b, "forward", (2 * size + 1, x.chunks[::2]))  # round the ranks, twice and more
    assert_array_same(z.collect(), np.arange(10) * 2)
    return len(x.chunks) + len(z.chunks)


def check_failed_sends(m):
    # A message that cannot travel takes no reference weight with it.
    size = m.size
    x = m.array(np.arange(4), chunks=2, ranks=[0, 1 % size])
    for bad in (object(), np.array([None], dtype=object)):
        with pytest.raises(cv.CarriageError):
            m.send(1 % size, "hold", [x.chunks, bad])
        with pytest.raises(cv.CarriageError):
            m.request(size - 1, "echo", (x.chunks[1], {"bad": bad}))
        with pytest.raises(cv.CarriageError):
            m.sender("hold").send(size - 1, [x.chunks, bad])
    assert_array_same(x.collect(), np.arange(4))


def case_freeing():
    with cv.Messenger() as m:
        held = []

        @m.on("hold")
        def hold(msg):
            held.append(msg.payload)

        @m.on("echo")
        def echo(msg):
            return msg.payload

        @m.on("forward")
        def forward(msg):
            hops, refs = msg.payload
            if hops:
                m.send((m.rank + 1) % m.size, "forward", (hops - 1, refs))
            else:
                held.append(refs)

        with m.driver() as d:
            if d is not None:
                check_results_dropped_at_once(m)
                travelled = check_references_travel(m)
                check_failed_sends(m)
        # The driver dropped its arrays: the references held elsewhere keep them.
        quiet(m)
        assert chunks_everywhere(m) == world().bcast(travelled if m.rank == 0 else None)
        held.clear()
        nothing_left(m)


def case_passed_on_many_times():
    with cv.Messenger() as m:

        @m.on("spread")
        def spread(msg):
            for _ in range(25):  # from one handler: no refill can arrive meanwhile
                m.send(0, "drop", msg.payload)

        @m.on("drop")
        def drop(msg):
            pass

        with m.driver() as d:
            if d is not None:
                # Rank 1 owns the chunk, the driver holds a reference, rank 2 gets a copy.
                x = m.array(np.arange(4), chunks=1, ranks=[1])
                m.send(2, "spread", x.chunks)
                del x
        nothing_left(m)


def case_reference_chain(hops):
    """A reference passed along a ring of the ranks but its owner, many copies a hop.

    Each hop halves the weight it got, down to 1, and then lends as a proxy:
    the copy that goes on carries weight owed to a proxy, and the next rank,
    which may be a proxy itself, proxies in turn.
    """
    with cv.Messenger() as m:
        owner = m.size - 1
        ring = list(range(owner))
        arrived = []

        @m.on("hop")
        def hop(msg):
            left, ref = msg.payload
            after = ring[(ring.index(m.rank) + 1) % len(ring)]
            for _ in range(30):  # more copies than 2**20 weight splits into
                m.send(after, "drop", ref)
            if left:
                m.send(after, "hop", (left - 1, ref))
            else:
                m.send(0, "arrived", ref)

        @m.on("drop")
        def drop(msg):
            pass

        @m.on("arrived")
        def arrive(msg):
            arrived.append(msg.payload)

        with m.driver() as d:
            if d is not None:
                x = m.array(np.arange(4), chunks=1, ranks=[owner])
                m.send(ring[0], "hop", (int(hops), x.chunks[0]))
                del x
                deadline = time.monotonic() + 30
                while not arrived and time.monotonic() < deadline:
                    m.progress(0.01)
                assert arrived, "the reference never reached the end of its chain"
                # The chunk outlived every other reference: its last one reads it.
                assert_array_same(cv.DistArray(m._chunks, arrived).collect(), np.arange(4))
                arrived.clear()
        nothing_left(m)


def test_reference_passed_on_many_times(mpirun):
    run_case(mpirun, 3, case_passed_on_many_times)


@pytest.mark.parametrize("nranks", [2, 3])
def test_from_local_serves_while_it_waits_for_the_others(mpirun, nranks):
    run_case(mpirun, nranks, case_from_local_serves_while_it_waits_for_the_others, timeout=40)


@pytest.mark.parametrize("nranks", [3, 4])
def test_reference_passed_along_a_chain_of_proxies(mpirun, nranks):
    run_case(mpirun, nranks, case_reference_chain, 40)


# -- every case at 1, 2 and 4 ranks --------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [case_api, case_planned, case_errors, case_race, case_driver, case_spmd, case_freeing],
    ids=lambda case: case.__name__[len("case_") :],
)
def test_case(mpirun, nranks, case):
    run_case(mpirun, nranks, case)


def case_a_task_function_travels_once_per_rank():
    # A function that captures 800 kB, in ten calls over every chunk: sent
    # once to each owner, then by its digest (issue 14); whole to an owner
    # on another host, through shared memory to one on the caller's (issue 15).
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(m, np.arange(m.rank, m.rank + 4, dtype=np.float64))
        big = np.ones(100_000)
        before = m.stats()
        for _ in range(10):
            y = cv.dcall(lambda a: a + big.sum(), x)
            assert_array_same(
                y.collect(), np.concatenate([np.arange(r, r + 4) for r in range(m.size)]) + 1e5
            )
        m.wait_quiet()
        after = m.stats()
        sent = sum(after[k] - before[k] for k in ("bytes_framed", "bytes_zero_copy_sent"))
        everywhere = world().allreduce(sent)
        # Every rank calls dcall (SPMD) over every rank's chunk: one whole
        # pickle per pair of ranks on different hosts, where each call
        # would send one per chunk.
        pairs = sum(len(host) * (m.size - len(host)) for host in m.hosts)
        assert 800_000 * pairs <= everywhere < 800_000 * pairs + 100_000 * m.size, everywhere


@pytest.mark.parametrize("hosts", ["one", "each"])
def test_a_task_function_travels_once_per_rank(mpirun, nranks, hosts):
    env = {"CONVEYOR_HOSTS": "1" if hosts == "one" else str(nranks)}
    mpirun(nranks, case_a_task_function_travels_once_per_rank, env=env)
