"""What every distributed array is: an ordered list of chunk references.

`Chunked` holds the references (`ChunkRef`) and what is known of them:
lengths and offsets (not known yet for the results of `dmap`: learned from
what the owners publish in the chunk states table), the dtype and the shape
of a row. It waits for its chunks and gathers them, and it is made by
scattering a numpy array or from every rank's piece. The operations, and
the public class `DistArray`, are built on it in the modules above.
"""

from __future__ import annotations

import functools
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, SupportsIndex, TypeVar, cast

import numpy as np
import numpy.typing as npt

from .._chunks import ERROR as _ERROR
from .._chunks import layer_of, published_length, remote_error

if TYPE_CHECKING:
    from .._chunks import ChunkLayer, ChunkRef
    from .._messenger import Messenger

C = TypeVar("C", bound="Chunked")


class _Gathered:
    """Values that arrive through callbacks, waited for by the messenger's loop.

    A failure counts as an arrival: all are waited for, so that the error
    raised is the first in order (as `DistArray.resolve`), not the first
    to come back.
    """

    def __init__(self, count: int) -> None:
        self.values: list[Any] = [None] * count
        self.missing = count
        self.errors: dict[int, bytes] = {}  # index -> a failed chunk's error bytes

    def put(self, index: int, value: Any) -> None:
        self.values[index] = value
        self.missing -= 1

    def fail(self, index: int, error: bytes) -> None:
        self.errors[index] = error
        self.missing -= 1

    def _ready(self) -> bool:
        return self.missing == 0

    def wait(self, layer: ChunkLayer) -> list[Any]:
        layer.transport.wait_for(self, None)
        if self.errors:
            raise remote_error(self.errors[min(self.errors)])
        return self.values


