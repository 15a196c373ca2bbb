"""Saving and loading DistArrays: a directory of .npy files, and HDF5 through h5py.

Every call here is collective: every rank calls it with its own reference
to the same array (or, to load, with the same arguments). Each rank writes
the chunks it owns and reads the chunks it will own, so no chunk's rows
travel between ranks; only statuses and the small facts every rank needs
(the layout, the manifest) go through the messenger's collectives, which
serve messages while they wait. The directory or file is assumed shared by
every rank, as a cluster file system is.

A step that fails on one rank fails on every rank: each step ends with an
allgather of every rank's outcome (`_each`), and the first failure, in
rank order, is raised everywhere as the same built-in type. So a rank
whose write failed never leaves the others waiting in the next step.

Inside a driver block (``with m.driver() as d``) only the root holds the
array, and the other ranks serve: there the same calls are the root's
alone, and each chunk's owner writes or reads it in a task (`_tasks`), as
the array operations compute chunks; the root prepares the target and
writes the manifest, and a failed task is raised there as
`conveyor.RemoteError`. HDF5's tasks are chained, each writer after the
one before, so that one rank writes at a time.

The .npy layout: ``chunk-<index>.npy`` per chunk, in numpy's format, and
``manifest.json``, written last by rank 0 (a directory without one holds
no complete array). HDF5: rank 0 creates the dataset; with a parallel
build of h5py every rank then writes its rows through MPI-IO, otherwise
the owners write one after the other, in rank order, each between two
barriers of the messenger (HDF5 without MPI-IO allows one writer at a time).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Callable, SupportsIndex, TypeVar, cast

import numpy as np

from .. import _pickling
from .._chunks import layer_of
from .._errors import ConveyorError, builtin_exception
from .chunked import C, Chunked, checked_array, chunk_sizes, share

if TYPE_CHECKING:
    from .._chunks import ChunkRef
    from .._messenger import Messenger

T = TypeVar("T")

MANIFEST = "manifest.json"
FORMAT = "conveyor.DistArray"
VERSION = 1
_CHUNK_FILE = re.compile(r"chunk-[0-9]+\.npy")
# numpy's header readers by format version; plain dtypes never need 3.0.
_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}
_HDF5_EXTRA = "pip install 'conveyor-mpi[hdf5]'"


# -- every rank's outcome --------------------------------------------------------------


def _each(m: Messenger, verb: str, step: Callable[[], T]) -> T:
    """Collective: run ``step`` here; return its result once it succeeded on every rank.

    Only the outcome travels (None, or the error's type name and text);
    the first failure in rank order is raised on every rank.
    """
    return _outcomes(m, verb, step, False)[0]


def _agree(m: Messenger, verb: str, step: Callable[[], T]) -> list[T]:
    """Collective: as `_each`, and every rank's result (small values), in rank order."""
    return _outcomes(m, verb, step, True)[1]


def _from_root(m: Messenger, verb: str, step: Callable[[], T]) -> T:
    """Collective: as `_each`, ``step`` run on rank 0 only, its result (small) on every rank."""
    return cast(T, _agree(m, verb, lambda: step() if m.rank == 0 else None)[0])


def _outcomes(m: Messenger, verb: str, step: Callable[[], T], shared: bool) -> tuple[T, list[T]]:
    # One allgather of every rank's outcome, and of its result if `shared`.
    try:
        result, error = step(), None
    except Exception as exc:  # every rank must learn of it, not only this one
        # A KeyError's str() is the repr of its key: its text is its argument.
        text = str(exc.args[0]) if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        result, error, failure = None, [type(exc).__name__, text], exc
    outcomes = m.allgather([error, result if shared else None])
    for rank, (found, _) in enumerate(outcomes):
        if found is not None:
            raised = _rebuilt(found[0], f"{verb} failed on rank {rank}: {found[1]}")
            if rank == m.rank:
                raise raised from failure
            raise raised
    # None only where a step failed, which raised above.
    return cast(T, result), [cast(T, value) for _, value in outcomes]


def _rebuilt(name: str, text: str) -> Exception:
    # The same built-in type on every rank, so that ``except FileExistsError``
    # works everywhere; another type (an error of conveyor's, h5py's) as a
    # ConveyorError that names it.
    builtin = builtin_exception(name)
    if builtin is not None:
        try:
            return builtin(text)
        except TypeError:  # a constructor that wants other arguments
            pass
    return ConveyorError(f"{text} ({name})")


def _layout(x: Chunked, verb: str) -> tuple[np.dtype[Any], tuple[int, ...], list[int], list[int]]:
    """Collective: the dtype, row shape, chunk lengths and owners, the same on every rank."""
    m = x._layer.m

    def mine() -> list[Any]:
        dtype, row_shape = x._learn_type()
        return [dtype.str, list(row_shape), x._lengths(), [ref.owner for ref in x._refs]]

    layouts = _agree(m, verb, mine)
    if any(layout != layouts[0] for layout in layouts):
        raise ValueError(
            f"{verb}: the ranks passed different arrays (dtype, row shape, chunk lengths "
            "or owners differ): it is collective, every rank passes the same DistArray"
        )
    dtype, row_shape, lengths, owners = layouts[0]
    return np.dtype(dtype), tuple(row_shape), list(lengths), list(owners)


def _owned(x: Chunked) -> list[tuple[int, int, int, np.ndarray]]:
    """(index, start, stop, rows) of each chunk this rank owns: read in place, never fetched."""
    rank = x._layer.rank
    indices = [k for k, ref in enumerate(x._refs) if ref.owner == rank]
    values = x._gather([x._refs[k] for k in indices])
    offsets = np.cumsum([0] + x._lengths()).tolist()
    return [(k, offsets[k], offsets[k + 1], value) for k, value in zip(indices, values)]


# -- .npy ---------------------------------------------------------------------------


def to_npy(x: Chunked, directory: str | os.PathLike[str], overwrite: bool = False) -> None:
    """DistArray.to_npy: each chunk on its owner, then the manifest on rank 0."""
    m = x._layer.m
    path = os.fspath(directory)
    if x._layer.driving:
        dtype, row_shape = x._learn_type()
        lengths = x._lengths()
        names = _names(len(lengths))
        _prepare(path, overwrite)
        _tasks(x, [functools.partial(_write_chunk, path, name) for name in names])
        _write_manifest(path, _manifest(dtype, row_shape, lengths, names))
        return
    dtype, row_shape, lengths, _ = _layout(x, "to_npy")
    names = _names(len(lengths))
    _each(m, "to_npy", lambda: _prepare(path, overwrite) if m.rank == 0 else None)
    _each(m, "to_npy", lambda: _write_chunks(x, path, names))
    manifest = _manifest(dtype, row_shape, lengths, names)
    _each(m, "to_npy", lambda: _write_manifest(path, manifest) if m.rank == 0 else None)


def _names(count: int) -> list[str]:
    return [f"chunk-{k}.npy" for k in range(count)]


def _manifest(
    dtype: np.dtype[Any], row_shape: tuple[int, ...], lengths: list[int], names: list[str]
) -> dict[str, Any]:
    offsets = np.cumsum([0] + lengths).tolist()
    return {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype.str,
        "shape": [sum(lengths), *row_shape],
        "chunks": [
            {"file": name, "offset": offset, "rows": rows}
            for name, offset, rows in zip(names, offsets, lengths)
        ],
    }


def _prepare(path: str, overwrite: bool) -> None:
    # Rank 0, before any chunk is written: refuse a saved array unless
    # told, else remove its files (the manifest first: a directory without
    # one holds no array), so that none of a larger one's chunks stays.
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if not os.path.isdir(path):
        os.makedirs(path)
        return
    found = sorted(n for n in os.listdir(path) if n == MANIFEST or _CHUNK_FILE.fullmatch(n))
    if found and not overwrite:
        raise FileExistsError(
            f"{path} holds a saved array already ({found[0]}): pass overwrite=True to replace it"
        )
    for name in sorted(found, key=lambda n: n != MANIFEST):
        os.remove(os.path.join(path, name))


def _write_chunks(x: Chunked, path: str, names: list[str]) -> None:
    for k, _, _, value in _owned(x):
        _write_chunk(path, names[k], value)


def _write_chunk(path: str, name: str, value: np.ndarray) -> np.ndarray:
    # C order whatever the chunk's strides (a transposed or sliced result),
    # under a temporary name until complete. Returns nothing, as a task's
    # chunk: an empty array.
    target = os.path.join(path, name)
    with open(target + ".part", "wb") as file:
        np.lib.format.write_array(file, np.ascontiguousarray(value), allow_pickle=False)
    os.replace(target + ".part", target)
    return _DONE


def _write_manifest(path: str, manifest: dict[str, Any]) -> None:
    target = os.path.join(path, MANIFEST)
    with open(target + ".part", "w") as file:
        json.dump(manifest, file, indent=1)
        file.write("\n")
    os.replace(target + ".part", target)


def from_npy(cls: type[C], m: Messenger, directory: str | os.PathLike[str]) -> C:
    """DistArray.from_npy: the manifest on rank 0, each chunk on the rank that will own it."""
    path = os.fspath(directory)
    driving = layer_of(m).driving
    manifest = (
        _read_manifest(path) if driving else _from_root(m, "from_npy", lambda: _read_manifest(path))
    )
    dtype = np.dtype(manifest["dtype"])
    row_shape = tuple(manifest["shape"][1:])
    entries = manifest["chunks"]
    if driving:
        readers = [
            functools.partial(_read_chunk, path, entry, dtype, row_shape) for entry in entries
        ]
        return _loaded(cls, m, [int(entry["rows"]) for entry in entries], readers, dtype, row_shape)

    def read() -> list[tuple[int, np.ndarray]]:
        return [
            (k, _read_chunk(path, entry, dtype, row_shape))
            for k, entry in enumerate(entries)
            if k % m.size == m.rank
        ]

    pieces = _each(m, "from_npy", read)
    return share(cls, m, pieces, "from_npy", dtype, row_shape)


def _read_manifest(path: str) -> dict[str, Any]:
    target = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no directory {path}")
    if not os.path.exists(target):
        raise FileNotFoundError(f"{path} holds no saved array: {MANIFEST} is missing")
    with open(target) as file:
        try:
            manifest = json.load(file)
        except ValueError as exc:
            raise ValueError(f"{target} is not a manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{target} is not the manifest of a saved DistArray")
    if manifest.get("version") != VERSION:
        raise ValueError(
            f"{target} is of format version {manifest.get('version')!r}; this conveyor "
            f"reads version {VERSION}"
        )
    try:
        dtype = np.dtype(manifest["dtype"])
        shape = [int(n) for n in manifest["shape"]]
        rows = [int(entry["rows"]) for entry in manifest["chunks"]]
        offsets = [int(entry["offset"]) for entry in manifest["chunks"]]
        files = [entry["file"] for entry in manifest["chunks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{target} is malformed: {type(exc).__name__}: {exc}") from None
    if len(shape) not in (1, 2):
        raise ValueError(f"{target} is malformed: shape {shape} is not 1-D or 2-D")
    checked_array(np.empty([0, *shape[1:]], dtype), "from_npy")
    if (
        sum(rows) != shape[0]
        or offsets != np.cumsum([0] + rows)[:-1].tolist()
        or any(n < 0 for n in rows)
        or not all(isinstance(f, str) and _CHUNK_FILE.fullmatch(f) for f in files)
    ):
        raise ValueError(f"{target} is malformed: its chunks do not make up shape {shape}")
    return {"dtype": dtype.str, "shape": shape, "chunks": manifest["chunks"]}


def _read_chunk(
    path: str,
    entry: dict[str, Any],
    dtype: np.dtype[Any],
    row_shape: tuple[int, ...],
    unused: object = None,  # a task's input (it reads no chunk)
) -> np.ndarray:
    target = os.path.join(path, entry["file"])
    want = (int(entry["rows"]), *row_shape)
    with open(target, "rb") as file:
        # The header first: a file of another shape or dtype is refused
        # before its data is read.
        version = np.lib.format.read_magic(file)
        if version not in _HEADERS:
            raise ValueError(f"{target}: .npy format version {version} is not supported")
        shape, _, found = _HEADERS[version](file)
        if tuple(shape) != want or found != dtype:
            raise ValueError(
                f"{target} holds an array of shape {tuple(shape)} and dtype {found}; the "
                f"manifest says shape {want} and dtype {dtype}"
            )
        file.seek(0)
        value = np.lib.format.read_array(file, allow_pickle=False)
    return np.ascontiguousarray(value)  # a Fortran-order file's rows, in C order


# -- HDF5 -----------------------------------------------------------------------------


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(f"HDF5 input and output need h5py: {_HDF5_EXTRA}") from exc
    return h5py


def to_hdf5(
    x: Chunked, path: str | os.PathLike[str], dataset: str, overwrite: bool = False
) -> None:
    """DistArray.to_hdf5: rank 0 makes the dataset, each owner writes its chunks' rows."""
    h5py = _h5py()
    m = x._layer.m
    target = os.fspath(path)
    driving = x._layer.driving
    if driving:
        dtype, row_shape = x._learn_type()
        lengths = x._lengths()
        owners = [ref.owner for ref in x._refs]
    else:
        dtype, row_shape, lengths, owners = _layout(x, "to_hdf5")
    shape = (sum(lengths), *row_shape)

    def create() -> None:
        with h5py.File(target, "a") as file:
            if dataset in file:
                if not overwrite:
                    raise ValueError(
                        f"{target} has a dataset {dataset!r} already: pass overwrite=True "
                        "to replace it"
                    )
                del file[dataset]
            file.create_dataset(dataset, shape=shape, dtype=dtype)

    if driving:
        create()
        offsets = np.cumsum([0] + lengths).tolist()
        writers = [
            functools.partial(_write_rows, target, dataset, start, stop)
            for start, stop in zip(offsets, offsets[1:])
        ]
        _tasks(x, writers, chained=True)
        return
    _each(m, "to_hdf5", lambda: create() if m.rank == 0 else None)
    owned = _each(m, "to_hdf5", lambda: _owned(x))

    opened: dict[str, Any] = {}

    def write() -> None:
        with h5py.File(target, "r+", **opened) as file:
            rows = file[dataset]
            for _, start, stop, value in owned:
                rows[start:stop] = value

    if h5py.get_config().mpi:
        # Every rank opens the file through MPI-IO (a collective call, which
        # blocks without serving: every rank has its rows in hand by now)
        # and writes its own rows.
        opened.update(driver="mpio", comm=x._layer.collectives())
        _each(m, "to_hdf5", write)
        return
    # One writer at a time, in rank order: the lock is the messenger's
    # barrier, which serves messages while it waits.
    error: Exception | None = None
    for turn in sorted(set(owners)):
        if turn == m.rank:
            try:
                write()
            except Exception as exc:  # told to every rank below
                error = exc
        m.barrier()
    _each(m, "to_hdf5", lambda: _raise(error))


def _write_rows(
    path: str, dataset: str, start: int, stop: int, value: np.ndarray, *_: object
) -> np.ndarray:
    # A task's: one chunk's rows, after the writer before it (its chunk, unused).
    with _h5py().File(path, "r+") as file:
        file[dataset][start:stop] = value
    return _DONE


def _read_rows(path: str, dataset: str, start: int, stop: int, unused: object = None) -> np.ndarray:
    with _h5py().File(path, "r") as file:
        return np.asarray(file[dataset][start:stop])


def _raise(error: Exception | None) -> None:
    if error is not None:
        raise error


def from_hdf5(
    cls: type[C],
    m: Messenger,
    path: str | os.PathLike[str],
    dataset: str,
    chunks: SupportsIndex | Iterable[SupportsIndex] | None,
) -> C:
    """DistArray.from_hdf5: the dataset's shape on rank 0, each chunk's rows on its owner."""
    h5py = _h5py()
    target = os.fspath(path)

    def describe() -> list[Any]:
        with h5py.File(target, "r") as file:
            if dataset not in file:
                raise KeyError(f"{target} has no dataset {dataset!r}")
            rows = file[dataset]
            if not isinstance(rows, h5py.Dataset):
                raise TypeError(f"{dataset!r} in {target} is a group, not a dataset")
            checked_array(np.empty((0, *rows.shape[1:]), rows.dtype), "from_hdf5")
            return [list(rows.shape), rows.dtype.str]

    driving = layer_of(m).driving
    shape, dtype = describe() if driving else _from_root(m, "from_hdf5", describe)
    sizes = chunk_sizes(shape[0], chunks, m.size)
    offsets = np.cumsum([0] + sizes).tolist()
    if driving:
        readers = [
            functools.partial(_read_rows, target, dataset, start, stop)
            for start, stop in zip(offsets, offsets[1:])
        ]
        return _loaded(cls, m, sizes, readers, np.dtype(dtype), tuple(shape[1:]))

    def read() -> list[tuple[int, np.ndarray]]:
        mine = [k for k in range(len(sizes)) if k % m.size == m.rank]
        if not mine:
            return []
        with h5py.File(target, "r") as file:
            rows = file[dataset]
            return [(k, rows[offsets[k] : offsets[k + 1]]) for k in mine]

    pieces = _each(m, "from_hdf5", read)
    return share(cls, m, pieces, "from_hdf5", np.dtype(dtype), tuple(shape[1:]))


# -- from a driver: tasks on the owners ----------------------------------------------------

# What a task that writes returns: a chunk of no rows.
_DONE = np.zeros(0, np.int8)


def _tasks(x: Chunked, functions: Sequence[Callable[..., Any]], chained: bool = False) -> None:
    """Call ``functions[k](rows of chunk k)`` on chunk k's owner; wait for them all.

    Chained: each after the one before has returned (one at a time). The
    first that raised (in order) is raised here, as `conveyor.RemoteError`.
    """
    layer = x._layer
    done: list[ChunkRef] = []
    for ref, function in zip(x._refs, functions):
        inputs = [("whole", ref)] + ([("whole", done[-1])] if chained and done else [])
        done.append(layer.submit(ref.owner, None, None, _pickling.dumps(function), inputs))
    x._gather(done)


def _loaded(
    cls: type[C],
    m: Messenger,
    sizes: list[int],
    readers: Sequence[Callable[..., np.ndarray]],
    dtype: np.dtype[Any],
    row_shape: tuple[int, ...],
) -> C:
    """Chunk k read by ``readers[k]()`` on rank ``k % size``; the array, once all are read."""
    layer = layer_of(m)
    refs, offset = [], 0
    for k, (size, reader) in enumerate(zip(sizes, readers)):
        refs.append(
            layer.submit(k % m.size, size, offset, _pickling.dumps(reader), [("value", None)])
        )
        offset += size
    return cls(layer, refs, dtype, row_shape).resolve()
