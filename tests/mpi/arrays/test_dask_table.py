"""The table against dask.array (docs/dask-table.rst): every row it marks supported, run.

Each row marked *yes* on the page has a case here, under the row's
``dask.array`` cell, that makes the page's conveyor call on a DistArray and
the same computation in numpy on the same data, and returns the pairs to
compare (value, dtype and shape; DistArrays where the result stays
distributed). One job at 1 rank and one at 2 run every case (the driver
runs them, the other rank serves) and report each case's outcome;
`test_row` checks one row at one rank count. `test_page_and_cases_agree`
reads the page's rows: every *yes* row has a case and every case a *yes*
row, at least 30 of the 40 rows are *yes*, and the page's summary line
gives their count.
"""

import json
import os
import pathlib
import re
import tempfile
import traceback

import numpy as np
import pytest

import conveyor as cv

from _helpers import nothing_left, run_case

PAGE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "dask-table.rst"
RANK_COUNTS = [1, 2]

CASES = {}


def case(row):
    """Register the case of the page's row whose dask.array cell is ``row``."""

    def register(f):
        CASES[row] = f
        return f

    return register


def dist(x):
    """The values of `x`, which must be a DistArray (the result stays distributed)."""
    assert isinstance(x, cv.DistArray), type(x)
    return x.collect()


# -- the data every case uses, made by the driver ---------------------------------


class Data:
    def __init__(self, m):
        rng = np.random.default_rng(17)
        self.m = m
        self.a2 = rng.normal(size=(11, 3))
        self.b2 = rng.normal(size=(11, 2))
        self.a1 = rng.normal(size=13)
        self.b1 = rng.normal(size=13)
        self.i1 = rng.integers(-5, 6, 12)
        # Uneven chunks, one of them empty, over every rank.
        self.x2 = m.array(self.a2, chunks=[4, 0, 5, 2])
        self.y2 = m.array(self.b2, chunks=3)
        self.x1 = m.array(self.a1, chunks=[6, 7])
        self.y1 = m.array(self.b1, chunks=4)
        self.k1 = m.array(self.i1, chunks=[3, 6, 3])  # chunks of whole rows of 3


# -- the rows marked yes ------------------------------------------------------------


@case("x.compute()")
def _compute(d):
    return [(d.x2.collect(), d.a2), ((d.x1 + 1).collect(), d.a1 + 1)]


@case("da.map_blocks(f, x)")
def _map_blocks(d):
    return [
        (dist(cv.dmap(lambda c: c * 2 + 1, d.x2)), d.a2 * 2 + 1),
        (dist(cv.dmap(lambda c: c[c > 0], d.x1)), d.a1[d.a1 > 0]),  # any length
        (dist(cv.dcall(np.add, d.x1, d.y1)), d.a1 + d.b1),
    ]


@case("da.from_array(a, chunks=...)")
def _from_array(d):
    x = d.m.array(d.a2, chunks=3)
    y = d.m.array(d.a1, chunks=[5, 8])
    return [
        (dist(x), d.a2),
        (len(x.chunks), 3),
        (dist(y), d.a1),
        ([c.length for c in y.chunks], [5, 8]),
    ]


@case("x.sum()")
def _sum(d):
    return [
        (d.x2.sum(), d.a2.sum()),
        (d.x2.sum(axis=0), d.a2.sum(axis=0)),
        (dist(np.sum(d.x2, axis=1)), np.sum(d.a2, axis=1)),
        (np.sum(d.k1), np.sum(d.i1)),
    ]


@case("x.astype(dtype)")
def _astype(d):
    return [
        (dist(d.x2.astype(np.float32)), d.a2.astype(np.float32)),
        (dist(d.k1.astype(np.float64)), d.i1.astype(np.float64)),
    ]


@case("x.T")
def _transpose(d):
    return [(dist(d.x2.T), d.a2.T), (dist(np.transpose(d.y2)), d.b2.T)]


@case("x.mean()")
def _mean(d):
    return [
        (d.x2.mean(), d.a2.mean()),
        (d.x2.mean(axis=0), d.a2.mean(axis=0)),
        (dist(np.mean(d.x2, axis=1)), np.mean(d.a2, axis=1)),
    ]


