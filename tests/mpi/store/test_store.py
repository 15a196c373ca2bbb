"""Item stores, fetch and third-party orders (Transfer, Copy, Move), at 1 to 4 ranks.

Local store semantics run in the test process (a `cv.Store` needs no MPI);
everything else runs under mpiexec with a timeout. Roles are ``rank % size``
so that every case runs at any rank count: the giver of an order is rank 0,
the holder b is ``1 % size`` and the destination c is ``2 % size`` (at two
ranks the giver is also a destination, at one rank all three are one rank).
No assertion depends on timing.
"""

import numpy as np
import pytest

import conveyor as cv

from _helpers import no_state_left, peak_rss_mib, world

MiB = 1 << 20


def roles(m):
    """(giver, holder b, destination c) for this rank count."""
    return 0, 1 % m.size, 2 % m.size


# -- the local store -----------------------------------------------------------


def test_put_get_delete_replace():
    store = cv.Store()
    assert len(store) == 0 and store.nbytes == 0 and store.capacity is None
    assert list(store.keys()) == [] and "a" not in store
    a = np.arange(10, dtype=np.int64)
    store.put("a", a)
    assert store.get("a") is a and store["a"] is a and "a" in store
    assert store.get("missing") is None and store.get("missing", 3) == 3
    store["kmers/19123890"] = b"ACGT"
    assert sorted(store.keys()) == ["a", "kmers/19123890"] and len(store) == 2
    assert sorted(store) == ["a", "kmers/19123890"]
    # Replacing keeps one entry.
    store.put("a", "replaced")
    assert store["a"] == "replaced" and len(store) == 2
    store.delete("a")
    assert "a" not in store and len(store) == 1
    del store["kmers/19123890"]
    assert len(store) == 0 and store.nbytes == 0
    with pytest.raises(KeyError):
        store.delete("a")
    with pytest.raises(KeyError):
        del store["a"]
    with pytest.raises(KeyError):
        store["a"]
    assert "store" in repr(store).lower()


def test_nbytes_accounting():
    store = cv.Store()
    arr = np.zeros((3, 5), dtype=np.float32)  # 60 bytes
    store.put("arr", arr)
    assert store.nbytes == 60
    store.put("bytes", b"x" * 11)
    store.put("bytearray", bytearray(7))
    store.put("view", memoryview(b"abcd"))
    assert store.nbytes == 60 + 11 + 7 + 4
    # Other values count 8; containers the sum of their items.
    for name, value in [("int", 12345), ("float", 1.5), ("none", None), ("bool", True)]:
        before = store.nbytes
        store.put(name, value)
        assert store.nbytes == before + 8, name
    before = store.nbytes
    store.put("list", [np.ones(4, dtype=np.uint8), b"12", 7])
    assert store.nbytes == before + 4 + 2 + 8
    before = store.nbytes
    store.put("tuple", (np.ones(2, dtype=np.float64), (b"abc", None)))
    assert store.nbytes == before + 16 + 3 + 8
    before = store.nbytes
    store.put("dict", {1: np.ones(3, dtype=np.int16), 2: [b"zz"]})
    assert store.nbytes == before + (8 + 6) + (8 + 2)
    # A strided view counts the bytes it holds.
    before = store.nbytes
    store.put("strided", np.arange(100, dtype=np.int64)[::10])
    assert store.nbytes == before + 80
    # Replacing counts the new item instead of the old one.
    before = store.nbytes
    store.put("arr", np.zeros(1000, dtype=np.uint8))
    assert store.nbytes == before - 60 + 1000
    store.put("arr", b"")
    assert store.nbytes == before - 60
    # Deleting subtracts exactly what the item counted.
    total = store.nbytes
    store.delete("dict")
    assert store.nbytes == total - 24
    # The MutableMapping methods keep the count too.
    store.pop("list")
    store.update({"u": b"123"})
    assert store.nbytes == total - 24 - 14 + 3
    store.clear()
    assert store.nbytes == 0 and len(store) == 0


