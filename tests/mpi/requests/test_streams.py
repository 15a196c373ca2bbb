"""Requests answered several times (streams) and cancellation, at 1 to 4 ranks.

`Messenger.request_stream` and ``msg.reply(x, final=False)``; per-answer
timeouts; errors in mid-stream; ``async for``; cancelling a `Future`, a
`Stream` and an awaited `arequest`, seen by the worker as ``msg.cancelled``,
with the counters (``late_answers``, ``answers_cancelled``,
``requests_cancelled``) exact and no state left behind. Each rank r
usually requests from its neighbour ``(r + 1) % size`` (itself at one
rank). No assertion depends on timing: timeouts are either hang guards or
expire while the worker provably waits for a message that has not been
sent yet.
"""

import asyncio
import concurrent.futures

import numpy as np
import pytest

import conveyor as cv

from _helpers import no_state_left, world


def gather_stats(m):
    return world().allgather(m.stats())


# -- streams -------------------------------------------------------------------


def case_stream_basic():
    with cv.Messenger() as m:
        errors = []
        big = np.arange(200_000, dtype=np.int64)  # a zero-copy answer between small ones

        @m.on("lookup")
        def lookup(msg):
            msg.reply(("quick", msg.payload), final=False)  # say, from a cache
            return ("detailed", msg.payload * 2)  # the return value is final

        @m.on("partials")
        def partials(msg):
            n = msg.payload
            for i in range(n):
                msg.reply(i, final=False)
                if i == n // 2:
                    msg.reply(big * m.rank, final=False)
            msg.reply("end")  # final by reply: the return value is not sent
            try:
                msg.reply("again")
            except cv.ConveyorError:
                errors.append("final twice")
            try:
                msg.reply("again", final=False)
            except cv.ConveyorError:
                errors.append("partial after final")
            return "ignored"

        @m.on("once")
        def once(msg):
            return ["only", msg.payload]

        @m.on("plain")
        def plain(msg):
            try:
                msg.reply(1, final=False)  # not a request
            except cv.ConveyorError:
                errors.append("not a request")

        m.wait_quiet()
        peer = (m.rank + 1) % m.size

        stream = m.request_stream(peer, "lookup", m.rank)
        assert isinstance(stream, cv.Stream)
        assert list(stream) == [("quick", m.rank), ("detailed", 2 * m.rank)]
        assert stream.done() and stream.cancel() is False
        with pytest.raises(StopIteration):
            next(stream)

        n = 20
        stream = m.request_stream(peer, "partials", n)
        got = [next(stream)]  # one at a time, then the rest
        got += list(stream)
        assert len(got) == n + 2
        array = got.pop(n // 2 + 1)
        assert np.array_equal(array, big * peer)
        assert got == list(range(n)) + ["end"]

        # A plain request gets the final answer only.
        assert m.request(peer, "lookup", 5).result(timeout=20) == ("detailed", 10)
        assert m.request(peer, "partials", 7).result(timeout=20) == "end"
        # A stream of a handler that answers once has that one answer.
        assert list(m.request_stream(peer, "once", 3)) == [["only", 3]]
        # Many streams at once, from several peers, interleaved.
        streams = [(r, m.request_stream(r, "partials", 5 + r)) for r in range(m.size)]
        for r, s in reversed(streams):
            answers = list(s)
            assert answers[:2] == [0, 1] and answers[-1] == "end" and len(answers) == 5 + r + 2
        # An unknown tag fails the stream.
        with pytest.raises(cv.UnknownTagError):
            next(m.request_stream(peer, "nobody-here"))
        m.send(peer, "plain", None)
        m.wait_quiet()
        count = 2 + m.size  # requests to "partials" this rank answered
        assert errors.count("final twice") == count and errors.count("partial after final") == count
        assert errors.count("not a request") == 1
        stats = no_state_left(m)
        assert stats["late_answers"] == 0 and stats["answers_cancelled"] == 0


def test_stream_basic(mpirun, nranks):
    mpirun(nranks, case_stream_basic)


def case_answers_from_a_third_rank():
    # The worker passes the request's reply_to on; the rank that gets it
    # streams the answers with m.send(address, x, final=False).
    with cv.Messenger() as m:
        helper = (m.rank + 2) % m.size

        @m.on("forward")
        def forward(msg):
            msg.defer()
            m.send(helper, "answer_all", msg.reply_to)

        @m.on("answer_all")
        def answer_all(msg):
            for i in range(3):
                m.send(msg.payload, f"partial {i}", final=False)
            m.send(msg.payload, "final")

        worker = (m.rank + 1) % m.size
        assert list(m.request_stream(worker, "forward", timeout=10)) == [
            "partial 0",
            "partial 1",
            "partial 2",
            "final",
        ]
        assert m.request(worker, "forward").result(timeout=10) == "final"
        with pytest.raises(ValueError, match="reply_to"):
            m.send(worker, "forward", None, final=False)
        m.wait_quiet()
        assert m.stats()["late_answers"] == 0


def test_answers_from_a_third_rank(mpirun, nranks):
    mpirun(nranks, case_answers_from_a_third_rank)


def case_stream_timeout_per_answer():
    with cv.Messenger() as m:
        waiting = {}

        @m.on("slow")
        def slow(msg):
            msg.defer()
            msg.reply("quick", final=False)
            waiting[msg.source] = msg  # the detailed answer waits for "go"

        @m.on("go")
        def go(msg):
            request = waiting.pop(msg.source)
            request.reply("partial", final=False)
            request.reply("detailed")

        m.wait_quiet()
        peer = (m.rank + 1) % m.size
        stream = m.request_stream(peer, "slow", timeout=0.3)
        assert stream.timeout == 0.3
        assert next(stream) == "quick"
        # The worker sends nothing until "go": the next answer times out...
        with pytest.raises(cv.TimeoutError) as info:
            next(stream)
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(cv.TimeoutError):
            next(stream)
        assert not stream.done() and m.stats()["pending_requests"] == 1
        # ...and the stream stays usable: later answers still arrive, in order.
        m.send(peer, "go")
        stream.timeout = 20  # a hang guard from here on
        assert list(stream) == ["partial", "detailed"]
        assert stream.done()
        m.wait_quiet()
        stats = no_state_left(m)
        assert stats["late_answers"] == 0


def test_stream_timeout_per_answer(mpirun, nranks):
    mpirun(nranks, case_stream_timeout_per_answer)


def case_stream_errors():
    with cv.Messenger() as m:

        @m.on("fails_midway")
        def fails_midway(msg):
            msg.reply(1, final=False)
            msg.reply(2, final=False)
            raise ValueError(f"boom at rank {m.rank}")

        @m.on("fails_at_once")
        def fails_at_once(msg):
            raise KeyError("nothing")

        @m.on("ok")
        def ok(msg):
            msg.reply("a", final=False)
            return "b"

        m.wait_quiet()
        peer = (m.rank + 1) % m.size
        stream = m.request_stream(peer, "fails_midway", timeout=20)
        assert next(stream) == 1 and next(stream) == 2
        with pytest.raises(cv.RemoteError) as info:
            next(stream)
        err = info.value
        assert err.remote_type == "ValueError" and f"boom at rank {peer}" in err.remote_message
        assert err.rank == peer and "fails_midway" in err.remote_traceback
        assert stream.done() and stream.cancel() is False
        assert list(stream) == []  # raised once, then the stream ends
        # A for loop sees the answers before the error.
        seen = []
        with pytest.raises(cv.RemoteError):
            for answer in m.request_stream(peer, "fails_midway", timeout=20):
                seen.append(answer)
        assert seen == [1, 2]
        with pytest.raises(cv.RemoteError) as info:
            list(m.request_stream(peer, "fails_at_once", timeout=20))
        assert info.value.remote_type == "KeyError"
        # A plain request to the same handler fails, after the partial answers.
        with pytest.raises(cv.RemoteError):
            m.request(peer, "fails_midway").result(timeout=20)
        # The worker keeps going.
        assert list(m.request_stream(peer, "ok", timeout=20)) == ["a", "b"]
        m.wait_quiet()
        stats = no_state_left(m)
        assert stats["handler_errors"] == 4


def test_stream_errors(mpirun, nranks):
    mpirun(nranks, case_stream_errors)


def case_stream_async():
    async def main():
        async with cv.Messenger() as m:
            waiting = {}

            @m.on("count")
            async def count(msg):  # an async handler answering as it goes
                for i in range(msg.payload):
                    msg.reply(("partial", i), final=False)
                    await asyncio.sleep(0.001)
                return "done"

            @m.on("sync")
            def sync(msg):
                msg.reply("quick", final=False)
                return "detailed"

            @m.on("slow")
            def slow(msg):
                msg.defer()
                msg.reply("first", final=False)
                waiting[msg.source] = msg

            @m.on("go")
            def go(msg):
                waiting.pop(msg.source).reply("last")

            @m.on("bad")
            async def bad(msg):
                msg.reply("before", final=False)
                await asyncio.sleep(0)
                raise RuntimeError("async boom")

            world().Barrier()  # every rank has its receivers
            peer = (m.rank + 1) % m.size
            got = [a async for a in m.request_stream(peer, "count", 6, timeout=20)]
            assert got == [("partial", i) for i in range(6)] + ["done"]
            got = [a async for a in m.request_stream(peer, "sync", timeout=20)]
            assert got == ["quick", "detailed"]
            # Several streams consumed concurrently by tasks.

            async def consume(r, n):
                return [a async for a in m.request_stream(r, "count", n, timeout=20)]

            results = await asyncio.gather(*(consume(r, 3 + r) for r in range(m.size)))
            for r, answers in enumerate(results):
                assert answers == [("partial", i) for i in range(3 + r)] + ["done"]
            # Per-answer timeout in async for; the stream stays usable.
            stream = m.request_stream(peer, "slow", timeout=0.3)
            assert await stream.__anext__() == "first"
            with pytest.raises(cv.TimeoutError):
                await stream.__anext__()
            m.send(peer, "go")
            stream.timeout = 20
            assert [a async for a in stream] == ["last"]
            # An error mid-stream is raised by async for.
            seen = []
            with pytest.raises(cv.RemoteError) as info:
                async for a in m.request_stream(peer, "bad", timeout=20):
                    seen.append(a)
            assert seen == ["before"] and info.value.remote_type == "RuntimeError"
            await m.aquiet()
            no_state_left(m)

    asyncio.run(main())


def test_stream_async(mpirun, nranks):
    mpirun(nranks, case_stream_async)


# -- cancellation ----------------------------------------------------------------


def case_cancel_seen_by_worker():
    # Rank 0 requests from worker w = 1 % size, which defers and works in
    # chunks; rank 0 cancels; the worker sees msg.cancelled and stops.
    with cv.Messenger() as m:
        w = 1 % m.size
        jobs = []  # (kind, msg) the worker is working on
        log = []

        @m.on("stream_job")
        def stream_job(msg):
            msg.defer()
            msg.reply(("quick", msg.payload), final=False)
            jobs.append(("stream", msg))

        @m.on("future_job")
        def future_job(msg):
            msg.defer()
            # Sent before the cancel is seen, after the requester cancelled:
            # dropped on arrival (late_answers at the requester).
            msg.reply("quick", final=False)
            m.send(m.rank, "step", 0)
            jobs.append(("future", msg))

        @m.on("step")
        def step(msg):
            # One chunk of the future job per message, until cancelled.
            ((kind, job),) = [j for j in jobs if j[0] == "future"]
            if job.cancelled:
                log.append(("future", "cancelled after", msg.payload))
                jobs.remove((kind, job))
                job.reply("too late")  # dropped, counted as answers_cancelled
                return
            np.sqrt(np.arange(1000.0)).sum()
            assert msg.payload < 1_000_000, "the cancel never arrived"
            m.send(m.rank, "step", msg.payload + 1)

        m.store.put(f"keep/{m.rank}", np.arange(100))
        store_before = (sorted(m.store), m.store.nbytes)
        m.wait_quiet()
        if m.rank == 0:
            # A stream: take the quick answer, then cancel.
            stream = m.request_stream(w, "stream_job", "s", timeout=20)
            assert next(stream) == ("quick", "s")
            assert stream.cancel() is True
            assert stream.cancel() is False and stream.done()
            try:
                leftover = list(stream)  # ends (or says it was cancelled); never waits
            except cv.CancelledError:
                leftover = []
            assert leftover == []
            assert m.stats()["pending_requests"] == 0
        if m.rank == w:
            # The worker's periodic loop: chunks of work between progress calls.
            chunks = 0
            while not (jobs and jobs[0][0] == "stream" and jobs[0][1].cancelled):
                m.progress(0.01)
                np.sqrt(np.arange(1000.0)).sum()
                chunks += 1
                assert chunks < 3000, "the worker never saw the cancel"
            kind, job = jobs.pop(0)
            log.append(("stream", "cancelled", job.cancelled))
            job.reply("detailed", final=False)  # dropped, counted
            job.reply("final")  # dropped, counted
            del job
        if m.rank == 0:
            # A future: cancelled at once, before the worker even has it.
            fut = m.request(w, "future_job", "f")
            called = []
            fut.add_done_callback(called.append)
            assert fut.cancel() is True
            assert fut.done() and fut.cancelled() and called == [fut]
            assert fut.cancel() is True  # the standard contract: it is cancelled
            assert not fut.running()
            with pytest.raises(cv.CancelledError) as info:
                fut.result(timeout=1)
            assert isinstance(info.value, cv.ConveyorError)
            assert isinstance(info.value, concurrent.futures.CancelledError)
            with pytest.raises(cv.CancelledError):
                fut.exception()  # raises, as concurrent.futures.Future.exception does
        m.wait_quiet()
        if m.rank == w:
            assert ("stream", "cancelled", True) in log, log
            assert [entry[0] for entry in log].count("future") == 1, log
            assert jobs == []
        stats = gather_stats(m)
        mine = no_state_left(m)
        assert (sorted(m.store), m.store.nbytes) == store_before
        assert mine["store_items"] == 1
        expected_late = {0: 1}  # the future job's quick answer
        expected_dropped = {w: 3}  # 2 stream answers, 1 future answer
        expected_cancelled = {w: 2}  # both requests were open when cancelled
        for r, s in enumerate(stats):
            assert s["late_answers"] == expected_late.get(r, 0), (r, s)
            assert s["answers_cancelled"] == expected_dropped.get(r, 0), (r, s)
            assert s["requests_cancelled"] == expected_cancelled.get(r, 0), (r, s)


def test_cancel_seen_by_worker(mpirun, nranks):
    mpirun(nranks, case_cancel_seen_by_worker)


def case_cancel_with_answers_in_flight():
    # The worker answers fully before the requester cancels, but the requester
    # has not handled the answers yet: they are dropped on arrival and counted
    # there; the worker's request was closed, so the cancel finds nothing.
    with cv.Messenger() as m:
        handled = []

        @m.on("answers")
        def answers(msg):
            for i in range(3):
                msg.reply(i, final=False)
            msg.reply(np.zeros(100_000))  # a large final answer, zero-copy
            handled.append(msg.source)

        m.wait_quiet()
        if m.rank == 0:
            stream = m.request_stream(1, "answers")
            fut = m.request(1, "answers")
            m.flush()
        if m.rank == 1:
            while len(handled) < 2:
                m.progress(0.1)
            m.flush()
        world().Barrier()  # rank 1 has sent every answer; rank 0 handled none
        if m.rank == 0:
            assert stream.cancel() is True and fut.cancel() is True
            assert list(stream) == []
        m.wait_quiet()
        stats = gather_stats(m)
        no_state_left(m)
        assert stats[0]["late_answers"] == 4 + 4  # 3 partial answers and the final, twice
        for s in stats:
            assert s["requests_cancelled"] == 0 and s["answers_cancelled"] == 0


def test_cancel_with_answers_in_flight(mpirun):
    mpirun(2, case_cancel_with_answers_in_flight)


def case_cancel_after_done():
    with cv.Messenger() as m:

        @m.on("two")
        def two(msg):
            msg.reply("a", final=False)
            return "b"

        @m.on("fail")
        def fail(msg):
            raise ValueError("no")

        m.wait_quiet()
        peer = (m.rank + 1) % m.size
        fut = m.request(peer, "two")
        assert fut.result(timeout=20) == "b"
        assert fut.cancel() is False and not fut.cancelled() and fut.result() == "b"
        fut = m.request(peer, "fail")
        assert isinstance(fut.exception(timeout=20), cv.RemoteError)
        assert fut.cancel() is False and not fut.cancelled()
        # A stream whose final answer arrived, not yet read: too late to
        # cancel, and its answers are still there.
        stream = m.request_stream(peer, "two")
        while not stream.done():
            m.progress(0.1)
        assert stream.cancel() is False
        assert list(stream) == ["a", "b"]
        assert stream.cancel() is False
        m.wait_quiet()
        stats = no_state_left(m)
        assert stats["late_answers"] == 0 and stats["requests_cancelled"] == 0


def test_cancel_after_done(mpirun, nranks):
    mpirun(nranks, case_cancel_after_done)


def case_arequest_cancelled_by_asyncio():
    # An awaited arequest given up by asyncio (wait_for's timeout, arequest's
    # own timeout, the task cancelled) cancels its request: the worker sees it.
    async def main():
        async with cv.Messenger() as m:
            w = 1 % m.size
            seen = []
            started = []

            @m.on("slow")
            async def slow(msg):
                started.append(msg.payload)
                while not msg.cancelled:  # works until told to stop
                    await asyncio.sleep(0.005)
                seen.append(msg.payload)
                return "too late"  # dropped, counted

            @m.on("count")
            async def count(msg):
                i = 0
                while not msg.cancelled:
                    msg.reply(i, final=False)
                    i += 1
                    assert i < 10**6
                    await asyncio.sleep(0.002)
                seen.append("count")

            world().Barrier()
            if m.rank == 0:
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(m.arequest(w, "slow", "wait_for"), 0.3)
                with pytest.raises(cv.TimeoutError):
                    await m.arequest(w, "slow", "timeout", timeout=0.3)
                task = asyncio.ensure_future(m.arequest(w, "slow", "task"))
                await asyncio.sleep(0.3)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert m.stats()["pending_requests"] == 0
                # A stream cancelled from inside async for.
                stream = m.request_stream(w, "count", 10**6, timeout=20)
                async for answer in stream:
                    if answer == 3:
                        assert stream.cancel() is True
                        break
                assert m.stats()["pending_requests"] == 0

            await m.aquiet()  # async handlers count until their task ends
            stats = world().allgather(m.stats())
            if m.rank == w:
                assert sorted(seen) == ["count", "task", "timeout", "wait_for"], seen
            for s in stats:
                for key in (
                    "pending_requests",
                    "open_requests",
                    "pending_sends",
                    "pending_receives",
                ):
                    assert s[key] == 0, (key, s)
            assert stats[w]["requests_cancelled"] == 4, stats[w]
            # The return values of the three "slow" handlers and of "count".
            assert stats[w]["answers_cancelled"] == 4, stats[w]

    asyncio.run(main())


def test_arequest_cancelled_by_asyncio(mpirun, nranks):
    mpirun(nranks, case_arequest_cancelled_by_asyncio)
