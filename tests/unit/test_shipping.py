"""`Shipped`'s hold of shared pickles: a file stays until its receiver mapped it, whatever the lists say."""

from conveyor import _shared
from conveyor._shipping import CAPACITY, SHARE_BYTES, Shipped


def pickles(count):
    return [bytes([k % 251]) * SHARE_BYTES + k.to_bytes(4, "little") for k in range(count)]


def test_a_shared_pickle_outlives_the_lists_until_mapped():
    shipped = Shipped(host_ranks=(1,))
    parcels = [shipped.parcel_pickled(1, data) for data in pickles(CAPACITY + 1)]
    for parcel in parcels:
        assert isinstance(parcel[1], _shared.SharedView)
        shipped.sent(1, parcel)
    first = parcels[0][0]
    assert first in shipped._segments  # out of the list, not mapped yet
    for forged in (b"not a digest", 3, None, [first]):
        shipped.mapped(forged)
    assert first in shipped._segments
    shipped.mapped(first)
    assert first not in shipped._segments
    assert len(shipped._segments) == CAPACITY
    # Mapped while still listed: the file stays for later tasks that name it by digest.
    shipped.mapped(parcels[1][0])
    assert parcels[1][0] in shipped._segments
    shipped.mapped(parcels[1][0])  # a second notice for one view changes nothing
    assert parcels[1][0] in shipped._segments


def test_a_parcel_sent_twice_is_held_until_both_views_are_mapped():
    shipped = Shipped(host_ranks=(1, 2))
    data = pickles(1)[0]
    views = [shipped.parcel_pickled(dest, data) for dest in (1, 2)]
    for dest, parcel in zip((1, 2), views):
        shipped.sent(dest, parcel)
    digest = views[0][0]
    for k in range(CAPACITY):  # push it out of both lists
        for dest in (1, 2):
            shipped.sent(dest, (k.to_bytes(16, "little"), None))
    shipped.mapped(digest)
    assert digest in shipped._segments
    shipped.mapped(digest)
    assert digest not in shipped._segments
