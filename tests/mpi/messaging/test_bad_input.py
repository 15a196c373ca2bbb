"""Bad input is data, never a crash: malformed frames, unknown tags, errors in handlers."""

import os
import random
import struct

import numpy as np
import pytest

import conveyor as cv
from conveyor._checks import RESERVED_PREFIX
from conveyor._native import core

from _helpers import bare_header, conveyor_warnings, same, wait_quiet_warned


def sample_frames():
    values = [
        None,
        7,
        2**90,
        "text",
        [1, 2.5, (3j, b"x")],
        {"a": np.arange(5)},
        np.arange(3000, dtype=np.float64).reshape(30, 100),
        cv.Address(1, "n", 3),
        np.zeros(3, dtype=[("a", "u8"), ("b", "f4")]),
        memoryview(b"abcd"),
    ]
    frames = []
    for threshold in (16384, 0):
        for v in values:
            frames.append(
                core.testing.encode_frame(core.message.KIND_REQUEST, 9, "tag", v, threshold, False)
            )
    return frames


def mutate(rng, frame):
    data = bytearray(frame)
    op = rng.randrange(5)
    if op == 0 and data:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del data[rng.randrange(len(data) + 1) :]
    elif op == 2:
        pos = rng.randrange(len(data) + 1)
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
    elif op == 3 and data:
        # Overwrite a run with extreme values: huge lengths and counts.
        pos = rng.randrange(len(data))
        data[pos : pos + 8] = rng.choice([b"\xff" * 8, b"\x7f" + b"\xff" * 7, b"\x00" * 8])
    else:
        data = bytearray(rng.randbytes(rng.randrange(64)))
    return bytes(data)


def test_thousands_of_mutated_frames_only_raise_frame_errors():
    rng = random.Random(1234)
    frames = sample_frames()
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(6000):
        frame, oob = rng.choice(frames)
        bad = mutate(rng, frame)
        try:
            core.testing.decode_frame(bad, oob, False)
            outcomes["decoded"] += 1
        except cv.FrameError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 3000, outcomes


def test_truncated_frames_at_every_length_are_rejected():
    for frame, oob in sample_frames():
        for n in range(len(frame)):
            with pytest.raises(cv.FrameError):
                core.testing.decode_frame(frame[:n], oob, False)


def test_frames_cannot_smuggle_object_arrays():
    frame, oob = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", np.zeros(2, dtype="u8"), 1 << 20, False
    )
    evil = frame.replace(b"<u8", b"|O8")
    with pytest.raises(cv.FrameError, match="refused dtype"):
        core.testing.decode_frame(evil, oob, False)


def forged_shape(dtype, last):
    """The frame of an empty ``(0, 1001)`` array of `dtype`, with `last` for the 1001."""
    frame, _ = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", np.zeros((0, 1001), dtype), 1 << 20, False
    )
    return frame.replace((1001).to_bytes(8, "little"), last.to_bytes(8, "little"))


def test_forged_shapes_are_refused_not_overflowed():
    # An empty array (a 0 among its dimensions) whose other dimensions times
    # the item size overflow: the strides would overflow py::ssize_t.
    frame = forged_shape("i4", 2**62)
    with pytest.raises(cv.FrameError, match="overflows"):
        core.testing.decode_frame(frame, [], False)
    # The same dimension alone fits when it can: an empty array decodes.
    (kind, ref, tag, payload) = core.testing.decode_frame(forged_shape("i4", 5), [], False)
    assert payload.shape == (0, 5) and payload.dtype == np.int32


def test_elements_of_no_bytes_are_not_carriageable():
    # A record without fields has items of 0 bytes: 2**62 of them would fit
    # in a 60-byte frame, and a per-item receiver would be called 2**62 times.
    for dtype in (np.dtype([]), np.dtype("V0")):
        with pytest.raises(cv.CarriageError, match="not carriageable"):
            core.testing.encode_frame(
                core.message.KIND_SEND, 0, "t", np.zeros(3, dtype), 1 << 20, False
            )
    frame, oob = core.testing.encode_frame(
        core.message.KIND_SEND, 0, "t", np.zeros(0, "V1"), 1 << 20, False
    )
    evil = frame.replace(b"|V1", b"|V0")
    assert evil != frame
    with pytest.raises(cv.FrameError, match="refused dtype"):
        core.testing.decode_frame(evil, oob, False)


