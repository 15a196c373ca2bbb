"""Shared items: stored once per host, fetched by the host's ranks as read-only views.

Same-host and cross-host (virtual hosts, CONVEYOR_HOSTS) fetches, what a
view keeps when the item goes, the capacity of shared items, forged views
(refused before anything is opened), forged fetch requests and mapped
notices, and a rank killed while another maps its item. What travels is read from the byte counters, never from timing.
"""

import gc
import os
import signal

import numpy as np
import pytest

import conveyor as cv
from conveyor._shared import SharedView

from _helpers import world

N = 1 << 20  # elements: 8 MiB of float64


def sent_bytes(m):
    stats = m.stats()
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


def case_fetch(hosts):
    with cv.Messenger() as m:
        a = np.arange(N, dtype=np.float64)
        if m.rank == 0:
            m.store.put("shared", a, shared=True)
            m.store.put("plain", a)
            held = m.store["shared"]
            assert not held.flags.writeable and np.array_equal(held, a)
            assert m.store.shared_nbytes == a.nbytes and m.store.nbytes == 2 * a.nbytes
        m.barrier()
        same_host = len(m.hosts) == 1
        assert same_host == (hosts == "1")
        before = sent_bytes(m) if m.rank == 0 else None
        if m.rank != 0:
            view = m.fetch(0, "shared").result(timeout=30)
            assert np.array_equal(view, a) and view.dtype == a.dtype
            assert not view.flags.writeable  # a view, mapped or shared where it arrived
        m.barrier()
        if m.rank == 0:  # what the fetches of the shared item cost rank 0
            shared_cost = sent_bytes(m) - before
        m.barrier()
        if m.rank != 0:
            assert np.array_equal(m.fetch(0, "plain").result(timeout=30), a)
        m.barrier()
        if m.rank == 0:
            plain_cost = sent_bytes(m) - before - shared_cost
            fetchers = m.size - 1
            assert plain_cost >= fetchers * a.nbytes
            if same_host:
                assert shared_cost < fetchers * 4096, shared_cost  # descriptors only
            else:  # the bytes at least once, by digest to a host that holds them
                assert a.nbytes <= shared_cost < fetchers * (a.nbytes + 4096), shared_cost
        m.wait_quiet()


@pytest.mark.parametrize(("n", "hosts"), [(2, "1"), (3, "1"), (2, "2")])
def test_fetch(mpirun, n, hosts):
    mpirun(n, case_fetch, hosts, env={"CONVEYOR_HOSTS": hosts})


def case_orders(hosts):
    # Rank 0 orders rank 1 to copy, then move, its shared item to rank 2.
    with cv.Messenger() as m:
        a = np.arange(N, dtype=np.float64)
        if m.rank == 1:
            m.store.put("item", a, shared=True)
        m.barrier()
        same_host = len(m.hosts) == 1
        before = sent_bytes(m) if m.rank == 1 else None
        if m.rank == 0:
            done = m.order(1, cv.Copy("item", to=2, as_name="copy")).result(timeout=30)
            assert done["bytes"] == a.nbytes
            m.order(1, cv.Move("item", to=2, as_name="moved")).result(timeout=30)
        m.barrier()
        if m.rank == 1:
            assert "item" not in m.store and m.store.shared_nbytes == 0
            cost = sent_bytes(m) - before
            # Across hosts the copy goes whole, and the move by its digest
            # alone: rank 2's host holds the copy's bytes.
            assert cost < 8192 if same_host else a.nbytes <= cost < a.nbytes + 8192, cost
        if m.rank == 2:
            for name in ("copy", "moved"):  # views of rank 1's file, which it let go,
                item = m.store[name]  # or of the copy's, shared on rank 2's host
                assert np.array_equal(item, a) and not item.flags.writeable
            if not same_host:  # shared on rank 2's host too, the same bytes held once
                assert m.store.shared_nbytes == a.nbytes
        m.wait_quiet()


@pytest.mark.parametrize("hosts", ["1", "3"])
def test_orders(mpirun, hosts):
    mpirun(3, case_orders, hosts, env={"CONVEYOR_HOSTS": hosts})