class Chunked:
    """The chunk references of a distributed array, and what is known of them."""

    def __init__(
        self,
        layer: ChunkLayer,
        refs: Sequence[ChunkRef],
        dtype: npt.DTypeLike | None = None,
        row_shape: tuple[int, ...] | None = None,
    ) -> None:
        # The dtype and the shape of a row: None until known (learned from
        # the chunks' facts, once they are computed).
        self._layer = layer
        self._refs = list(refs)
        self._dtype = None if dtype is None else np.dtype(dtype)
        self._row_shape = None if row_shape is None else tuple(row_shape)

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_local(cls: type[C], messenger: Messenger, local: npt.ArrayLike) -> C:
        """Make a DistArray of every rank's ``local`` piece, in rank order (collective).

        Each piece stays on its rank as one chunk (copied once, so that
        later changes to ``local`` do not show); all pieces must have the same
        dtype and, if 2-D, the same number of columns.

        Parameters
        ----------
        messenger : Messenger
            The messenger of every rank.
        local : array_like
            This rank's rows: 1-D, or 2-D; numeric; may be empty.

        Returns
        -------
        DistArray
            The array of every rank's rows.

        Raises
        ------
        ValueError
            If the pieces differ in dtype or row shape, or one is not 1-D or 2-D.
        TypeError
            If ``local`` is not numeric.
        """
        local = checked_array(local, "from_local")
        return share(cls, messenger, [(messenger.rank, local.copy())], "from_local")

    # -- shape -----------------------------------------------------------------

    @property
    def chunks(self) -> list[ChunkRef]:
        """The chunk references, in order (`ChunkRef`)."""
        return list(self._refs)

    @property
    def messenger(self) -> Messenger:
        """The `Messenger` the chunks belong to."""
        return self._layer.m

    def _lengths(self) -> list[int]:
        # Lengths not known yet (dmap's results) are learned from what the
        # owners publish once the chunks are computed.
        unknown = [ref for ref in self._refs if ref.length is None]
        if unknown:
            self._facts(unknown)
        return cast("list[int]", [ref.length for ref in self._refs])  # all known now

    def _facts(self, refs: list[ChunkRef], failed: bool = False) -> list[dict[str, Any]]:
        # What the owners published about `refs` once computed; raises the
        # first chunk's error, in order, unless `failed` (then a failed
        # chunk's facts are its error's). Learns the lengths not known yet,
        # and the offsets once every length is known.
        table = self._layer.states
        futures = [table.wait(ref.id) for ref in refs]
        facts = [future.result() for future in futures]
        learned = False
        for ref, fact in zip(refs, facts):
            ref._state = fact["state"]
            if failed and fact["state"] == _ERROR:
                continue
            length = published_length(fact)
            if ref.length is None:
                ref.length = length
                learned = True
        if learned and all(ref.length is not None for ref in self._refs):
            offset = 0
            for ref in self._refs:
                ref.offset = offset
                offset += cast(int, ref.length)
        return facts

    def _learn_type(self) -> tuple[np.dtype[Any], tuple[int, ...]]:
        # The dtype and the shape of a row, from the computed chunks' facts
        # if not known yet (a failed chunk's error is raised only if no
        # chunk was computed). Chunks of dmap's results may differ in dtype:
        # numpy's promotion of them all, as np.concatenate gives in collect.
        if self._dtype is None or self._row_shape is None:
            if not self._refs:
                raise ValueError("a DistArray without chunks has no dtype")
            facts = [f for f in self._facts(self._refs, failed=True) if f["state"] != _ERROR]
            if not facts:
                self._facts(self._refs[:1])  # raises the first chunk's error
            shapes = {tuple(fact["shape"][1:]) for fact in facts}
            if len(shapes) != 1:
                raise ValueError(f"the chunks of a DistArray differ in row shape: {sorted(shapes)}")
            self._dtype = np.result_type(*{np.dtype(fact["dtype"]) for fact in facts})
            (self._row_shape,) = shapes
        return self._dtype, self._row_shape

    def __len__(self) -> int:
        return sum(self._lengths())

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows,)`` or ``(rows, columns)``; waits for chunks of unknown length."""
        _, row_shape = self._learn_type()
        return (len(self),) + row_shape

    @property
    def ndim(self) -> int:
        """1 or 2: the number of dimensions."""
        _, row_shape = self._learn_type()
        return 1 + len(row_shape)

    @property
    def size(self) -> int:
        """The number of elements: rows times columns."""
        _, row_shape = self._learn_type()
        return len(self) * int(np.prod(row_shape, dtype=np.int64))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype; for a result of `dcall`, known once its first chunk is computed."""
        dtype, _ = self._learn_type()
        return dtype

    @property
    def itemsize(self) -> int:
        """The bytes of one element."""
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """The bytes of all elements, over all ranks."""
        return self.size * self.itemsize

    # -- waiting ---------------------------------------------------------------

    def resolve(self: C) -> C:
        """Wait until every chunk is computed; return self.

        Returns
        -------
        DistArray
            This array, every chunk computed.

        Raises
        ------
        conveyor.RemoteError
            The error of the first chunk (in order) whose function raised.
        """
        self._facts(self._refs)
        return self

    def collect(self) -> np.ndarray:
        """Gather the whole array into one numpy array on this rank, in order.

        Returns
        -------
        numpy.ndarray
            Every row, in order.

        Raises
        ------
        conveyor.RemoteError
            As `resolve`.
        """
        dtype, row_shape = self._learn_type()
        values = self._gather(self._refs)
        if not values:
            return np.empty((0,) + row_shape, dtype)
        return np.concatenate(values, dtype=dtype)

    def _gather(self, refs: list[ChunkRef]) -> list[Any]:
        # The whole chunks of `refs`, in order.
        return self._fetch([(ref, 0, None) for ref in refs])

    def _fetch(self, pieces: list[tuple[ChunkRef, int, int | None]]) -> list[Any]:
        # Rows start .. stop (None: to the end) of each chunk, in order.
        layer = self._layer
        gathered = _Gathered(len(pieces))
        for index, (ref, start, stop) in enumerate(pieces):
            layer.rows(
                ref,
                start,
                stop,
                functools.partial(gathered.put, index),
                functools.partial(gathered.fail, index),
            )
        return gathered.wait(layer)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        value = self.collect()
        return value if dtype is None else value.astype(dtype, copy=False)


def scatter(
    cls: type[C],
    layer: ChunkLayer,
    a: npt.ArrayLike,
    chunks: SupportsIndex | Iterable[SupportsIndex] | None,
    ranks: Iterable[SupportsIndex] | None,
) -> C:
    """Messenger.array: split ``a`` into chunks on their ranks, as a ``cls``."""
    a = checked_array(a, "array")
    size = layer.m.size
    sizes = chunk_sizes(len(a), chunks, size)
    if ranks is None:
        owners = [k % size for k in range(len(sizes))]
    else:
        owners = [operator.index(r) for r in ranks]
        if len(owners) != len(sizes) or any(not 0 <= r < size for r in owners):
            raise ValueError(
                f"ranks must give one rank in 0..{size - 1} for each of the {len(sizes)} chunks"
            )
    refs, offset = [], 0
    for length, owner in zip(sizes, owners):
        piece = a[offset : offset + length]
        if owner == layer.rank:
            ref, _ = layer.mint(owner, length, offset)
            layer.resolve(ref, piece.copy())  # later changes to `a` must not show
        else:
            ref = layer.submit(
                owner, length, offset, None, [("value", np.ascontiguousarray(piece))]
            )
        refs.append(ref)
        offset += length
    return cls(layer, refs, a.dtype, a.shape[1:])


