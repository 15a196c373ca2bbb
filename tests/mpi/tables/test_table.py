"""Distributed key-value tables (``m.table(name)``), at 1, 2 and 4 ranks.

The key encoding and its stable hash run in the test process (no MPI), the
hash also in subprocesses with other ``PYTHONHASHSEED`` values; everything
else runs under mpiexec with a timeout. Roles are ``rank % size`` so that
every case runs at any rank count. The home of a key is found with the
same stable hash the table uses, and a home's state is read with
``Table.local_keys`` and ``Table.local_waiters``, gathered with mpi4py.
No assertion depends on timing.
"""

import asyncio
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor as cv
from conveyor._table import decode_key, encode_key, key_hash

from _helpers import no_state_left, same, world


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"np{n}")
def nranks(request):
    return request.param


def home(m, key):
    return key_hash(key) % m.size


def nothing_left(m, t):
    """Collective: once quiet, no wait held at any home, no pending future, no open request."""
    m.wait_quiet()
    assert gather_waiters(t) == {}
    no_state_left(m)


def gather_waiters(t):
    """Every rank's ``t.local_waiters()``, merged (each key has one home).

    A blocking collective: call it after ``wait_quiet``, when no rank waits
    for an answer from another.
    """
    merged = {}
    for rank, held in enumerate(world().allgather(t.local_waiters())):
        for key, count in held.items():
            assert key not in merged, f"{key!r} held at two ranks"
            merged[key] = (rank, count)
    return merged


# -- keys and their stable hash (no MPI) ---------------------------------------

# Pinned: every rank of a job, and every version of conveyor that may share a
# job, must agree on where a key lives.
GOLDEN = {
    "": 15009090075157645810,
    "a": 3130085533711925463,
    b"a": 10986622752813340138,
    0: 8925716595711816590,
    -1: 5783567003227887450,
    2**70: 5854123385169544073,
    ("chunk", 7): 1784478890329991878,
    (("x",), b"y", -3): 1661158390329841129,
    "ü/€": 5513002950208411424,
}


def test_stable_hash_is_pinned():
    assert {k: key_hash(k) for k in GOLDEN} == GOLDEN


HASH_SCRIPT = """
import json, sys
from conveyor._table import key_hash
keys = [("chunk", i) for i in range(50)] + ["a", b"a", 12345, -(2**70), (("x",), b"y")]
print(json.dumps({"table": [key_hash(k) for k in keys], "builtin": hash("chunk")}))
"""


def test_stable_hash_same_in_other_processes():
    keys = [("chunk", i) for i in range(50)] + ["a", b"a", 12345, -(2**70), (("x",), b"y")]
    here = [key_hash(k) for k in keys]
    runs = {}
    for seed in ("1", "2", "random"):
        proc = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert proc.returncode == 0, proc.stderr
        runs[seed] = json.loads(proc.stdout)
        assert runs[seed]["table"] == here, seed
    # The seeds do change Python's own hash: a table using it would fail above.
    assert runs["1"]["builtin"] != runs["2"]["builtin"]
    # The hash spreads keys over ranks.
    for size in (2, 3, 4):
        assert len({h % size for h in here}) == size


def test_key_encoding():
    # Equal keys encode equally; numpy integers are ints, namedtuples tuples.
    Point = collections.namedtuple("Point", "x y")
    assert encode_key(np.int64(5)) == encode_key(5) == encode_key(np.uint8(5))
    assert encode_key(Point(1, "a")) == encode_key((1, "a"))
    # Different keys encode differently, whatever their printed forms.
    distinct = [
        "1",
        b"1",
        1,
        (1,),
        ((1,),),
        ("ab",),
        ("a", "b"),
        "",
        b"",
        (),
        ((),),
        ("a", ("b",)),
        (("a",), "b"),
        0,
        -1,
        255,
        -256,
        2**64,
        -(2**64),
        "\udcff",
    ]
    assert len({encode_key(k) for k in distinct}) == len(distinct)
    for key in distinct:
        decoded = decode_key(encode_key(key))
        assert decoded == key and type(decoded) is type(key), key
    for bad in (
        1.5,
        None,
        True,
        False,
        [1],
        {"a": 1},
        bytearray(b"x"),
        memoryview(b"x"),
        np.float64(1),
        np.bool_(True),
        object(),
        ("ok", 1.5),
        ("ok", [1]),
        (("ok",), None),
    ):
        with pytest.raises(TypeError):
            encode_key(bad)


