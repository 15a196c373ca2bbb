"""DistArray follows numpy: operators and broadcasting, truth values, iteration, attributes.

Each check compares a DistArray with the numpy array it holds, at 1 to 4
ranks: values, dtype and shape, and for what numpy refuses, the same
exception with numpy's message. The driver runs the checks; every case ends
with `nothing_left`.
"""

import operator
import os
import tempfile
import time
import warnings

import numpy as np
import pytest

import conveyor as cv
from conveyor._darray import reductions

from _helpers import assert_array_same, nothing_left, owners, run_case


def numpy_error(call):
    """The exception numpy raises for `call` (which must raise)."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


def assert_raises_like(call, numpy_call):
    """`call` raises what `numpy_call` raises: the same type and message."""
    want = numpy_error(numpy_call)
    with pytest.raises(type(want)) as info:
        call()
    assert str(info.value).strip() == str(want).strip(), (str(info.value), str(want))


BINARY = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.and_,
    operator.or_,
    operator.xor,
    operator.lshift,
    operator.rshift,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
]


def check_operators(m):
    size = m.size
    rng = np.random.default_rng(5)
    a = rng.integers(-20, 20, 11)
    b = rng.integers(1, 6, 11)
    x = m.array(a, chunks=[3, 0, 5, 3], ranks=[k % size for k in (1, 0, 2, 3)])
    y = m.array(b, chunks=4)
    for op in BINARY:
        assert_array_same(op(x, y).collect(), op(a, b))
        assert_array_same(op(x, b).collect(), op(a, b))  # DistArray op numpy
        assert_array_same(op(a, y).collect(), op(a, b))  # numpy defers to the DistArray
        assert_array_same(op(x, 3).collect(), op(a, 3))
        assert_array_same(op(3, y).collect(), op(3, b))  # reflected
    assert_array_same((x**2).collect(), a**2)
    assert_array_same((2**y).collect(), 2**b)
    for op in (operator.neg, operator.pos, operator.invert, abs):
        assert_array_same(op(x).collect(), op(a))
    # The examples: & and | are bitwise, as numpy's.
    four = m.array(np.array([1, 2, 3, 4]), chunks=3)
    assert_array_same((four & 3).collect(), np.array([1, 2, 3, 0]))
    assert_array_same((four | 8).collect(), np.array([9, 10, 11, 12]))
    # On bools they are logical, as numpy's; R's logical & and | by name.
    p, q = a > 0, b > 2
    xp, yq = x > 0, y > 2
    for op in (operator.and_, operator.or_, operator.xor):
        assert_array_same(op(xp, yq).collect(), op(p, q))
    assert_array_same((~xp).collect(), ~p)
    for ufunc in (np.logical_and, np.logical_or, np.logical_xor):
        assert_array_same(ufunc(x, y - 3).collect(), ufunc(a, b - 3))
    assert_array_same(np.logical_not(x).collect(), np.logical_not(a))
    # numpy's ufuncs, and its type promotion.
    assert_array_same(np.sqrt(y).collect(), np.sqrt(b))
    assert_array_same(np.maximum(x, b).collect(), np.maximum(a, b))
    assert_array_same(np.add(x, y, dtype=np.float32).collect(), np.add(a, b, dtype=np.float32))
    small = np.arange(6, dtype=np.int8)
    xs = m.array(small, chunks=2)
    for value in (1, np.int16(2), 1.5, np.float32(0.5), np.arange(6, dtype=np.uint8)):
        assert_array_same((xs + value).collect(), small + value)
    # Results know their dtype and shape at once: a chain never waits for a chunk.
    chain = ((x + 1) * 2 - y) > 0
    assert "shape=(11,) dtype=bool " in repr(chain)
    assert_array_same(chain.collect(), ((a + 1) * 2 - b) > 0)


def check_broadcasting(m):
    rng = np.random.default_rng(6)
    g = rng.normal(size=(7, 3))
    yg = m.array(g, chunks=[2, 0, 5])
    row = np.array([1.0, 2.0, 3.0])
    column = rng.normal(size=(7, 1))
    xc = m.array(column, chunks=3)
    for got, want in [
        (yg - row, g - row),  # a numpy row: whole on every chunk
        (row * yg, row * g),
        (yg + g, g + g),  # a numpy array with a row per row: cut by rows
        (yg * xc, g * column),  # a column DistArray: broadcast inside each chunk
        (yg * column, g * column),
        (yg / m.array(row[None, :]), g / row),  # a DistArray of one row
        (yg - yg.mean(axis=0), g - g.mean(axis=0)),
        (np.maximum(yg, row), np.maximum(g, row)),
        (yg > 0.5, g > 0.5),
        (xc + row, column + row),  # (7, 1) with (3,): (7, 3)
    ]:
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got.collect(), want)
    a = np.arange(5.0)
    x = m.array(a, chunks=2)
    assert_array_same((x + m.array(a[:1])).collect(), a + a[:1])
    assert_array_same((x + np.array([5.0])).collect(), a + 5)
    assert_array_same((m.array(a[:1]) + a).collect(), a[:1] + a)  # the numpy array is longest
    # No rows: numpy's broadcasting of 0 with 1, and the dtype.
    assert_array_same((m.array(np.zeros(0, np.int32)) + 1).collect(), np.zeros(0, np.int32) + 1)
    assert_array_same((m.array(np.zeros((0, 3))) + row).collect(), np.zeros((0, 3)) + row)
    assert_array_same((m.array(np.zeros(0)) + m.array(a[:1])).collect(), np.zeros(0))


def check_operator_errors(m):
    a = np.arange(11)
    x = m.array(a, chunks=3)
    g = np.arange(21.0).reshape(7, 3)
    yg = m.array(g, chunks=2)
    # Lengths that do not broadcast: numpy's error (R's recycling is dcall's).
    assert_raises_like(lambda: x + m.array(np.arange(4)), lambda: a + np.arange(4))
    assert_raises_like(lambda: x * np.arange(4), lambda: a * np.arange(4))
    assert_raises_like(lambda: np.arange(4) < x, lambda: np.arange(4) < a)
    assert_raises_like(lambda: yg + np.arange(7.0), lambda: g + np.arange(7.0))
    assert_raises_like(lambda: yg + m.array(np.ones((7, 2))), lambda: g + np.ones((7, 2)))
    # A DistArray along the columns of the result would be gathered everywhere.
    with pytest.raises(ValueError, match=r"\.collect\(\)"):
        yg + m.array(np.arange(3.0))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        x + np.zeros((2, 1, 11))
    # numpy's type errors, at the call.
    assert_raises_like(lambda: ~m.array(np.array([1.5])), lambda: ~np.array([1.5]))
    assert_raises_like(lambda: m.array(np.array([1.5])) & 1, lambda: np.array([1.5]) & 1)
    # What a DistArray cannot do says so.
    with pytest.raises(TypeError, match="out="):
        np.add(x, x, out=np.empty(11, np.int64))
    with pytest.raises(TypeError, match="where="):
        np.add(x, x, where=a > 3)
    with pytest.raises(TypeError, match="collect"):
        np.divmod(x, 3)
    with pytest.raises(TypeError):
        hash(x)  # == is elementwise


def check_truth_and_iteration(m):
    size = m.size
    a = np.array([4, 0, 7, -2, 9], dtype=np.int16)
    x = m.array(a, chunks=[2, 0, 3], ranks=[size - 1, 0, 1 % size])
    # numpy's truth values: one element, else its error.
    for value in (np.array([3]), np.array([0.0]), np.array([[True]]), np.array([False])):
        assert bool(m.array(value)) is bool(value)
    for value in (a, np.zeros(0), np.ones((2, 1))):
        assert_raises_like(lambda v=value: bool(m.array(v)), lambda v=value: bool(v))
    assert_raises_like(lambda: bool(x == x), lambda: bool(a == a))
    # So `in` a list compares for real: no silent True.
    other = m.array(a + 1)
    assert_raises_like(lambda: x in [other], lambda: a in [a + 1])
    assert x in [x]  # the same object, as Python's `in` checks first
    assert 7 in x and 5 not in x and (-2 in x) == (-2 in a)
    # Iteration by rows, as numpy: scalars of 1-D, rows of 2-D.
    assert [(type(v), v) for v in x] == [(type(v), v) for v in a]
    g = np.arange(12.0).reshape(4, 3)
    rows = list(m.array(g, chunks=[3, 1]))
    assert len(rows) == len(g)
    for got, want in zip(rows, g):
        assert_array_same(got, want)
    assert list(m.array(np.zeros(0))) == []
    assert [int(v) for v in cv.dcall(np.negative, x)] == (-a).tolist()  # not computed yet
    assert sum(1 for _ in m.array(np.arange(3))) == 3


def check_attributes(m):
    for value, chunks in [
        (np.arange(10, dtype=np.int32), 3),
        (np.ones((6, 4), dtype=np.complex64), [0, 6]),
        (np.zeros((0, 2), dtype=np.uint8), 2),
        (np.zeros(0), []),
    ]:
        x = m.array(value, chunks=chunks)
        for name in ("shape", "ndim", "size", "dtype", "itemsize", "nbytes"):
            assert getattr(x, name) == getattr(value, name), name
        assert len(x) == len(value)
    x = m.array(np.arange(7.0), chunks=[3, 4], ranks=[m.size - 1, 0])
    text = repr(x)
    assert text.startswith("<conveyor.DistArray ") and "shape=(7,)" in text
    assert "dtype=float64" in text and "chunks=[3, 4]" in text
    assert f"ranks=[{m.size - 1}, 0]" in text
    g = m.array(np.zeros((5, 2), np.int8), chunks=2)
    assert "shape=(5, 2)" in repr(g) and "dtype=int8" in repr(g)
    # What is not known yet shows as '?', and repr never waits for it.
    r = cv.dmap(lambda c: c[:1], x)
    assert "shape=?" in repr(r) and "dtype=?" in repr(r) and "chunks=[?, ?]" in repr(r)
    assert r.shape == (2,) and "shape=(2,)" in repr(r) and "chunks=[1, 1]" in repr(r)


REDUCTIONS = ["sum", "prod", "min", "max", "any", "all", "mean", "var", "std"]
PLACES = ["argmin", "argmax"]
RUNNING = ["cumsum", "cumprod"]


def numpy_or_error(call):
    """What `call` returns, or the exception it raises (numpy's warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except Exception as error:
            return error


def assert_like(got, want, where):
    """`got` is `want`: numpy's dtype, shape and values (close), or its error and message."""
    if isinstance(want, Exception) or isinstance(got, Exception):
        assert type(got) is type(want) and str(got) == str(want), (where, got, want)
        return
    assert np.asarray(got).dtype == np.asarray(want).dtype, (where, got, want)
    assert np.shape(got) == np.shape(want), (where, got, want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, equal_nan=True, err_msg=where)


def check_reductions(m):
    size = m.size
    rng = np.random.default_rng(11)
    for shape, chunks in [((11,), [3, 0, 5, 3]), ((7, 3), [2, 0, 5]), ((5, 2), 5), ((0, 2), 2)]:
        for dtype in (np.int32, np.float32, np.float64, np.bool_, np.complex64):
            a = (rng.normal(size=shape) * 4).astype(dtype)
            count = chunks if isinstance(chunks, int) else len(chunks)
            x = m.array(a, chunks=chunks, ranks=rng.integers(0, size, count).tolist())
            for name in REDUCTIONS + PLACES + RUNNING:
                axes = [None, 0, -1, 1, 2] + ([] if name in PLACES + RUNNING else [(0, 1), (1, 1)])
                for axis in axes:
                    for options in [{}] if name in RUNNING else [{}, {"keepdims": True}]:
                        where = f"{name}(axis={axis}, {options}) of {a.dtype}{shape}"
                        want = numpy_or_error(lambda: getattr(a, name)(axis=axis, **options))
                        got = numpy_or_error(lambda: getattr(x, name)(axis=axis, **options))
                        if isinstance(got, cv.DistArray):
                            # Along the rows, or running: distributed, as x is.
                            assert owners(got) == owners(x), where
                            got = got.collect()
                        assert_like(got, want, where)
    # numpy's functions and options reach the methods.
    a = rng.normal(size=(9, 4))
    x = m.array(a, chunks=[4, 5])
    for got, want in [
        (np.std(x, ddof=1), np.std(a, ddof=1)),
        (np.var(x, axis=0, ddof=2), np.var(a, axis=0, ddof=2)),
        (x.var(axis=1, ddof=1).collect(), a.var(axis=1, ddof=1)),
        (np.mean(x, axis=1).collect(), np.mean(a, axis=1)),
        (np.sum(x, axis=1, dtype=np.float32).collect(), np.sum(a, axis=1, dtype=np.float32)),
        (x.sum(axis=0, dtype=np.float32), a.sum(axis=0, dtype=np.float32)),
        (np.argmax(x, axis=0), np.argmax(a, axis=0)),
        (np.cumsum(x, axis=0).collect(), np.cumsum(a, axis=0)),
        (np.cumprod(x[:, 0]).collect(), np.cumprod(a[:, 0])),
        (np.add.accumulate(x).collect(), np.add.accumulate(a)),
        (np.multiply.accumulate(x, axis=1).collect(), np.multiply.accumulate(a, axis=1)),
        (np.add.reduce(x, axis=1).collect(), np.add.reduce(a, axis=1)),
        (x.cumsum(dtype=np.float32).collect(), a.cumsum(dtype=np.float32)),
    ]:
        assert_like(got, want, "numpy function")
    # float64 chunks longer than a step of rows (their sums are taken a step
    # at a time), an empty chunk, a strided chunk, and 2-D: numpy's var.
    # Around 1e8 with a spread of 1, a sum of squares less the sum's square
    # would keep none of the digits, nor would chunk means rounded to
    # float64 merge to numpy's var; around 0.5, the values are not shifted;
    # a first row of zeros misleads the shift (tests/unit/test_moments.py
    # has the cases at full precision).
    step = reductions.ROWS_AT_ONCE * reductions.ROW
    chunks = [step + 3, 0, 2 * step + 4]
    for big in [
        rng.normal(loc=1e3, size=3 * step + 7),
        1e8 + rng.random(3 * step + 7),
        rng.random(3 * step + 7),
        np.concatenate([np.zeros(reductions.ROW), 1e8 + rng.random(3 * step + 7 - reductions.ROW)]),
    ]:
        xb = m.array(big, chunks=chunks, ranks=[0, size - 1, 0])
        for got, want in [
            (xb.std(), big.std()),
            (xb.var(ddof=1), big.var(ddof=1)),
            (np.std(xb[::3]), np.std(big[::3])),
            (
                np.var(m.array(big[:-1].reshape(-1, 2), chunks=[5, len(big) // 2 - 5]), ddof=2),
                np.var(big[:-1].reshape(-1, 2), ddof=2),
            ),
        ]:
            assert np.asarray(got).dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-12)
    ints = np.array([5, -3, 7, 7, -3, 2], dtype=np.int8)
    xi = m.array(ints, chunks=[2, 0, 4])
    assert_like(xi.cumsum().collect(), ints.cumsum(), "int8 cumsum")  # int64, as numpy's
    assert xi.argmin() == 1 and xi.argmax() == 2  # the first, for ties
    nans = np.array([1.0, np.nan, 0.0, np.nan])
    assert m.array(nans, chunks=[1, 1, 2]).argmin() == 1  # numpy: the first nan
    with pytest.raises(TypeError, match="out="):
        x.cumsum(out=np.empty(36))
    # Running sums return at once, and never wait: each chunk after the totals before it.
    path = os.path.join(
        tempfile.gettempdir(), f"conveyor-cumsum-{os.getpid()}-{time.monotonic_ns()}"
    )
    try:
        pending = cv.dcall(wait_for_file, path, xi)
        running = pending.cumsum()
        assert "dtype=?" in repr(running) and owners(running) == owners(xi)
        open(path, "w").close()
        assert_array_same(running.collect(), ints.cumsum())
        assert running.shape == (6,) and running.dtype == np.int64
    finally:
        if os.path.exists(path):
            os.unlink(path)


def assert_same_or_error(call, numpy_call, where):
    """`call` gives what `numpy_call` gives (a DistArray: its collect()), or its error."""
    want = numpy_or_error(numpy_call)
    got = numpy_or_error(call)
    if isinstance(got, tuple) and all(isinstance(one, cv.DistArray) for one in got):
        assert isinstance(want, tuple) and len(got) == len(want), where
        for one, other in zip(got, want):
            assert_array_same(one.collect(), other)
        return
    if isinstance(got, cv.DistArray):
        assert_array_same(got.collect(), want)
    elif isinstance(got, (tuple, bool, int)):
        assert got == want and type(got) is type(want), (where, got, want)
    else:
        assert_like(got, want, where)


def check_layout(m):
    size = m.size
    rng = np.random.default_rng(12)
    a = rng.integers(0, 9, (12, 3))
    x = m.array(a, chunks=[4, 0, 8], ranks=[k % size for k in (2, 1, 0)])
    v = rng.integers(0, 9, 12)
    xv = m.array(v, chunks=[5, 7], ranks=[size - 1, 0])
    cases = [
        ("astype", lambda b, w: b.astype(np.float32)),
        ("astype safe", lambda b, w: b.astype(np.int32, casting="safe")),
        (
            "np.astype",
            lambda b, w: np.astype(b, np.int8) if hasattr(np, "astype") else b.astype(np.int8),
        ),
        ("flatten", lambda b, w: b.reshape(-1)),
        ("ravel", lambda b, w: np.ravel(b)),
        ("column", lambda b, w: w.reshape(-1, 1)),
        ("column of a tuple", lambda b, w: w.reshape((12, 1))),
        ("np.reshape", lambda b, w: np.reshape(b, (36,))),
        ("rows of 6", lambda b, w: b.reshape(-1, 6)),  # chunks of 4 and 8 rows of 3
        ("bad size", lambda b, w: b.reshape(5, 7)),
        ("two unknown", lambda b, w: b.reshape(-1, -1)),
        ("T", lambda b, w: b.T),
        ("T of 1-D", lambda b, w: w.T),
        ("transpose(1, 0)", lambda b, w: b.transpose(1, 0)),
        ("transpose((0, 1))", lambda b, w: b.transpose((0, 1))),
        ("repeated axes", lambda b, w: b.transpose(1, 1)),
        ("np.transpose", lambda b, w: np.transpose(b)),
        ("concatenate", lambda b, w: np.concatenate([b, b, a])),
        ("concatenate dtypes", lambda b, w: np.concatenate([w, w.astype(np.float64)])),
        ("concatenate columns", lambda b, w: np.concatenate([b, a[:, :1]], axis=1)),
        ("concatenate flat", lambda b, w: np.concatenate([b, b], axis=None)),
        ("concatenate dims", lambda b, w: np.concatenate([b, w])),
        ("concatenate widths", lambda b, w: np.concatenate([b, a[:, :2]])),
        ("concatenate lengths", lambda b, w: np.concatenate([b, a[:5]], axis=1)),
        ("concatenate axis", lambda b, w: np.concatenate([w, w], axis=1)),
        ("concatenate cast", lambda b, w: np.concatenate([w, w], dtype=np.int8, casting="safe")),
        ("stack", lambda b, w: np.stack([w, v])),
        ("stack columns", lambda b, w: np.stack([w, v], axis=1)),
        ("stack -1", lambda b, w: np.stack([w, v], axis=-1)),
        ("stack shapes", lambda b, w: np.stack([w, v[:3]])),
        ("stack axis", lambda b, w: np.stack([w, v], axis=3)),
        ("vstack", lambda b, w: np.vstack([w, v])),
        ("vstack 2-D", lambda b, w: np.vstack([b, a])),
        ("hstack", lambda b, w: np.hstack([b, a])),
        ("hstack 1-D", lambda b, w: np.hstack([w, v])),
        ("column_stack", lambda b, w: np.column_stack([w, v])),
        ("where", lambda b, w: np.where(w > 4, w, -1)),
        ("where rows", lambda b, w: np.where(b > 4, b, np.arange(3))),
        ("where of one", lambda b, w: np.where(w > 4)),
        ("where of two", lambda b, w: np.where(w, w)),
        ("nonzero", lambda b, w: np.nonzero(b > 4)),
        ("nonzero method", lambda b, w: (w % 3).nonzero()),
        ("clip", lambda b, w: np.clip(b, 2, 5)),
        ("round", lambda b, w: np.round(b / 3, 1)),
        ("isclose", lambda b, w: np.isclose(b, b + 1e-9)),
        ("allclose", lambda b, w: np.allclose(b, b + 1e-9)),
        ("array_equal", lambda b, w: np.array_equal(b, a)),
        ("array_equal other", lambda b, w: np.array_equal(w, v + 1)),
        ("array_equal nan", lambda b, w: np.array_equal(b / 0.0, b / 0.0, equal_nan=True)),
        ("shape", lambda b, w: np.shape(b)),
        ("ndim", lambda b, w: np.ndim(w)),
        ("size", lambda b, w: np.size(b, 1)),
        ("squeeze column", lambda b, w: b[:, :1].squeeze()),
        ("np.squeeze row", lambda b, w: np.squeeze(b[3:4])),
        ("squeeze axis", lambda b, w: b[:, 1:2].squeeze(axis=-1)),
        ("squeeze 1-D", lambda b, w: np.squeeze(w)),
        ("squeeze wrong axis", lambda b, w: b.squeeze(axis=1)),
        ("ravel method", lambda b, w: b.ravel()),
        ("flatten method", lambda b, w: b.flatten()),
        ("copy", lambda b, w: b.copy()),
        ("np.copy", lambda b, w: np.copy(w)),
        ("block", lambda b, w: np.block([[b, b[:, :1]], [a[:2], a[:2, :1]]])),
        ("block 1-D", lambda b, w: np.block([w, v, 7])),
        ("block columns", lambda b, w: np.block([b, a])),
        ("block depths", lambda b, w: np.block([[b], b])),
        ("block tuple", lambda b, w: np.block([(b, b)])),
        ("block empty", lambda b, w: np.block([[b], []])),
    ]
    for where, case in cases:
        assert_same_or_error(lambda: case(x, xv), lambda: case(a, v), where)
    # Nothing moves that need not: concatenating rows reuses the chunks,
    # a reshape or a cast keeps them where they are.
    rows = xv.rebalance(2).reshape(-1, 3)
    joined = np.concatenate([x, rows, a[:2]])
    assert owners(joined)[:5] == owners(x) + owners(rows)
    assert [ref.id for ref in joined.chunks[:3]] == [ref.id for ref in x.chunks]
    assert owners(x.reshape(-1)) == owners(x) and owners(x.astype(np.int8)) == owners(x)
    assert set(owners(x.T)) <= set(owners(x)) and len(x.T.chunks) == 3
    # A cast knows its dtype at once, whatever it is cast from.
    assert "dtype=float32" in repr(cv.dcall(np.negative, xv).astype(np.float32))
    # What numpy can do only on one rank says so, and names collect.
    for call in (lambda: np.median(x), lambda: np.sort(xv), lambda: np.unique(xv)):
        with pytest.raises(TypeError, match=r"not supported on a DistArray.*\.collect\(\)"):
            call()
    for call in (
        lambda: xv.reshape(3, 4),  # chunks of 5 and 7 rows are not whole rows of 4
        lambda: np.stack([x, x]),  # 3-D
        lambda: x.reshape(12, 3, order="F"),
        lambda: x.reshape(2, 2, 9),
        lambda: x[:1, :1].squeeze(),  # 0-d
        lambda: np.block([[xv, xv]]),  # a new first axis for xv
        lambda: np.ones((2, 2, 2), like=x),
    ):
        with pytest.raises(ValueError, match="collect|rebalance|1-D or 2-D"):
            call()
    assert_array_same(xv.rebalance(3).reshape(3, 4).collect(), v.reshape(3, 4))
    # A copy is new chunks, where the old ones are; rebalance takes sizes too.
    copied = x.copy()
    assert owners(copied) == owners(x) and not {r.id for r in copied.chunks} & {
        r.id for r in x.chunks
    }
    assert [ref.length for ref in xv.rebalance([0, 9, 3]).resolve().chunks] == [0, 9, 3]
    with pytest.raises(ValueError, match="add up to 12 rows"):
        xv.rebalance([5, 5])
    # numpy's creation functions given like=: a chunk a rank, made there, or numpy's errors.
    for call, numpy_call in [
        (lambda: np.zeros((5, 2), np.int8, like=x), lambda: np.zeros((5, 2), np.int8)),
        (lambda: np.empty(0, like=x).shape, lambda: np.empty(0).shape),
        (lambda: np.full(4, True, like=x), lambda: np.full(4, True)),
        (lambda: np.arange(start=1, stop=9, step=2, like=x), lambda: np.arange(1, 9, 2)),
        (lambda: np.arange(-3.0, like=x), lambda: np.arange(-3.0)),
        (lambda: np.arange(0, 5, 0, like=x), lambda: np.arange(0, 5, 0)),
        (lambda: np.ones(-1, like=x), lambda: np.ones(-1)),
        (lambda: np.array([[1, 2]], like=x), lambda: np.array([[1, 2]])),
        (lambda: np.array([1, 2], ndmin=2, like=x), lambda: np.array([1, 2], ndmin=2)),
        (lambda: np.arange(np.float32(1), 4, like=x), lambda: np.arange(np.float32(1), 4)),
        (lambda: np.arange(np.int8(2), 9, 3, like=x), lambda: np.arange(np.int8(2), 9, 3)),
        (lambda: np.arange(0, np.inf, like=x), lambda: np.arange(0, np.inf)),
    ]:
        assert_same_or_error(call, numpy_call, "like=")
    assert owners(np.ones(2 * size, like=x)) == list(range(size))


def check_products(m):
    size = m.size
    rng = np.random.default_rng(13)
    a = rng.normal(size=(10, 3))
    x = m.array(a, chunks=[3, 0, 7], ranks=[k % size for k in (1, 2, 0)])
    v = rng.normal(size=10)
    xv, yv = m.array(v, chunks=[4, 6]), m.array(v * 2, chunks=3)
    b = rng.normal(size=(10, 2))
    xb = m.array(b, chunks=4)
    w, w1, p = rng.normal(size=(3, 2)), rng.normal(size=3), rng.normal(size=(4, 10))
    stack = rng.normal(size=(2, 10, 5))
    cases = [
        ("rows times a matrix", lambda: x @ w, a @ w),
        ("rows times a vector", lambda: x @ w1, a @ w1),
        ("np.matmul", lambda: np.matmul(x, w), a @ w),
        ("dot of DistArrays", lambda: xv @ yv, v @ (v * 2)),
        ("dot with numpy", lambda: xv @ v, v @ v),
        ("numpy dot", lambda: v @ xv, v @ v),
        ("vector times rows", lambda: xv @ xb, v @ b),
        ("vector times numpy rows", lambda: xv @ b, v @ b),
        ("matrix times a DistArray", lambda: p @ xv, p @ v),
        ("matrix times rows", lambda: p @ xb, p @ b),
        ("stacks of matrices", lambda: xv @ stack, v @ stack),
        ("np.dot", lambda: np.dot(x, w), a.dot(w)),
        ("np.dot by a scalar", lambda: np.dot(xv, 3), np.dot(v, 3)),
        ("ints", lambda: m.array(np.arange(5)) @ np.arange(5), np.arange(5) @ np.arange(5)),
        ("no rows", lambda: m.array(np.zeros((0, 3))) @ w, np.zeros((0, 3)) @ w),
        ("no elements", lambda: m.array(np.zeros(0)) @ np.zeros(0), np.zeros(0) @ np.zeros(0)),
    ]
    for where, call, want in cases:
        got = call()
        if isinstance(got, cv.DistArray):  # computed where the rows are
            assert owners(got) in (owners(x), owners(xv)) or where == "no rows", where
            got = got.collect()
        assert type(got) is type(want) or isinstance(want, np.ndarray), where
        assert_like(got, want, where)
    # numpy's errors, and a clear one where every rank would need a whole operand.
    for call, numpy_call in [
        (lambda: x @ np.ones(4), lambda: a @ np.ones(4)),
        (lambda: xv @ np.ones(3), lambda: v @ np.ones(3)),
        (lambda: np.ones(3) @ xv, lambda: np.ones(3) @ v),
        (lambda: xv @ 2, lambda: v @ 2),
    ]:
        assert_raises_like(call, numpy_call)
    for call in (lambda: x @ m.array(w), lambda: x @ rng.normal(size=(2, 3, 5))):
        with pytest.raises(TypeError, match="collect"):
            call()


def case_layout():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_layout(m)
                check_products(m)
        nothing_left(m)


def wait_for_file(path, a):
    """Return `a` once `path` exists: a chunk that cannot be computed before its caller says so."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return a


def case_reductions():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_reductions(m)
        nothing_left(m)


def case_operators():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_operators(m)
                check_broadcasting(m)
                check_operator_errors(m)
                check_truth_and_iteration(m)
                check_attributes(m)
        nothing_left(m)


@pytest.mark.parametrize(
    "case",
    [case_operators, case_reductions, case_layout],
    ids=lambda case: case.__name__[len("case_") :],
)
def test_case(mpirun, nranks, case):
    run_case(mpirun, nranks, case)
