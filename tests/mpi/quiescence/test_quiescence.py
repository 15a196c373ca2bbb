"""Termination detection counts every message on every dispatch path, once.

`wait_quiet` returns when the messages handled by all ranks equal those
sent. The native dispatcher counts each message as handled when its
dispatch ends, whichever path it took, so no path (native delivery, a
handler that raises, an unknown tag, a reply, a late answer, a malformed
frame, a deferred request) can forget to count: one that did would make
`wait_quiet` hang (a failure here: the harness kills it) or end early.
"""

import warnings

import numpy as np

import conveyor as cv


def total(m, key):
    from mpi4py import MPI

    return m.comm.allreduce(m.stats()[key], op=MPI.SUM)


def case_every_dispatch_path_is_counted_once():
    with cv.Messenger() as m:
        dest = (m.rank + 1) % m.size
        got = []
        deferred = []
        m.on("plain")(lambda msg: got.append(msg.payload))
        m.on("rows", per_item=True)(lambda msg: got.append(int(msg.payload)))
        m.on("raises")(lambda msg: 1 / 0)
        m.on("echo")(lambda msg: msg.payload)

        @m.on("later")
        def later(msg):
            msg.defer()
            deferred.append(msg)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.send(dest, "plain", 1)  # native delivery
            m.sender("rows").send_many(np.full(3, dest), np.arange(3))  # per item
            m.send(dest, "raises")  # failed()
            m.send(dest, "nobody")  # fallback: unknown tag
            m._transport.engine.post_raw(dest, b"not a frame")  # fallback: malformed
            requests = [
                m.request(dest, "echo", 2),  # native reply
                m.request(dest, "raises"),  # finish_request: error
                m.request(dest, "nobody"),  # unknown tag: error answer
                m.request(dest, "later", 3),  # deferred, answered below
            ]
            m.request(dest, "echo", 4).cancel()  # its answer comes late
            while len(deferred) < 1:
                m.progress(0.01)
            deferred[0].reply(deferred[0].payload)
            m.wait_quiet()
        assert requests[0].result() == 2 and requests[3].result() == 3
        for failed in requests[1:3]:
            assert isinstance(failed.exception(), cv.RemoteError)
        assert sorted(got) == [0, 1, 1, 2], got
        # Quiet means balanced: every message sent was counted handled once.
        assert total(m, "messages_handled") == total(m, "messages_sent")
        assert total(m, "late_answers") == m.size
        stats = m.stats()
        assert stats["frames_malformed"] == 1 and stats["unknown_tag"] == 2
        assert stats["handler_errors"] == 2


def test_every_dispatch_path_is_counted_once(mpirun, nranks):
    mpirun(nranks, case_every_dispatch_path_is_counted_once, timeout=60)


def test_the_native_dispatcher_counts_what_the_facade_hands_back():
    # The Python fallback does not count: a message it handles is counted by
    # the native dispatcher alone (one, not two, per message).
    with cv.Messenger() as m:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m._transport.engine.post_raw(0, b"junk")
            m.send(0, "nobody", 1)
            assert m.progress(1.0) >= 1
            while m.stats()["unknown_tag"] < 1:
                m.progress(0.1)
        stats = m.stats()
        assert stats["messages_handled"] == 2 == stats["frames_received"], stats