keys = st.recursive(
    st.text() | st.binary() | st.integers(),
    lambda inner: st.lists(inner, max_size=4).map(tuple),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(keys, keys)
def test_key_encoding_round_trips(a, b):
    assert decode_key(encode_key(a)) == a
    assert (encode_key(a) == encode_key(b)) == (a == b)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_malformed_encoding_is_a_value_error(data):
    try:
        decode_key(data)
    except ValueError:
        pass


# -- put, get, overwrite, delete, bad keys -------------------------------------


def published(rank):
    """The keys and values rank `rank` puts."""
    return {
        ("chunk", rank): {"state": "resolved", "size": 10 * rank, "owner": rank},
        f"str/{rank}": "text",
        b"bytes/%d" % rank: b"\x00\xff",
        rank * 1000 + 7: None,
        -(2**70) - rank: [1, 2.5],
        ("nested", (rank, b"x", ("deep", -1))): (1, "two"),
        ("array", rank): np.arange(100_000, dtype=np.float64) * (rank + 1),  # zero-copy
        ("grid", rank): np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2],  # strided
        ("records", rank): np.array([(rank, 1.5)], dtype=[("id", "<i8"), ("w", "<f4")]),
    }


def case_put_get_everywhere():
    with cv.Messenger() as m:
        t = m.table("facts")
        assert m.table("facts") is t and t.name == "facts" and "facts" in repr(t)
        assert m.table("other") is not t and isinstance(t, cv.Table)
        with pytest.raises(AttributeError):
            t.name = "renamed"
        for f in [t.put(k, v) for k, v in published(m.rank).items()]:
            assert f.result(timeout=20) is None
        if m.rank == 0:
            for i in range(10_000, 10_200):  # enough keys to reach every rank
                t.put(i, i * i)
        m.wait_quiet()

        # Every rank reads every rank's keys, its own included.
        for r in range(m.size):
            for key, value in published(r).items():
                assert same(t.get(key).result(timeout=20), value)
        assert t.get(np.int64(7)).result(timeout=20) is None  # rank 0's int key 7
        assert t.get(10_199).result(timeout=20) == 10_199**2
        # Each key is stored once, at its home; every rank is home to some.
        m.wait_quiet()  # every rank's gets are answered: now a blocking allgather is safe
        mine = t.local_keys()
        assert all(home(m, k) == m.rank for k in mine), mine
        everything = [k for held in world().allgather(mine) for k in held]
        expected = [k for r in range(m.size) for k in published(r)] + list(range(10_000, 10_200))
        assert sorted(map(repr, everything)) == sorted(map(repr, expected))
        assert len(mine) > 0
        assert m.table("other").local_keys() == []
        m.wait_quiet()

        # A wait on a key already set resolves without any put, and is not held.
        waited = t.wait(("chunk", (m.rank + 1) % m.size)).result(timeout=20)
        assert waited["owner"] == (m.rank + 1) % m.size
        assert same(
            t.wait(("array", m.rank)).result(timeout=20), published(m.rank)[("array", m.rank)]
        )
        m.wait_quiet()
        assert t.local_waiters() == {}

        # Overwrite: the new value replaces the old one (still one entry).
        count = len(t.local_keys())
        m.wait_quiet()
        fact = {"state": "error", "size": -1, "owner": m.rank}
        assert t.put(("chunk", m.rank), fact).result(timeout=20) is None
        m.wait_quiet()
        for r in range(m.size):
            assert t.get(("chunk", r)).result(timeout=20)["state"] == "error"
        assert len(t.local_keys()) == count

        # Delete, then get, wait and delete again: the key is gone everywhere.
        m.wait_quiet()
        if m.rank == 0:
            for r in range(m.size):
                assert t.delete(f"str/{r}").result(timeout=20) is None
                for call in (t.get, t.delete):
                    with pytest.raises(cv.RemoteError) as info:
                        call(f"str/{r}").result(timeout=20)
                    err = info.value
                    assert err.remote_type == "KeyError" and err.rank == home(m, f"str/{r}")
                    assert f"str/{r}" in err.remote_message and "facts" in err.remote_message
        m.wait_quiet()
        for r in range(m.size):
            with pytest.raises(cv.RemoteError, match="KeyError"):
                t.get(f"str/{r}").result(timeout=20)
        assert not any(isinstance(k, str) and k.startswith("str/") for k in t.local_keys())
        deleted_here = sum(home(m, f"str/{r}") == m.rank for r in range(m.size))
        assert len(t.local_keys()) == count - deleted_here
        # The same key in another table is another entry.
        other = m.table("other")
        other.put(("chunk", m.rank), "elsewhere").result(timeout=20)
        assert t.get(("chunk", m.rank)).result(timeout=20)["state"] == "error"

        # Bad keys, names and values: raised at the call, nothing sent.
        m.wait_quiet()
        stats = m.stats()
        for bad in (
            1.5,
            None,
            True,
            [1],
            {"a": 1},
            bytearray(b"x"),
            np.float64(1),
            object(),
            ("ok", 1.5),
            ("ok", [1]),
        ):
            for call in (lambda k: t.put(k, 1), t.get, t.wait, t.delete):
                with pytest.raises(TypeError):
                    call(bad)
        with pytest.raises(cv.CarriageError):
            t.put("fine", object())
        for bad, error in ((5, TypeError), (None, TypeError), (b"x", TypeError), ("", ValueError)):
            with pytest.raises(error):
                m.table(bad)
        after = m.stats()
        for key in ("messages_sent", "frames_sent", "pending_requests"):
            assert after[key] == stats[key], (key, stats[key], after[key])
        nothing_left(m, t)


