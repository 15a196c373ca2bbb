"""Saving and loading DistArrays: .npy directories and HDF5, at 1, 2, 3 and 4 ranks.

Every case is SPMD (the calls are collective) on a directory of pytest's
that every rank shares. Round trips cover uneven and empty chunks, 1-D and
2-D, several dtypes, results of dmap (lengths learned once computed) and of
a transpose (chunks that are not C-contiguous); an array written at 4 ranks
is read at 2 and 3; each error is raised on every rank, a failed write on
one rank included; and writing moves no chunk between ranks.
"""

import json
import os
import sys

import numpy as np
import pytest

import conveyor as cv
from conveyor._darray import io

from _helpers import assert_array_same, lengths, nothing_left, owners, run_case, world

DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex128"]


def arrays(m, driver=False):
    """(name, DistArray, the numpy array it holds): the same on every rank (SPMD).

    For a `driver`, without collective calls: one chunk a rank, as from_local's.
    """
    size = m.size

    def from_local(pieces):
        if driver:
            return m.array(np.concatenate(pieces), [len(p) for p in pieces], range(size))
        return cv.DistArray.from_local(m, pieces[m.rank])

    cases = []
    # Uneven chunks, empty ones among them, on every rank's copy alike.
    values = np.arange(11, dtype=np.float64) * 1.5
    cases.append(("uneven", m.array(values, chunks=[4, 0, 6, 0, 1]), values))
    # Every rank's piece; odd ranks' are empty; 2-D.
    pieces = [
        np.arange(r * 30, r * 30 + 3 * (r % 2 == 0) * (r + 2)).reshape(-1, 3) for r in range(size)
    ]
    local = from_local([p.astype(np.int32) for p in pieces])
    cases.append(("from_local-2d", local, np.concatenate(pieces).astype(np.int32)))
    for dtype in DTYPES:
        values = (np.arange(-7, 8) % 5).astype(dtype)
        cases.append((dtype, m.array(values, chunks=3), values))
    # dmap: lengths known once computed.
    base = from_local([np.arange(r * 10, r * 10 + 7) for r in range(size)])
    evens = cv.dmap(lambda c: c[c % 2 == 0] * 2, base)
    want = np.concatenate([np.arange(r * 10, r * 10 + 7) for r in range(size)])
    cases.append(("dmap", evens, want[want % 2 == 0] * 2))
    # A transpose's chunks are views in Fortran order.
    wide = np.arange(40, dtype=np.float32).reshape(5, 8)
    cases.append(("transposed", m.array(wide, chunks=[2, 3]).T, wide.T))
    return cases


def check_same_chunks(loaded, saved, want):
    assert_array_same(loaded.collect(), want)
    assert lengths(loaded) == saved._lengths()
    assert owners(loaded) == [k % loaded.messenger.size for k in range(len(loaded.chunks))]


def case_round_trips(tmp):
    with cv.Messenger() as m:
        for name, x, want in arrays(m):
            directory = os.path.join(tmp, name)
            x.to_npy(directory)
            loaded = cv.DistArray.from_npy(m, directory)
            check_same_chunks(loaded, x, want)
            manifest = json.load(open(os.path.join(directory, "manifest.json")))
            assert manifest["dtype"] == want.dtype.str and manifest["shape"] == list(want.shape)
            assert [c["rows"] for c in manifest["chunks"]] == x._lengths()

            x.to_hdf5(os.path.join(tmp, "arrays.h5"), name)
            loaded = cv.DistArray.from_hdf5(m, os.path.join(tmp, "arrays.h5"), name, x._lengths())
            check_same_chunks(loaded, x, want)
            default = cv.DistArray.from_hdf5(m, os.path.join(tmp, "arrays.h5"), name)
            assert_array_same(default.collect(), want)
            assert len(default.chunks) == m.size
        del x, loaded, default
        nothing_left(m)


def raises_everywhere(error, match, call, *args):
    """`call` raises `error` matching `match` (every rank runs the case: on every rank)."""
    with pytest.raises(error, match=match) as caught:
        call(*args)
    return caught.value


