"""A hung job explains itself: dump_state, and the timeouts that carry it.

Rank 1's handler of ``stall`` waits for a table key that rank 0 sets only
once it has looked at its own state: until then rank 0's request to rank 1
has no answer, and the job is not quiet. No assertion depends on timing.
"""

import sys

import pytest

import conveyor as cv
from conveyor._diagnostics import RankState

GATE = ("gate", "open")  # (table, key) the stalled handler waits for


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