def case_lifetime():
    with cv.Messenger() as m:
        if m.rank == 0:
            m.store.put("item", np.full(1000, 7), shared=True)
        m.barrier()
        if m.rank == 1:
            first = m.fetch(0, "item").result(timeout=30)
        m.barrier()
        if m.rank == 0:  # replaced, then deleted: mappings made before stay whole
            m.store.put("item", np.full(1000, 8), shared=True)
        m.barrier()
        if m.rank == 1:
            second = m.fetch(0, "item").result(timeout=30)
        m.barrier()
        if m.rank == 0:
            del m.store["item"]
            assert m.store.shared_nbytes == 0 and m.store.nbytes == 0
        m.barrier()
        if m.rank == 1:
            assert (first == 7).all() and (second == 8).all()
            with pytest.raises(KeyError, match="no item 'item'"):
                m.fetch(0, "item").result(timeout=30)
        m.wait_quiet()


def test_lifetime(mpirun):
    mpirun(2, case_lifetime)


def case_deleted_right_after_a_fetch():
    # Rank 0 answers rank 1's fetch of a shared item, then deletes the item
    # and lets its file go, before rank 1 maps the file its view names (rank
    # 1 waits in a plain MPI call, decoding nothing meanwhile). The holder
    # holds the file until the fetcher says it mapped it: the view is whole.
    with cv.Messenger() as m:
        a = np.arange(1 << 16, dtype=np.float64)
        if m.rank == 0:
            m.store.put("item", a, shared=True)
        m.barrier()
        if m.rank == 1:
            fetched = m.fetch(0, "item")
            world().recv(source=0)  # the reply arrives meanwhile, undecoded
            view = fetched.result(timeout=30)
            assert np.array_equal(view, a) and not view.flags.writeable
        else:
            lent = m._items._lent
            while not lent:  # until the fetch is answered
                m.progress(0.01)
            del m.store["item"]
            gc.collect()
            world().send(None, dest=1)
        m.wait_quiet()
        assert not m._items._lent  # let go once mapped


def test_deleted_right_after_a_fetch(mpirun):
    mpirun(2, case_deleted_right_after_a_fetch)


def case_capacity():
    with cv.Messenger() as m:
        store = m.store
        assert store.shared_capacity == 1000
        store.put("a", np.zeros(100, np.int64), shared=True)  # 800 bytes
        store.put("same", np.zeros(100, np.int64), shared=True)  # the same bytes: held once
        assert store.shared_nbytes == 800
        del store["same"]
        with pytest.raises(cv.StoreFullError, match="CONVEYOR_SHARED_BYTES=1000"):
            store.put("b", np.ones(100, np.int64), shared=True)
        assert "b" not in store and store.shared_nbytes == 800
        store.put("a", np.zeros(120, np.int64), shared=True)  # replaced: 960 bytes
        store.put("b", np.zeros(1000, np.int64))  # not shared: not counted
        assert store.shared_nbytes == 960
        with pytest.raises(TypeError, match="numeric numpy data"):
            store.put("c", np.array([object()]), shared=True)
        assert "c" not in store
        m.wait_quiet()


def test_capacity(mpirun):
    mpirun(1, case_capacity, env={"CONVEYOR_SHARED_BYTES": "1000"})


def case_forged_views():
    # Views sent as a user would forge them: each is refused when it
    # arrives (counted, the handler not called), and nothing is opened
    # but a memfd of conveyor's of a rank of this host.
    with cv.Messenger() as m:
        got = []
        m.on("sink")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        if m.rank == 0:
            m.store.put("real", np.arange(4.0), shared=True)
            real = m.store._view("real")
            plain = os.open("/proc/self/status", os.O_RDONLY)
            dtype, shape = np.dtype(np.float64), (4,)
            forged = [
                SharedView(1, real.fd, real.name, dtype, shape),  # pid 1: not a rank here
                SharedView(os.getpid(), real.fd, real.name + "x", dtype, shape),  # other name
                SharedView(os.getpid(), plain, real.name, dtype, shape),  # not a memfd
                SharedView(os.getpid(), 9999, real.name, dtype, shape),  # no such descriptor
                SharedView(os.getpid(), real.fd, "/etc/passwd", dtype, shape),  # not ours
                SharedView(os.getpid(), real.fd, real.name, np.dtype("O"), shape),
                SharedView(os.getpid(), real.fd, real.name, np.dtype("f8,f8"), shape),
                SharedView(os.getpid(), real.fd, real.name, dtype, (4, 2**62)),  # too big
                SharedView(os.getpid(), real.fd, real.name, dtype, (-1,)),
            ]
            for view in forged:
                m.send(1, "sink", view)
            m.send(1, "sink", real)  # the genuine one arrives as the array
            assert m.request(1, "echo", 5).result(timeout=30) == 5
        m.wait_quiet()
        if m.rank == 1:
            assert len(got) == 1 and np.array_equal(got[0], np.arange(4.0))
            assert m.stats()["payloads_undecodable"] == 9
        m.wait_quiet()