@case("x.rechunk(chunks)")
def _rechunk(d):
    x = d.x2.rebalance(3)
    y = d.x1.rebalance([2, 0, 11])
    return [
        (dist(x), d.a2),
        ([c.length for c in x.resolve().chunks], [4, 4, 3]),
        (dist(y), d.a1),
        ([c.length for c in y.resolve().chunks], [2, 0, 11]),
    ]


@case("x.reshape(shape)")
def _reshape(d):
    return [
        (dist(d.x2.reshape(-1)), d.a2.reshape(-1)),
        (dist(d.k1.reshape(-1, 3)), d.i1.reshape(-1, 3)),
        (dist(np.reshape(d.x1, (-1, 1))), np.reshape(d.a1, (-1, 1))),
    ]


@case("da.concatenate(arrays)")
def _concatenate(d):
    return [
        (dist(np.concatenate([d.x1, d.y1])), np.concatenate([d.a1, d.b1])),
        (dist(np.concatenate([d.x2, d.y2], axis=1)), np.concatenate([d.a2, d.b2], axis=1)),
        (dist(np.concatenate([d.x2, d.a2[:2]])), np.concatenate([d.a2, d.a2[:2]])),
    ]


@case("da.dot(x, y)")
def _dot(d):
    w = np.arange(6.0).reshape(3, 2)
    return [
        (dist(np.dot(d.x2, w)), np.dot(d.a2, w)),
        (np.dot(d.x1, d.y1), np.dot(d.a1, d.b1)),
        (dist(d.x2 @ w), d.a2 @ w),
        (d.x1 @ d.y1, d.a1 @ d.b1),
    ]


@case("x.copy()")
def _copy(d):
    x = d.x2.copy()
    return [
        (dist(x), d.a2.copy()),
        ([c.owner for c in x.chunks], [c.owner for c in d.x2.chunks]),
        (dist(np.copy(d.x1)), np.copy(d.a1)),
    ]


@case("x.max()")
def _max(d):
    return [
        (d.x2.max(), d.a2.max()),
        (np.max(d.x2, axis=0), np.max(d.a2, axis=0)),
        (dist(d.x2.max(axis=1)), d.a2.max(axis=1)),
    ]


@case("x.persist()")
def _persist(d):
    x = np.exp(d.x2)
    resolved = x.resolve()
    return [(resolved is x, True), (dist(resolved), np.exp(d.a2))]


@case("da.ones(shape)")
def _ones(d):
    empty = np.empty((5, 2), dtype=np.int16, like=d.x1)
    return [
        (dist(np.ones(7, like=d.x1)), np.ones(7)),
        (dist(np.ones((5, 2), dtype=np.int32, like=d.x2)), np.ones((5, 2), dtype=np.int32)),
        (dist(np.zeros(9, like=d.x1)), np.zeros(9)),
        (dist(np.full((4, 3), 2.5, like=d.x1)), np.full((4, 3), 2.5)),
        (dist(np.full(3, 7, like=d.x1)), np.full(3, 7)),
        ((empty.shape, empty.dtype), ((5, 2), np.dtype(np.int16))),
        # A chunk on each rank, made there.
        ([c.owner for c in np.ones(8, like=d.x1).chunks], list(range(d.m.size))),
    ]


@case("da.exp(x)")
def _exp(d):
    return [(dist(np.exp(d.x2)), np.exp(d.a2))]


@case("x.ravel()")
def _ravel(d):
    return [(dist(d.x2.ravel()), d.a2.ravel()), (dist(np.ravel(d.y2)), np.ravel(d.b2))]


@case("da.arange(n)")
def _arange(d):
    like = d.x1
    return [
        (dist(np.arange(10, like=like)), np.arange(10)),
        (dist(np.arange(2, 30, 3, like=like)), np.arange(2, 30, 3)),
        (dist(np.arange(0.5, 3.0, 0.3, like=like)), np.arange(0.5, 3.0, 0.3)),
        (dist(np.arange(5, 0, -2, like=like)), np.arange(5, 0, -2)),
        (dist(np.arange(4, dtype=np.float32, like=like)), np.arange(4, dtype=np.float32)),
        (dist(np.arange(3, 3, like=like)), np.arange(3, 3)),
    ]


