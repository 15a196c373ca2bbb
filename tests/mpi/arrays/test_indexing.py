"""Indexing a DistArray against numpy: every form of key, on random shapes and chunkings.

hypothesis draws a 1-D or 2-D array (0 to 12 rows), its chunking and the
ranks of its chunks, and keys of every form numpy takes: integers, slices
with any step, integer lists and arrays in and out of order, boolean
masks, DistArray masks and integer indices with chunkings of their own,
column selections of 2-D arrays, and keys numpy refuses. ``x[key]`` must
be ``a[key]`` (values, dtype, shape; a numpy scalar or row for an integer
row), or raise what numpy raises, with numpy's message. The driver runs
the properties at 1 to 4 ranks; each case ends with `nothing_left`.
"""

import os
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv

from _helpers import assert_array_same, lengths, nothing_left, owners, run_case


@st.composite
def chunked(draw, rows, size):
    """(chunk sizes, chunk ranks) for `rows` rows: 0 to 4 cuts, empty chunks allowed."""
    cuts = sorted(draw(st.lists(st.integers(0, rows), max_size=3)))
    sizes = np.diff([0] + cuts + [rows]).tolist()
    ranks = draw(st.lists(st.integers(0, size - 1), min_size=len(sizes), max_size=len(sizes)))
    return sizes, ranks


def integers(n):
    """Row numbers, mostly in bounds."""
    return st.integers(-n - 2, n + 1) if n else st.integers(-2, 1)


@st.composite
def row_keys(draw, n):
    """A key for the rows: ("local", key) or ("dist", numpy index, sizes, ranks)."""
    kind = draw(
        st.sampled_from(
            ["int", "slice", "ints", "sorted", "list", "mask", "dist-mask", "dist-ints", "bad"]
        )
    )
    if kind == "int":
        value = draw(integers(n))
        return ("local", draw(st.sampled_from([value, np.int64(value), np.array(value)])))
    if kind == "slice":
        bound = st.none() | st.integers(-n - 3, n + 3)
        step = st.none() | st.sampled_from([1, 2, 3, 5, -1, -2, -3, 0])
        return ("local", slice(draw(bound), draw(bound), draw(step)))
    if kind in ("ints", "sorted", "list"):
        values = draw(st.lists(integers(n), max_size=8))
        if kind == "sorted":
            values.sort(reverse=draw(st.booleans()))
        return ("local", values if kind == "list" else np.array(values, dtype=np.int64))
    if kind == "mask":
        length = draw(st.sampled_from([n, n, n, n + 1, max(n - 1, 0)]))
        return ("local", np.array(draw(st.lists(st.booleans(), min_size=length, max_size=length))))
    if kind == "dist-mask":
        length = draw(st.sampled_from([n, n, n, n + 2]))
        mask = np.array(draw(st.lists(st.booleans(), min_size=length, max_size=length)), bool)
        return ("dist", mask) + draw(chunked(length, 4))
    if kind == "dist-ints":
        values = np.array(draw(st.lists(st.integers(-n - 1, n), max_size=8)), np.int64)
        if n == 0:  # (numpy's message names the bad index, which is not looked at here)
            values = values[:0]
        return ("dist", values) + draw(chunked(len(values), 4))
    return ("local", draw(st.sampled_from([1.5, [1.0], "a", np.array([0.5])])))


@st.composite
def column_keys(draw, columns):
    """A key for the columns of a 2-D array (None would make it 3-D)."""
    kind = draw(st.sampled_from(["int", "slice", "ints", "mask", "ellipsis"]))
    if kind == "int":
        return draw(st.integers(-columns - 1, columns))
    if kind == "slice":
        bound = st.none() | st.integers(-columns - 1, columns + 1)
        return slice(draw(bound), draw(bound), draw(st.none() | st.sampled_from([1, 2, -1])))
    if kind == "ints":
        return np.array(draw(st.lists(st.integers(-columns, columns), max_size=4)), np.int64)
    if kind == "mask":
        length = draw(st.sampled_from([columns, columns, columns + 1]))
        return np.array(draw(st.lists(st.booleans(), min_size=length, max_size=length)), bool)
    return Ellipsis


