"""Functions sent to other ranks once, and referred to by a digest afterwards.

A function travels by value (`_pickling`, which pickles an importable
function by reference, its module and name, and any other by value) the
first time a rank sends it to another, and as the 16-byte BLAKE2 digest of
those bytes afterwards. Both sides of every pair keep the same
least-recently-used list of the digests the sender sent, of the same
capacity, updated by the same messages in the same order (conveyor keeps
per-pair order): so the sender knows exactly which functions the receiver
still holds, and a digest that arrives alone is always found.

To a rank of the sender's host, a function of at least `SHARE_BYTES`
travels neither by value nor as a copy: its pickle goes into the host's
content-addressed shared memory (`_shared.share`: the host holds equal
pickles once, whichever of its ranks shipped them) and the receiver maps
it from a `SharedView`, checks its digest and unpickles it. So a large
closure shipped to every rank of a host costs a few hundred bytes a rank,
then 16 a task. The sender holds that file until the receiver has mapped
it (it answered the request, or said so with a `mapped` notice): a
receiver still busy elsewhere when the digest leaves every list would
otherwise find the file gone.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import weakref
from collections.abc import Container
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from . import _pickling, _shared
from ._errors import FrameError

if TYPE_CHECKING:
    from ._future import Future
    from ._shared import HostIndex, Segment

__all__ = ["Parcel", "Received", "Shipped"]

# Functions each pair keeps (the sender's list and the receiver's functions).
CAPACITY = 256

# Pickles at least this large go to ranks of the same host through shared memory.
SHARE_BYTES = 1 << 16

# What a function travels as: its digest, and its pickle where the receiver
# lacks it (bytes, or a `SharedView` of them that arrives as a uint8 array).
Parcel = tuple[bytes, Any]


class Shipped:
    """The sender's side: what each rank was sent, and each function's pickle."""

    def __init__(self, host_ranks: Container[int] = (), index: HostIndex | None = None) -> None:
        self._sent: dict[int, collections.OrderedDict[bytes, None]] = {}
        self._host_ranks = host_ranks  # whose pickles go through shared memory
        self._index = index
        # The shared pickles, by digest: kept while any rank's list holds
        # them, or a view of them is on its way (counted, by digest).
        self._segments: dict[bytes, Segment] = {}
        self._unmapped: collections.Counter[bytes] = collections.Counter()
        # Notices arrive on the serving thread, which a served messenger's
        # senders are not: the lists, files and counts change under it.
        self._lock = threading.Lock()
        # A function is pickled once (as Ray exports a remote function once):
        # the globals it captures are those of its first use.
        self._pickles: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = (
            weakref.WeakKeyDictionary()
        )
        self._last_pickled: tuple[bytes | None, bytes] = (None, b"")

    def parcel(self, dest: int, fn: Callable[..., Any]) -> Parcel:
        """Return what `fn` travels to `dest` as; call `sent` once it has left."""
        return self._parcel(dest, *self._pickle(fn))

    def parcel_pickled(self, dest: int, data: bytes) -> Parcel:
        """`parcel` of a function pickled already (``_pickling.dumps``), as the array layer does."""
        last_data, digest = self._last_pickled
        if data is not last_data:  # one pickle goes to every chunk of a call: digest it once
            digest = hashlib.blake2b(data, digest_size=16).digest()
            self._last_pickled = (data, digest)
        return self._parcel(dest, digest, data)

    def _parcel(self, dest: int, digest: bytes, data: bytes) -> Parcel:
        if digest in self._sent.get(dest, ()):
            return (digest, None)
        if len(data) < SHARE_BYTES or dest not in self._host_ranks:
            return (digest, data)
        with self._lock:
            segment = self._segments.get(digest)
            if segment is None:
                segment = _shared.share(np.frombuffer(data, np.uint8), self._index)
                self._segments[digest] = segment
            self._unmapped[digest] += 1  # held from here: `sent` may come after a notice
        return (digest, segment.view(np.dtype(np.uint8), (len(data),)))

    def sent(self, dest: int, parcel: Parcel, answer: Future[Any] | None = None) -> None:
        """Record that `parcel` left for `dest` (as the receiver will record it).

        A parcel that is a view of a shared pickle holds the file (from
        `parcel` on) until `dest` has mapped it: until `answer` (the
        request that carried it) is answered, or, without one, until
        `mapped` is called.
        """
        digest, data = parcel
        if isinstance(data, _shared.SharedView) and answer is not None:
            answer.add_done_callback(lambda _: self.mapped(digest))
        with self._lock:
            gone = _use(self._sent.setdefault(dest, collections.OrderedDict()), digest, None)
            if gone is not None:
                self._let_go(gone)

    def mapped(self, digest: Any) -> None:
        """A receiver mapped the shared pickle `digest` (its `mapped` notice: checked)."""
        if type(digest) is not bytes:
            return
        with self._lock:
            if self._unmapped[digest] > 0:
                self._unmapped[digest] -= 1
                if self._unmapped[digest] == 0:
                    del self._unmapped[digest]
                    self._let_go(digest)

    def _let_go(self, digest: bytes) -> None:
        # The file goes once no list holds the digest and no view of it is
        # on its way. Hold the lock.
        if digest not in self._segments or digest in self._unmapped:
            return
        if not any(digest in s for s in self._sent.values()):
            del self._segments[digest]

    def _pickle(self, fn: Callable[..., Any]) -> tuple[bytes, bytes]:
        try:
            known = self._pickles.get(fn)
        except TypeError:  # not weakly referenceable (a builtin): pickled each time, by name
            known = None
        if known is None:
            data = _pickling.dumps(fn)
            known = (hashlib.blake2b(data, digest_size=16).digest(), data)
            try:
                self._pickles[fn] = known
            except TypeError:
                pass
        return known


class Received:
    """The receiver's side: the functions each rank sent, by digest."""

    @staticmethod
    def mapped_digest(parcel: Any) -> bytes | None:
        """The digest of `parcel` if it arrived as a mapped shared pickle, else None.

        Its sender holds the file until it hears so (`Shipped.mapped`),
        unless the parcel came in a request, whose answer says it.
        """
        if isinstance(parcel, tuple) and len(parcel) == 2 and isinstance(parcel[1], np.ndarray):
            digest = parcel[0]
            return digest if isinstance(digest, bytes) else None
        return None

    def __init__(self) -> None:
        self._functions: dict[int, collections.OrderedDict[bytes, Callable[..., Any]]] = {}

    def function(self, source: int, parcel: Any) -> Callable[..., Any]:
        """Return the function `parcel` from `source` names, unpickling it if it came whole.

        Raises
        ------
        conveyor.FrameError
            If the parcel is malformed, or names a function `source` never
            sent (only a forged frame can).
        """
        try:
            digest, data = parcel
            mapped = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1
            if not isinstance(digest, bytes) or not (
                data is None or isinstance(data, bytes) or mapped
            ):
                raise TypeError
        except (TypeError, ValueError):
            raise FrameError(f"a malformed function parcel from rank {source}") from None
        functions = self._functions.setdefault(source, collections.OrderedDict())
        fn: Callable[..., Any]
        if data is not None:
            if hashlib.blake2b(data, digest_size=16).digest() != digest:
                raise FrameError(f"a function from rank {source} does not match its digest")
            fn = _pickling.loads(data)
        elif digest in functions:
            fn = functions[digest]
        else:
            raise FrameError(f"rank {source} named a function it never sent")
        _use(functions, digest, fn)
        return fn


def _use(recent: collections.OrderedDict[bytes, Any], digest: bytes, value: Any) -> bytes | None:
    # The one LRU rule both sides follow: the digest becomes the newest,
    # and beyond CAPACITY the oldest goes (returned).
    recent[digest] = value
    recent.move_to_end(digest)
    if len(recent) > CAPACITY:
        return recent.popitem(last=False)[0]
    return None