def case_errors(tmp):
    with cv.Messenger() as m:
        x = m.array(np.arange(12.0), chunks=4)
        target = os.path.join(tmp, "x")
        x.to_npy(target)
        raises_everywhere(FileExistsError, "overwrite=True", x.to_npy, target)
        # A smaller array replaces a larger one: no chunk of the old one stays.
        m.array(np.arange(3.0), chunks=2).to_npy(target, overwrite=True)
        assert sorted(os.listdir(target)) == ["chunk-0.npy", "chunk-1.npy", "manifest.json"]
        assert_array_same(cv.DistArray.from_npy(m, target).collect(), np.arange(3.0))
        with open(os.path.join(tmp, "a-file"), "w"):
            pass
        raises_everywhere(
            NotADirectoryError, "not a directory", x.to_npy, os.path.join(tmp, "a-file")
        )

        raises_everywhere(
            FileNotFoundError, "no directory", cv.DistArray.from_npy, m, os.path.join(tmp, "none")
        )
        os.makedirs(os.path.join(tmp, "empty"), exist_ok=True)
        raises_everywhere(
            FileNotFoundError,
            "manifest.json is missing",
            cv.DistArray.from_npy,
            m,
            os.path.join(tmp, "empty"),
        )

        # The ranks pass arrays of different layouts.
        mixed = (
            m.array(np.arange(6.0), chunks=2 + m.rank % 2)
            if m.size > 1
            else m.array(np.arange(6.0))
        )
        if m.size > 1:
            raises_everywhere(
                ValueError, "different arrays", mixed.to_npy, os.path.join(tmp, "mixed")
            )

        # Files that disagree with the manifest, changed by rank 0 between barriers.
        edits = {
            "version": lambda d: _edit_manifest(d, version=2),
            "shape": lambda d: np.save(os.path.join(d, "chunk-1.npy"), np.arange(4.0)),
            "dtype": lambda d: np.save(
                os.path.join(d, "chunk-1.npy"), np.arange(3, dtype=np.int64)
            ),
            "missing": lambda d: os.remove(os.path.join(d, "chunk-1.npy")),
        }
        messages = {
            "version": (ValueError, "format version 2; this conveyor reads version 1"),
            "shape": (ValueError, r"shape \(4,\) .* manifest says shape \(3,\)"),
            "dtype": (ValueError, "dtype int64; the manifest says .* float64"),
            "missing": (FileNotFoundError, "chunk-1.npy"),
        }
        for what, edit in edits.items():
            directory = os.path.join(tmp, "bad-" + what)
            x.to_npy(directory)
            if m.rank == 0:
                edit(directory)
            m.barrier()
            error, match = messages[what]
            raises_everywhere(error, match, cv.DistArray.from_npy, m, directory)

        # One rank's write fails (a directory where its chunk's file goes):
        # every rank raises, and no manifest is written.
        failing = os.path.join(tmp, "failing")
        if m.rank == 0:
            os.makedirs(os.path.join(failing, "chunk-3.npy.part"))
        m.barrier()
        error = raises_everywhere(
            IsADirectoryError, f"^to_npy failed on rank {3 % m.size}: ", x.to_npy, failing
        )
        assert "chunk-3.npy.part" in str(error)
        del error  # its traceback holds x
        assert not os.path.exists(os.path.join(failing, "manifest.json"))

        # HDF5: a dataset that exists, one that does not, a file that is missing.
        h5 = os.path.join(tmp, "x.h5")
        x.to_hdf5(h5, "x")
        raises_everywhere(ValueError, "overwrite=True", x.to_hdf5, h5, "x")
        (x * 2).to_hdf5(h5, "x", overwrite=True)
        assert_array_same(cv.DistArray.from_hdf5(m, h5, "x").collect(), np.arange(12.0) * 2)
        raises_everywhere(KeyError, "no dataset 'y'", cv.DistArray.from_hdf5, m, h5, "y")
        raises_everywhere(
            FileNotFoundError,
            "failed on rank 0",
            cv.DistArray.from_hdf5,
            m,
            os.path.join(tmp, "no.h5"),
            "x",
        )
        with pytest.raises(ValueError, match="add up to 12 rows"):
            cv.DistArray.from_hdf5(m, h5, "x", chunks=[5, 5])
        # A dataset that rank 0 cannot create, and rows that the last rank
        # fails to write in its turn: every rank raises.
        times = m.array(np.zeros(3, "M8[s]"))  # HDF5 has no datetime64
        raises_everywhere(TypeError, "^to_hdf5 failed on rank 0: ", times.to_hdf5, h5, "t")
        if m.rank == m.size - 1:
            owned = io._owned
            io._owned = lambda x: [(k, a, b, rows[:, None]) for k, a, b, rows in owned(x)]
        last = f"^to_hdf5 failed on rank {m.size - 1}: .*broadcast"
        raises_everywhere(TypeError, last, x.to_hdf5, h5, "x", True)
        if m.rank == m.size - 1:
            io._owned = owned
        del x, mixed, times
        nothing_left(m)


def _edit_manifest(directory, **changes):
    path = os.path.join(directory, "manifest.json")
    manifest = json.load(open(path))
    manifest.update(changes)
    json.dump(manifest, open(path, "w"))


def case_without_h5py():
    sys.modules["h5py"] = None  # import h5py raises ImportError
    with cv.Messenger() as m:
        x = m.array(np.arange(4))
        with pytest.raises(ImportError, match=r"conveyor-mpi\[hdf5\]"):
            x.to_hdf5("x.h5", "x")
        with pytest.raises(ImportError, match=r"conveyor-mpi\[hdf5\]"):
            cv.DistArray.from_hdf5(m, "x.h5", "x")
        del x
        nothing_left(m)


