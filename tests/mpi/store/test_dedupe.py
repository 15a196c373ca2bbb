"""Dedupe by content: equal bytes are stored once per host, and sent by digest to a host that holds them.

Same-host and cross-host (virtual hosts) paths, puts of the same content
by every rank at once, references dropped in every order, digest
collisions (a digest function that names everything alike), digest-only
transfers read from the byte counters, forged and unknown digests, and
large functions shipped through shared memory. Files are told apart by
their inode, which every process that maps a memfd sees alike.
"""

import itertools
import os

import numpy as np
import pytest

import conveyor as cv
from conveyor import _shared
from conveyor._tags import ITEM_PUT

from _helpers import read_rows, world

N = 1 << 17  # float64: 1 MiB


def sent_bytes(m):
    stats = m.stats()
    return stats["bytes_framed"] + stats["bytes_zero_copy_sent"]


def inode(m, name):
    return os.fstat(m.store.segment(name).fd).st_ino


def index_records(m, key):
    with m._host_index.locked():
        return [record for _, record in m._host_index.records() if record[0][: len(key)] == key]


def case_same_content():
    # Every rank shares the same bytes at once, and bytes of its own.
    with cv.Messenger() as m:
        a = np.arange(N, dtype=np.float64)
        m.barrier()
        m.store.put("a", a, shared=True)
        m.store.put("again", a.copy(), shared=True)  # the same bytes under another name
        m.store.put("as_bytes", a.view(np.uint8).reshape(-1, 8), shared=True)  # other dtype
        segment = m.store.segment("a")
        assert m.store.segment("again") is segment and m.store.segment("as_bytes") is segment
        assert m.store.shared_nbytes == a.nbytes and m.store.nbytes == 3 * a.nbytes
        assert np.array_equal(m.store["as_bytes"], a.view(np.uint8).reshape(-1, 8))
        assert np.array_equal(m.store["again"], a)
        m.store.put("own", np.full(N, float(m.rank)), shared=True)
        del segment
        found = world().allgather((m.host, inode(m, "a"), inode(m, "own")))
        for host, a_file, _own_file in found:
            # One file of `a` per host, whichever rank wrote it; one of each rank's own.
            assert (a_file == inode(m, "a")) == (host == m.host)
        assert len({own for _, _, own in found}) == m.size
        # The host's index holds one record of `a` per rank of the host.
        assert len(index_records(m, _shared.digest(a))) == len(m.host_ranks)
        m.wait_quiet()


@pytest.mark.parametrize(("n", "hosts"), [(2, "1"), (4, "1"), (4, "2")])
def test_same_content_stored_once_per_host(mpirun, n, hosts):
    mpirun(n, case_same_content, env={"CONVEYOR_HOSTS": hosts})


def case_drop_orders():
    # The host's ranks hold the same bytes and drop them in every order;
    # those still holding read them whole, a rank that dropped them and
    # shares them again finds the file through another holder, and once
    # every rank dropped them their records are gone and the next put
    # writes a new file.
    with cv.Messenger() as m:
        for round, order in enumerate(itertools.permutations(m.host_ranks)):
            a = np.full(N, float(round))
            key = _shared.digest(a)
            m.store.put("x", a, shared=True)
            view = m.store["x"]
            first = inode(m, "x")
            assert len({i for i in world().allgather(first)}) == 1
            for k, rank in enumerate(order):
                if m.rank == rank:
                    del m.store["x"]
                    if k < len(order) - 1:  # others still hold it: found, not written
                        m.store.put("x", a, shared=True)
                        assert inode(m, "x") == first
                        del m.store["x"]
                m.barrier()
                if "x" in m.store:
                    assert (m.store["x"] == round).all()
                records = index_records(m, key)
                assert len(records) == len(order) - 1 - k, (round, order, k, records)
                m.barrier()  # counted everywhere before the next rank drops its hold
            assert (view == round).all()  # a mapping outlives every hold of its file
            del view
            m.store.put("y", a, shared=True)  # nobody holds it: a new file
            assert inode(m, "y") != first or m.size == 1
            del m.store["y"]
            m.barrier()
        m.wait_quiet()


@pytest.mark.parametrize("n", [2, 3])
def test_references_dropped_in_every_order(mpirun, n):
    mpirun(n, case_drop_orders, timeout=240)