def test_arrays_nested_in_record_descriptions_are_bounded():
    # A record dtype's description is a value, which may hold an array whose
    # dtype is a description again: two bytes a level (the array's type mark,
    # the description's), and the depth limit started anew at each. 10**5
    # levels overflowed the stack (issue 16 item 2; what the fuzzer forges).
    frame, _ = core.testing.encode_frame(core.message.KIND_SEND, 0, "t", None, 1 << 20, False)
    header = frame[:-1]  # None is one byte
    array_mark, description_mark = 14, 1
    for levels in (300, 100_000):
        forged = header + bytes([array_mark, description_mark]) * levels
        with pytest.raises(cv.FrameError, match="nested too deeply"):
            core.testing.decode_frame(forged, [], False)
    # Records nested as deep as a real dtype can be still travel.
    deep = np.dtype("<i4")
    for _ in range(20):
        deep = np.dtype([("f", deep)])
    value = np.zeros(2, deep)
    frame, oob = core.testing.encode_frame(core.message.KIND_SEND, 0, "t", value, 1 << 20, False)
    assert core.testing.decode_frame(frame, oob, False)[3].dtype == deep


def case_malformed_frames_are_counted_and_dropped():
    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        dest = (m.rank + 1) % m.size
        m.send(dest, "ok", 1)
        for junk in (b"", b"\x00" * 3, b"garbage that is not a frame", bytes(range(256))):
            m._transport.engine.post_raw(dest, junk)
        m.send(dest, "ok", 2)
        caught = wait_quiet_warned(m)
        assert got == [1, 2], got
        assert m.stats()["frames_malformed"] == 4
        assert sum("malformed frame" in w for w in caught) == 4
        # The rank keeps serving.
        assert m.request(dest, "echo", "still here").result(timeout=10) == "still here"


def test_malformed_frames_are_counted_and_dropped(mpirun, nranks):
    mpirun(nranks, case_malformed_frames_are_counted_and_dropped)


def announcement(payload, tag):
    """The frame an attacker makes of `payload` with the test hooks, its arrays out of band.

    Return it with the bytes that announce its one buffer (the count, the
    size, and the offset the encoder leaves 0); the 8 bytes of the stamp
    follow them.
    """
    frame, oob = core.testing.encode_frame(core.message.KIND_SEND, 0, tag, payload, 0, False)
    announced = struct.pack("<IQB", 1, payload.nbytes, 0)
    assert len(oob) == 1 and frame.count(announced + bytes(8)) == 1
    return frame, announced


def case_forged_out_of_band_announcements_steal_and_stall_nothing():
    # A forged frame announcing out-of-band data made the receiver post a
    # receive for its source's next data message: that rank's next real
    # large array was delivered as the forged message, and the real one
    # waited for ever with every later message from that rank behind it. A
    # forged size of 2**62 bytes failed the background thread for good. The
    # stamp that ends such a header, which the sender's engine makes, is
    # what the forger cannot make: each one is counted and dropped.
    with cv.Messenger() as m:
        got = []
        m.on("big")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        dest = (m.rank + 1) % m.size
        source = (m.rank - 1) % m.size

        def real(rank):  # what `rank` really sends: 512 KiB, then 768 KiB
            first = np.arange(1 << 16, dtype=np.float64) * (rank + 1) + 0.5
            return first, np.arange(3 << 16, dtype=np.int32).reshape(3, -1) - rank

        first, second = real(m.rank)
        forged, announced = announcement(np.zeros_like(first), "big")  # the same size
        engine = m._transport.engine
        with conveyor_warnings() as caught:
            engine.post_raw(dest, forged)  # the stamp the encoder leaves, 0
            m.send(dest, "big", first)
            engine.post_raw(dest, forged.replace(announced + bytes(8), announced + os.urandom(8)))
            engine.post_raw(dest, forged.replace(announced, struct.pack("<IQB", 1, 2**62, 0)))
            m.send(dest, "big", second)
            m.send(dest, "big", "after")
            m.wait_quiet()
        expected = [*real(source), "after"]
        assert len(got) == 3 and all(same(a, b) for a, b in zip(got, expected)), got
        stats = m.stats()
        assert stats["frames_forged"] == 3 and stats["frames_malformed"] == 0, stats
        assert sum("did not send (a forged frame)" in w for w in caught) == 3, caught
        assert m.request(dest, "echo", "still here").result(timeout=10) == "still here"
        m.wait_quiet()