@st.composite
def indexing_cases(draw, size):
    """(numpy array, its chunking and ranks, keys): 1 to 4 keys of every form for one array."""
    rows = draw(st.integers(0, 12))
    columns = draw(st.sampled_from([None, 1, 3]))
    dtype = draw(st.sampled_from([np.int64, np.float32, np.bool_]))
    shape = (rows,) if columns is None else (rows, columns)
    a = (np.arange(int(np.prod(shape))).reshape(shape) * 7 % 11).astype(dtype)
    sizes, ranks = draw(chunked(rows, size))
    keys = []
    for _ in range(draw(st.integers(1, 4))):
        row = draw(row_keys(rows))
        form = draw(st.sampled_from(["row", "tuple", "ellipsis"]))
        if columns is not None and form == "tuple":
            column = draw(column_keys(columns))
            if row[0] == "dist" and isinstance(column, np.ndarray):
                column = 0  # numpy would pair them: refused (see check_refused)
            keys.append((row, column))
        elif form == "ellipsis":
            keys.append((row, Ellipsis))
        else:
            keys.append((row,))
    if columns is not None and draw(st.booleans()):  # a mask of every element
        mask = np.array(draw(st.lists(st.booleans(), min_size=a.size, max_size=a.size)), bool)
        keys.append((("local", mask.reshape(shape)),))
    return a, sizes, ranks, keys


def integer(key):
    """Whether numpy reads `key` as one integer (it then gives a value, not an array)."""
    return np.ndim(key) == 0 and np.asarray(key).dtype.kind in "iu"


def numpy_key(part):
    return part[1] if isinstance(part, tuple) else part


def dist_key(m, part):
    if isinstance(part, tuple) and part[0] == "dist":
        return m.array(part[1], chunks=part[2], ranks=[r % m.size for r in part[3]])
    return numpy_key(part)


def check_indexing_properties(m, max_examples):
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(indexing_cases(m.size))
    def indexing_is_numpy(case):
        a, sizes, ranks, keys = case
        x = m.array(a, chunks=sizes, ranks=ranks)
        for key in keys:
            want_key = tuple(numpy_key(part) for part in key)
            got_key = tuple(dist_key(m, part) for part in key)
            indices = [part for part in got_key if isinstance(part, cv.DistArray)]
            if len(key) == 1 and len(repr(key)) % 2:  # a bare key as often as a tuple
                want_key, got_key = want_key[0], got_key[0]
            try:
                want = a[want_key]
            except Exception as error:  # numpy refuses: so does the DistArray, alike
                with pytest.raises(Exception) as info:
                    got = x[got_key]
                    if isinstance(got, cv.DistArray):
                        got.collect()  # a DistArray index's values are seen where it is
                got = info.value
                if isinstance(got, cv.RemoteError):
                    assert got.remote_type == type(error).__name__, (key, got)
                    assert got.remote_message == str(error), (key, got, error)
                else:
                    assert type(got) is type(error), (key, got, error)
                    assert str(got).strip() == str(error).strip(), (key, got, error)
                continue
            got = x[got_key]
            if integer(numpy_key(key[0])):
                # An integer row: the value itself, fetched, as numpy's.
                assert not isinstance(got, cv.DistArray), key
                assert type(got) is type(want), (key, type(got), type(want))
                assert_array_same(got, np.asarray(want))
                continue
            assert isinstance(got, cv.DistArray), key
            assert_array_same(got.collect(), want)
            assert got.shape == want.shape and got.dtype == want.dtype
            # Computed where the rows are (or, for a DistArray of integers,
            # where the index is): never gathered on one rank.
            places = set(owners(x))
            places.update(*(owners(index) for index in indices))
            assert set(owners(got)) <= places, key

    indexing_is_numpy()


def wait_for_file(path, a):
    """Return `a` once `path` exists: a chunk that cannot be computed before its caller says so."""
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return a