def case_writing_moves_no_chunk(tmp):
    # 1 MB chunks on every rank: a chunk that travelled would show in the
    # zero-copy counters, and in the bytes framed.
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(m, np.full(125_000, m.rank, dtype=np.float64))
        y = cv.dmap(lambda c: c + 1, x).resolve()
        m.wait_quiet()
        before = m.stats()
        y.to_npy(os.path.join(tmp, "npy"))
        y.to_hdf5(os.path.join(tmp, "x.h5"), "y")
        after = m.stats()
        moved = {
            key: world().allreduce(after[key] - before[key])
            for key in ("bytes_zero_copy_sent", "bytes_zero_copy_received", "bytes_framed")
        }
        assert moved["bytes_zero_copy_sent"] == moved["bytes_zero_copy_received"] == 0, moved
        assert moved["bytes_framed"] < 100_000, moved
        del x, y
        nothing_left(m)


def case_write(tmp):
    with cv.Messenger() as m:
        x = cv.DistArray.from_local(
            m, np.arange(m.rank * 100, m.rank * 100 + 2 * m.rank + 1).reshape(-1, 1)
        )
        x.to_npy(os.path.join(tmp, "npy"))
        x.to_hdf5(os.path.join(tmp, "x.h5"), "x")
        del x
        nothing_left(m)


def case_read(tmp, written_by):
    with cv.Messenger() as m:
        want = np.concatenate(
            [np.arange(r * 100, r * 100 + 2 * r + 1) for r in range(int(written_by))]
        ).reshape(-1, 1)
        x = cv.DistArray.from_npy(m, os.path.join(tmp, "npy"))
        assert lengths(x) == [2 * r + 1 for r in range(int(written_by))]
        assert owners(x) == [k % m.size for k in range(int(written_by))]
        assert_array_same(x.collect(), want)
        y = cv.DistArray.from_hdf5(m, os.path.join(tmp, "x.h5"), "x", chunks=3)
        assert lengths(y) == [len(c) for c in np.array_split(want, 3)]
        assert_array_same(y.collect(), want)
        del x, y
        nothing_left(m)


def case_driver(tmp):
    # Inside a driver block only the root holds the arrays: the same calls
    # are its own, and each owner writes or reads its chunks in a task.
    with cv.Messenger() as m:
        with m.driver() as d:
            if d is not None:
                for name, x, want in arrays(m, driver=True):
                    directory = os.path.join(tmp, name)
                    x.to_npy(directory)
                    check_same_chunks(cv.DistArray.from_npy(m, directory), x, want)
                    h5 = os.path.join(tmp, "arrays.h5")
                    x.to_hdf5(h5, name)
                    check_same_chunks(cv.DistArray.from_hdf5(m, h5, name, x._lengths()), x, want)
                x = d.array(np.arange(12.0), chunks=4)
                with pytest.raises(FileExistsError, match="overwrite=True"):
                    x.to_npy(os.path.join(tmp, "uneven"))
                with pytest.raises(ValueError, match="overwrite=True"):
                    x.to_hdf5(os.path.join(tmp, "arrays.h5"), "uneven")
                # The owner of chunk 3 fails to write it.
                failing = os.path.join(tmp, "failing")
                os.makedirs(os.path.join(failing, "chunk-3.npy.part"))
                with pytest.raises(cv.RemoteError, match="chunk-3.npy.part") as caught:
                    x.to_npy(failing)
                assert caught.value.rank == 3 % m.size
                assert caught.value.remote_type == "IsADirectoryError"
                assert not os.path.exists(os.path.join(failing, "manifest.json"))
                os.remove(os.path.join(tmp, "int8", "chunk-1.npy"))
                with pytest.raises(cv.RemoteError, match="chunk-1.npy") as caught:
                    cv.DistArray.from_npy(m, os.path.join(tmp, "int8"))
                assert caught.value.rank == 1 % m.size
                del x, caught
        # What the driver saved, loaded by every rank.
        want = np.arange(40, dtype=np.float32).reshape(5, 8).T
        x = cv.DistArray.from_npy(m, os.path.join(tmp, "transposed"))
        assert_array_same(x.collect(), want)
        del x
        nothing_left(m)


@pytest.mark.parametrize(
    "case", [case_round_trips, case_errors, case_driver], ids=["round_trips", "errors", "driver"]
)
def test_case(mpirun, nranks, case, tmp_path):
    run_case(mpirun, nranks, case, tmp_path)


def test_read_on_other_rank_counts(mpirun, tmp_path):
    run_case(mpirun, 4, case_write, tmp_path)
    for n in (2, 3):
        run_case(mpirun, n, case_read, tmp_path, 4)


def test_writing_moves_no_chunk(mpirun, tmp_path):
    run_case(mpirun, 4, case_writing_moves_no_chunk, tmp_path)


def test_without_h5py(mpirun):
    run_case(mpirun, 1, case_without_h5py)
