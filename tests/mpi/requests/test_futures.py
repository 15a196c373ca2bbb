"""Futures as the standard library knows them, typed remote errors, and waits that end on time.

`cv.Future` is a `concurrent.futures.Future`: its contract (cancel,
exception, running), the standard helpers, and `asyncio.wrap_future`. A
remote built-in exception is caught by its own type; missing table keys and
store items are KeyErrors (or a default). A wait returns as soon as its
answer is there and starts no message after its deadline. No assertion
depends on timing: a handler's sleep only makes it outlast a timeout.
"""

import asyncio
import collections
import concurrent.futures
import pickle
import signal
import sys
import time
import warnings

import pytest

import conveyor as cv
from conveyor import _errors
from conveyor._native import core

from _helpers import world


class Custom(Exception):
    pass


def raiser(msg):
    kind = msg.payload
    if kind == "custom":
        raise Custom("mine")
    if kind == "os":
        raise FileNotFoundError(2, "no such file", "/nope")
    raise {"value": ValueError, "zero": ZeroDivisionError, "key": KeyError}[kind]("boom")


# -- errors keep their type ----------------------------------------------------


def case_remote_errors_keep_their_type():
    with cv.Messenger() as m:
        m.on("raise")(raiser)
        peer = (m.rank + 1) % m.size
        for kind, builtin in (
            ("value", ValueError),
            ("zero", ZeroDivisionError),
            ("key", KeyError),
        ):
            with pytest.raises(builtin) as info:
                m.request(peer, "raise", kind).result(timeout=30)
            err = info.value
            assert isinstance(err, cv.RemoteError) and isinstance(err, cv.ConveyorError)
            assert (err.rank, err.remote_type) == (peer, builtin.__name__)
            assert "in raiser" in err.remote_traceback
            again = pickle.loads(pickle.dumps(err))
            assert type(again) is type(err) and str(again) == str(err)
        # The user's own types and the OSError family: a plain RemoteError.
        for kind, name in (("custom", "Custom"), ("os", "FileNotFoundError")):
            with pytest.raises(cv.RemoteError) as info:
                m.request(peer, "raise", kind).result(timeout=30)
            assert type(info.value) is cv.RemoteError and info.value.remote_type == name
        m.wait_quiet()


def test_remote_errors_keep_their_type(mpirun, nranks):
    mpirun(nranks, case_remote_errors_keep_their_type)


def test_a_forged_error_type_selects_only_a_builtin_exception():
    # The type name comes from the wire: nothing is imported for it, nothing
    # that ends a process is raised, and made-up names are not remembered.
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        made_up = ("os.system", "x" * 10_000, "__import__")
        for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit", *made_up):
            fut = m.request(0, "later")
            report = {"kind": "error", "type": name, "message": "m", "traceback": ""}
            frame, _ = core.testing.encode_frame(
                core.message.KIND_ERROR, fut._ref, "", report, 1 << 20, False
            )
            m._transport.engine.post_raw(0, frame)
            error = fut.exception(timeout=10)
            assert type(error) is cv.RemoteError and error.remote_type == name
        assert not set(made_up) & set(_errors._typed)
        for msg in held:
            msg.reply(None)
        m.wait_quiet()


def test_recycling_warning_is_a_conveyor_warning():
    assert issubclass(cv.RecyclingWarning, cv.ConveyorWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cv.ConveyorWarning)
        with pytest.raises(cv.RecyclingWarning):
            warnings.warn("recycled", cv.RecyclingWarning, stacklevel=1)


def case_missing_keys_and_items_are_key_errors():
    with cv.Messenger() as m:
        t = m.table("t")
        peer = (m.rank + 1) % m.size
        key = ("k", m.rank)
        with pytest.raises(KeyError) as info:
            t.get(key).result(timeout=30)
        assert isinstance(info.value, cv.RemoteError)
        assert info.value.remote_traceback == ""  # nothing failed at the home
        assert t.get(key, default=None).result(timeout=30) is None
        assert t.get(key, "fallback").result(timeout=30) == "fallback"
        with pytest.raises(KeyError):
            t.delete(key).result(timeout=30)
        t.put(key, 7).result(timeout=30)
        assert t.get(key, default=0).result(timeout=30) == 7
        with pytest.raises(KeyError) as info:
            m.fetch(peer, "no such item").result(timeout=30)
        assert info.value.remote_traceback == "" and info.value.rank == peer
        m.wait_quiet()


