"""Serving a Messenger from an asyncio event loop, at 1 to 4 ranks.

arequest, aquiet, aclose, ``async with``, async handlers (functions and
Receivers), attach/detach, and the example ``examples/async_service.py``.
Every case runs ``asyncio.run`` on each rank under mpiexec with a timeout.
No assertion depends on timing except generous functional bounds (a ticker
advancing during a remote sleep; a wake-up within one whole nap of 20 ms
where half a nap is expected).
"""

import asyncio
import random

import numpy as np
import pytest

import conveyor as cv

from _helpers import world
from conftest import run_example


async def wait_until(predicate, timeout=20.0, what="condition"):
    """Let the loop run until `predicate()` holds (a hang becomes an error)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


# -- requests ----------------------------------------------------------------


def case_arequest():
    async def main():
        async with cv.Messenger() as m:

            @m.on("sq")
            def sq(msg):  # a sync handler, served from the loop
                return msg.payload * msg.payload

            @m.on("asq")
            async def asq(msg):  # answers out of order: random latency
                await asyncio.sleep(random.random() * 0.002)
                return msg.payload * msg.payload

            class AsyncEcho(cv.Receiver):
                async def receive(self, msg):
                    await asyncio.sleep(0)
                    return [m.rank, msg.source, msg.payload]

            m.register("echo", AsyncEcho())
            world().Barrier()  # every rank has its receivers

            # Every peer, self included, every kind of receiver.
            for peer in range(m.size):
                assert await m.arequest(peer, "sq", m.rank + 3, timeout=20) == (m.rank + 3) ** 2
                assert await m.arequest(peer, "asq", m.rank + 5, timeout=20) == (m.rank + 5) ** 2
                answer = await m.arequest(cv.Address(peer, "echo"), "hi", timeout=20)
                assert answer == [peer, m.rank, "hi"], answer
                assert await m.arequest(peer, "echo", timeout=20) == [peer, m.rank, None]

            # Hundreds at once, to random ranks, sync and async receivers mixed.
            rng = random.Random(m.rank)
            n = 300
            calls = [
                m.arequest(rng.randrange(m.size), rng.choice(["sq", "asq"]), i, timeout=30)
                for i in range(n)
            ]
            assert await asyncio.gather(*calls) == [i * i for i in range(n)]
            assert m.stats()["pending_requests"] == 0

            # Sync calls inside a coroutine still work (they block the loop
            # but serve): every rank does this at once, sync handlers only.
            for peer in range(m.size):
                assert m.request(peer, "sq", 7).result(timeout=20) == 49
            assert m.progress() >= 0
            await m.aquiet()
            st = m.stats()
            assert st["handler_errors"] == 0 and st["unknown_tag"] == 0, st

    asyncio.run(main())


def test_arequest(mpirun, nranks):
    mpirun(nranks, case_arequest)


def case_mixed_handlers():
    # Sync and async handlers on one messenger, calling each other.
    async def main():
        async with cv.Messenger() as m:
            nxt, prv = (m.rank + 1) % m.size, (m.rank - 1) % m.size
            collected = []
            m.on("sq")(lambda msg: msg.payload * msg.payload)

            @m.on("asq")
            async def asq(msg):
                await asyncio.sleep(0.001)
                return msg.payload * msg.payload

            @m.on("combo")  # async, awaiting a sync and an async receiver elsewhere
            async def combo(msg):
                a, b = await asyncio.gather(
                    m.arequest(nxt, "sq", msg.payload, timeout=20),
                    m.arequest(prv, "asq", msg.payload + 1, timeout=20),
                )
                return a + b

            @m.on("relay")  # sync, sending on to an async receiver
            def relay(msg):
                m.send(nxt, "collect", msg.payload)

            @m.on("collect")
            async def collect(msg):
                await asyncio.sleep(0.001)
                collected.append(msg.payload)

            world().Barrier()
            for i in range(20):
                assert await m.arequest(nxt, "combo", i, timeout=20) == i * i + (i + 1) ** 2
                m.send(prv, "relay", (m.rank, i))
            await m.aquiet()
            # Rank r's relays went r -> r-1 -> r: each rank collected its own.
            assert sorted(collected) == [(m.rank, i) for i in range(20)], collected

    asyncio.run(main())


def test_mixed_handlers(mpirun, nranks):
    mpirun(nranks, case_mixed_handlers)


# -- async handlers and termination detection ---------------------------------


def case_async_sends_and_cascade(depth):
    depth = int(depth)

    async def main():
        async with cv.Messenger() as m:
            got = []

            @m.on("slow_sink")
            async def slow_sink(msg):
                await asyncio.sleep(0.05)  # aquiet must wait for this
                got.append((msg.source, msg.payload))

            hops = []
            ends = []

            @m.on("hop")  # each hop awaits the next rank's hop: a chain of depth `depth`
            async def hop(msg):
                origin, d = msg.payload
                hops.append(d)
                await asyncio.sleep(0.002)
                if d == depth:
                    return [origin, d]
                return await m.arequest((m.rank + 1) % m.size, "hop", [origin, d + 1], timeout=40)

            @m.on("start")  # a plain send starts a chain; nobody awaits it but aquiet
            async def start(msg):
                ends.append(await m.arequest((m.rank + 1) % m.size, "hop", [m.rank, 1], timeout=40))

            world().Barrier()
            for peer in range(m.size):
                for i in range(5):
                    m.send(peer, "slow_sink", i)
            m.send(m.rank, "start")
            await m.aquiet()

            comm = world()
            assert sorted(got) == [(s, i) for s in range(m.size) for i in range(5)], got
            assert ends == [[m.rank, depth]], ends
            assert comm.allreduce(len(hops)) == m.size * depth
            st = m.stats()
            assert comm.allreduce(st["messages_sent"]) == comm.allreduce(st["messages_handled"])
            assert st["pending_requests"] == 0 and st["handler_errors"] == 0, st

            # A second round after a quiet one: fan-out of async sends.
            fan = []

            @m.on("fan")
            async def fanout(msg):
                await asyncio.sleep(0)
                fan.append(msg.payload)
                if msg.payload > 0:
                    for peer in range(m.size):
                        m.send(peer, "fan", msg.payload - 1)

            m.send(m.rank, "fan", 3)
            await m.aquiet()
            assert comm.allreduce(len(fan)) == m.size * sum(m.size**k for k in range(4))

    asyncio.run(main())


def test_async_sends_and_cascade(mpirun, nranks):
    mpirun(nranks, case_async_sends_and_cascade, 12)


def case_order_async_handlers():
    # Tasks start in arrival order, so per-pair order holds for plain sends
    # handled by async handlers, even with out-of-band arrays in between.
    async def main():
        async with cv.Messenger() as m:
            seen = {}

            @m.on("seq")
            async def seq(msg):
                source, i = msg.payload
                assert source == msg.source
                seen.setdefault(source, []).append(i)  # before the first await
                await asyncio.sleep(random.random() * 0.001)

            @m.on("seq_big")
            async def seq_big(msg):
                source, i = msg.payload[0], msg.payload[1]
                seen.setdefault(("big", int(source)), []).append(int(i))

            world().Barrier()
            rng = np.random.default_rng(m.rank)
            dest = (m.rank + 1) % m.size
            n, big = 400, 0
            for i in range(n):
                m.send(dest, "seq", (m.rank, i))
                if rng.random() < 0.05:
                    arr = np.full(50_000, big, dtype=np.int64)
                    arr[0] = m.rank
                    m.send(dest, "seq_big", arr)
                    big += 1
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let the loop interleave handling
            await m.aquiet()
            source = (m.rank - 1) % m.size
            assert seen[source] == list(range(n)), seen[source][:20]
            bigs = world().allgather(big)[source]
            assert seen.get(("big", source), []) == list(range(bigs))

    asyncio.run(main())


def test_order_async_handlers(mpirun, nranks):
    mpirun(nranks, case_order_async_handlers)


# -- errors ------------------------------------------------------------------


def case_errors():
    async def main():
        async with cv.Messenger() as m:

            @m.on("boom")
            async def boom(msg):
                await asyncio.sleep(0.001)
                raise ValueError(f"boom {msg.payload}")

            @m.on("boom_early")
            async def boom_early(msg):  # raises before its first await
                raise KeyError("early")

            @m.on("explode")  # a plain send: printed and counted on this rank
            async def explode(msg):
                await asyncio.sleep(0)
                raise ValueError(f"send boom from {msg.source}")

            @m.on("reply_first")  # msg.reply, then carry on: the return value is ignored
            async def reply_first(msg):
                msg.reply(("first", msg.payload))
                await asyncio.sleep(0.001)
                return "ignored"

            @m.on("reply_later")
            async def reply_later(msg):
                await asyncio.sleep(0.001)
                msg.reply(("later", msg.payload))

            parked = []

            @m.on("defer")  # answered later, by another handler's task
            async def defer(msg):
                msg.defer()
                parked.append(msg)

            @m.on("release")
            async def release(msg):
                await asyncio.sleep(0.001)
                while parked:
                    held = parked.pop()
                    held.reply(("released", held.payload))

            world().Barrier()
            for peer in range(m.size):
                with pytest.raises(cv.RemoteError) as info:
                    await m.arequest(peer, "boom", m.rank, timeout=20)
                e = info.value
                assert (e.rank, e.remote_type, e.remote_message) == (
                    peer,
                    "ValueError",
                    f"boom {m.rank}",
                )
                assert "in boom" in e.remote_traceback, e.remote_traceback
                assert "raise ValueError" in e.remote_traceback, e.remote_traceback
                assert "ValueError: boom" in str(e)

                with pytest.raises(cv.RemoteError) as info:
                    await m.arequest(peer, "boom_early", timeout=20)
                assert (
                    info.value.remote_type == "KeyError"
                    and "in boom_early" in info.value.remote_traceback
                )

                with pytest.raises(cv.UnknownTagError) as info:
                    await m.arequest(peer, "no such tag", timeout=20)
                assert isinstance(info.value, LookupError) and info.value.rank == peer
                assert "no such tag" in str(info.value)

                assert await m.arequest(peer, "reply_first", 1, timeout=20) == ("first", 1)
                assert await m.arequest(peer, "reply_later", 2, timeout=20) == ("later", 2)
                deferred = asyncio.ensure_future(m.arequest(peer, "defer", 3, timeout=20))
                await asyncio.sleep(0.01)
                m.send(peer, "release")
                assert await deferred == ("released", 3)

                m.send(peer, "explode")
            await m.aquiet()
            st = m.stats()
            # Per peer: boom + boom_early answered as errors, one explode printed.
            assert st["handler_errors"] == 3 * m.size, st
            assert st["unknown_tag"] == m.size, st
            assert st["pending_requests"] == 0, st
            # The rank keeps serving after all that.
            assert await m.arequest((m.rank + 1) % m.size, "reply_later", 9, timeout=20) == (
                "later",
                9,
            )

    asyncio.run(main())


def test_errors(mpirun, nranks):
    result = mpirun(nranks, case_errors)
    for rank in range(nranks):
        assert f"conveyor: rank {rank}: the receiver of 'explode' raised" in result.stderr
    for source in range(nranks):
        assert result.stderr.count(f"ValueError: send boom from {source}") == nranks, result.stderr


def case_late_answer(how):
    # An arequest that gives up (timeout, or its task is cancelled) leaves
    # nobody waiting for the answer. The answer that comes later is counted:
    # as a late answer by the requester or, if the worker learnt in time that
    # nobody waits (a cancelled request), as a dropped answer by the worker.
    async def main():
        comm = world()
        async with cv.Messenger() as m:

            @m.on("slow")
            async def slow(msg):
                await asyncio.sleep(0.5)
                return "late"

            comm.Barrier()
            peer = (m.rank + 1) % m.size
            if how == "timeout":
                with pytest.raises(cv.TimeoutError) as info:
                    await m.arequest(peer, "slow", timeout=0.05)
                assert isinstance(info.value, TimeoutError) and isinstance(
                    info.value, cv.ConveyorError
                )
            else:
                task = asyncio.create_task(m.arequest(peer, "slow"))
                await asyncio.sleep(0.05)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            # The slow handler still ends; aquiet waits for it and its answer.
            await m.aquiet()
            st = m.stats()
            assert st["pending_requests"] == 0, st
            late = comm.allreduce(st["late_answers"])
            dropped = comm.allreduce(st.get("answers_cancelled", 0))
            assert late + dropped == m.size, (
                f"{m.size} arequests gave up, but late_answers sum to {late} and "
                f"answers_cancelled to {dropped}: the late answers were not counted",
                st,
            )
            # A messenger whose arequest gave up stays usable.
            assert await m.arequest(peer, "slow", timeout=20) == "late"

    asyncio.run(main())


@pytest.mark.parametrize(
    "how, n",
    [("timeout", 1), ("timeout", 2), ("cancel", 2)],
    ids=["timeout-np1", "timeout-np2", "cancel-np2"],
)
def test_late_answer(mpirun, how, n):
    mpirun(n, case_late_answer, how)


def case_answer_not_carriageable():
    # A handler's answer that cannot travel (here an object()) must reach the
    # requester as a RemoteError (remote type CarriageError), whether the
    # handler is sync or async; the requester must not be left waiting.
    async def main():
        async with cv.Messenger() as m:
            m.on("sync_obj")(lambda msg: object())

            @m.on("async_obj")
            async def async_obj(msg):
                await asyncio.sleep(0)
                return object()

            world().Barrier()
            peer = (m.rank + 1) % m.size
            problems = []
            for tag in ("sync_obj", "async_obj"):
                try:
                    answer = await m.arequest(peer, tag, timeout=3)
                except cv.RemoteError as e:
                    if e.remote_type != "CarriageError":
                        problems.append(f"{tag}: RemoteError of remote type {e.remote_type}")
                except cv.TimeoutError:
                    problems.append(
                        f"{tag}: the handler's answer could not travel and the "
                        "requester got no answer at all (no RemoteError)"
                    )
                else:
                    problems.append(f"{tag}: an answer arrived: {answer!r}")
            assert not problems, problems
            await m.aquiet()

    asyncio.run(main())


def test_answer_not_carriageable(mpirun):
    mpirun(2, case_answer_not_carriageable)


def case_aquiet_in_async_handler():
    # wait_quiet() from a sync handler raises (it is collective, and the
    # handler itself counts as running); aquiet() awaited in an async
    # handler's task must raise too, not wait forever for its own task.
    async def main():
        async with cv.Messenger() as m:

            @m.on("nested_quiet")
            async def nested_quiet(msg):
                try:
                    await asyncio.wait_for(m.aquiet(), 3)
                except cv.ConveyorError:
                    return "refused"
                except asyncio.TimeoutError:
                    return "hung"
                return "returned"

            world().Barrier()
            answer = await m.arequest(m.rank, "nested_quiet", timeout=20)
            assert answer == "refused", (
                f"aquiet() awaited inside an async handler: {answer} (expected a ConveyorError)"
            )
            await m.aquiet()

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 2], ids=["np1", "np2"])
def test_aquiet_in_async_handler(mpirun, n):
    mpirun(n, case_aquiet_in_async_handler)


def case_aquiet_cancelled():
    # An aquiet given up (asyncio.wait_for) while another rank is not there
    # yet must leave the messenger usable: the next aquiet, on every rank,
    # returns (rather than failing because the given-up wave is in flight).
    async def main():
        async with cv.Messenger() as m:
            m.on("sq")(lambda msg: msg.payload * msg.payload)
            world().Barrier()
            if m.rank == 0:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(m.aquiet(), 0.2)  # the others sleep
            else:
                await asyncio.sleep(1.0)
            await asyncio.wait_for(m.aquiet(), 30)
            peer = (m.rank + 1) % m.size
            assert await m.arequest(peer, "sq", 3, timeout=20) == 9
            await m.aquiet()

    asyncio.run(main())


def test_aquiet_cancelled(mpirun):
    mpirun(2, case_aquiet_cancelled)


# -- the loop keeps running ---------------------------------------------------


def case_loop_not_blocked():
    async def main():
        async with cv.Messenger() as m:
            ticks = [0]
            ticked = asyncio.Event()  # set on this rank when a peer's ticker advanced

            async def ticker():
                while True:
                    await asyncio.sleep(0.01)
                    ticks[0] += 1

            @m.on("slow")
            async def slow(msg):
                await asyncio.sleep(0.2)
                return msg.payload

            @m.on("ticked")
            def on_ticked(msg):
                ticked.set()

            @m.on("wait_for_ticks")  # answers only after the requester's ticker sent "ticked"
            async def wait_for_ticks(msg):
                await asyncio.wait_for(ticked.wait(), 30)
                ticked.clear()
                return "ok"

            @m.on("gate")  # four handlers must run at the same time to pass
            async def gate(msg):
                gate.arrived += 1
                if gate.arrived % 4 == 0:
                    gate.open.set()
                await asyncio.wait_for(gate.open.wait(), 30)
                return msg.payload

            gate.arrived, gate.open = 0, asyncio.Event()

            tick_task = asyncio.create_task(ticker())
            world().Barrier()
            peer = (m.rank + 1) % m.size
            before = ticks[0]
            assert await m.arequest(peer, "slow", 1, timeout=20) == 1
            # 0.2 s at one tick per 10 ms: ~20 ticks if the loop is free.
            assert ticks[0] - before >= 3, ticks[0] - before

            # Deterministic: the peer answers only once our ticker, running
            # while we await, has told it so.
            async def tell_after_ticks():
                start = ticks[0]
                await wait_until(lambda: ticks[0] >= start + 3, what="ticks")
                m.send(peer, "ticked")

            answer, _ = await asyncio.gather(
                m.arequest(peer, "wait_for_ticks", timeout=30), tell_after_ticks()
            )
            assert answer == "ok"

            # Async handlers of one rank run concurrently.
            assert await asyncio.gather(
                *[m.arequest(peer, "gate", i, timeout=30) for i in range(4)]
            ) == [0, 1, 2, 3]
            await m.aquiet()
            tick_task.cancel()

    asyncio.run(main())


def test_loop_not_blocked(mpirun, nranks):
    mpirun(nranks, case_loop_not_blocked)


def case_sends_never_block():
    # In an event loop a send does not wait for back-pressure: send far more
    # than the flow-control window to a rank that consumes nothing (it blocks
    # in a raw MPI receive that comes only after all our sends).
    async def main():
        comm = world()
        async with cv.Messenger() as m:
            got = []

            @m.on("bulk")
            async def bulk(msg):
                got.append(int(msg.payload[0]))

            comm.Barrier()
            dest, source = (m.rank + 1) % m.size, (m.rank - 1) % m.size
            n = 100  # 100 x 400 KB = 40 MB, five times the 8 MiB data window set below
            for i in range(n):
                m.send(dest, "bulk", np.full(50_000, i, dtype=np.int64))
            assert m.stats()["sends_held"] > 0  # flow control did hold frames back
            req = comm.isend("all sent", dest=dest, tag=77)
            assert comm.recv(source=source, tag=77) == "all sent"
            req.wait()
            await m.aquiet()
            assert got == list(range(n)), got[:10]

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 2, 4], ids=["np1", "np2", "np4"])
def test_sends_never_block(mpirun, n):
    mpirun(n, case_sends_never_block, timeout=90, env={"CONVEYOR_DATA_WINDOW_BYTES": str(8 << 20)})


def case_wakeup_within_one_nap(mode, nap_us):
    # An idle rank sleeps between MPI probes, at most CONVEYOR_MAX_SLEEP_US
    # (set very long here: `nap_us`). A message arriving meanwhile must be
    # handled at the end of the nap it arrived in: half a nap on average,
    # never a whole nap more. Rank 0 pings rank 1 after long idle gaps;
    # the handler returns its CLOCK_MONOTONIC time (shared by the processes
    # of one machine). The bound (one whole nap, for the median of 15, where
    # half a nap is expected) is generous.
    import time

    nap = int(nap_us) * 1e-6
    mono = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)  # noqa: E731
    comm = world()
    with cv.Messenger() as m:
        m.on("ping")(lambda msg: mono())
        stop, stopped = [], []  # stopped: the asyncio.Event the idle loop awaits

        @m.on("stop")
        def on_stop(msg):
            stop.append(1)
            for event in stopped:
                event.set()

        m.wait_quiet()
        if m.rank == 0:
            oneway = []
            rng = random.Random(12)
            for _ in range(15):
                # Long enough for the idle rank to reach its longest nap; a
                # random phase, so that arrivals fall anywhere in a nap.
                time.sleep(5 * nap + rng.random() * nap)
                sent = mono()
                oneway.append(m.request(1, "ping").result(timeout=20) - sent)
            for r in range(1, m.size):
                m.send(r, "stop")
            median = sorted(oneway)[len(oneway) // 2]
            print(
                f"{mode}: send -> handler median {median * 1e3:.1f} ms, "
                f"min {min(oneway) * 1e3:.1f} ms (nap {nap * 1e3:g} ms)"
            )
            assert median < nap, (
                f"{mode}: a message to an idle rank waited a whole nap or more: median "
                f"{median * 1e3:.1f} ms, min {min(oneway) * 1e3:.1f} ms, with naps of "
                f"{nap * 1e3:g} ms"
            )
        elif mode == "asyncio":

            async def idle():
                stopped.append(asyncio.Event())
                m.attach()
                await asyncio.wait_for(stopped[0].wait(), 60)
                m.detach()

            asyncio.run(idle())
        else:
            while not stop:
                m.progress(1.0)
        comm.Barrier()


@pytest.mark.parametrize("mode", ["blocking", "asyncio"])
def test_wakeup_within_one_nap(mpirun, mode):
    nap_us = 20_000
    mpirun(2, case_wakeup_within_one_nap, mode, nap_us, env={"CONVEYOR_MAX_SLEEP_US": str(nap_us)})


# -- attach, detach, close ----------------------------------------------------


def case_attach_detach():
    m = cv.Messenger()
    m.on("sq")(lambda msg: msg.payload * msg.payload)

    @m.on("asq")
    async def asq(msg):
        await asyncio.sleep(0)
        return msg.payload * msg.payload

    nxt = (m.rank + 1) % m.size

    async def served(x):
        m.attach()
        m.attach()  # again on the same loop: nothing to do
        # A rank may leave wait_quiet (below) before the others: none may
        # send to an async receiver before its rank serves from a loop.
        world().Barrier()
        assert await m.arequest(nxt, "sq", x, timeout=20) == x * x
        assert await m.arequest(nxt, "asq", x, timeout=20) == x * x
        await m.aquiet()
        m.detach()

    asyncio.run(served(3))
    # Synchronous use again, then another loop.
    assert m.request(nxt, "sq", 4).result(timeout=20) == 16
    m.wait_quiet()
    asyncio.run(served(5))

    async def explicit_loop():
        loop = asyncio.get_running_loop()
        m.attach(loop)
        other = asyncio.new_event_loop()
        try:
            with pytest.raises(cv.ConveyorError, match="another event loop"):
                m.attach(other)
        finally:
            other.close()
        assert await m.arequest(nxt, "sq", 6, timeout=20) == 36
        await m.aquiet()
        m.detach()
        m.detach()  # detaching twice is harmless

    asyncio.run(explicit_loop())
    assert m.request(nxt, "sq", 7).result(timeout=20) == 49
    m.close()
    m.close()


def test_attach_detach(mpirun, nranks):
    mpirun(nranks, case_attach_detach)


def case_close_with_running_tasks():
    async def main():
        m = cv.Messenger()
        m.attach()
        release = asyncio.Event()
        started = []

        @m.on("hold")
        async def hold(msg):
            started.append(msg.source)
            await release.wait()

        world().Barrier()
        m.send(m.rank, "hold")
        await wait_until(lambda: started, what="the handler to start")
        with pytest.raises(cv.ConveyorError, match="aclose"):
            m.close()
        release.set()
        await m.aclose()
        with pytest.raises(cv.ConveyorError, match="closed"):
            await m.arequest(0, "hold")
        await m.aclose()  # twice is harmless

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 2], ids=["np1", "np2"])
def test_close_with_running_tasks(mpirun, n):
    mpirun(n, case_close_with_running_tasks)


def case_async_handler_without_loop():
    with cv.Messenger() as m:

        @m.on("coro")
        async def coro(msg):
            return 1

        world().Barrier()
        peer = (m.rank + 1) % m.size
        with pytest.raises(cv.RemoteError) as info:
            m.request(peer, "coro").result(timeout=20)
        assert "attach" in info.value.remote_message and "event" in info.value.remote_message, (
            info.value
        )
        m.send(peer, "coro")
        m.wait_quiet()
        assert m.stats()["handler_errors"] == 2


@pytest.mark.parametrize("n", [1, 2], ids=["np1", "np2"])
def test_async_handler_without_loop(mpirun, n):
    result = mpirun(n, case_async_handler_without_loop)
    assert result.stderr.count("the receiver of 'coro' raised") == n, result.stderr
    assert "never awaited" not in result.stderr, result.stderr


# -- the example -------------------------------------------------------------


@pytest.mark.parametrize("nranks", [None, 1, 4], ids=["python", "np1", "np4"])
def test_async_service_example(nranks):
    result = run_example("async_service", nranks, "--requests", 2000, "--latency-ms", 1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout, result.stdout
    assert f"{nranks or 1} rank" in result.stdout, result.stdout
    assert "requests/s" in result.stdout, result.stdout