@case("da.sqrt(x)")
def _sqrt(d):
    return [(dist(np.sqrt(abs(d.x2))), np.sqrt(abs(d.a2)))]


@case("x.any()")
def _any(d):
    return [
        ((d.x2 > 1).any(), (d.a2 > 1).any()),
        ((d.x2 > 5).any(), (d.a2 > 5).any()),
        (np.any(d.x2 > 1, axis=0), np.any(d.a2 > 1, axis=0)),
    ]


@case("x.flatten()")
def _flatten(d):
    return [(dist(d.x2.flatten()), d.a2.flatten()), (dist(d.x1.flatten()), d.a1.flatten())]


@case("da.stack(arrays)")
def _stack(d):
    return [
        (dist(np.stack([d.x1, d.y1])), np.stack([d.a1, d.b1])),
        (dist(np.stack([d.x1, d.y1], axis=1)), np.stack([d.a1, d.b1], axis=1)),
    ]


@case("da.vstack(arrays)")
def _vstack(d):
    return [
        (dist(np.vstack([d.x1, d.y1])), np.vstack([d.a1, d.b1])),
        (dist(np.vstack([d.x2, d.a2])), np.vstack([d.a2, d.a2])),
        (dist(np.hstack([d.x2, d.y2])), np.hstack([d.a2, d.b2])),
        (dist(np.column_stack([d.x1, d.y1])), np.column_stack([d.a1, d.b1])),
    ]


@case("da.store(x, target)")
def _store(d):
    with tempfile.TemporaryDirectory() as tmp:
        d.x2.to_npy(os.path.join(tmp, "x2"))
        d.x1.to_hdf5(os.path.join(tmp, "x.h5"), "x1")
        return [
            (dist(cv.DistArray.from_npy(d.m, os.path.join(tmp, "x2"))), d.a2),
            (dist(cv.DistArray.from_hdf5(d.m, os.path.join(tmp, "x.h5"), "x1")), d.a1),
        ]


@case("x.squeeze()")
def _squeeze(d):
    return [
        (dist(d.x2[:, :1].squeeze()), d.a2[:, :1].squeeze()),
        (dist(np.squeeze(d.x2[2:3])), np.squeeze(d.a2[2:3])),
        (dist(d.x2[:, 1:2].squeeze(axis=1)), d.a2[:, 1:2].squeeze(axis=1)),
        (dist(d.x1.squeeze()), d.a1.squeeze()),
    ]


@case("da.where(c, x, y)")
def _where(d):
    (places,) = np.where(d.x1 > 0)
    return [
        (dist(np.where(d.x2 > 0, d.x2, 0.0)), np.where(d.a2 > 0, d.a2, 0.0)),
        (dist(np.where(d.x1 > d.y1, d.x1, d.y1)), np.where(d.a1 > d.b1, d.a1, d.b1)),
        (dist(places), np.where(d.a1 > 0)[0]),
    ]


@case("da.log(x)")
def _log(d):
    return [(dist(np.log(abs(d.x2) + 1)), np.log(abs(d.a2) + 1))]


@case("da.asarray(a)")
def _asarray(d):
    return [
        (dist(np.asarray(d.a2, like=d.x1)), np.asarray(d.a2)),
        (dist(np.asarray([1, 2, 3], like=d.x1)), np.asarray([1, 2, 3])),
        (dist(d.m.array(d.a1)), d.a1),
        (np.asarray(d.x2, like=d.x1) is d.x2, True),
    ]


@case("x.compute_chunk_sizes()")
def _compute_chunk_sizes(d):
    y = d.x1[d.x1 > 0]  # lengths known once computed
    want = d.a1[d.a1 > 0]
    return [
        (len(y), len(want)),
        (y.shape, want.shape),
        (sum(c.length for c in y.resolve().chunks), len(want)),
        (dist(y), want),
    ]


@case("x.var()")
def _var(d):
    return [
        (d.x2.var(), d.a2.var()),
        (d.x2.var(axis=0, ddof=1), d.a2.var(axis=0, ddof=1)),
        (dist(np.var(d.x2, axis=1)), np.var(d.a2, axis=1)),
        (d.x1.std(), d.a1.std()),
    ]


