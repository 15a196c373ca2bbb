"""Sends, requests, receivers and termination detection, at 1 to 4 ranks."""

import numpy as np
import pytest

import conveyor as cv


def case_request_reply():
    with cv.Messenger() as m:

        @m.on("square")
        def square(msg):
            return msg.payload * msg.payload

        class Greeter(cv.Receiver):
            def receive(self, msg):
                msg.reply(f"hello {msg.payload} from {m.rank}")

        m.register("greeter", Greeter())
        for peer in range(m.size):
            assert m.request(peer, "square", m.rank + 3).result(timeout=10) == (m.rank + 3) ** 2
            answer = m.request(cv.Address(peer, "greeter"), m.rank).result(timeout=10)
            assert answer == f"hello {m.rank} from {peer}"


def test_request_reply(mpirun, nranks):
    mpirun(nranks, case_request_reply)


def case_request_opened_while_another_is():
    # The garbage collector may run while a request's Future is made, and a
    # finaliser there (a ChunkRef's, which tells the chunk's table that it
    # is gone) send a request of its own: each keeps its own answer.
    import conveyor._requests as requests_module

    with cv.Messenger() as m:

        @m.on("echo")
        def echo(msg):
            return msg.payload

        peer = (m.rank + 1) % m.size
        inner = []
        plain = requests_module.Future

        class Interrupted(plain):
            __slots__ = ()

            def __init__(self, *args):
                requests_module.Future = plain  # once
                inner.append(m.request(peer, "echo", "inner"))
                super().__init__(*args)

        requests_module.Future = Interrupted
        try:
            outer = m.request(peer, "echo", "outer")
        finally:
            requests_module.Future = plain
        assert inner[0].result(timeout=10) == "inner"
        assert outer.result(timeout=10) == "outer"
        m.wait_quiet()
        assert m.stats()["late_answers"] == 0


def test_request_opened_while_another_is(mpirun, nranks):
    mpirun(nranks, case_request_opened_while_another_is)


def case_order_per_pair():
    with cv.Messenger() as m:
        seen = {}

        @m.on("seq")
        def seq(msg):
            source, i = msg.payload
            assert source == msg.source
            seen.setdefault(source, []).append(i)

        rng = np.random.default_rng(m.rank)
        n = 300
        for i in range(n):
            dest = (m.rank + 1) % m.size
            m.send(dest, "seq", (m.rank, i))
            # Large out-of-band arrays in between, to another tag: order must hold across both.
            if rng.random() < 0.1:
                m.send(dest, "seq_big", np.full(100_000, i))
        m.on("seq_big")(lambda msg: None)
        m.wait_quiet()
        source = (m.rank - 1) % m.size
        assert seen[source] == list(range(n)), seen[source][:20]


def test_order_per_pair(mpirun, nranks):
    mpirun(nranks, case_order_per_pair)


def case_messages_a_handler_keeps_stay_its_own():
    # The dispatcher empties and reuses a Message that nothing held once its
    # handler returned; one a handler kept, even only weakly, is never reused,
    # and the payload of one not kept is let go with it.
    import weakref

    with cv.Messenger() as m:
        kept, weakly, payloads = [], [], []

        @m.on("keep")
        def keep(msg):
            i = int(msg.payload[0])
            if i % 3 == 0:
                kept.append(msg)
            elif i % 3 == 1:
                weakly.append(weakref.ref(msg))
            payloads.append(weakref.ref(msg.payload))

        @m.on("ask")
        def ask(msg):
            return msg.tag, msg.payload, msg.source, msg.reply_to is not None

        peer, source = (m.rank + 1) % m.size, (m.rank - 1) % m.size
        count = 600
        for i in range(count):
            m.send(peer, "keep", np.array([i, m.rank]))
            if i % 100 == 0:
                assert m.request(peer, "ask", i).result(timeout=10) == ("ask", i, m.rank, True)
        m.wait_quiet(timeout=30)
        assert [int(msg.payload[0]) for msg in kept] == list(range(0, count, 3))
        assert {(msg.tag, int(msg.payload[1]), msg.source, msg.reply_to) for msg in kept} == {
            ("keep", source, source, None)
        }
        assert all(ref() is None for ref in weakly)
        alive = [int(p[0]) for p in (ref() for ref in payloads) if p is not None]
        assert alive == list(range(0, count, 3))