# -- waits ---------------------------------------------------------------------


def case_wait_before_put():
    with cv.Messenger() as m:
        t = m.table("events")
        putter = 2 % m.size  # a third rank at 4 ranks
        waiters = [r for r in range(m.size) if r != putter] or [putter]
        key = ("ready", 42)
        mine = [t.wait(key) for _ in range(3)] if m.rank in waiters else []
        late = {i: t.wait(("late", i)) for i in range(10)}  # every rank, several homes
        m.wait_quiet()  # every wait has reached its home, which holds it
        assert not any(f.done() for f in mine + list(late.values()))
        held = gather_waiters(t)
        assert held[key] == (home(m, key), 3 * len(waiters)), held
        for i in range(10):
            assert held[("late", i)] == (home(m, ("late", i)), m.size), held
        assert len(held) == 11
        # The home answers only what is waited for: no waiter is a stray open request.
        assert m.stats()["open_requests"] == sum(n for r, n in held.values() if r == m.rank)

        m.wait_quiet()
        value = np.arange(50_000, dtype=np.int64)  # one large array to many waiters
        if m.rank == putter:
            assert t.put(key, value).result(timeout=20) is None
            for i in range(10):
                t.put(("late", i), i * i)
        for f in mine:
            assert same(f.result(timeout=20), value)
        for i, f in late.items():
            assert f.result(timeout=20) == i * i
        m.wait_quiet()
        assert t.local_waiters() == {}
        # Later waits on the set key resolve at once.
        assert same(t.wait(key).result(timeout=20), value)
        nothing_left(m, t)