@case("da.block(arrays)")
def _block(d):
    corner = np.arange(6.0).reshape(2, 3)
    below = d.m.array(np.ones((2, 2)))
    return [
        (
            dist(np.block([[d.x2, d.y2], [corner, below]])),
            np.block([[d.a2, d.b2], [corner, np.ones((2, 2))]]),
        ),
        (dist(np.block([d.x1, d.a1[:3]])), np.block([d.a1, d.a1[:3]])),
        (dist(np.block([d.x2, d.y2])), np.block([d.a2, d.b2])),
    ]


# -- running them ---------------------------------------------------------------------


def assert_same(got, want):
    """`got` is `want`: numpy's values (floats to 1e-12), dtype and shape."""
    if isinstance(want, (list, tuple)) and not isinstance(want, np.ndarray):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), (got, want)
        for one, other in zip(got, want):
            assert_same(one, other)
        return
    if isinstance(want, (bool, int, np.dtype)) and not isinstance(want, np.generic):
        assert got == want, (got, want)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert (got.dtype, got.shape) == (want.dtype, want.shape), (got, want)
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)


def outcome(d, row):
    """ "ok", or what went wrong with the row's case."""
    try:
        pairs = CASES[row](d)
        assert pairs, "no comparison"
        for got, want in pairs:
            assert_same(got, want)
    except Exception:
        return traceback.format_exc()
    return "ok"


def case_table(path):
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                data = Data(m)
                results = {row: outcome(data, row) for row in CASES}
                del data
                pathlib.Path(path).write_text(json.dumps(results))
        nothing_left(m)


_RESULTS = {}


def results(mpirun, nranks, tmp_path_factory):
    """Every case's outcome at `nranks` ranks: one job for all of them."""
    if nranks not in _RESULTS:
        path = tmp_path_factory.mktemp("dask_table") / f"np{nranks}.json"
        run_case(mpirun, nranks, case_table, path)
        _RESULTS[nranks] = json.loads(path.read_text())
    return _RESULTS[nranks]


@pytest.mark.parametrize("row", sorted(CASES))
@pytest.mark.parametrize("nranks", RANK_COUNTS, ids=lambda n: f"np{n}")
def test_row(mpirun, nranks, row, tmp_path_factory):
    got = results(mpirun, nranks, tmp_path_factory)[row]
    assert got == "ok", f"{row} at {nranks} ranks:\n{got}"


# -- the page ------------------------------------------------------------------------


def page_rows():
    """The rows of the page's list-table: (number, dask.array cell, calls, here)."""
    text = PAGE.read_text()
    table = text[text.index(".. list-table::") :]
    rows, cells = [], None
    for line in table.splitlines()[1:]:
        if line.startswith("   * - "):
            cells = [line[len("   * - ") :]]
            rows.append(cells)
        elif line.startswith("     - ") and cells is not None:
            cells.append(line[len("     - ") :])
        elif line and not line.startswith("   "):
            break
    header, *body = rows
    assert header[:4] == ["#", "dask.array", "calls", "here"], header
    parsed = []
    for cells in body:
        number, call, calls, here = cells[:4]
        assert re.fullmatch(r"``[^`]+``", call), call
        parsed.append((int(number), call.strip("`"), int(calls), here))
    return parsed


def test_page_and_cases_agree():
    rows = page_rows()
    assert [number for number, _, _, _ in rows] == list(range(1, 41)), "the page lists 40 rows"
    assert {here for _, _, _, here in rows} <= {"yes", "no"}
    counts = [calls for _, _, calls, _ in rows]
    assert counts == sorted(counts, reverse=True), "the rows go from the most calls down"
    supported = [call for _, call, _, here in rows if here == "yes"]
    missing = sorted(set(supported) - set(CASES))
    assert not missing, f"rows marked yes with no case here: {missing}"
    unclaimed = sorted(set(CASES) - set(supported))
    assert not unclaimed, f"cases of rows the page does not mark yes: {unclaimed}"
    assert len(supported) >= 30, f"only {len(supported)} of 40 rows are supported"
    summary = re.search(r"\*\*(\d+) of 40 supported\.\*\*", PAGE.read_text())
    assert summary and int(summary.group(1)) == len(supported), (summary, len(supported))