def test_forged_out_of_band_announcements_steal_and_stall_nothing(mpirun, nranks):
    mpirun(nranks, case_forged_out_of_band_announcements_steal_and_stall_nothing)
    # With windows this small, genuine credits interleave with the genuine
    # announcements in each pair's count of stamped frames.
    small = {"CONVEYOR_DATA_WINDOW_BYTES": str(1 << 20), "CONVEYOR_WINDOW_BYTES": "4096"}
    mpirun(nranks, case_forged_out_of_band_announcements_steal_and_stall_nothing, env=small)


def case_an_array_too_large_to_receive_loses_nothing_else():
    # Rank 1 cannot allocate the 3 GiB that rank 0's genuine message
    # announces (its address space is capped). The message is rejected, as
    # a frame it cannot take; its data, which rank 0 really sends, must not
    # be taken for the next message's: each piece is drained, and what
    # follows arrives whole. The 3 GiB are calloc's zero pages, never read.
    import resource

    with cv.Messenger() as m:
        got = []
        m.on("a")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        following = [np.arange(1 << 18, dtype=np.float64), "after", np.full(1000, 7)]
        if m.rank == 1:
            with open("/proc/self/status") as status:
                vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
            limit = (vm << 10) + (1 << 30)
            resource.setrlimit(
                resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1])
            )
        m.barrier()
        if m.rank == 0:
            m.send(1, "a", np.zeros(3 << 30, dtype=np.uint8))
            for value in following:
                m.send(1, "a", value)
            m.wait_quiet()
        else:
            caught = wait_quiet_warned(m)
            assert len(got) == len(following) and all(map(same, got, following)), got
            assert m.stats()["frames_malformed"] == 1
            assert sum("cannot allocate the out-of-band buffer" in w for w in caught) == 1
        assert m.request(1 - m.rank, "echo", "still here").result(timeout=10) == "still here"


def test_an_array_too_large_to_receive_loses_nothing_else(mpirun):
    mpirun(2, case_an_array_too_large_to_receive_loses_nothing_else, timeout=120)


def case_the_programs_sends_on_comm_never_mix_with_messages():
    # m.comm is the program's: raw MPI messages on it, with the engine's own
    # tags for frames (1) and array data (2), stay there for the program.
    # Sent on the engine's communicator, the data would have been taken for
    # the next array's, and the frame counted as malformed.
    with cv.Messenger() as m:
        got = []
        m.on("a")(lambda msg: got.append(msg.payload))
        real = np.arange(1 << 17, dtype=np.float64)  # 1 MiB, out of band
        raw = [np.full(1 << 17, -1.0), np.frombuffer(b"not a frame" * 8, np.uint8)]
        if m.rank == 0:
            requests = [m.comm.Isend(raw[0], 1, tag=2), m.comm.Isend(raw[1], 1, tag=1)]
            m.send(1, "a", real)
        m.wait_quiet()
        if m.rank == 1:
            assert len(got) == 1 and same(got[0], real)
            assert m.stats()["frames_malformed"] == 0
            for tag, sent in ((2, raw[0]), (1, raw[1])):
                mine = np.empty_like(sent)
                m.comm.Recv(mine, 0, tag=tag)
                assert same(mine, sent)
        else:
            for request in requests:
                request.Wait()
        m.barrier()


def test_the_programs_sends_on_comm_never_mix_with_messages(mpirun):
    mpirun(2, case_the_programs_sends_on_comm_never_mix_with_messages)


KIND_CREDIT = 6


def credit(frames, data, stamp=None):
    """A Credit frame as an attacker writes it: `frames` and `data` bytes consumed, then a stamp."""
    body = struct.pack("<Q", data) + (b"" if stamp is None else struct.pack("<Q", stamp))
    return bare_header(KIND_CREDIT, frames) + body


def in_flight(m, rank):
    """The (frame, data) bytes this rank has in flight to `rank`, not credited yet."""
    for route in m._transport.engine.describe(10.0)["routes"]:
        if route["rank"] == rank:
            return route["in_flight_frame_bytes"], route["in_flight_data_bytes"]
    return 0, 0


def case_forged_credits_change_no_window():
    # A forged credit freed window the receiver never gave (2**62 bytes
    # emptied the sender's count of what is in flight), and, never counted
    # as a finished frame, kept wait_quiet from returning on any rank.
    with cv.Messenger() as m:
        m.on("small")(lambda msg: None)
        dest = (m.rank + 1) % m.size
        source = (m.rank - 1) % m.size
        engine = m._transport.engine
        with conveyor_warnings() as caught:
            for i in range(50):
                m.send(dest, "small", i)
            m.flush()
            engine.post_raw(source, credit(2**62, 2**62, stamp=0))
            engine.post_raw(source, credit(1, 0, stamp=int.from_bytes(os.urandom(8), "little")))
            engine.post_raw(source, credit(0, 0))  # "credit, please", without a stamp
            # Far below a quarter of the window: no genuine credit comes meanwhile.
            before = in_flight(m, dest)
            assert before[0] > 0, before
            while m.stats()["frames_forged"] < 3:
                m.progress(0.01)
            assert in_flight(m, dest) == before
            m.wait_quiet()
        assert m.stats()["frames_forged"] == 3
        assert sum("a credit that rank" in w and "forged" in w for w in caught) == 3, caught


