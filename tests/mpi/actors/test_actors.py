"""Actors: spawn, lookup, calls one at a time, references that travel, and bad input.

At 1 to 4 ranks. Two ranks spawning one name at once get one actor and one
clear error; references survive pickle and travel in messages; calls that
come while a method waits are held in the actor's mailbox; unknown names,
missing methods, a class that cannot be built: a clear error, and the rank
serves on.
"""

import pickle

import pytest

import conveyor as cv

from _helpers import no_state_left


class Counter:
    def __init__(self, start=0):
        self.value = start
        self.seen = []

    def add(self, n):
        self.value += n
        return self.value

    def note(self, item):
        self.seen.append(item)

    def slow_add(self, n, helper):
        # Waits for another actor while its rank handles messages: calls to
        # this actor meanwhile wait in its mailbox.
        before = self.value
        helper.echo(n).result(timeout=30)
        assert self.value == before  # no call ran in between
        self.value += n
        return self.value

    def history(self):
        return list(self.seen)


class Echo:
    def echo(self, x):
        return x


class Broken:
    def __init__(self):
        raise RuntimeError("cannot build")


def case_spawn_lookup_and_call():
    with cv.Messenger() as m:
        last = m.size - 1
        if m.rank == 0:
            counter = m.spawn(last, Counter, 10, name="counter")
            assert (counter.rank, counter.name) == (last, "counter")
            m.spawn(0, Echo, name="echo")
        m.barrier()
        counter = m.lookup("counter")
        echo = m.lookup("echo")
        assert counter.add(1).result(timeout=30) > 10
        for i in range(5):
            counter.note.send((m.rank, i))
        m.wait_quiet()
        history = counter.history().result(timeout=30)
        for r in range(m.size):  # each rank's notes in the order it sent them
            assert [i for (s, i) in history if s == r] == list(range(5))
        # The mailbox: every rank calls slow_add, which waits inside.
        results = [counter.slow_add(1, echo) for _ in range(3)]
        values = [f.result(timeout=60) for f in results]
        assert values == sorted(values)
        m.wait_quiet()
        final = counter.add(0).result(timeout=30)
        assert final == 10 + m.size + 3 * m.size
        # A reference travels in a message, and survives pickle.
        again = pickle.loads(pickle.dumps(counter))
        assert again == counter and again.add(0).result(timeout=30) == final
        m.on("use")(lambda msg: msg.payload.add(0).result(timeout=30))
        m.barrier()  # serves meanwhile: the actor's rank may still be answering the others
        assert m.request((m.rank + 1) % m.size, "use", counter).result(timeout=30) == final
        m.wait_quiet()
        no_state_left(m)


def test_spawn_lookup_and_call(mpirun, nranks):
    mpirun(nranks, case_spawn_lookup_and_call, timeout=120)


def case_one_name_one_actor():
    # Every rank spawns "singleton" at once: exactly one succeeds.
    with cv.Messenger() as m:
        try:
            ref = m.spawn(m.rank, Counter, m.rank, name="singleton", timeout=30)
            won = 1
        except ValueError as exc:
            assert isinstance(exc, cv.RemoteError) and "exists" in str(exc)
            won = 0
        # The messenger's collectives serve: the name's home may still be
        # needed by the winner's spawn (a plain mpi4py allreduce would deadlock).
        assert m.allreduce(won) == 1
        ref = m.lookup("singleton", timeout=30)
        assert m.allgather(ref.rank) == [ref.rank] * m.size
        m.wait_quiet()


def test_one_name_one_actor(mpirun, nranks):
    mpirun(nranks, case_one_name_one_actor)


def case_bad_input_is_a_clear_error():
    with cv.Messenger() as m:
        m.barrier()
        with pytest.raises(KeyError, match="no actor named"):
            m.lookup(f"nobody-{m.rank}", timeout=30)
        with pytest.raises(RuntimeError, match="cannot build") as info:
            m.spawn(0, Broken, name=f"broken-{m.rank}", timeout=30)
        assert "in __init__" in info.value.remote_traceback
        # The failed spawn freed its name.
        ref = m.spawn(0, Counter, name=f"broken-{m.rank}", timeout=30)
        with pytest.raises(AttributeError):
            ref.no_such_method(1).result(timeout=30)
        with pytest.raises(AttributeError):
            getattr(ref, "_private")  # noqa: B009  # never sent: not a method a reference calls
        with pytest.raises(TypeError):
            ref.add().result(timeout=30)  # a missing argument, raised on the actor's rank
        gone = cv.ActorRef(0, 10**6, None, m)
        with pytest.raises(LookupError, match="no actor"):
            gone.add(1).result(timeout=30)
        with pytest.raises(ValueError, match="non-empty"):
            m.spawn(0, Counter, name="")
        with pytest.raises(ValueError, match="out of range"):
            m.spawn(m.size, Counter)
        from conveyor._tags import ACTOR_CALL, ACTOR_CREATE

        for tag, forged in (
            (ACTOR_CALL, "junk"),
            (ACTOR_CALL, (1, "add", 5, {})),
            (ACTOR_CREATE, ()),
        ):
            with pytest.raises(cv.RemoteError, match="malformed") as info:
                m._requests.request(0, tag, forged).result(timeout=30)
            assert info.value.remote_type == "FrameError"
        assert ref.add(2).result(timeout=30) == 2  # the rank served on
        m.wait_quiet()


def test_bad_input_is_a_clear_error(mpirun, nranks):
    mpirun(nranks, case_bad_input_is_a_clear_error)


def test_a_reference_needs_one_messenger_or_bind():
    ref = cv.ActorRef(0, 1, "x")
    with pytest.raises(cv.ConveyorError, match="0 messengers are open"):
        ref.add(1)
    with cv.Messenger() as m:
        bound = m.spawn(0, Counter).bind(m)
        assert bound.add(3).result(timeout=10) == 3
        m.wait_quiet()