def test_capacity_refuses_beyond_it():
    store = cv.Store(capacity=100)
    assert store.capacity == 100
    store.put("a", np.zeros(60, dtype=np.uint8))
    with pytest.raises(cv.StoreFullError) as info:
        store.put("b", np.zeros(41, dtype=np.uint8))
    err = info.value
    assert isinstance(err, cv.ConveyorError) and isinstance(err, MemoryError)
    assert "b" not in store and store.nbytes == 60 and len(store) == 1
    store.put("b", np.zeros(40, dtype=np.uint8))  # exactly full is fine
    assert store.nbytes == 100
    store.put("c", b"")  # nothing more
    # Replacing counts the replaced item as freed...
    store.put("a", np.zeros(50, dtype=np.uint8))
    assert store.nbytes == 90
    store.put("a", np.zeros(60, dtype=np.uint8))
    # ...and a refused replacement leaves the old item in place.
    old = store["a"]
    with pytest.raises(cv.StoreFullError):
        store.put("a", np.zeros(61, dtype=np.uint8))
    assert store["a"] is old and store.nbytes == 100
    with pytest.raises(cv.StoreFullError):
        store["d"] = 1
    assert "d" not in store
    # Deleting makes room; lowering the capacity refuses later puts only.
    store.delete("b")
    store.put("d", 1)
    store.capacity = 10
    assert store.nbytes == 68 and "a" in store
    with pytest.raises(cv.StoreFullError):
        store.put("e", 1)
    store.capacity = None
    store.put("e", np.zeros(10_000, dtype=np.uint8))
    assert store.nbytes == 68 + 10_000
    with pytest.raises(ValueError):
        store.capacity = -1
    with pytest.raises(TypeError):
        store.capacity = 1.5
    assert cv.Store(capacity=0).capacity == 0


def test_bad_names():
    store = cv.Store()
    for bad, error in [("", ValueError), (5, TypeError), (None, TypeError), (b"x", TypeError)]:
        with pytest.raises(error):
            store.put(bad, 1)
        with pytest.raises(error):
            store[bad] = 1
    assert len(store) == 0 and store.nbytes == 0
    for bad, error in [("", ValueError), (3, TypeError)]:
        with pytest.raises(error):
            cv.Copy(bad, to=0)
        with pytest.raises(error):
            cv.Move("x", to=0, as_name=bad)


# -- fetch -------------------------------------------------------------------


def case_fetch_from_every_rank():
    with cv.Messenger() as m:
        assert isinstance(m.store, cv.Store) and len(m.store) == 0
        small = np.arange(10, dtype=np.int32) * (m.rank + 1)
        large = np.full(300_000, m.rank, dtype=np.float64)  # travels zero-copy
        m.store.put("small", small)
        m.store.put("large", large)
        m.store.put(f"mixed/{m.rank}", {"rank": m.rank, "data": [b"abc", 1.5, None]})
        before = (sorted(m.store), m.store.nbytes)
        m.wait_quiet()  # every rank has its items
        for peer in range(m.size):  # self included
            got = m.fetch(peer, "small").result(timeout=20)
            assert got.dtype == np.int32 and np.array_equal(got, np.arange(10) * (peer + 1))
            got = m.fetch(peer, "large").result(timeout=20)
            assert got.shape == (300_000,) and (got == peer).all()
            got = m.fetch(peer, f"mixed/{peer}").result(timeout=20)
            assert got == {"rank": peer, "data": [b"abc", 1.5, None]}
            with pytest.raises(cv.RemoteError) as info:
                m.fetch(peer, "absent").result(timeout=20)
            assert info.value.remote_type == "KeyError" and info.value.rank == peer
            assert "absent" in info.value.remote_message
        # A fetch is a copy, even from this rank itself.
        mine = m.fetch(m.rank, "small").result(timeout=20)
        assert mine is not small and not np.shares_memory(mine, small)
        mine[:] = -1
        assert np.array_equal(m.store["small"], np.arange(10) * (m.rank + 1))
        # Bad names and ranks fail at once.
        with pytest.raises(ValueError):
            m.fetch(0, "")
        with pytest.raises(TypeError):
            m.fetch(0, 7)
        with pytest.raises(ValueError):
            m.fetch(m.size, "small")
        with pytest.raises(TypeError):
            m.fetch("0", "small")
        m.wait_quiet()
        assert (sorted(m.store), m.store.nbytes) == before  # fetching takes nothing away
        no_state_left(m)