def test_forged_views(mpirun):
    mpirun(2, case_forged_views)


def case_forged_fetches_and_mapped_notices():
    # The item service's receivers, reached as a forger would (send and
    # request refuse their reserved tags): a fetch request it cannot read
    # is answered with a ValueError; a notice that a view was mapped whose
    # lease is not an int is ignored, and releases no view lent.
    from conveyor._tags import ITEM_FETCH, ITEM_MAPPED

    with cv.Messenger() as m:
        if m.rank == 0:
            m.store.put("item", np.arange(4.0), shared=True)
        m.barrier()
        if m.rank == 1:
            forge = m._requests.request
            for payload in (
                "item",
                None,
                ("item",),
                ("item", "view", "more"),
                ("item", "nowhere"),
                (7, "whole"),
                {"item": "view"},
            ):
                with pytest.raises(cv.RemoteError, match="malformed fetch") as info:
                    forge(0, ITEM_FETCH, payload).result(timeout=30)
                assert isinstance(info.value, ValueError) and info.value.remote_type == "ValueError"
            # A view lent as a fetch asks for it, whose fetcher never says
            # it mapped it: rank 0 holds its file until the notice comes.
            how, view, lease = forge(0, ITEM_FETCH, ("item", "view")).result(timeout=30)
            assert how == "view" and type(lease) is int
            # A float or a bool equal to the lease would find it in a dict.
            notices = [str(lease), float(lease), [lease], (lease,), None]
            notices += [bool(lease)] if lease in (0, 1) else []
            for notice in notices:
                m._transport.send(0, ITEM_MAPPED, notice)
        m.wait_quiet()
        lent = m.bcast(len(m._items._lent) if m.rank == 0 else None)
        assert lent == 1  # the forged notices released nothing
        if m.rank == 1:
            m._transport.send(0, ITEM_MAPPED, lease)  # the genuine notice
        m.wait_quiet()
        if m.rank == 0:
            assert m._items._lent == {}
            stats = m.stats()
            assert stats["handler_errors"] == stats["payloads_undecodable"] == 0, stats
        else:  # rank 0 still serves fetches
            assert np.array_equal(m.fetch(0, "item").result(timeout=30), np.arange(4.0))
        m.wait_quiet()


def test_forged_fetches_and_mapped_notices(mpirun):
    mpirun(2, case_forged_fetches_and_mapped_notices)


def case_owner_killed():
    # The owner dies while another rank holds a view of its item.
    with cv.Messenger(abort_on_error=False) as m:
        if m.rank == 0:
            m.store.put("item", np.full(1 << 16, 3.0), shared=True)
        m.barrier()
        if m.rank == 1:
            view = m.fetch(0, "item").result(timeout=30)
            m.send(0, "die", None)
            assert (view == 3.0).all()
            print("view read", flush=True)
            m.progress(30)  # the job ends meanwhile
        else:
            m.on("die")(lambda msg: os.kill(os.getpid(), signal.SIGKILL))
            m.progress(30)


def test_owner_killed_leaves_nothing_in_dev_shm(mpirun):
    before = set(os.listdir("/dev/shm"))
    result = mpirun(2, case_owner_killed, timeout=60, check=False)
    assert result.returncode != 0 and "view read" in result.stdout, result.stderr
    left = set(os.listdir("/dev/shm")) - before
    assert not [name for name in left if "conveyor" in name], left