def case_cancel_wait():
    with cv.Messenger() as m:
        t = m.table("cancel")
        doomed = [t.wait(("never", m.rank)), t.wait(("never", m.rank)), t.wait("shared")]
        kept = t.wait(("later", m.rank))
        m.wait_quiet()
        held = gather_waiters(t)
        for r in range(m.size):
            assert held[("never", r)] == (home(m, ("never", r)), 2)
            assert held[("later", r)] == (home(m, ("later", r)), 1)
        assert held["shared"] == (home(m, "shared"), m.size)

        for f in doomed:
            assert f.cancel() and f.cancelled() and f.done()
            with pytest.raises(cv.CancelledError):
                f.result()
        assert not kept.done()
        m.wait_quiet()
        # Nothing is left of the cancelled waits at their homes, and the kept ones stay.
        held = gather_waiters(t)
        assert held == {("later", r): (home(m, ("later", r)), 1) for r in range(m.size)}, held
        assert m.stats()["open_requests"] == sum(1 for r, _ in held.values() if r == m.rank)

        m.wait_quiet()
        # Putting the keys later answers nobody (no answer is even dropped).
        t.put(("never", m.rank), "late").result(timeout=20)
        t.put("shared", "late").result(timeout=20)
        t.put(("later", (m.rank + 1) % m.size), "now").result(timeout=20)
        assert kept.result(timeout=20) == "now"
        m.wait_quiet()
        stats = m.stats()
        assert stats["answers_cancelled"] == 0 and stats["late_answers"] == 0, stats
        # A wait cancelled after its answer came is not cancelled.
        done = t.wait("shared")
        assert done.result(timeout=20) == "late" and not done.cancel()
        nothing_left(m, t)


# -- handlers and asyncio ------------------------------------------------------


def case_from_handlers():
    # Handlers put and wait without blocking: callbacks carry the work on.
    with cv.Messenger() as m:
        t = m.table("handlers")
        acks = []

        @m.on("acker")
        def acker(msg):
            # Waits (in a callback) for a size another handler puts, then acks it.
            r, n = msg.payload
            t.wait(("size", r, n)).add_done_callback(
                lambda f: t.put(("ack", r, n), ("ok", f.result()))
            )

        @m.on("publish")
        def publish(msg):
            n = msg.payload
            t.put(("size", m.rank, n), n * 10)
            t.wait(("ack", m.rank, n)).add_done_callback(lambda f: acks.append(f.result()))

        @m.on("lookup")
        def lookup(msg):
            # A request answered from the table later: defer, reply in a callback.
            msg.defer()
            t.wait(msg.payload).add_done_callback(lambda f: msg.reply(f.result()))

        world().Barrier()  # every rank has its receivers
        nxt = (m.rank + 1) % m.size
        for n in range(5):
            m.send(nxt, "acker", (m.rank, n))
        for n in range(5):
            m.send(m.rank, "publish", n)
        answer = m.request(nxt, "lookup", ("size", m.rank, 4))
        assert answer.result(timeout=20) == 40
        nothing_left(m, t)
        assert sorted(acks) == [("ok", n * 10) for n in range(5)], acks


def case_asyncio():
    async def main():
        async with cv.Messenger() as m:
            t = m.table("aio")
            putter = (m.rank + 1) % m.size
            waiting = asyncio.ensure_future(t.wait(("aio", m.rank)))
            # A wait given up by asyncio (a timeout) is cancelled at its home.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(t.wait(("aio/never", m.rank)), 0.05)
            await m.aquiet()
            held = gather_waiters(t)
            assert held == {("aio", r): (home(m, ("aio", r)), 1) for r in range(m.size)}, held
            await m.aquiet()
            assert await t.put(("aio", (m.rank - 1) % m.size), np.arange(3) + m.rank) is None
            got = await waiting
            assert np.array_equal(got, np.arange(3) + putter)
            assert np.array_equal(await t.get(("aio", m.rank)), got)
            await m.aquiet()
            assert gather_waiters(t) == {}
            no_state_left(m)

    asyncio.run(main())


# -- every case at 1, 2 and 4 ranks --------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        case_put_get_everywhere,
        case_wait_before_put,
        case_cancel_wait,
        case_from_handlers,
        case_asyncio,
    ],
    ids=lambda case: case.__name__[len("case_") :],
)
def test_table_case(mpirun, nranks, case):
    mpirun(nranks, case)