def test_messages_a_handler_keeps_stay_its_own(mpirun, nranks):
    mpirun(nranks, case_messages_a_handler_keeps_stay_its_own)


def case_order_with_large_messages():
    # A large array followed by small messages from the same source: the
    # small ones arrive first at the MPI level but must be delivered after.
    with cv.Messenger() as m:
        log = []
        m.on("item")(
            lambda msg: log.append(
                (msg.source, msg.payload if isinstance(msg.payload, int) else int(msg.payload[0]))
            )
        )
        m.wait_quiet()
        dest = (m.rank + 1) % m.size
        for i in range(20):
            if i % 5 == 0:
                m.send(dest, "item", np.full(3_000_000, i, dtype=np.int64))
            else:
                m.send(dest, "item", i)
        m.wait_quiet()
        source = (m.rank - 1) % m.size
        assert [i for s, i in log if s == source] == list(range(20)), log


def test_order_with_large_messages(mpirun, nranks):
    mpirun(nranks, case_order_with_large_messages, timeout=120)


def case_cascade_wait_quiet(depth):
    # Each message spawns the next, hopping around the ring: wait_quiet must
    # not return until the last hop is handled, however deep the cascade.
    depth = int(depth)
    with cv.Messenger() as m:
        hops = []

        @m.on("hop")
        def hop(msg):
            hops.append(msg.payload)
            if msg.payload < depth:
                m.send((m.rank + 1) % m.size, "hop", msg.payload + 1)

        if m.rank == 0:
            m.send(0, "hop", 0)
        m.wait_quiet()
        total = m.comm.allreduce(len(hops))
        assert total == depth + 1, total
        # Cascades from every rank at once, fanned out.
        fan = []

        @m.on("fan")
        def fanout(msg):
            fan.append(msg.payload)
            if msg.payload > 0:
                for peer in range(m.size):
                    m.send(peer, "fan", msg.payload - 1)

        m.send(m.rank, "fan", 3)
        m.wait_quiet()
        expected = m.size * sum(m.size**k for k in range(4))
        assert m.comm.allreduce(len(fan)) == expected


def test_cascade_wait_quiet(mpirun, nranks):
    mpirun(nranks, case_cascade_wait_quiet, 200)


def case_nested_wait_no_deadlock():
    # Rank 0's handler requests from rank 1, whose handler requests back
    # from rank 0 while rank 0 is still inside its first handler.
    with cv.Messenger() as m:
        other = 1 % m.size

        @m.on("outer")
        def outer(msg):
            return m.request(other, "inner", msg.payload + 1).result(timeout=20) * 10

        @m.on("inner")
        def inner(msg):
            return m.request(0, "leaf", msg.payload + 1).result(timeout=20) + 1

        m.on("leaf")(lambda msg: msg.payload * 2)
        if m.rank == 0:
            assert m.request(0, "outer", 1).result(timeout=20) == ((1 + 2) * 2 + 1) * 10
        m.wait_quiet()


def test_nested_wait_no_deadlock(mpirun, nranks):
    mpirun(nranks, case_nested_wait_no_deadlock)


def case_reply_to_travels():
    # The reply address of a request travels to a third rank, which answers.
    with cv.Messenger() as m:
        third = 2 % m.size

        @m.on("forward")
        def forward(msg):
            msg.defer()  # the answer will come from the third rank
            m.send(third, "answer", [msg.reply_to, msg.payload])

        @m.on("answer")
        def answer(msg):
            reply_to, value = msg.payload
            assert isinstance(reply_to, cv.Address) and reply_to.ref is not None
            m.send(reply_to, ("answered by", m.rank, value))

        peer = 1 % m.size
        assert m.request(peer, "forward", m.rank).result(timeout=10) == (
            "answered by",
            third,
            m.rank,
        )
        m.wait_quiet()


def test_reply_to_travels(mpirun, nranks):
    mpirun(nranks, case_reply_to_travels)