def test_fetch_from_every_rank(mpirun, nranks):
    mpirun(nranks, case_fetch_from_every_rank)


# -- orders --------------------------------------------------------------------


def case_copy_move_transfer():
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        arr = np.arange(200_000, dtype=np.int64)  # large: zero-copy b -> c
        if m.rank == b:
            m.store.put("big", arr * 3)
            m.store.put("small", [1, "two", b"three"])
        m.wait_quiet()
        if m.rank == giver:
            done = m.order(b, cv.Copy("big", to=c, as_name="big/copy")).result(timeout=30)
            assert done == {"name": "big/copy", "to": [c], "bytes": arr.nbytes}
            done = m.order(b, cv.Transfer("small", to=c)).result(timeout=30)
            assert done == {"name": "small", "to": [c], "bytes": 8 + 3 + 5}
            # Copy and Transfer keep the item at b; the destinations hold it.
            assert np.array_equal(m.fetch(b, "big").result(timeout=30), arr * 3)
            assert np.array_equal(m.fetch(c, "big/copy").result(timeout=30), arr * 3)
            assert m.fetch(c, "small").result(timeout=30) == [1, "two", b"three"]
            # Move: at c under a new name, gone at b.
            done = m.order(b, cv.Move("big", to=c, as_name="big/moved")).result(timeout=30)
            assert done == {"name": "big/moved", "to": [c], "bytes": arr.nbytes}
            assert np.array_equal(m.fetch(c, "big/moved").result(timeout=30), arr * 3)
            if b != c:
                with pytest.raises(cv.RemoteError) as info:
                    m.fetch(b, "big").result(timeout=30)
                assert info.value.remote_type == "KeyError"
        m.wait_quiet()
        if m.rank == c:
            assert np.array_equal(m.store["big/copy"], arr * 3)
            assert np.array_equal(m.store["big/moved"], arr * 3)
            assert m.store["small"] == [1, "two", b"three"]
            # A stored copy is writable and independent of b's item.
            m.store["big/copy"][0] = -5
            assert m.store["big/moved"][0] == 0
        if m.rank == b:
            assert "small" in m.store
            if b != c:
                assert "big" not in m.store
                assert sorted(m.store) == ["small"]
                assert m.store.nbytes == 16
        no_state_left(m)


def test_copy_move_transfer(mpirun, nranks):
    mpirun(nranks, case_copy_move_transfer)


