"""conveyor._core.chunks.ChunkTable: chunk values without copies, states, waiters and reference weights."""

import gc
import weakref

import numpy as np
import pytest

from conveyor._native import core as _core


class Tracked(np.ndarray):
    """An array that can be watched with a weak reference (plain ndarrays cannot)."""


@pytest.fixture
def table():
    return _core.chunks.ChunkTable(2)


def created(table):
    id = table.new_id()
    table.create(id)
    table.hold(id)
    return id


def test_ids_carry_their_creator():
    table = _core.chunks.ChunkTable(7)
    a, b = table.new_id(), table.new_id()
    assert a != b and a != 0
    assert _core.chunks.ChunkTable.creator_of(a) == 7 == table.rank
    assert _core.chunks.ChunkTable(6).new_id() not in (
        a,
        b,
    )  # unique across ranks without asking them
    with pytest.raises(ValueError, match="outside"):
        _core.chunks.ChunkTable(1 << 24)


def test_value_is_a_read_only_view_of_the_array_given(table):
    id = created(table)
    data = np.arange(12, dtype=">i4").reshape(3, 4)
    table.resolve(id, data)
    value = table.value(id)
    assert np.shares_memory(value, data)
    assert value.dtype == np.dtype(">i4") and value.shape == (3, 4)
    np.testing.assert_array_equal(value, data)
    assert not value.flags.writeable
    with pytest.raises(ValueError):
        value[0, 0] = 1
    assert data.flags.writeable  # the caller's array is left as it was
    assert table.stats()["bytes"] == 48


@pytest.mark.parametrize(
    "data",
    [
        np.array(3.5),
        np.zeros((0, 3)),
        np.array(["ab", "c"]),
        np.array([0, 1, 2], dtype="M8[ns]"),
        np.zeros(4, dtype="V3"),
    ],
)
def test_dtypes_and_shapes_survive(table, data):
    id = created(table)
    table.resolve(id, data)
    value = table.value(id)
    assert value.dtype == data.dtype and value.shape == data.shape
    np.testing.assert_array_equal(value, data)


def test_the_table_keeps_the_array_alive_until_the_last_reference_goes(table):
    id = created(table)
    data = np.arange(1000.0).view(Tracked)
    alive = weakref.ref(data)
    table.resolve(id, data)
    del data
    gc.collect()
    assert alive() is not None
    view = table.value(id)
    assert table.release(id) == (True, table.rank, 0)
    assert id not in table and table.stats()["bytes"] == 0
    gc.collect()
    assert alive() is not None  # the view still reads it
    assert view[999] == 999.0
    del view
    gc.collect()
    assert alive() is None


def test_a_dropped_table_releases_its_values():
    table = _core.chunks.ChunkTable(0)
    data = np.zeros(10).view(Tracked)
    alive = weakref.ref(data)
    table.resolve(created(table), data)
    del data, table
    gc.collect()
    assert alive() is None


def test_a_non_contiguous_array_is_copied_once(table):
    id = created(table)
    data = np.arange(20)[::2]
    table.resolve(id, data)
    value = table.value(id)
    np.testing.assert_array_equal(value, data)
    assert not np.shares_memory(value, data)
    assert np.shares_memory(value, table.value(id))  # one copy, kept


@pytest.mark.parametrize(
    "value, match",
    [
        (np.array([None, 1]), "plain dtype"),
        (np.zeros(2, dtype=[("x", "i4"), ("y", "f8")]), "plain dtype"),
        ([1, 2, 3], "numpy array"),
    ],
)
def test_values_that_cannot_be_kept_are_refused(table, value, match):
    id = created(table)
    with pytest.raises(TypeError, match=match):
        table.resolve(id, value)
    assert table.state(id) == _core.chunks.CHUNK_PENDING


def test_waiters_are_handed_back_once_settled(table):
    id = created(table)
    assert table.state(id) == _core.chunks.CHUNK_PENDING
    assert table.add_waiter(id, 11) and table.add_waiter(id, 12)
    assert table.resolve(id, np.zeros(1)) == [11, 12]
    assert table.state(id) == _core.chunks.CHUNK_RESOLVED
    assert not table.add_waiter(id, 13)
    with pytest.raises(ValueError, match="already resolved"):
        table.resolve(id, np.zeros(1))
    with pytest.raises(ValueError, match="no error"):
        table.error(id)


def test_errors_are_opaque_bytes(table):
    id = created(table)
    table.add_waiter(id, 5)
    assert table.fail(id, b"\x80pickled\x00") == [5]
    assert table.state(id) == _core.chunks.CHUNK_ERROR
    assert table.error(id) == b"\x80pickled\x00"
    with pytest.raises(ValueError, match="failed"):
        table.value(id)
    other = created(table)
    with pytest.raises(TypeError):
        table.fail(other, "not bytes")
    assert table.stats()["failed"] == 1 and table.stats()["pending"] == 1


def test_unknown_chunks_are_key_errors(table):
    with pytest.raises(KeyError, match="not in the chunk table of rank 2"):
        table.state(12345)
    with pytest.raises(KeyError):
        table.hold(12345)
    assert 12345 not in table and len(table) == 0


