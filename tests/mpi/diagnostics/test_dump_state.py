"""A hung job explains itself: dump_state, timeouts that carry it, SIGUSR1, slow handlers.

Rank 1's handler of ``stall`` waits for a table key that rank 0 sets only
once it has looked at its own state: until then rank 0's request to rank 1
has no answer, and the job is not quiet. SIGUSR1 is sent by each test to
its own process. No assertion depends on timing but a slow handler's sleep
of 0.5 s against a threshold of 0.05 s.
"""

import logging
import os
import signal
import sys
import threading
import time

import pytest

import conveyor as cv
from conveyor._diagnostics import RankState

GATE = ("gate", "open")  # (table, key) the stalled handler waits for


class Captured(logging.Handler):
    """The records of the ``conveyor`` logger, while it is installed (a context manager)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def texts(self, level=logging.WARNING):
        return [r.getMessage() for r in self.records if r.levelno == level]

    def __enter__(self):
        logging.getLogger("conveyor").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("conveyor").removeHandler(self)


def stall_handler(m, seen):
    def stall(msg):
        # What this rank says while the handler runs: the request it answers.
        state = m.dump_state()
        seen.append(state)
        m.table(GATE[0]).wait(GATE[1]).result(timeout=30)
        return "done"

    return stall


def case_a_pending_request_is_named_by_dumps_and_timeouts():
    with cv.Messenger() as m:
        seen = []
        m.on("stall")(stall_handler(m, seen))
        m.barrier(timeout=30)
        if m.rank == 0:
            fut = m.request(1, "stall", None)
            with pytest.raises(cv.TimeoutError) as info:
                fut.result(timeout=0.2)
            error = info.value
            assert isinstance(error, TimeoutError)  # the type callers catch
            state = error.state
            assert isinstance(state, RankState) and (state.rank, state.size) == (0, m.size)
            stalled = [p for p in state.pending if p.tag == "stall"]
            assert len(stalled) == 1 and stalled[0].dest == 1 and stalled[0].age >= 0.2, state
            if sys.version_info >= (3, 11):
                assert str(state) in error.__notes__
            text = str(m.dump_state())
            assert "to rank 1, tag 'stall'" in text, text
            assert text.startswith(f"conveyor: rank 0 of {m.size} (inline")
            # Not quiet while rank 1's handler stalls: wait_quiet times out,
            # with the same dump.
            with pytest.raises(cv.TimeoutError) as info:
                m.wait_quiet(timeout=0.2)
            assert "to rank 1, tag 'stall'" in str(info.value.state)
            assert "not quiet within 0.2 s" in str(info.value)
            m.table(GATE[0]).put(GATE[1], True)
            assert fut.result(timeout=30) == "done"
            assert m.dump_state().pending == ()
        m.wait_quiet()  # rank 0's joins the wave its timed-out call left running
        if m.rank == 1:
            (state,) = seen
            running = [r for r in state.answering if r.tag == "stall"]
            assert len(running) == 1 and running[0].source == 0 and running[0].running, state
            assert state.handling == 1
            assert "from rank 0, tag 'stall', handler running" in str(state)
        # Rank 1 held the table wait of its own handler if the key's home is
        # rank 1; whichever rank it is, it held it there and nothing is left.
        final = m.dump_state()
        assert final.pending == () and final.answering == () and final.table_waits == ()


@pytest.mark.parametrize("n", [2, 3])
def test_a_pending_request_is_named_by_dumps_and_timeouts(mpirun, n):
    mpirun(n, case_a_pending_request_is_named_by_dumps_and_timeouts)


def case_a_deferred_request_and_a_table_wait_show_where_they_are_held():
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        m.barrier(timeout=30)
        peer = (m.rank + 1) % m.size
        fut = m.request(peer, "later", m.rank)
        waits = m.table("t").wait(("k", m.rank))
        # Every rank's request and wait have been handled where they went.
        m.wait_quiet()
        state = m.dump_state()
        deferred = [r for r in state.answering if r.tag == "later"]
        source = (m.rank - 1) % m.size
        assert [(r.source, r.running) for r in deferred] == [(source, False)], state
        assert f"from rank {source}, tag 'later', deferred" in str(state)
        # Each rank's wait is held by its key's home, whichever rank that is.
        held_here = [w for w in state.table_waits if w.table == "t"]
        assert all(w.key[0] == "k" and w.waits == 1 for w in held_here), state
        assert m.allreduce(len(held_here), timeout=30) == m.size
        m.barrier(timeout=30)
        held[0].reply("ok")
        m.table("t").put(("k", m.rank), 1)
        assert fut.result(timeout=30) == "ok" and waits.result(timeout=30) == 1
        m.wait_quiet()
        state = m.dump_state()
        assert state.answering == () and state.table_waits == () and state.pending == ()


def test_a_deferred_request_and_a_table_wait_show_where_they_are_held(mpirun, nranks):
    mpirun(nranks, case_a_deferred_request_and_a_table_wait_show_where_they_are_held)


def case_slow_handlers_are_logged_with_tag_and_source():
    with Captured() as log, cv.Messenger() as m:
        m.on("slow")(lambda msg: time.sleep(0.5))
        m.on("fast")(lambda msg: msg.payload)
        m.barrier(timeout=30)
        if m.rank == 0:
            m.send(1, "slow")
            m.send(1, "fast", 1)
            assert m.request(1, "fast", 2).result(timeout=30) == 2
        m.wait_quiet()
        warned = log.texts()
        if m.rank == 1:
            assert len(warned) == 2, warned  # while it runs, then once it returned
            assert "the receiver of 'slow' has run for" in warned[0]
            assert "the receiver of 'slow' took" in warned[1]
            assert all("(message from rank 0;" in w and "rank 1:" in w for w in warned)
        else:
            assert warned == []


def test_slow_handlers_are_logged_with_tag_and_source(mpirun):
    mpirun(
        2,
        case_slow_handlers_are_logged_with_tag_and_source,
        env={"CONVEYOR_SLOW_HANDLER_S": "0.05"},
    )


# -- in this process: one rank -------------------------------------------------


def logged_after_signal(log, deadline=10.0):
    # The handler runs in this (main) thread at the next bytecode; look a while.
    end = time.monotonic() + deadline
    while not log.texts() and time.monotonic() < end:
        time.sleep(0.001)
    return log.texts()


def test_sigusr1_logs_the_state_of_every_open_messenger():
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    with Captured() as log, cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        fut = m.request(0, "later")
        m.progress(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)
        (text,) = logged_after_signal(log)
        assert text.startswith(
            f"conveyor: SIGUSR1 (pid {os.getpid()}):\nconveyor: rank 0 of 1 (inline)"
        )
        assert "#1 to rank 0, tag 'later'" in text and "deferred" in text
        assert "the main thread was at:" in text and "in test_sigusr1_logs_the_state" in text
        assert log.records[0].levelno == logging.WARNING
        held[0].reply(1)
        assert fut.result(timeout=30) == 1
    # Removed on close: the signal would end the process again.
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_sigusr1_while_a_handler_runs_or_a_service_thread_serves():
    # The dump must not wait for a lock the interrupted code holds: the
    # signal arrives inside a handler, dispatched from the engine's serve.
    with Captured() as log, cv.Messenger() as m:
        m.on("signal")(lambda msg: (os.kill(os.getpid(), signal.SIGUSR1), time.sleep(0.05)))
        assert m.request(0, "signal").result(timeout=30) == (None, None)
        (text,) = logged_after_signal(log)
        assert "from rank 0, tag 'signal', handler running" in text
    with Captured() as log, cv.Messenger(serve="thread") as m:
        m.on("echo")(lambda msg: msg.payload)
        futures = [m.request(0, "echo", i) for i in range(200)]
        os.kill(os.getpid(), signal.SIGUSR1)
        (text,) = logged_after_signal(log)
        assert "conveyor: rank 0 of 1 (thread" in text
        assert [f.result(timeout=30) for f in futures] == list(range(200))
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_a_program_with_its_own_sigusr1_handler_keeps_it():
    caught = []

    def own(signum, frame):
        caught.append(signum)

    previous = signal.signal(signal.SIGUSR1, own)
    try:
        with Captured() as log, cv.Messenger():
            assert signal.getsignal(signal.SIGUSR1) is own
            os.kill(os.getpid(), signal.SIGUSR1)
            end = time.monotonic() + 10
            while not caught and time.monotonic() < end:
                time.sleep(0.001)
            assert caught == [signal.SIGUSR1] and log.records == []
        assert signal.getsignal(signal.SIGUSR1) is own
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_sigusr1_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("CONVEYOR_DUMP_ON_SIGUSR1", "0")
    with cv.Messenger():
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_a_messenger_closed_in_another_thread_gives_the_signal_back():
    # The handler stays (only the main thread may remove it) but, with no
    # messenger open, restores the default action and raises the signal
    # again: here the default is replaced by SIG_IGN to observe that.
    m = cv.Messenger()
    closer = threading.Thread(target=m.close)
    closer.start()
    closer.join(30)
    handler = signal.getsignal(signal.SIGUSR1)
    assert handler is not signal.SIG_DFL
    calls = []
    restore = signal.signal
    try:
        # What the handler does, observed without ending this process.
        signal.signal = lambda signum, action: (
            calls.append(action) or restore(signum, signal.SIG_IGN)
        )
        handler(signal.SIGUSR1, None)
    finally:
        signal.signal = restore
        restore(signal.SIGUSR1, signal.SIG_DFL)
    assert calls == [signal.SIG_DFL]


def test_a_slow_handler_warns_and_a_fast_one_does_not(monkeypatch):
    monkeypatch.setenv("CONVEYOR_SLOW_HANDLER_S", "0.05")
    with Captured() as log, cv.Messenger() as m:
        m.on("slow")(lambda msg: time.sleep(0.5))
        m.on("fast")(lambda msg: None)
        m.on("fast_items", per_item=True)(lambda msg: None)
        m.send(0, "fast")
        m.send(0, "fast_items", [1, 2, 3])
        m.request(0, "fast").result(timeout=30)
        assert log.texts() == []
        m.request(0, "slow").result(timeout=30)
        running, took = log.texts()  # while it runs, then once it returned
        assert "rank 0: the receiver of 'slow' has run for" in running
        assert "rank 0: the receiver of 'slow' took" in took and "message from rank 0" in took
        assert "CONVEYOR_SLOW_HANDLER_S=0.05" in took


def test_a_handler_that_does_not_return_is_named_while_it_runs(monkeypatch):
    # A handler that never returned hung the job with nothing said: the
    # slow handler's warning came only once it returned. This one returns
    # only once the warning about it was given (or after 60 s, failing).
    monkeypatch.setenv("CONVEYOR_SLOW_HANDLER_S", "0.05")
    with Captured() as log, cv.Messenger() as m:

        @m.on("stuck")
        def stuck(msg):
            deadline = time.monotonic() + 60
            while not log.texts() and time.monotonic() < deadline:
                time.sleep(0.01)

        m.request(0, "stuck").result(timeout=120)
        text = log.texts()[0]
        assert "rank 0: the receiver of 'stuck' has run for" in text, text
        assert "and not returned (message from rank 0; CONVEYOR_SLOW_HANDLER_S=0.05)" in text


@pytest.mark.parametrize(
    "value, problem",
    [
        ("-1", "must be >= 0"),
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
        ("soon", "is not a valid float"),
    ],
)
def test_a_bad_slow_handler_threshold_is_refused(monkeypatch, value, problem):
    monkeypatch.setenv("CONVEYOR_SLOW_HANDLER_S", value)
    with pytest.raises(ValueError, match="CONVEYOR_SLOW_HANDLER_S") as info:
        cv.Messenger()
    assert problem in str(info.value)


def test_a_handler_error_is_logged_not_printed():
    with Captured() as log, cv.Messenger() as m:
        m.on("boom")(lambda msg: 1 / 0)
        m.send(0, "boom")
        m.wait_quiet()
        (text,) = log.texts(logging.ERROR)
        assert "rank 0: the receiver of 'boom' raised (message from rank 0)" in text
        assert "ZeroDivisionError" in text


def test_without_a_threshold_no_handler_is_timed(monkeypatch):
    monkeypatch.delenv("CONVEYOR_SLOW_HANDLER_S", raising=False)
    with Captured() as log, cv.Messenger() as m:
        m.on("slow")(lambda msg: time.sleep(0.2))
        m.request(0, "slow").result(timeout=30)
        assert log.records == []


def test_a_stream_that_times_out_carries_the_state_too():
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.reply(1, final=False), msg.defer(), held.append(msg)))
        stream = m.request_stream(0, "later", timeout=0.2)
        assert next(stream) == 1
        with pytest.raises(cv.TimeoutError) as info:
            next(stream)
        (pending,) = info.value.state.pending
        assert (pending.tag, pending.stream) == ("later", True)
        held[0].reply(2)
        assert list(stream) == [2]