def case_fan_out():
    # One item to every rank at once: the holder b and the giver included.
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        arr = np.arange(100_000, dtype=np.float64) + 0.5
        if m.rank == b:
            m.store.put("x", arr)
            m.store.put("y", b"y" * 50_000)
            m.store.put("z", np.ones((3, 4), dtype=np.int16))
        m.wait_quiet()
        everyone = list(range(m.size))
        if m.rank == giver:
            # A Copy to every rank under the same name (b replaces its own item).
            done = m.order(b, cv.Copy("x", to=everyone)).result(timeout=30)
            assert done == {"name": "x", "to": everyone, "bytes": arr.nbytes}
            # A Transfer to a tuple of ranks, under a new name.
            done = m.order(b, cv.Transfer("y", to=tuple(everyone), as_name="y2")).result(timeout=30)
            assert done["to"] == everyone and done["name"] == "y2" and done["bytes"] == 50_000
            # A Move to several ranks, b not among them: gone at b once all hold it.
            others = [r for r in everyone if r != b] or [b]
            done = m.order(b, cv.Move("z", to=others, as_name="z2")).result(timeout=30)
            assert done["to"] == others
            # The giver holds what it was sent.
            assert np.array_equal(m.store["x"], arr)
            assert m.store["y2"] == b"y" * 50_000
            for r in everyone:
                assert np.array_equal(m.fetch(r, "x").result(timeout=30), arr)
        m.wait_quiet()
        assert np.array_equal(m.store["x"], arr) and m.store["y2"] == b"y" * 50_000
        if m.rank != b or m.size == 1:
            assert np.array_equal(m.store["z2"], np.ones((3, 4), dtype=np.int16))
        if m.rank == b and m.size > 1:
            assert "z" not in m.store and "z2" not in m.store
            assert sorted(m.store) == ["x", "y", "y2"]
        no_state_left(m)


def test_fan_out(mpirun, nranks):
    mpirun(nranks, case_fan_out)


def case_move_to_itself_keeps_item():
    # A Move whose destinations include the holder b itself, under the same
    # name: b is a destination, so b must hold the item afterwards (the future
    # resolves "once every destination holds the item").
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        if m.rank == b:
            m.store.put("self", np.arange(1000))
            m.store.put("fan", np.arange(1000))
        m.wait_quiet()
        if m.rank == giver:
            m.order(b, cv.Move("self", to=b)).result(timeout=30)
            m.order(b, cv.Move("fan", to=sorted({b, c}))).result(timeout=30)
        m.wait_quiet()
        if m.rank in (b, c):
            assert "fan" in m.store, f"rank {m.rank}: Move to [{b}, {c}] lost the item at {b}"
        if m.rank == b:
            assert "self" in m.store, f"rank {b}: Move('self', to={b}) deleted the item everywhere"
            assert np.array_equal(m.store["self"], np.arange(1000))


def test_move_to_itself_keeps_item(mpirun, nranks):
    mpirun(nranks, case_move_to_itself_keeps_item)


def case_then_follows_completion():
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        seen = []

        @m.on("ready")
        def ready(msg):
            # Sent by b once the order completed: the item is already here.
            name, kind = msg.payload
            item = m.store.get(name)
            seen.append((msg.source, name, kind, None if item is None else int(item.sum())))

        @m.on("gone")
        def gone(msg):
            # A Move's follow-up to b itself: the item is deleted by then.
            seen.append(("gone", msg.payload, msg.payload in m.store))

        @m.on("ready_giver")
        def ready_giver(msg):
            # At the giver, before the order's answer: c already holds it.
            seen.append(("giver", m.fetch(c, msg.payload).result(timeout=20).sum()))

        arr = np.ones(50_000, dtype=np.int64)
        if m.rank == b:
            for i in range(3):
                m.store.put(f"item/{i}", arr * (i + 1))
        m.wait_quiet()
        if m.rank == giver:
            m.order(
                b, cv.Copy("item/0", to=c, as_name="then/0", then=(c, "ready", ("then/0", "copy")))
            ).result(timeout=30)
            m.order(
                b, cv.Move("item/1", to=c, as_name="then/1", then=(c, "ready", ("then/1", "move")))
            ).result(timeout=30)
            if b != c:
                m.order(b, cv.Move("item/2", to=c, then=(b, "gone", "item/2"))).result(timeout=30)
            # The follow-up reaches the giver before the answer does.
            done = m.order(
                b, cv.Copy("item/0", to=c, as_name="then/3", then=(giver, "ready_giver", "then/3"))
            )
            done.result(timeout=30)
            assert seen[-1] == ("giver", arr.sum()), seen
        m.wait_quiet()
        if m.rank == c:
            mine = [s for s in seen if s[0] == b]
            assert mine == [
                (b, "then/0", "copy", arr.sum()),
                (b, "then/1", "move", 2 * arr.sum()),
            ], seen
        if m.rank == b and b != c:
            assert ("gone", "item/2", False) in seen, seen
        no_state_left(m)