def test_the_owner_mints_and_frees_once_all_weight_is_back(table):
    id = created(table)
    table.resolve(id, np.zeros(8))
    weight, home, refill = table.lend(id)
    assert (weight, home, refill) == (table.MINT_WEIGHT, 2, False)
    assert table.release(id) == (False, 2, 0)  # the lent weight still references it
    assert id in table
    with pytest.raises(ValueError, match="only"):
        table.give_back(id, weight + 1)
    assert table.give_back(id, weight - 1) == (False, 2, 0)
    assert table.give_back(id, 1) == (True, 2, 0)
    assert id not in table and len(table) == 0


def test_a_local_handle_keeps_a_chunk_whose_weight_is_all_back(table):
    id = created(table)
    weight, _, _ = table.lend(id)
    assert table.give_back(id, weight) == (False, 2, 0)
    assert id in table
    assert table.release(id)[0]
    assert id not in table


def test_a_give_back_may_overtake_the_create(table):
    id = _core.chunks.ChunkTable(0).new_id()  # a driver on rank 0 chose this rank
    assert table.give_back(id, 300) == (False, 2, 0)
    assert id not in table and len(table) == 0 and table.stats()["placeholders"] == 1
    table.create(id, 1000)
    assert (
        id in table
        and len(table) == 1
        and table.stats() == dict(chunks=0, bytes=0, pending=1, failed=0, placeholders=0, foreign=0)
    )
    table.resolve(id, np.zeros(4))
    assert table.give_back(id, 700)[0]
    assert id not in table


def test_a_reference_may_reach_its_owner_before_the_create(table):
    id = _core.chunks.ChunkTable(0).new_id()
    with pytest.raises(KeyError, match="not in the chunk table"):
        table.hold(id)  # only the owner may expect a chunk
    table.hold_owned(id)
    assert table.give_back(id, 30) == (False, 2, 0)
    assert id not in table and table.stats()["placeholders"] == 1
    with pytest.raises(KeyError, match="not created on rank 2 yet"):
        table.state(id)
    table.create(id, 100)
    assert table.state(id) == _core.chunks.CHUNK_PENDING and table.stats()["placeholders"] == 0
    assert table.give_back(id, 70) == (False, 2, 0)
    assert table.release(id) == (True, 2, 0)


def test_foreign_references_lend_part_of_their_weight_and_return_the_rest(table):
    id = _core.chunks.ChunkTable(5).new_id()
    assert table.adopt(id, 5, 5, table.MINT_WEIGHT) == (False, 5, 0)
    table.hold(id)
    assert id in table and table.stats()["foreign"] == 1
    with pytest.raises(KeyError, match="owned by rank 5"):
        table.value(id)
    with pytest.raises(ValueError, match="owned by rank 5"):
        table.adopt(id, 4, 4, 1)
    given = 0
    refills = []
    while not refills:
        weight, home, refill = table.lend(id)
        assert (weight, home) == (table.LEND_CAP, 5)
        given += weight
        if refill:
            refills.append(given)
    assert table.MINT_WEIGHT - refills[0] < table.REFILL_BELOW
    assert table.lend(id) == (table.LEND_CAP, 5, False)  # asked already
    given += table.LEND_CAP
    table.adopt(id, 5, 5, table.MINT_WEIGHT)  # the owner's answer
    freed, home, weight = table.release(id)
    assert (freed, home) == (True, 5)
    assert weight + given == 2 * table.MINT_WEIGHT
    assert id not in table


def test_a_reference_down_to_one_weight_lends_as_a_proxy(table):
    id = _core.chunks.ChunkTable(1).new_id()
    table.adopt(id, 1, 1, 4)
    table.hold(id)
    assert table.lend(id) == (2, 1, True)
    assert table.lend(id) == (1, 1, False)
    # Weight 1 left: what it lends now comes back here, not to the owner.
    for _ in range(3):
        assert table.lend(id) == (table.LEND_CAP, 2, False)
    assert table.give_back(id, table.LEND_CAP) == (False, 1, 0)
    with pytest.raises(ValueError, match="only"):
        table.give_back(id, 2 * table.LEND_CAP + 1)
    # The last handle goes, but two copies are still out: the entry stays.
    assert table.release(id) == (False, 1, 0)
    assert id in table and table.stats()["foreign"] == 1
    with pytest.raises(ValueError, match="without a handle"):
        table.release(id)
    assert table.give_back(id, table.LEND_CAP) == (False, 1, 0)
    assert table.give_back(id, table.LEND_CAP) == (True, 1, 1)  # the owner's weight goes home
    assert id not in table


def test_weight_from_two_homes_is_not_mixed(table):
    id = _core.chunks.ChunkTable(1).new_id()
    table.adopt(id, 1, 3, 100)  # lent by a proxy on rank 3
    table.hold(id)
    assert table.adopt(id, 1, 0, 50) == (False, 0, 50)  # another proxy's goes back
    assert table.adopt(id, 1, 3, 10) == (False, 3, 0)  # the same home's adds up
    assert table.adopt(id, 1, 1, 1000) == (False, 3, 110)  # the owner's replaces it
    assert table.lend(id)[:2] == (500, 1)
    assert table.release(id) == (True, 1, 500)
    with pytest.raises(ValueError, match="comes back by give_back"):
        table.adopt(id, 1, 2, 10)
    # At the owner, weight lent by a proxy goes straight back to it.
    mine = created(table)
    assert table.adopt(mine, 2, 0, 10) == (False, 0, 10)