def case_collisions():
    # A digest that names all content alike: bytes are compared, so
    # different bytes get files of their own, equal bytes still one.
    _shared.digest = lambda data: b"\0" * 16
    with cv.Messenger() as m:
        mine = np.full(N, float(m.rank))
        common = np.full(N, -1.0)
        m.store.put("mine", mine, shared=True)
        m.store.put("common", common, shared=True)
        m.store.put("other", mine + 0.5, shared=True)  # collides in this process too
        assert np.array_equal(m.store["mine"], mine) and np.array_equal(m.store["common"], common)
        assert np.array_equal(m.store["other"], mine + 0.5)
        files = world().allgather((inode(m, "mine"), inode(m, "common")))
        assert len({f for f, _ in files}) == m.size  # different bytes: different files
        assert len({c for _, c in files}) == 1  # equal bytes: one file
        m.wait_quiet()


def test_collisions(mpirun):
    mpirun(3, case_collisions)


def case_digest_transfers():
    # Hosts {0, 1} and {2, 3}: rank 0 copies its item to rank 2 (whole),
    # then to rank 3 (its digest alone: rank 2 holds the bytes on that
    # host), then to rank 1 (its own host: its digest, and rank 1 maps rank
    # 0's file, storing the item shared too).
    with cv.Messenger() as m:
        a = np.arange(N, dtype=np.float64)
        assert m.hosts == ((0, 1), (2, 3))
        if m.rank == 0:
            m.store.put("item", a, shared=True)
            costs = []
            for dest in (2, 3, 1):
                before = sent_bytes(m)
                done = m.order(0, cv.Copy("item", to=dest)).result(timeout=30)
                assert done["bytes"] == a.nbytes
                costs.append(sent_bytes(m) - before)
            whole, by_digest, view = costs
            assert a.nbytes <= whole < a.nbytes + 8192, costs
            assert by_digest < 4096 and view < 4096, costs
        m.barrier()
        if m.rank != 0:
            item = m.store["item"]
            assert np.array_equal(item, a) and not item.flags.writeable
        files = world().allgather(os.fstat(m.store.segment("item").fd).st_ino)
        assert files[0] == files[1] and files[2] == files[3] and files[0] != files[2]
        m.wait_quiet()


def test_digest_transfers(mpirun):
    mpirun(4, case_digest_transfers, env={"CONVEYOR_HOSTS": "2"})


def case_fetches_across_hosts():
    # Hosts {0, 1} and {2, 3}: rank 2 fetches rank 0's shared item (whole:
    # its host lacks it), then rank 3 (its digest alone: rank 2 holds it
    # while its array lives), then rank 2 again; rank 1 maps it (one host).
    # A plain item still arrives whole, as a private copy.
    with cv.Messenger() as m:
        a = np.arange(N, dtype=np.float64)
        if m.rank == 0:
            m.store.put("item", a, shared=True)
            m.store.put("plain", a * 2)
        m.barrier()
        held = None
        for turn in (2, 3, 2, 1):
            if m.rank == turn:
                before = m.stats()["bytes_zero_copy_received"]
                got = m.fetch(0, "item").result(timeout=30)
                received = m.stats()["bytes_zero_copy_received"] - before
                assert np.array_equal(got, a) and not got.flags.writeable
                if turn == 2 and held is None:
                    assert received == a.nbytes
                    held = got[10:]  # a view holds what arrived, as the array does
                    del got
                else:
                    assert received == 0, (turn, received)
                    del got
            m.barrier()
        if m.rank == 2:
            plain = m.fetch(0, "plain").result(timeout=30)
            assert np.array_equal(plain, a * 2) and plain.flags.writeable
            with pytest.raises(cv.RemoteError, match="absent"):
                m.fetch(0, "absent").result(timeout=30)
            # What arrived lies in this host's shared files while a view of it lives.
            key = _shared.digest(a)
            assert index_records(m, key), "not shared on rank 2's host"
            del held
            assert not [r for r in index_records(m, key) if r[1] == os.getpid()]
        m.wait_quiet()


def test_fetches_across_hosts(mpirun):
    mpirun(4, case_fetches_across_hosts, env={"CONVEYOR_HOSTS": "2"})