def test_forged_credits_change_no_window(mpirun, nranks):
    mpirun(nranks, case_forged_credits_change_no_window)


def case_remote_errors():
    with cv.Messenger() as m:

        @m.on("fail")
        def fail(msg):
            raise KeyError(f"no such thing: {msg.payload}")

        m.on("echo")(lambda msg: msg.payload)
        m.on("bad_answer")(lambda msg: object())
        peer = (m.rank + 1) % m.size

        with pytest.raises(cv.RemoteError) as info:
            m.request(peer, "fail", "x").result(timeout=10)
        err = info.value
        assert (err.rank, err.remote_type) == (peer, "KeyError")
        assert "no such thing: x" in err.remote_message
        assert "raise KeyError" in err.remote_traceback and "in fail" in err.remote_traceback
        assert isinstance(err, cv.ConveyorError)

        with pytest.raises(cv.UnknownTagError, match="no receiver for tag 'nowhere'"):
            m.request(peer, "nowhere", 1).result(timeout=10)

        with pytest.raises(cv.RemoteError, match="not carriageable"):
            m.request(peer, "bad_answer").result(timeout=10)

        # The remote rank keeps serving after all of that.
        assert m.request(peer, "echo", [1, 2]).result(timeout=10) == [1, 2]
        m.wait_quiet()
        assert m.stats()["handler_errors"] == 2


def test_remote_errors(mpirun, nranks):
    mpirun(nranks, case_remote_errors)


def case_fire_and_forget_problems_are_reported():
    with cv.Messenger() as m:
        m.on("boom")(lambda msg: 1 / 0)
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        peer = (m.rank + 1) % m.size
        with conveyor_warnings() as caught:
            m.send(peer, "unknown-tag", 1)
            m.send(peer, "unknown-tag", 2)
            m.send(peer, "boom", 3)
            m.send(peer, "ok", 4)
            m.wait_quiet()
        assert got == [4]
        stats = m.stats()
        assert stats["unknown_tag"] == 2 and stats["handler_errors"] == 1
        # One warning per unknown tag, not one per message.
        assert sum("unknown-tag" in w for w in caught) == 1


def test_fire_and_forget_problems_are_reported(mpirun, nranks):
    result = mpirun(nranks, case_fire_and_forget_problems_are_reported)
    assert result.stderr.count("ZeroDivisionError") == nranks


def case_timeouts():
    with cv.Messenger() as m:
        pending = []

        @m.on("later")
        def later(msg):
            msg.defer()
            pending.append(msg)

        peer = (m.rank + 1) % m.size
        fut = m.request(peer, "later", 5)
        with pytest.raises(cv.TimeoutError):
            fut.result(timeout=0.2)
        with pytest.raises(TimeoutError):  # also the built-in
            fut.result(timeout=0.05)
        assert not fut.done()
        m.comm.Barrier()
        m.progress(0.5)
        for msg in pending:
            msg.reply(msg.payload * 2)
        assert fut.result(timeout=10) == 10


def test_timeouts(mpirun, nranks):
    mpirun(nranks, case_timeouts)