def test_missing_keys_and_items_are_key_errors(mpirun, nranks):
    mpirun(nranks, case_missing_keys_and_items_are_key_errors)


# -- the standard contract -----------------------------------------------------


def case_standard_helpers_accept_conveyor_futures():
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        m.on("raise")(raiser)
        peer = (m.rank + 1) % m.size
        futures = [m.request(peer, "echo", i) for i in range(5)]
        failed = m.request(peer, "raise", "value")
        cancelled = m.request(peer, "echo", "never")
        assert cancelled.cancel() and not cancelled.running()
        for f in futures:
            assert isinstance(f, concurrent.futures.Future)
            f.result(timeout=30)  # served inline by this thread, which waits
        failed.exception(timeout=30)
        everything = [*futures, failed, cancelled]
        done, not_done = concurrent.futures.wait(everything, timeout=30)
        assert done == set(everything) and not not_done
        assert set(concurrent.futures.as_completed(everything, timeout=30)) == set(everything)
        assert [f.result() for f in futures] == list(range(5))
        assert failed.done() and isinstance(failed.exception(), ValueError)

        async def main():
            m.attach()  # the loop serves the messenger while wrap_future waits
            try:
                return await asyncio.gather(
                    *(asyncio.wrap_future(m.request(peer, "echo", i)) for i in range(3))
                )
            finally:
                m.detach()

        assert asyncio.run(main()) == [0, 1, 2]
        m.wait_quiet()


def test_standard_helpers_accept_conveyor_futures(mpirun, nranks):
    mpirun(nranks, case_standard_helpers_accept_conveyor_futures)


def test_a_cancelled_future_follows_the_standard_contract():
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        fut = m.request(0, "later")
        seen = []
        fut.add_done_callback(seen.append)
        assert fut.cancel() is True and fut.cancel() is True  # still cancelled
        assert seen == [fut] and fut.cancelled() and fut.done() and not fut.running()
        with pytest.raises(cv.CancelledError):
            fut.exception()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result()
        # wait() knows it is done: cancel() notified the waiters, as an executor would.
        done, _ = concurrent.futures.wait([fut], timeout=0)
        assert done == {fut}
        answered = m.request(0, "later")
        m.progress(1)
        held.pop().reply(1)
        assert answered.result(timeout=10) == 1 and answered.cancel() is False
        m.wait_quiet()


def test_a_callback_must_be_callable_and_ranks_not_negative():
    # Refused at once, rather than failing later in a log record or an order.
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        fut = m.request(0, "echo", 1)
        with pytest.raises(TypeError, match="must be callable, not int"):
            fut.add_done_callback(5)
        assert fut.result(timeout=10) == 1
        for make in (lambda: cv.Copy("item", -1), lambda: cv.Move("item", [0, -2])):
            with pytest.raises(ValueError, match="must be >= 0"):
                make()
        m.wait_quiet()


def test_a_callback_that_raises_is_logged_and_handling_goes_on(caplog):
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        fut = m.request(0, "echo", 1)
        fut.add_done_callback(lambda f: 1 / 0)
        assert fut.result(timeout=10) == 1
        assert "exception calling callback" in caplog.text
        m.wait_quiet()


def test_callbacks_added_while_answers_arrive_are_each_called_once():
    # The service thread finishes futures without a lock while this thread
    # adds callbacks, before, during or after each answer (a switch interval
    # of a microsecond makes the threads interleave between any two bytecodes).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with cv.Messenger(serve="thread") as m:
            m.on("echo")(lambda msg: msg.payload)
            calls = collections.Counter()
            futures = [m.request(0, "echo", i) for i in range(2000)]
            for i, fut in enumerate(futures):
                fut.add_done_callback(lambda f, i=i: calls.update([i]))
                fut.add_done_callback(lambda f, i=i: calls.update([i]))
            for fut in futures:
                fut.result(timeout=60)
            # Its answer is handled once every earlier one's callbacks have run.
            m.request(0, "echo", None).result(timeout=60)
            assert calls == collections.Counter({i: 2 for i in range(2000)})
            m.wait_quiet()
    finally:
        sys.setswitchinterval(interval)