def test_then_follows_completion(mpirun, nranks):
    mpirun(nranks, case_then_follows_completion)


def case_cascade_of_orders(hops):
    # Each hop's follow-up message makes the receiving rank order the next
    # Move, around the ring; orders also given to third parties from handlers.
    hops = int(hops)
    with cv.Messenger() as m:
        futures = []
        arrived = []
        token = np.arange(40_000, dtype=np.int64)  # large enough to go zero-copy

        @m.on("arrived")
        def on_arrived(msg):
            hop = msg.payload
            arrived.append(hop)
            assert f"token/{hop}" in m.store
            if hop < hops:
                nxt = (m.rank + 1) % m.size
                futures.append(
                    m.order(
                        m.rank,
                        cv.Move(
                            f"token/{hop}",
                            to=nxt,
                            as_name=f"token/{hop + 1}",
                            then=(nxt, "arrived", hop + 1),
                        ),
                    )
                )

        @m.on("relay")
        def relay(msg):
            # A handler ordering two other ranks: b copies to c.
            b, c, name = msg.payload
            futures.append(m.order(b, cv.Copy(name, to=c, as_name=f"{name}@{c}")))

        if m.rank == 0:
            m.store.put("token/0", token)
            m.send(0, "arrived", 0)
        m.store.put(f"mine/{m.rank}", np.full(30_000, m.rank))
        m.wait_quiet()
        total = world().allreduce(len(arrived))
        assert total == hops + 1, total
        holder = hops % m.size
        names = [k for k in m.store if k.startswith("token/")]
        assert names == ([f"token/{hops}"] if m.rank == holder else []), names
        if m.rank == holder:
            assert np.array_equal(m.store[f"token/{hops}"], token)
        for f in futures:
            assert f.done() and f.result()["to"] == [(m.rank + 1) % m.size]
        futures.clear()
        # Every rank has a handler order rank r+1 to copy its item to rank r+2.
        b, c = (m.rank + 1) % m.size, (m.rank + 2) % m.size
        m.send(m.rank, "relay", (b, c, f"mine/{b}"))
        m.wait_quiet()
        assert len(futures) == 1 and futures[0].result()["to"] == [c]
        src = (m.rank - 1) % m.size  # ordered by rank - 2
        assert np.array_equal(m.store[f"mine/{src}@{m.rank}"], np.full(30_000, src))
        no_state_left(m)


def test_cascade_of_orders(mpirun, nranks):
    mpirun(nranks, case_cascade_of_orders, 25)


# -- errors --------------------------------------------------------------------