def test_wrong_arguments_are_clear_errors():
    with cv.Messenger() as m:
        with pytest.raises(ValueError, match="out of range"):
            m.send(1, "x", 1)
        with pytest.raises(ValueError, match="out of range"):
            m.request(-1, "x", 1)
        with pytest.raises(TypeError, match="rank must be an int"):
            m.send("0", "x", 1)
        with pytest.raises(TypeError, match="tag must be a str"):
            m.send(0, 5, 1)
        with pytest.raises(ValueError, match="empty"):
            m.on("")
        with pytest.raises(TypeError, match="receive"):
            m.register("r", object())
        m.on("taken")(print)
        with pytest.raises(ValueError, match="already registered"):
            m.on("taken")(print)
        with pytest.raises(TypeError, match="takes no tag"):
            m.send(cv.Address(0, "taken"), "tag", 1)
        with pytest.raises(TypeError, match="1-D integer"):
            m.sender("taken").send_many(np.zeros(3), np.zeros(3))
        with pytest.raises(ValueError, match="out of range"):
            m.sender("taken").send_many(np.array([0, 5]), np.zeros(2))
        with pytest.raises(ValueError, match="one row per destination"):
            m.sender("taken").send_many(np.array([0, 0]), np.zeros(3))
        with pytest.raises(cv.ConveyorError, match="not a request"):
            cv.Message(m, "t", None, 0, None).reply(1)
        with pytest.raises(cv.ConveyorError, match="handler"):
            m.on("collective")(lambda msg: m.wait_quiet())
            m.request(0, "collective").result(timeout=5)
    with pytest.raises(cv.ConveyorError, match="closed"):
        m.send(0, "x", 1)
    with pytest.raises(TypeError, match="Intracomm"):
        cv.Messenger(comm="world")


def test_oversize_message_is_refused_before_sending(monkeypatch):
    monkeypatch.setenv("CONVEYOR_MAX_FRAME_BYTES", "4096")
    with cv.Messenger() as m:
        with pytest.raises(cv.MessageTooLargeError, match="exceeds the limit"):
            m.send(0, "x", list(range(1000)))
        # Arrays travel out of band, so they are not limited by the frame size.
        got = []
        m.on("x")(lambda msg: got.append(msg.payload))
        m.send(0, "x", np.zeros(1 << 20))
        m.wait_quiet()
        assert got[0].shape == (1 << 20,)


def test_the_engines_vectorcall_entry_points_refuse_bad_arguments():
    # Engine.send, Engine.serve and Engine.wait parse their own arguments
    # (no pybind11 dispatch): a wrong one is a Python error, and nothing is
    # sent.
    from conveyor._native import core

    kind = core.message.KIND_SEND
    with cv.Messenger() as m:
        got = []
        m.on("x")(lambda msg: got.append(msg.payload))
        engine, dispatch = m._transport.engine, m._transport.dispatch
        bad_sends = [
            ((0, kind, 0, "x", 1), TypeError, "takes 6 arguments"),
            ((0, kind, 0, b"x", 1, True), TypeError, "tag must be a str"),
            (("0", kind, 0, "x", 1, True), TypeError, "destination rank must be an int"),
            ((1, kind, 0, "x", 1, True), ValueError, "out of range"),
            ((0, kind, -1, "x", 1, True), OverflowError, None),
            ((0, 99, 0, "x", 1, True), ValueError, "kind"),
            ((0, kind, 0, "x", object(), True), cv.CarriageError, None),
        ]
        for args, error, match in bad_sends:
            with pytest.raises(error, match=match):
                engine.send(*args)
        for args, error, match in [
            ((0.0, -1), TypeError, "3 or 4 arguments"),
            (("now", -1, dispatch), TypeError, "must be real number"),
            ((0.0, -2, dispatch), ValueError, "uncongested"),
            ((0.0, 2**40, dispatch), ValueError, "uncongested"),
        ]:
            with pytest.raises(error, match=match):
                engine.serve(*args)
        assert m.stats()["messages_sent"] == 0
        fut = m.request(0, "x")  # answered with None once served
        for args, error, match in [
            ((fut, 0.0, 0.1, dispatch), TypeError, "takes 5 arguments"),
            ((fut, "soon", 0.1, dispatch, None), TypeError, "must be real number"),
            ((fut, 0.0, 0.0, dispatch, None), ValueError, "slice must be"),
            ((fut, 0.0, 0.1, dispatch, 1), TypeError, "check must be callable"),
        ]:
            with pytest.raises(error, match=match):
                engine.wait(*args)
        checks = []
        assert engine.wait(fut, 10.0, 0.1, dispatch, lambda: checks.append(1)) is True
        assert fut.result() is None and checks  # called before each native wait
        # A waiter is asked after each serve (its caller found it not
        # ready): one that cannot be asked is refused then.
        with pytest.raises(AttributeError, match="_ready"):
            engine.wait(object(), 10.0, 0.1, dispatch, None)
        with pytest.raises(ZeroDivisionError):  # the check's error ends the wait
            engine.wait(m.request(0, "x"), 10.0, 0.1, dispatch, lambda: 1 / 0)
        m.wait_quiet()
        assert got == [None, None]
        got.clear()
        sent = m.stats()["messages_sent"]
        assert engine.send(0, kind, 0, "x", 1, True) is False
        assert engine.serve(0.0, -1, dispatch, True) == 1
        assert got == [1] and m.stats()["messages_sent"] == sent + 1