# -- waits end on time ---------------------------------------------------------


def case_a_wait_returns_once_answered():
    # Rank 1 answers rank 0's request, then sends it ten messages. Rank 0's
    # wait ends with the answer: the ten are handled afterwards.
    with cv.Messenger() as m:
        handled = []
        m.on("echo")(lambda msg: msg.payload)
        m.on("note")(lambda msg: handled.append(msg.payload))
        if m.rank == 0:
            fut = m.request(1, "echo", "x")
            world().barrier()  # rank 1 has answered and sent the ten
            assert fut.result(timeout=30) == "x"
            assert handled == [], handled
        else:
            while m.stats()["messages_handled"] == 0:
                m.progress(0.1)
            for i in range(10):
                m.send(0, "note", i)
            m.flush()
            world().barrier()
        m.wait_quiet()
        if m.rank == 0:
            assert handled == list(range(10))


def test_a_wait_returns_once_answered(mpirun):
    mpirun(2, case_a_wait_returns_once_answered)


def case_a_wait_starts_no_handler_after_its_deadline():
    # Ten slow messages wait for rank 0 when it waits 0.1 s for an answer
    # that does not come: it starts the first (0.3 s), then stops.
    with cv.Messenger() as m:
        handled = []
        held = []

        @m.on("slow")
        def slow(msg):
            time.sleep(0.3)
            handled.append(msg.payload)

        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        if m.rank == 1:
            for i in range(10):
                m.send(0, "slow", i)
            m.flush()
        world().barrier()
        if m.rank == 0:
            fut = m.request(1, "later")
            with pytest.raises(cv.TimeoutError):
                fut.result(timeout=0.1)
            assert len(handled) <= 1, handled
        world().barrier()
        if m.rank == 1:
            while not held:
                m.progress(0.1)
            held.pop().reply("late")
        else:
            assert fut.result(timeout=60) == "late"
        m.wait_quiet()
        if m.rank == 0:
            assert handled == list(range(10))


def test_a_wait_starts_no_handler_after_its_deadline(mpirun):
    mpirun(2, case_a_wait_starts_no_handler_after_its_deadline)


def case_a_new_future_is_not_taken_for_the_one_answered_before():
    # A wait ends without asking the future once the reply it just handed
    # over was that future's. A future made right after an answered one is
    # freed often takes its memory: its wait must not be taken for answered
    # (nor in a wait nested in a handler, which hands over answers of its own).
    with cv.Messenger() as m:
        held = []
        m.on("echo")(lambda msg: msg.payload)
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))

        @m.on("nested")
        def nested(msg):
            return m.request(msg.source, "echo", msg.payload).result(timeout=60)

        peer = (m.rank + 1) % m.size
        for i in range(20):
            assert m.request(peer, "echo", i).result(timeout=60) == i
            fut = m.request(peer, "later", i)
            with pytest.raises(cv.TimeoutError):
                fut.result(timeout=0.01)
            assert not fut.done()
            assert m.request(peer, "nested", i).result(timeout=60) == i
            # No rank answers a "later" before every rank's wait for its own
            # timed out; wait_quiet serves the "nested" requests still
            # coming, and the "later" that came before each.
            m.wait_quiet()
            assert len(held) == i + 1
            held[i].reply(i)
            assert fut.result(timeout=60) == i
        m.wait_quiet()


def test_a_new_future_is_not_taken_for_the_one_answered_before(mpirun, nranks):
    mpirun(nranks, case_a_new_future_is_not_taken_for_the_one_answered_before)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_a_signal_ends_a_wait_and_the_request_stays_open(timeout):
    # The wait loops in C++ (Engine.wait), between native waits of at most
    # WAIT_SLICE: a signal's Python handler still runs, and its exception
    # ends the wait (as Ctrl-C's KeyboardInterrupt does).
    def interrupt(signum, frame):
        raise Interrupted

    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        fut = m.request(0, "later")
        previous = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                fut.result(timeout=timeout)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        assert not fut.done() and len(held) == 1
        held.pop().reply("late")
        assert fut.result(timeout=30) == "late"