def case_order_errors():
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        if m.rank == b:
            m.store.put("a", np.arange(10))
        m.wait_quiet()
        if m.rank == giver:
            # b lacks the item: a RemoteError from b.
            with pytest.raises(cv.RemoteError) as info:
                m.order(b, cv.Copy("absent", to=c)).result(timeout=30)
            assert info.value.remote_type == "KeyError" and info.value.rank == b
            assert "absent" in info.value.remote_message
            with pytest.raises(cv.RemoteError) as info:
                m.order(b, cv.Move("absent", to=[c, giver])).result(timeout=30)
            assert info.value.remote_type == "KeyError"

            # Out of range: ValueError at once, nothing sent.
            stats = m.stats()
            out_of_range = [
                lambda: m.order(m.size, cv.Copy("a", to=c)),
                lambda: m.order(-1, cv.Copy("a", to=c)),
                lambda: m.order(b, cv.Copy("a", to=m.size)),
                lambda: m.order(b, cv.Move("a", to=[c, m.size + 3])),
                lambda: m.order(b, cv.Transfer("a", to=-1)),
                lambda: m.order(b, cv.Copy("a", to=c, then=(m.size, "t", None))),
                lambda: cv.Copy("a", to=[]),
            ]
            for call in out_of_range:
                with pytest.raises(ValueError):
                    call()
            # Wrong types: TypeError at once, nothing sent.
            wrong_types = [
                lambda: m.order(b, "a"),
                lambda: m.order(b, {"name": "a", "to": c}),
                lambda: m.order("1", cv.Copy("a", to=c)),
                lambda: m.order(1.0, cv.Copy("a", to=c)),
                lambda: m.order(b, cv.Copy),
                lambda: cv.Copy("a", to="1"),
                lambda: cv.Copy("a", to=1.5),
                lambda: cv.Copy("a", to=[c, None]),
                lambda: cv.Copy(5, to=c),
                lambda: cv.Copy("a", to=c, as_name=5),
                lambda: cv.Copy("a", to=c, then=[c, "t", None]),
                lambda: cv.Copy("a", to=c, then=(c, "t")),
                lambda: cv.Copy("a", to=c, then=(c, 5, None)),
                lambda: cv.Copy("a", to=c, then=("1", "t", None)),
            ]
            for call in wrong_types:
                with pytest.raises(TypeError):
                    call()
            after = m.stats()
            for key in ("messages_sent", "frames_sent", "pending_requests"):
                assert after[key] == stats[key], (key, stats[key], after[key])
            # Nothing disturbed: orders still work.
            done = m.order(b, cv.Copy("a", to=c, as_name="a/after")).result(timeout=30)
            assert done["name"] == "a/after"
        m.wait_quiet()
        if m.rank == c:
            assert np.array_equal(m.store["a/after"], np.arange(10))
        if m.rank == b:
            assert np.array_equal(m.store["a"], np.arange(10))
        no_state_left(m)


def test_order_errors(mpirun, nranks):
    mpirun(nranks, case_order_errors)


def case_refused_by_capacity():
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        item = np.arange(5000, dtype=np.int64)  # 40000 bytes
        if m.rank == b:
            m.store.put("item", item)
            m.store.put("tiny", 7)
        m.wait_quiet()
        if m.rank == c:
            m.store.put("filler", b"f" * 100)
            m.store.capacity = m.store.nbytes + 1000  # room for small items only
        before = (sorted(m.store), m.store.nbytes)
        m.wait_quiet()
        if m.rank == giver:
            for order in (
                cv.Copy("item", to=c, as_name="refused"),
                cv.Move("item", to=c, as_name="refused"),
                cv.Transfer("item", to=[c], as_name="refused"),
            ):
                with pytest.raises(cv.RemoteError) as info:
                    m.order(b, order).result(timeout=30)
                err = info.value
                assert err.remote_type == "StoreFullError", err
                assert err.remote_message.startswith(f"rank {c}: "), err.remote_message
                assert err.rank == b
            # The item is still at b (the Move did not delete it).
            assert np.array_equal(m.fetch(b, "item").result(timeout=30), item)
            # A fan-out where only c refuses fails too, and the Move keeps the item.
            others = [r for r in range(m.size) if r != c]
            if others:
                with pytest.raises(cv.RemoteError) as info:
                    m.order(b, cv.Move("item", to=others + [c], as_name="half")).result(timeout=30)
                assert info.value.remote_type == "StoreFullError"
                assert info.value.remote_message.startswith(f"rank {c}: ")
            assert np.array_equal(m.fetch(b, "item").result(timeout=30), item)
            # A small item still fits at c: the refusal disturbed nothing.
            m.order(b, cv.Copy("tiny", to=c)).result(timeout=30)
        m.wait_quiet()
        if m.rank == c:
            assert "refused" not in m.store and "half" not in m.store
            assert m.store["tiny"] == 7
            if m.rank != b:
                assert (sorted(m.store), m.store.nbytes) == (
                    sorted(before[0] + ["tiny"]),
                    before[1] + 8,
                )
        if m.rank == b:
            assert np.array_equal(m.store["item"], item)
        no_state_left(m)
        m.store.capacity = None