def test_bad_environment_values_are_clear(monkeypatch):
    monkeypatch.setenv("CONVEYOR_ZERO_COPY_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="CONVEYOR_ZERO_COPY_THRESHOLD"):
        cv.Messenger()


@pytest.mark.parametrize("name", ["CONVEYOR_WINDOW_POOL_BYTES", "CONVEYOR_DATA_WINDOW_POOL_BYTES"])
@pytest.mark.parametrize("value,why", [("lots", "not a valid int"), ("-1", "must be >= 0")])
def test_bad_pool_sizes_are_clear(monkeypatch, name, value, why):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}.*{why}"):
        cv.Messenger()


def case_uncaught_exception_aborts_the_job():
    with cv.Messenger() as m:
        if m.rank == m.size - 1:
            raise RuntimeError("rank failed on purpose")
        m.wait_quiet()  # would wait forever for the failed rank


def test_uncaught_exception_aborts_the_job():
    import sys

    from conftest import mpiexec, run_command

    script = (
        "import conveyor as cv\n"
        "with cv.Messenger() as m:\n"
        "    if m.rank == m.size - 1:\n"
        "        raise RuntimeError('rank failed on purpose')\n"
        "    m.wait_quiet()\n"
    )
    proc = run_command([mpiexec(), "-n", "3", sys.executable, "-c", script])
    assert proc.returncode != 0
    assert "RuntimeError: rank failed on purpose" in proc.stderr
    assert "Traceback" in proc.stderr


def test_address_and_messenger_arguments_are_checked():
    with pytest.raises(ValueError, match=">= 0"):
        cv.Address(-1, "x")
    with pytest.raises(TypeError, match="name must be a str"):
        cv.Address(0, 5)
    with pytest.raises(TypeError):
        cv.Address("0", "x")
    with pytest.raises(AttributeError, match="immutable"):
        cv.Address(0, "x").rank = 1
    with pytest.raises(ValueError, match="zero_copy_threshold"):
        cv.Messenger(zero_copy_threshold=-1)
    with pytest.raises(TypeError):
        cv.Messenger(zero_copy_threshold=1.5)
    with cv.Messenger() as m:
        with pytest.raises(ValueError, match="out of range"):
            m.send(cv.Address(3, "x"), 1)


# -- issue 16: forged frames and bad arguments ---------------------------------


def case_reserved_tags_are_unreachable_from_user_sends(marker):
    import asyncio
    import pathlib

    from conveyor import _pickling
    from conveyor._tags import CHUNK_TASK, ITEM_ORDER

    with cv.Messenger() as m:
        peer = (m.rank + 1) % m.size
        # What a user would send to make the peer's chunk layer run a function.
        task = {
            "id": 1,
            "weight": 1,
            "length": None,
            "function": _pickling.dumps(lambda: pathlib.Path(marker).touch()),
            "args": [],
            "kwargs": {},
            "plan": None,
        }
        attempts = [
            lambda: m.send(peer, CHUNK_TASK, task),
            lambda: m.send(cv.Address(peer, CHUNK_TASK), task),
            lambda: m.request(peer, CHUNK_TASK, task),
            lambda: m.request(cv.Address(peer, CHUNK_TASK), task),
            lambda: m.request_stream(peer, CHUNK_TASK, task),
            lambda: asyncio.run(m.arequest(peer, CHUNK_TASK, task)),
            lambda: m.sender(CHUNK_TASK),
            lambda: cv.Transfer("item", peer, then=(peer, CHUNK_TASK, task)),
        ]
        for attempt in attempts:
            with pytest.raises(ValueError, match="reserved for conveyor"):
                attempt()
        # An order forged past Transfer's check: the peer's follow-up send refuses it.
        m.store.put("item", 1)
        order = {"name": "item", "to": [m.rank], "as": "copy", "move": False}
        order["then"] = (peer, CHUNK_TASK, task)
        with pytest.raises(cv.RemoteError, match="reserved for conveyor"):
            m._requests.request(peer, ITEM_ORDER, order).result(timeout=10)
        # A reply address answers by its reference: it reaches no receiver,
        # whatever name it carries.
        m.send(cv.Address(peer, CHUNK_TASK, ref=12345), task)
        m.wait_quiet()
        assert m.stats()["late_answers"] == 1
        assert m.stats()["pending_requests"] == 0
    assert not pathlib.Path(marker).exists()