def check_examples(m):
    size = m.size
    a = np.arange(20) * 10
    x = m.array(a, chunks=[5, 0, 7, 8], ranks=[k % size for k in (1, 2, 0, 3)])
    # An integer gives the value (a numpy scalar, or a row), fetched from its chunk.
    assert type(x[7]) is np.int64 and x[7] == 70 and x[-1] == 190
    g = np.arange(30.0).reshape(10, 3)
    y = m.array(g, chunks=[4, 6])
    assert_array_same(y[6], g[6])
    assert y[2, 1] == 7.0 and y[-1, -1] == 29.0
    # Slices stay where the rows are: a chunk's part on the chunk's rank.
    part = x[3:17:2]
    assert_array_same(part.collect(), a[3:17:2])
    assert lengths(part) == [1, 4, 2] and owners(part) == [owners(x)[k] for k in (0, 2, 3)]
    backwards = x[::-3]
    assert_array_same(backwards.collect(), a[::-3])
    assert owners(backwards) == [owners(x)[k] for k in (3, 2, 0)]
    assert x[:] is x and x[...] is x
    # Columns, and the forms of the issue.
    assert_array_same(y[:, 0].collect(), g[:, 0])
    assert_array_same(y[2:5, 1].collect(), g[2:5, 1])
    assert_array_same(y[:, [2, 0]].collect(), g[:, [2, 0]])
    assert_array_same(y[[0, 9, 4], [1, 2, 0]].collect(), g[[0, 9, 4], [1, 2, 0]])  # paired
    assert_array_same(x[:, None].collect(), a[:, None])
    # Masks: numpy's, or a DistArray of other chunks (aligned as dcall aligns).
    mask = a % 30 == 0
    assert_array_same(x[mask].collect(), a[mask])
    selected = x[m.array(mask, chunks=3)]
    assert lengths(selected) == [None] * 3  # known once computed
    assert_array_same(selected.collect(), a[mask])
    assert len(selected) == 7 and lengths(selected) == [2, 2, 3]
    assert_array_same(y[y[:, 0] > 10].collect(), g[g[:, 0] > 10])
    assert_array_same(y[y > 10].collect(), g[g > 10])  # every element: 1-D
    # Integer arrays, in any order; and integers that are a DistArray.
    order = np.array([19, 0, 7, 7, 12, 3])
    assert_array_same(x[order].collect(), a[order])
    assert_array_same(x[m.array(order, chunks=2)].collect(), a[order])
    assert_array_same(x[m.array(np.zeros(0, np.int64))].collect(), a[:0])
    # On results not computed yet: indexing waits for no chunk.
    path = os.path.join(
        tempfile.gettempdir(), f"conveyor-index-{os.getpid()}-{time.monotonic_ns()}"
    )
    try:
        pending = cv.dcall(wait_for_file, path, x)
        window = pending[2:9]
        assert "dtype=?" in repr(window)
        open(path, "w").close()
        assert_array_same(window.collect(), a[2:9])
    finally:
        if os.path.exists(path):
            os.unlink(path)
    # The lengths of dmap's results are learned first.
    halves = cv.dmap(lambda c: c[: len(c) // 2], x)
    assert_array_same(halves[1:-1].collect(), np.concatenate([a[0:2], a[5:8], a[12:16]])[1:-1])


def check_refused(m):
    x = m.array(np.arange(6.0), chunks=2)
    y = m.array(np.arange(12).reshape(6, 2), chunks=2)
    # What numpy does but would not give rows chunked by rows says so, and names collect.
    for key in (None, (None, 1), True, np.array([[0, 1]]), m.array(np.array([[0, 1]]))):
        with pytest.raises(IndexError, match="collect"):
            x[key]
    with pytest.raises(IndexError, match="collect"):
        y[:, None]  # 3-D
    with pytest.raises(IndexError, match="collect"):
        y[m.array(np.ones(6, bool)), [0, 1, 0, 1, 0, 1]]  # numpy would pair them
    with pytest.raises(IndexError, match="collect"):
        y[:, m.array(np.array([0, 1]))]  # a DistArray index for the columns
    # numpy's own errors.
    with pytest.raises(IndexError, match="integer"):
        x[m.array(np.array([0.5]))]
    with pytest.raises(IndexError, match="boolean index did not match"):
        x[m.array(np.ones(5, bool))]
    with pytest.raises(IndexError, match="out of bounds"):
        x[6]
    with pytest.raises(cv.RemoteError) as info:
        x[m.array(np.array([1, 9]))].collect()  # seen where the index is
    assert info.value.remote_type == "IndexError"
    assert "index 9 is out of bounds for axis 0 with size 6" in info.value.remote_message


def case_examples():
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_examples(m)
                check_refused(m)
        nothing_left(m)


def test_examples(mpirun, nranks):
    run_case(mpirun, nranks, case_examples)


def case_properties(max_examples):
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                check_indexing_properties(m, int(max_examples))
        nothing_left(m)


def test_properties(mpirun, nranks):
    run_case(mpirun, nranks, case_properties, 200, timeout=120)