def share(
    cls: type[C],
    messenger: Messenger,
    pieces: Sequence[tuple[int, np.ndarray]],
    verb: str,
    dtype: np.dtype[Any] | None = None,
    row_shape: tuple[int, ...] | None = None,
) -> C:
    """Collective: every rank's ``pieces`` as the chunks of one array, shared by every rank.

    Each piece is ``(place, rows)``: its rows become a chunk owned by this
    rank (kept as they are: the caller copies what it must), and the chunks
    are in order of place over all ranks. Every rank lends every other a
    reference to each of its chunks. ``dtype`` and ``row_shape`` are the
    array's when no rank has a piece; the pieces must agree with them and
    with each other.
    """
    layer = layer_of(messenger)
    mine = []
    for place, value in pieces:
        ref, _ = layer.mint(layer.rank, len(value))
        layer.resolve(ref, value)
        lent = [
            0 if rank == layer.rank else layer.table.lend(ref.id)[0]
            for rank in range(messenger.size)
        ]
        mine.append((place, ref, value, lent))
    # The allgather blocks without serving messages: a rank already here
    # would never answer another that still waits for one of its chunks
    # (collect or sum before its own from_local). Serve until all are here.
    comm = layer.collectives()
    layer.serve_until(comm.Ibarrier())
    entries = comm.allgather(
        [
            (place, ref.id, len(value), value.dtype.str, value.shape[1:], lent)
            for place, ref, value, lent in mine
        ]
    )
    kinds = {(kind, shape) for entry in entries for _, _, _, kind, shape, _ in entry}
    if dtype is not None and row_shape is not None:
        kinds.add((np.dtype(dtype).str, tuple(row_shape)))
    if len(kinds) != 1:
        # Nobody adopts what this rank lent: take it back, so that each
        # chunk (and its published state) goes with its `ref`.
        for _, ref, _, lent in mine:
            layer.take_back(ref.id, layer.rank, layer.rank, sum(lent))
        raise ValueError(f"{verb}: the pieces differ in dtype or row shape: {sorted(kinds)}")
    ((kind, shape),) = kinds
    own = {place: ref for place, ref, _, _ in mine}
    placed = sorted(
        (place, owner, id, length, weights)
        for owner, entry in enumerate(entries)
        for place, id, length, _, _, weights in entry
    )
    refs, offset = [], 0
    for place, owner, id, length, weights in placed:
        if owner == layer.rank:
            refs.append(own[place])
        else:
            refs.append(layer.adopt(id, owner, owner, weights[layer.rank], length))
        refs[-1].offset = offset
        offset += length
    return cls(layer, refs, kind, tuple(shape))


def chunk_sizes(
    total: int, chunks: SupportsIndex | Iterable[SupportsIndex] | None, size: int
) -> list[int]:
    """The rows of each chunk: ``chunks`` near-equal ones (``size`` by default), or as given."""
    if chunks is None:
        return split_sizes(total, size)
    if isinstance(chunks, numbers.Integral):
        return split_sizes(total, int(chunks))
    # operator.index: int() would truncate sizes such as 3.9 silently.
    sizes = [operator.index(n) for n in chunks]  # type: ignore[union-attr]  # not Integral
    if any(n < 0 for n in sizes) or sum(sizes) != total:
        raise ValueError(f"chunk sizes {sizes} must be >= 0 and add up to {total} rows")
    return sizes


def split_sizes(total: int, chunks: int) -> list[int]:
    """``chunks`` near-equal sizes that add up to ``total``, the larger first."""
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, not {chunks}")
    base, extra = divmod(total, chunks)
    return [base + (k < extra) for k in range(chunks)]


def checked_array(a: npt.ArrayLike, verb: str) -> np.ndarray:
    """``a`` as a numpy array a DistArray can hold, or the error that says why not."""
    a = np.asarray(a)
    if a.ndim not in (1, 2):
        raise ValueError(f"{verb}: a DistArray is 1-D or 2-D (chunked by rows), not {a.ndim}-D")
    if a.dtype.hasobject or a.dtype.names is not None:
        raise TypeError(f"{verb}: a DistArray holds numeric numpy data, not dtype {a.dtype}")
    return a