def case_reserved_table_names_are_refused_to_users():
    # What owners publish about their chunks lives in the table CHUNK_STATES:
    # a user's put there would tell every rank a chunk's length or error.
    from conveyor._tags import CHUNK_STATES

    with cv.Messenger() as m:
        for name in (CHUNK_STATES, "conveyor.mine"):
            with pytest.raises(ValueError, match="reserved for conveyor"):
                m.table(name)
        x = m.array(np.arange(10.0), chunks=m.size)
        assert (x + 1).sum() == 55.0  # the chunk layer still uses its table
        assert m.table("conveyor-like.but.not.reserved").get("k", 7).result(timeout=30) == 7
        m.wait_quiet()


def test_reserved_table_names_are_refused_to_users(mpirun, nranks):
    mpirun(nranks, case_reserved_table_names_are_refused_to_users)


def test_reserved_tags_are_unreachable_from_user_sends(mpirun, tmp_path):
    marker = tmp_path / "ran"
    mpirun(2, case_reserved_tags_are_unreachable_from_user_sends, marker)
    assert not marker.exists()


def test_a_forged_chunk_error_is_not_unpickled():
    from conveyor._chunks import error_bytes, remote_error

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    import pickle

    err = remote_error(pickle.dumps(Boom()))
    assert (err.rank, err.remote_type) == (-1, "FrameError")
    assert "could not be read" in err.remote_message
    err = remote_error(error_bytes(KeyError("k"), 3, "trace"))
    assert (err.rank, err.remote_type, err.remote_message, err.remote_traceback) == (
        3,
        "KeyError",
        "'k'",
        "trace",
    )


def test_a_forged_error_answer_fails_its_request_clearly():
    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        for report in (5, None, [1, 2], {"kind": "error"}, {"kind": 1, "type": "T"}):
            fut = m.request(0, "later")
            frame, _ = core.testing.encode_frame(
                core.message.KIND_ERROR, fut._ref, "", report, 16384, False
            )
            m._transport.engine.post_raw(0, frame)
            with pytest.raises(cv.FrameError, match="malformed error answer from rank 0"):
                fut.result(timeout=10)
        assert m.stats()["answers_malformed"] == 5
        for msg in held:  # their real answers come late, and are counted so
            msg.reply(None)
        m.wait_quiet()
        assert m.stats()["late_answers"] == 5


def case_an_undecodable_request_is_answered_with_an_error():
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        # A request as a rank with pickle on would frame it (a set: pickled),
        # opened as Requests.open opens one.
        requests = m._requests
        ref = requests._next_ref
        requests._next_ref += 1
        fut = requests.waiters[ref] = cv.Future(requests, peer, ref)
        frame, _ = core.testing.encode_frame(
            core.message.KIND_REQUEST, ref, "echo", {1, 2}, 1 << 30, True
        )
        m._transport.engine.post_raw(peer, frame)
        with pytest.raises(cv.RemoteError, match="not created with pickle=True") as info:
            fut.result(timeout=10)
        assert info.value.remote_type == "FrameError" and info.value.rank == peer
        m.wait_quiet()
        assert m.stats()["payloads_undecodable"] == 1


def test_an_undecodable_request_is_answered_with_an_error(mpirun, nranks):
    mpirun(nranks, case_an_undecodable_request_is_answered_with_an_error)


def case_close_in_a_handler_is_refused():
    with cv.Messenger() as m:
        m.on("close")(lambda msg: m.close())
        m.on("echo")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        with pytest.raises(cv.RemoteError, match="close\\(\\) is collective"):
            m.request(peer, "close").result(timeout=10)
        assert not m.closed
        assert m.request(peer, "echo", 7).result(timeout=10) == 7
    assert m.closed


def test_close_in_a_handler_is_refused(mpirun):
    mpirun(2, case_close_in_a_handler_is_refused)


def case_a_closed_messenger_refuses_to_serve():
    # progress() leaves the check to the engine, which refuses once closed.
    for serve in ("inline", "thread"):
        m = cv.Messenger(serve=serve)
        m.close()
        for timeout in (0, 0.5, None):
            with pytest.raises(cv.ConveyorError, match="closed"):
                m.progress(timeout)


def test_a_closed_messenger_refuses_to_serve(mpirun):
    mpirun(2, case_a_closed_messenger_refuses_to_serve)