def case_forged_digests():
    # Puts that name content by digest alone, which rank 0's host does not
    # hold or which do not add up: each fails with a clear error, and the
    # store keeps what it had.
    with cv.Messenger() as m:
        a = np.arange(10.0)
        if m.rank == 0:
            m.store.put("keep", a, shared=True)
        m.barrier()
        if m.rank == 1:
            key = os.urandom(16)
            put = m._requests.request
            with pytest.raises(cv.RemoteError, match=f"holds content of digest {key.hex()}"):
                put(0, ITEM_PUT, ("keep", (key, 80, "<f8", [10]), "digest")).result(timeout=30)
            for content, why in [
                ((b"short", 80, "<f8", [10]), "malformed content"),
                ((key, 80, "|O", [10]), "malformed content"),
                ((key, 80, "<f8", [11]), "cannot be of shape"),
                ("nonsense", "malformed content"),
            ]:
                with pytest.raises(ValueError, match=why):
                    put(0, ITEM_PUT, ("keep", content, "digest")).result(timeout=30)
            # The real digest of rank 0's item: found on its host, stored under the new name.
            real = (_shared.digest(a), 80, "<f8", [10])
            assert put(0, ITEM_PUT, ("copy", real, "digest")).result(timeout=30) == 80
        m.barrier()
        if m.rank == 0:
            assert sorted(m.store) == ["copy", "keep"]
            assert np.array_equal(m.store["keep"], a) and np.array_equal(m.store["copy"], a)
        m.wait_quiet()


@pytest.mark.parametrize("hosts", ["1", "2"])
def test_forged_digests(mpirun, hosts):
    mpirun(2, case_forged_digests, env={"CONVEYOR_HOSTS": hosts})


def case_shipped_closures(hosts):
    # A closure over 1 MiB shipped by dcall to 64 chunks and by the
    # Executor: to a rank of the same host through shared memory, to
    # another host by value once; every result right.
    with cv.Messenger() as m:
        table = np.random.default_rng(7).random(N)
        before = sent_bytes(m)
        with m.driver() as d:
            if d is not None:
                x = d.array(np.arange(6400.0), chunks=[100] * 64)
                y = d.dcall(lambda v: v + table[: len(v)], x)
                expected = np.arange(6400.0) + np.tile(table[:100], 64)
                assert np.allclose(np.asarray(y), expected)
                del x, y
        m.wait_quiet()
        if m.rank == 0:
            cost = sent_bytes(m) - before
            others = m.size - len(m.host_ranks)  # ranks of other hosts get it by value
            assert others * table.nbytes <= cost < others * table.nbytes + 256 * 1024, cost
            pool = cv.Executor(m, ranks=range(m.size))
            assert list(pool.map(lambda k: table[k], range(8))) == list(table[:8])
        m.wait_quiet()


@pytest.mark.parametrize(("n", "hosts"), [(3, "1"), (4, "2")])
def test_shipped_closures(mpirun, n, hosts):
    mpirun(n, case_shipped_closures, hosts, env={"CONVEYOR_HOSTS": hosts})


def case_shipped_past_the_lists():
    # More distinct large functions than a pair's list holds go to rank 1,
    # by the Executor and as chunk tasks, while it sits in a plain MPI
    # barrier: the first ones leave the sender's lists before rank 1 has
    # mapped them, and their files must stay until it has.
    from conveyor._chunks import layer_of
    from conveyor._pickling import dumps
    from conveyor._shipping import CAPACITY, SHARE_BYTES

    count = CAPACITY + 8
    with cv.Messenger() as m:
        layer = layer_of(m)
        if m.rank == 0:
            tables = [np.full(SHARE_BYTES // 8, k, dtype=np.float64) for k in range(count)]
            pool = cv.Executor(m, ranks=[1])
            futures = [pool.submit(lambda t=t: float(t[0])) for t in tables]
            refs = [
                layer.submit(1, 1, None, dumps(lambda _, t=t: t[:1]), [("value", 0)])
                for t in tables
            ]
        world().Barrier()
        if m.rank == 0:
            assert [f.result(timeout=60) for f in futures] == [float(k) for k in range(count)]
            got = [read_rows(m, ref, 0, 1) for ref in refs]
            assert [float(value[0]) for value in got] == [float(k) for k in range(count)]
            del refs, got
        m.wait_quiet()
        if m.rank == 0:
            # Every hold was let go: only the digests still in the lists keep files.
            for shipped in (m._executor_service._shipped, layer._shipped):
                assert not shipped._unmapped
                assert len(shipped._segments) == CAPACITY
        m.wait_quiet()


def test_shipped_past_the_lists(mpirun):
    mpirun(2, case_shipped_past_the_lists)