def case_messenger_isolates_user_traffic():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    with cv.Messenger() as m:
        got = []
        m.on("x")(lambda msg: got.append(msg.payload))
        peer = (comm.rank + 1) % comm.size
        req = comm.isend("user", dest=peer, tag=1)
        m.send(peer, "x", "conveyor")
        assert comm.recv(source=(comm.rank - 1) % comm.size, tag=1) == "user"
        req.wait()
        m.wait_quiet()
        assert got == ["conveyor"]
    assert m.comm != comm


def test_messenger_isolates_user_traffic(mpirun, nranks):
    mpirun(nranks, case_messenger_isolates_user_traffic)


def test_plain_python_without_mpiexec():
    # Size 1 with no launcher: the same API works.
    with cv.Messenger() as m:
        assert (m.rank, m.size) == (0, 1)
        m.on("double")(lambda msg: 2 * msg.payload)
        assert m.request(0, "double", 21).result(timeout=5) == 42


def case_messenger_on_a_sub_communicator():
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    half = world.Split(color=world.rank % 2, key=world.rank)
    with cv.Messenger(half) as m:
        assert (m.rank, m.size) == (half.rank, half.size)
        m.on("who")(lambda msg: world.rank)
        # Ranks are those of the sub-communicator: neighbours share a colour.
        peer = (m.rank + 1) % m.size
        expected = half.allgather(world.rank)[peer]
        assert m.request(peer, "who").result(timeout=10) == expected
    half.Free()


def test_messenger_on_a_sub_communicator(mpirun, nranks):
    mpirun(nranks, case_messenger_on_a_sub_communicator)


def test_reserved_tags_are_distinct_and_refused_to_users():
    from conveyor import _tags
    from conveyor._checks import RESERVED_PREFIX

    tags = [getattr(_tags, name) for name in _tags.__all__]
    assert len(set(tags)) == len(tags)
    with cv.Messenger() as m:
        for tag in tags:
            assert tag.startswith(RESERVED_PREFIX)
            with pytest.raises(ValueError, match="reserved"):
                m.on(tag)


def test_message_fail_answers_a_deferred_request_with_an_error():
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        m.on("plain")(lambda msg: held.append(msg))
        future = m.request(0, "later", 1)
        while not held:
            m.progress(0.01)
        held[0].fail(LookupError("no such thing"))
        with pytest.raises(cv.RemoteError) as info:
            future.result(timeout=10)
        assert info.value.remote_type == "LookupError"
        assert info.value.remote_message == "no such thing"
        with pytest.raises(cv.ConveyorError, match="already answered"):
            held[0].fail(ValueError("twice"))
        m.send(0, "plain", 2)
        while len(held) < 2:
            m.progress(0.01)
        with pytest.raises(cv.ConveyorError, match="not a request"):
            held[1].fail(ValueError("nobody waits"))
        m.wait_quiet()
        assert m.stats()["pending_requests"] == 0 and m.stats()["open_requests"] == 0


def case_idle_waits_do_not_spin_on_a_crowded_host():
    # Ranks pinned to one core between them outnumber it: an idle wait then
    # yields at once instead of spinning, since the rank it waits for needs
    # that core. Each rank alone on its own core is not crowded.
    import os

    from mpi4py import MPI

    from conveyor._config import engine_options
    from conveyor._hosts import survey

    comm = MPI.COMM_WORLD
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[comm.rank % len(cores)]})
    assert survey(comm).crowded is (comm.size > len(cores))
    assert engine_options(crowded=False).spin_seconds == pytest.approx(50e-6)
    os.sched_setaffinity(0, {0})
    assert survey(comm).crowded is (comm.size > 1)
    assert engine_options(crowded=True).spin_seconds == 0
    os.environ["CONVEYOR_SPIN_US"] = "20"  # set, it wins in either case
    assert engine_options(crowded=True).spin_seconds == pytest.approx(20e-6)
    # A messenger on the crowded host still serves its requests.
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        assert m.request((m.rank + 1) % m.size, "echo", m.rank).result(timeout=30) == m.rank
        m.wait_quiet()


@pytest.mark.parametrize("n", [1, 2])
def test_idle_waits_do_not_spin_on_a_crowded_host(mpirun, n):
    mpirun(n, case_idle_waits_do_not_spin_on_a_crowded_host)