def case_nan_and_negative_timeouts_are_refused():
    import asyncio
    import math

    with cv.Messenger() as m:
        held = []
        m.on("later")(lambda msg: (msg.defer(), held.append(msg)))
        fut = m.request(0, "later")
        wait = m.table("t").wait("k")
        for bad in (math.nan, -1, -math.inf):
            with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
                fut.result(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                fut.exception(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                wait.result(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                m.progress(bad)
            with pytest.raises(ValueError, match="timeout"):
                m.request_stream(0, "later", timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                asyncio.run(m.arequest(0, "later", timeout=bad))
        with pytest.raises(TypeError, match="timeout must be a number"):
            fut.result(timeout="5")
        # Nothing was sent by the refused calls.
        assert m.stats()["pending_requests"] == 2
        # Infinity is no limit.
        m.table("t").put("k", 1).result(timeout=math.inf)
        assert wait.result(timeout=math.inf) == 1
        held[0].reply(2)
        assert fut.result(timeout=math.inf) == 2


def test_nan_and_negative_timeouts_are_refused(mpirun):
    # Under the harness's timeout: before the fix, these waits never ended.
    mpirun(1, case_nan_and_negative_timeouts_are_refused)


def test_environment_values_that_are_not_finite_are_refused(monkeypatch):
    for value in ("nan", "inf", "-inf"):
        monkeypatch.setenv("CONVEYOR_MAX_SLEEP_US", value)
        with pytest.raises(ValueError, match="CONVEYOR_MAX_SLEEP_US.*finite"):
            cv.Messenger()


def test_unknown_tags_do_not_grow_memory():
    with cv.Messenger() as m:
        with conveyor_warnings() as caught:
            for i in range(10_000):
                m.send(0, f"nowhere-{i}", i)
            m.wait_quiet()
        assert m.stats()["unknown_tag"] == 10_000
        # One warning per tag for the first 100, then one that says the rest go unsaid.
        texts = caught
        assert len(texts) == 101, len(texts)
        assert "no receiver for tag 'nowhere-99'" in texts[99]
        assert "more than 100 different messages dropped" in texts[100]
        assert len(m._dispatch._warned) == 101


def test_request_references_out_of_range_are_clear_errors():
    for ref in (-1, 2**64):
        with pytest.raises(ValueError, match="request reference must be in 0..2\\*\\*64-1"):
            cv.Address(0, "x", ref=ref)
    with pytest.raises(TypeError, match="request reference must be an int"):
        cv.Address(0, "x", ref=1.5)
    with cv.Messenger() as m:
        m.send(cv.Address(0, "x", ref=2**64 - 1), 1)  # answers no request: a late answer
        m.wait_quiet()
        assert m.stats()["late_answers"] == 1


class Tag(str):
    def __eq__(self, other):  # a hostile subclass: equal to every str
        return isinstance(other, str)

    __hash__ = str.__hash__


def case_a_request_to_a_tag_requested_before():
    # m.request to a tag it requested before goes in C from its checks to
    # its Future (Requests.try_request); whatever that path does not take
    # still gets the checks of m.request's own path, and a request that
    # cannot leave leaves no open request behind.
    with cv.Messenger() as m:
        m.on("t")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        assert m.request(peer, "t", 0).result(timeout=30) == 0  # "t" is known from now on
        assert m._requests.user_tags == {"t"}
        assert m.request(peer, "t").result(timeout=30) is None  # no payload: None
        assert m.request(np.int64(peer), "t", 2).result(timeout=30) == 2
        assert m.request(peer, Tag("t"), 3).result(timeout=30) == 3
        assert m._requests.user_tags == {"t"}  # never a str subclass
        for dest in ("1", 1.0, None, [peer]):
            with pytest.raises(TypeError, match="destination rank must be an int"):
                m.request(dest, "t", 1)
        for dest in (m.size, -1, 2**70, -(2**70)):
            with pytest.raises(ValueError, match="out of range"):
                m.request(dest, "t", 1)
        for tag in (RESERVED_PREFIX + "t", Tag(RESERVED_PREFIX)):
            with pytest.raises(ValueError, match="reserved"):
                m.request(peer, tag, 1)
        with pytest.raises(cv.CarriageError):
            m.request(peer, "t", object())
        assert len(m._requests) == 0  # the unsent request is not open
        m.wait_quiet()
        assert m.stats()["frames_malformed"] == 0
    with pytest.raises(cv.ConveyorError, match="closed"):
        m.request(peer, "t", 5)
    assert len(m._requests) == 0


def test_a_request_to_a_tag_requested_before(mpirun, nranks):
    mpirun(nranks, case_a_request_to_a_tag_requested_before)