def test_refused_by_capacity(mpirun, nranks):
    mpirun(nranks, case_refused_by_capacity)


def test_then_with_empty_tag_is_refused_at_once():
    # then=(rank, "", payload) names no receiver (m.send(rank, "") raises
    # ValueError): it should be refused when the order is made.
    with pytest.raises(ValueError):
        cv.Copy("a", to=0, then=(0, "", None))
    with pytest.raises(ValueError):
        cv.Move("a", to=[0], then=(0, "", 1))


def case_then_with_empty_tag():
    # If such an order is accepted, it must at least fail at the giver
    # rather than never be answered.
    with cv.Messenger() as m:
        giver, b, c = roles(m)
        if m.rank == b:
            m.store.put("a", 1)
        m.wait_quiet()
        if m.rank == giver:
            try:
                order = cv.Copy("a", to=c, then=(c, "", None))
            except ValueError:
                pass
            else:
                future = m.order(b, order)
                try:
                    future.result(timeout=5)  # a hang guard: answers take milliseconds
                except cv.TimeoutError:
                    raise AssertionError(
                        f"an order with then=({c}, '', None) was accepted by rank {b} "
                        "and never answered"
                    ) from None
                except (cv.RemoteError, ValueError):
                    pass
        m.wait_quiet()


def test_then_with_empty_tag_never_hangs(mpirun):
    mpirun(2, case_then_with_empty_tag)


# -- a large array never passes through the giver --------------------------------


def case_large_array_bypasses_giver(size_mib):
    n = int(size_mib) * MiB
    with cv.Messenger() as m:
        giver, b, c = 0, 1, 2
        if m.rank == b:
            data = np.ones(n, dtype=np.uint8)
            data[::4096] = 5
            data[-1] = 9
            m.store.put("big", data)
        m.wait_quiet()
        before_rss = peak_rss_mib()
        before = m.stats()
        world().Barrier()
        if m.rank == giver:
            done = m.order(b, cv.Copy("big", to=c, as_name="big/at-c")).result(timeout=60)
            assert done == {"name": "big/at-c", "to": [c], "bytes": n}
        m.wait_quiet()
        grown = peak_rss_mib() - before_rss
        after = m.stats()
        delta = {
            k: after[k] - before[k]
            for k in ("bytes_zero_copy_received", "bytes_zero_copy_sent", "bytes_framed")
        }
        if m.rank == giver:
            assert grown < int(size_mib) / 4, f"the giver grew by {grown:.0f} MiB"
            assert delta["bytes_zero_copy_received"] == 0, delta
            assert delta["bytes_zero_copy_sent"] == 0, delta
            assert delta["bytes_framed"] < 64 * 1024, delta
            assert "big/at-c" not in m.store and len(m.store) == 0
        elif m.rank == b:
            assert delta["bytes_zero_copy_sent"] == n, delta  # from the stored array itself
            assert grown < int(size_mib) / 4, f"the holder grew by {grown:.0f} MiB"
        elif m.rank == c:
            assert delta["bytes_zero_copy_received"] == n, delta
            assert grown < 1.5 * int(size_mib), f"the destination grew by {grown:.0f} MiB"
            arr = m.store["big/at-c"]
            assert arr.shape == (n,) and arr.dtype == np.uint8
            assert arr[0] == 5 and arr[1] == 1 and arr[4096] == 5 and arr[-1] == 9
            assert int(arr.sum(dtype=np.uint64)) == n + 4 * len(range(0, n, 4096)) + 8
            assert m.store.nbytes == n
        else:
            assert delta["bytes_zero_copy_received"] == 0 and len(m.store) == 0
        no_state_left(m)


@pytest.mark.parametrize("n", [3, 4])
def test_large_array_bypasses_giver(mpirun, n):
    mpirun(n, case_large_array_bypasses_giver, 64, timeout=120)
