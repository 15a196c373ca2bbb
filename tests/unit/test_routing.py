"""conveyor._core.routing.route, behind Sender.send_many: grouping, strided inputs, one rank."""

import numpy as np
import pytest

from conveyor._native import core


def reference(dests, items, nranks):
    order = np.argsort(dests, kind="stable")
    counts = np.bincount(dests, minlength=nranks)
    return items[order], np.concatenate([[0], np.cumsum(counts)])


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.uint64])
@pytest.mark.parametrize("strided", [False, True])
def test_rows_are_grouped_stably_by_rank(dtype, strided):
    rng = np.random.default_rng(7)
    dests = rng.integers(0, 5, 2 * 1001).astype(dtype)
    items = np.arange(2 * 1001 * 3, dtype=np.float32).reshape(-1, 3)
    if strided:  # views the router makes contiguous first
        dests, items = dests[::2], items[::2]
    rows, offsets, only = core.routing.route(dests, items, 5)
    want_rows, want_offsets = reference(dests.astype(np.int64), items, 5)
    assert only == -1
    assert np.array_equal(rows, want_rows) and np.array_equal(offsets, want_offsets)


@pytest.mark.parametrize("strided", [False, True])
def test_rows_to_one_rank_are_not_copied(strided):
    dests = np.full(20, 3, dtype=np.int64)
    items = np.arange(40, dtype=np.uint64)
    items = items[::2] if strided else items[:20]
    rows, offsets, only = core.routing.route(dests, items, 4)
    assert only == 3 and offsets.tolist() == [0, 0, 0, 0, 20]
    assert np.array_equal(rows, items)
    # The rows themselves when they need no making contiguous, else one copy.
    assert np.shares_memory(rows, items) is not strided


@pytest.mark.parametrize("dest", [4, -1])
def test_a_rank_outside_the_job_is_named(dest):
    for dests in (np.full(6, dest), np.array([0, 1, 2, 3, dest, 0])):
        with pytest.raises(ValueError, match=f"destination rank {dest} at index"):
            core.routing.route(dests, np.zeros(6), 4)


def test_no_rows():
    rows, offsets, only = core.routing.route(np.zeros(0, np.int64), np.zeros(0), 3)
    assert only == -1 and offsets.tolist() == [0, 0, 0, 0] and rows.size == 0
