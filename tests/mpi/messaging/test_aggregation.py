"""Aggregation of small messages into batches, at 1 to 4 ranks.

Small frames to one rank travel packed in one Batch MPI message; large
arrays bypass batches and stay zero-copy. These tests check that nothing is
lost, duplicated or reordered on the way, that batches leave when the rank
waits, flushes or computes, per-item delivery of `send_many` rows, bad
batches on the wire, and the errors of `Sender.send`.
"""

import struct
import time
import zlib

import numpy as np
import pytest

import conveyor as cv
from conveyor._native import core

from _helpers import bare_header, conveyor_warnings, same, wait_quiet_warned

# Arrays of at least the zero-copy threshold travel out of band (frames of at
# most batch_bytes / 4, 8 KiB by default, are aggregated).
ZERO_COPY_THRESHOLD = 16 * 1024

KIND_BATCH = 5
KIND_CREDIT = 6


# -- deterministic payloads ---------------------------------------------------
# A receiver can rebuild what a (seed, source, index) message must carry, so
# content, order and multiplicity are all checked without shipping a plan.


def mix(*values):
    """A 64-bit FNV-style hash of some ints."""
    h = 0xCBF29CE484222325
    for v in values:
        h = ((h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


SMALL_DTYPES = ["u1", "i2", "i4", "u8", "f4", "f8", "c8", "?"]


def make_value(seed, source, index):
    """Return (value, size class) for message `index` of rank `source`.

    Size classes: "small" (aggregated), "medium" (a frame too big for a
    batch, under the zero-copy threshold) and "large" (an array of at least
    the zero-copy threshold: out of band).
    """
    h = mix(seed, source, index)
    kind, r = h % 100, h >> 8
    if kind < 35:
        value = (r & 0xFFFFFFFF) - (1 << 31)
        if r & (1 << 40):
            value *= 1 << 70  # beyond 64 bits too
        return value, "small"
    if kind < 60:
        text = "ké-" * (r % 13) + str(index)
        return (text.encode() if r & (1 << 41) else text), "small"
    if kind < 88:
        n = r % 150
        dtype = SMALL_DTYPES[(r >> 12) % len(SMALL_DTYPES)]
        return (np.arange(n) + (r >> 20) % 1000).astype(dtype), "small"
    if kind < 94:
        n = 9 * 1024 + r % (5 * 1024)  # 9..14 KiB: inline, not aggregated
        return ((np.arange(n) + r) % 251).astype(np.uint8), "medium"
    n = 2048 + r % 4096  # 16..48 KiB of float64: zero-copy
    return np.arange(n, dtype=np.float64) * 0.5 + index, "large"


def checksum(value):
    if isinstance(value, np.ndarray):
        data = value.dtype.str.encode() + value.tobytes()
    else:
        data = repr(value).encode()
    return zlib.crc32(data)


def wait_until(m, condition, timeout):
    """Serve messages until `condition()` holds or `timeout` s pass; return it."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        m.progress(0.05)
    return condition()


# -- 1. exactly once, in order --------------------------------------------------


def case_exactly_once_in_order(seed, n):
    from mpi4py import MPI

    seed, n = int(seed), int(n)
    world = MPI.COMM_WORLD
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        seqs = [[] for _ in range(size)]  # per source: pair sequence numbers seen
        sums = [0] * size  # per source: checksum of the values
        problems = []

        @m.on("item")
        def item(msg):
            seq, index, value = msg.payload
            if seq < 0:
                return  # the burst at the end
            expected, _ = make_value(seed, msg.source, index)
            if not same(value, expected):
                problems.append((msg.source, index, repr(value)[:80], repr(expected)[:80]))
            seqs[msg.source].append(seq)
            sums[msg.source] += checksum(value)

        m.wait_quiet()
        sender = m.sender("item")
        assert sender.aggregate and m.aggregate
        dests = np.random.default_rng([seed, rank]).integers(0, size, n)
        sent = [0] * size
        sent_sums = [0] * size
        classes = {"small": 0, "medium": 0, "large": 0}
        zero_copy_bytes = 0
        for index in range(n):
            dest = int(dests[index])
            value, cls = make_value(seed, rank, index)
            classes[cls] += 1
            if cls == "large":
                zero_copy_bytes += value.nbytes
            payload = (sent[dest], index, value)
            if mix(seed, rank, index, 7) & 1:
                sender.send(dest, payload)
            else:
                m.send(dest, "item", payload)
            sent[dest] += 1
            sent_sums[dest] += checksum(value)
        m.wait_quiet()

        stats = m.stats()
        expected = world.alltoall(list(zip(sent, sent_sums)))
        assert problems == [], problems[:5]
        for source in range(size):
            count, total = expected[source]
            assert seqs[source] == list(range(count)), (source, count, seqs[source][:30])
            assert sums[source] == total, source
        assert stats["handler_errors"] == 0
        assert stats["messages_sent"] == n
        # Exactly the small messages went into batches, and many per batch.
        assert stats["messages_aggregated"] == classes["small"], (stats, classes)
        assert classes["small"] > n // 2
        assert 0 < stats["batches_sent"] < classes["small"] / 2, stats
        assert stats["bytes_zero_copy_sent"] == zero_copy_bytes
        assert world.allreduce(stats["batches_received"]) == world.allreduce(stats["batches_sent"])

        # A burst of small messages to one rank: many per MPI message.
        world.Barrier()
        burst = 5000
        peer = (rank + 1) % size
        for i in range(burst):
            sender.send(peer, (-1, i, None))
        m.wait_quiet()
        after = m.stats()
        assert after["messages_aggregated"] - stats["messages_aggregated"] == burst
        assert after["batches_sent"] - stats["batches_sent"] <= burst / 20, after


@pytest.mark.parametrize("seed", [11, 2024])
def test_exactly_once_in_order(mpirun, nranks, seed):
    mpirun(nranks, case_exactly_once_in_order, seed, 3000)


# -- 2. aggregation switched off ------------------------------------------------


def case_aggregation_switches(batching):
    """Per Messenger and per Sender; `batching` is "off" with CONVEYOR_BATCH_BYTES=0."""
    batching = batching == "on"
    with cv.Messenger(aggregate=False) as m:
        peer = (m.rank + 1) % m.size
        got = []
        m.on("a")(lambda msg: got.append(msg.payload))
        plain = m.sender("a")
        forced = m.sender("a", aggregate=True)
        assert m.aggregate is False and plain.aggregate is False and forced.aggregate is True
        for i in range(100):
            m.send(peer, "a", i)
            plain.send(peer, 100 + i)
        m.wait_quiet()
        stats = m.stats()
        assert stats["messages_sent"] == 200
        assert stats["messages_aggregated"] == 0 and stats["batches_sent"] == 0, stats
        assert stats["frames_sent"] >= 200  # one MPI message each
        for i in range(100):
            forced.send(peer, 200 + i)
        m.wait_quiet()
        stats = m.stats()
        assert stats["messages_aggregated"] == (100 if batching else 0), stats
        assert got == [x for i in range(100) for x in (i, 100 + i)] + list(range(200, 300))

    with cv.Messenger() as m:  # aggregate=True by default
        assert m.aggregate is True
        rank, size = m.rank, m.size
        seen = {}

        @m.on("b")
        def b(msg):
            source, i = msg.payload[:2]
            assert source == msg.source
            seen.setdefault(source, []).append(i)

        on, off, default = (
            m.sender("b"),
            m.sender("b", aggregate=False),
            m.sender("b", aggregate=None),
        )
        assert (on.aggregate, off.aggregate, default.aggregate) == (True, False, True)
        assert repr(off) == "<conveyor.Sender tag='b' aggregate=False>"
        rng = np.random.default_rng(rank)
        n, aggregated = 2000, 0
        for dest in range(size):
            for i in range(n // size):
                how = rng.integers(4)
                payload = (rank, i)
                if rng.random() < 0.02:
                    payload = (rank, i, np.full(5000, i))  # zero-copy, never aggregated
                elif how != 1:
                    aggregated += 1
                if how == 0:
                    on.send(dest, payload)
                elif how == 1:
                    off.send(dest, payload)
                elif how == 2:
                    default.send(dest, payload)
                else:
                    m.send(dest, "b", payload)
        m.wait_quiet()
        stats = m.stats()
        for source in range(size):
            assert seen[source] == list(range(n // size)), (source, seen[source][:20])
        assert stats["messages_aggregated"] == (aggregated if batching else 0), stats
        if not batching:
            assert stats["batches_sent"] == 0


def test_aggregation_switches(mpirun, nranks):
    mpirun(nranks, case_aggregation_switches, "on")


@pytest.mark.parametrize("n", [1, 3])
def test_batch_bytes_zero_disables_aggregation(mpirun, n):
    mpirun(n, case_aggregation_switches, "off", env={"CONVEYOR_BATCH_BYTES": "0"})


# -- 3. batches leave when the rank waits or flushes -----------------------------


def case_flush_on_wait():
    """Run with the background thread off and a flush delay of 10 s."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    notes = []
    with cv.Messenger() as m:
        assert not m._transport.engine.background
        rank, size = m.rank, m.size
        m.on("echo")(lambda msg: msg.payload)
        m.on("note")(lambda msg: notes.append(msg.payload))
        # A request sits in a batch; waiting for its answer sends it (and the
        # answering rank, waiting in turn, sends the reply).
        for peer in range(size):
            assert m.request(peer, "echo", (rank, peer)).result(timeout=5) == (rank, peer)
        m.wait_quiet()
        if size > 1 and rank == 0:
            m.send(1, "note", "held")
            assert m.stats()["messages_aggregated"] >= size + 1
            world.send("look", dest=1)
            # Rank 1 served for 0.5 s and saw nothing: the batch waits here.
            assert world.recv(source=1) == []
            m.progress()  # no timeout: it only sends and handles what is there
            assert world.recv(source=1) == ["held"]
            m.send(1, "note", "flushed")
            m.flush()
            assert world.recv(source=1) == ["held", "flushed"]
            m.send(1, "note", "closed")  # close() waits, so it sends this one
        elif size > 1 and rank == 1:
            world.recv(source=0)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:
                m.progress(0.05)
            world.send(list(notes), dest=0)
            wait_until(m, lambda: len(notes) == 1, 5)
            world.send(list(notes), dest=0)
            wait_until(m, lambda: len(notes) == 2, 5)
            world.send(list(notes), dest=0)
    if size > 1 and rank == 1:
        assert notes == ["held", "flushed", "closed"]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_flush_on_wait(mpirun, n):
    mpirun(
        n,
        case_flush_on_wait,
        env={"CONVEYOR_FLUSH_DELAY_US": "10000000", "CONVEYOR_BACKGROUND": "0"},
    )


# -- 4. batches leave while the owner computes -----------------------------------


def case_idle_flush(background, sleep):
    """Rank 0 sends one small message, then computes (sleeps) without calling conveyor."""
    background = background == "on"
    sleep = float(sleep)
    with cv.Messenger() as m:
        assert m._transport.engine.background == background  # needs MPI_THREAD_MULTIPLE
        arrivals = []
        m.on("note")(lambda msg: arrivals.append((time.monotonic(), msg.payload)))
        m.wait_quiet()
        if m.rank == 0:
            before = m.stats()["background_flushes"]
            m.send(1, "note", time.monotonic())
            time.sleep(sleep)
            flushes = m.stats()["background_flushes"] - before
            assert flushes >= 1 if background else flushes == 0
        elif m.rank == 1:
            assert wait_until(m, lambda: arrivals, sleep + 10)
            # CLOCK_MONOTONIC is one clock for all processes of a host.
            ((arrived, sent),) = arrivals
            if background:
                assert arrived - sent < sleep - 1.0, f"arrived after {arrived - sent:.3f} s"
            else:
                # Control: without the thread the batch waits for rank 0 to return.
                assert arrived - sent >= sleep - 0.1, f"arrived after {arrived - sent:.3f} s"
        m.wait_quiet()


def test_idle_flush_by_background_thread(mpirun):
    mpirun(2, case_idle_flush, "on", 3.0)


def test_without_background_thread_batch_waits_for_owner(mpirun):
    mpirun(2, case_idle_flush, "off", 1.5, env={"CONVEYOR_BACKGROUND": "0"})


def case_flush_after_doze(pause):
    """Rank 0 computes long enough for its background thread to doze, then sends one
    small message and computes on."""
    pause = float(pause)
    with cv.Messenger() as m:
        arrivals = []
        m.on("note")(lambda msg: arrivals.append((time.monotonic(), msg.payload)))
        m.wait_quiet()
        if m.rank == 0:
            # Nothing in flight: the background's sleeps double from 1 ms, so that
            # 1.5 s in, it is in a sleep of about 1 s that ends about 2 s in.
            time.sleep(pause)
            m.send(1, "note", time.monotonic())
            time.sleep(pause)
        elif m.rank == 1:
            assert wait_until(m, lambda: arrivals, 2 * pause + 10)
            ((arrived, sent),) = arrivals
            # Opening the batch woke the thread: it did not wait for its sleep to end.
            assert arrived - sent < 0.25, f"arrived after {arrived - sent:.3f} s"
        m.wait_quiet()


def test_batch_wakes_a_dozing_background_thread(mpirun):
    mpirun(2, case_flush_after_doze, 1.5, env={"CONVEYOR_BACKGROUND_MAX_SLEEP_US": "10000000"})


def case_background_sleeps_beside_a_busy_owner(seconds):
    """Both owners call in all along (a request/reply loop): their background
    threads have nothing to do, and must not wake each millisecond beside them.
    """
    seconds = float(seconds)
    with cv.Messenger() as m:
        assert m._transport.engine.background  # needs MPI_THREAD_MULTIPLE
        stop = []
        m.on("echo")(lambda msg: msg.payload)
        m.on("stop")(lambda msg: stop.append(True))
        m.wait_quiet()
        before = m.stats()["background_rounds"]
        start = time.monotonic()
        if m.rank == 0:
            while time.monotonic() - start < seconds:
                assert m.request(1, "echo", 7).result(timeout=30) == 7
            m.send(1, "stop")
        else:
            assert wait_until(m, lambda: stop, seconds + 30)
        elapsed = time.monotonic() - start
        rounds = m.stats()["background_rounds"] - before
        # Its sleeps double from 1 ms up to 16 ms while the owner is busy, and
        # only ever last longer than asked: at most a round every 4 ms, after
        # the first few. A round each millisecond (each wait's end waking it)
        # is what this rules out.
        assert rounds <= 10 + elapsed / 0.004, f"{rounds} rounds in {elapsed:.2f} s"
        m.wait_quiet()


def test_background_sleeps_beside_a_busy_owner(mpirun):
    mpirun(2, case_background_sleeps_beside_a_busy_owner, 1.0)


# -- 5. per-item delivery ---------------------------------------------------------

RECORD = np.dtype([("kmer", "u8"), ("count", "u4")])  # 12-byte packed records


def make_rows(source, n, size):
    rng = np.random.default_rng([source, n])
    dests = rng.integers(0, size, n)
    items = np.zeros(n, dtype=RECORD)
    items["kmer"] = (np.uint64(source) << np.uint64(40)) + np.arange(n, dtype=np.uint64) * 7
    items["count"] = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    return dests, items


def case_per_item():
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    with cv.Messenger() as m:
        rank, size = m.rank, m.size
        per_item, whole, by_object = [], [], []

        @m.on("rows", per_item=True)
        def rows(msg):
            per_item.append((msg.source, msg.payload))

        @m.on("arrays")
        def arrays(msg):
            whole.append((msg.source, msg.payload))

        class Tally(cv.Receiver):
            def receive(self, msg):
                by_object.append((msg.source, msg.payload))

        m.register("tally", Tally(), per_item=True)
        m.on("measure", per_item=True)(lambda msg: len(msg.payload))

        # 40 rows: small, aggregated; 8000 rows: >= 16 KiB per rank, zero-copy.
        for n in (40, 8000):
            for log in (per_item, whole, by_object):
                log.clear()
            before = m.stats()
            dests, items = make_rows(rank, n, size)
            for tag in ("rows", "arrays", "tally"):
                m.sender(tag).send_many(dests, items)
            m.wait_quiet()
            # wait_quiet is no phase barrier: a rank still completing its last
            # wave would handle the next round's rows from a faster rank.
            world.Barrier()
            after = m.stats()
            if n == 40:
                assert after["messages_aggregated"] > before["messages_aggregated"]
            else:
                assert after["bytes_zero_copy_sent"] > before["bytes_zero_copy_sent"]
            for source in range(size):
                s_dests, s_items = make_rows(source, n, size)
                mine = s_items[s_dests == rank]
                for log in (per_item, by_object):
                    got = [row for s, row in log if s == source]
                    assert len(got) == len(mine), (source, len(got), len(mine))
                    assert all(isinstance(row, np.void) and row.dtype == RECORD for row in got)
                    assert [(int(r["kmer"]), int(r["count"])) for r in got] == [
                        (int(r["kmer"]), int(r["count"])) for r in mine
                    ]
                arrays_from = [a for s, a in whole if s == source]
                if len(mine):
                    (array,) = arrays_from
                    assert isinstance(array, np.ndarray) and array.dtype == RECORD
                    assert array.tobytes() == mine.tobytes()
                else:
                    assert arrays_from == []

        # A plain send of a list: one call per element; a request gets the
        # whole payload (per-item delivery is for plain sends).
        per_item.clear()
        peer = (rank + 1) % size
        m.send(peer, "rows", [1, "two", 3.5])
        assert m.request(peer, "measure", np.zeros(5, dtype=RECORD)).result(timeout=10) == 5
        m.wait_quiet()
        assert [p for s, p in per_item] == [1, "two", 3.5]
        assert m.stats()["handler_errors"] == 0


def test_per_item(mpirun, nranks):
    mpirun(nranks, case_per_item)


def case_per_item_zero_d_array():
    # A 0-d array is no sequence of items: the receiver gets it whole, and
    # its rank must not fail (bad input is data, never a crash).
    with cv.Messenger() as m:
        got = []
        m.on("rows", per_item=True)(lambda msg: got.append(msg.payload))
        peer = (m.rank + 1) % m.size
        m.send(peer, "rows", np.array(5))
        m.send(peer, "rows", np.arange(3))
        m.wait_quiet()
        assert len(got) == 4, got
        assert isinstance(got[0], np.ndarray) and got[0].shape == () and got[0] == 5
        assert [int(x) for x in got[1:]] == [0, 1, 2]  # the rows, one by one


def test_per_item_zero_d_array_does_not_fail_the_receiver(mpirun):
    mpirun(2, case_per_item_zero_d_array)


# -- 6. malformed batches and unknown tags ------------------------------------------
# Termination detection counts frames: post_raw counts a raw frame as one
# posted, and its receiver counts a Batch as one frame finished, whatever
# number of entries it announces, so wait_quiet returns after any of these.


def entry(frame):
    return struct.pack("<I", len(frame)) + frame


def send_frame(value, tag="ok"):
    return core.testing.encode_frame(
        core.message.KIND_SEND, 0, tag, value, ZERO_COPY_THRESHOLD, False
    )[0]


def post_batch(m, dest, body, count):
    m._transport.engine.post_raw(dest, bare_header(KIND_BATCH, count) + body)


def case_malformed_batches():
    from mpi4py import MPI

    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append((msg.source, msg.payload)))
        m.on("echo")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        source = (m.rank - 1) % m.size

        # A valid raw batch, to check the format used here.
        post_batch(m, peer, entry(send_frame("raw-1")) + entry(send_frame("raw-2")), 2)
        # An entry announcing more bytes than the batch holds: the entries
        # before it are delivered; it and the one after are lost.
        truncated = struct.pack("<I", 1000) + send_frame("cut")[:10]
        post_batch(
            m,
            peer,
            entry(send_frame(1)) + entry(send_frame(2)) + truncated + entry(send_frame("lost")),
            4,
        )
        m.send(peer, "ok", 3)
        # Entries that are no message (a credit, a nested batch, garbage) are
        # rejected one by one; a send with out-of-band data is a message whose
        # payload cannot be read.
        credit = bare_header(KIND_CREDIT, 64)
        nested = bare_header(KIND_BATCH, 1) + entry(send_frame("nested"))
        with_oob = core.testing.encode_frame(
            core.message.KIND_SEND, 0, "ok", np.arange(10), 0, False
        )[0]
        body = b"".join(
            entry(f)
            for f in (send_frame(4), credit, nested, with_oob, b"not a frame at all", send_frame(5))
        )
        post_batch(m, peer, body, 6)
        m.send(peer, "ok", 6)
        caught = wait_quiet_warned(m)
        assert [p for s, p in got if s == source] == ["raw-1", "raw-2", 1, 2, 3, 4, 5, 6], got
        stats = m.stats()
        assert stats["frames_malformed"] == 1 + 3, stats
        assert stats["payloads_undecodable"] == 1, stats
        assert stats["batches_received"] >= 3
        assert sum("malformed frame" in w for w in caught) == 4
        assert sum("out-of-band" in w for w in caught) == 1
        # The rank keeps serving.
        assert m.request(peer, "echo", "still here").result(timeout=10) == "still here"

        # Unknown tags inside real batches: sends are counted and warned
        # about once, a request is answered with UnknownTagError.
        m.wait_quiet()
        MPI.COMM_WORLD.Barrier()  # no rank sends the next phase before all counted this one
        before = m.stats()
        with conveyor_warnings() as caught:
            m.send(peer, "nowhere", 1)
            m.send(peer, "nowhere", 2)
            with pytest.raises(cv.UnknownTagError, match="no receiver for tag 'nowhere'") as info:
                m.request(peer, "nowhere", 3).result(timeout=10)
            assert info.value.rank == peer
            m.wait_quiet()
        after = m.stats()
        assert after["messages_aggregated"] - before["messages_aggregated"] >= 3
        assert after["unknown_tag"] - before["unknown_tag"] == 3
        assert sum("nowhere" in w for w in caught) == 1


def test_malformed_batches(mpirun, nranks):
    mpirun(nranks, case_malformed_batches)


def truncation_plan(seed, rank, trials=150):
    """Rank `rank`'s trials: (values, cut) with its batch body cut at byte `cut`."""
    rng = np.random.default_rng([seed, rank])
    plan = []
    for trial in range(trials):
        values = []
        for j in range(int(rng.integers(1, 12))):
            if rng.random() < 0.5:
                values.append(int(rng.integers(-(2**62), 2**62)))
            else:
                values.append("v" * int(rng.integers(0, 40)) + f"{trial}.{j}")
        total = sum(len(entry(send_frame(v))) for v in values)
        cut = int(rng.integers(0, total + 1)) if rng.random() < 0.8 else total
        plan.append((values, cut))
    return plan


def case_random_truncated_batches(seed):
    """Batches of random entries cut at a random byte: the whole entries before the cut arrive."""
    seed = int(seed)
    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        peer = (m.rank + 1) % m.size
        for trial, (values, cut) in enumerate(truncation_plan(seed, m.rank)):
            body = b"".join(entry(send_frame(v)) for v in values)
            post_batch(m, peer, body[:cut], len(values))
            m.send(peer, "ok", ("marker", trial))
        m.wait_quiet()
        # What the sending rank posted, rebuilt from its seed.
        expected, malformed = [], 0
        for trial, (values, cut) in enumerate(truncation_plan(seed, (m.rank - 1) % m.size)):
            ends = np.cumsum([len(entry(send_frame(v))) for v in values])
            expected += [v for v, end in zip(values, ends) if end <= cut]
            expected.append(("marker", trial))
            malformed += bool(cut < ends[-1])
        assert got == expected
        assert m.stats()["frames_malformed"] == malformed
        assert 0 < malformed < 150


def test_random_truncated_batches(mpirun, nranks):
    mpirun(nranks, case_random_truncated_batches, 5)


def case_batch_with_trailing_entries():
    # A batch announcing 1 entry but holding 3: wire.hpp says trailing bytes
    # make the batch malformed; the announced entry is still delivered.
    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        peer = (m.rank + 1) % m.size
        body = b"".join(entry(send_frame(v)) for v in ("first", "trailing-1", "trailing-2"))
        post_batch(m, peer, body, 1)
        m.send(peer, "ok", "after")
        caught = wait_quiet_warned(m)
        assert got == ["first", "after"], got
        assert m.stats()["frames_malformed"] == 1, (
            "trailing bytes after the last entry were dropped silently"
        )
        assert sum("malformed frame" in w for w in caught) == 1


def test_batch_with_trailing_entries_is_malformed(mpirun):
    mpirun(2, case_batch_with_trailing_entries)


def case_batch_announcing_more_entries_than_it_holds():
    # One readable entry in a batch that announces 2**40: counted as
    # messages, it left wait_quiet waiting for ever on every rank.
    with cv.Messenger() as m:
        got = []
        m.on("ok")(lambda msg: got.append(msg.payload))
        m.on("echo")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        post_batch(m, peer, entry(send_frame("only")), 2**40)
        post_batch(m, peer, b"", 2**40)  # and one that holds none
        post_batch(m, peer, b"", 0)  # and one that announces none
        m.send(peer, "ok", "after")
        caught = wait_quiet_warned(m)
        assert got == ["only", "after"], got
        assert m.stats()["frames_malformed"] == 2
        assert sum("malformed frame" in w for w in caught) == 2
        assert m.request(peer, "echo", "still here").result(timeout=10) == "still here"
        m.wait_quiet()


def test_batch_announcing_more_entries_than_it_holds(mpirun, nranks):
    mpirun(nranks, case_batch_announcing_more_entries_than_it_holds)


def case_request_with_out_of_band_data_in_a_batch_is_answered():
    # A request entry whose header reads but which announces out-of-band
    # data (a batch carries none) was dropped as a malformed frame: its
    # requester was never answered. It is answered with the error now, which
    # comes back to this rank for a request it never opened (a late answer).
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: msg.payload)
        peer = (m.rank + 1) % m.size
        request = core.testing.encode_frame(
            core.message.KIND_REQUEST, 77, "echo", np.arange(10), 0, False
        )[0]
        post_batch(m, peer, entry(request) + entry(send_frame("x", tag="echo")), 2)
        m.wait_quiet()
        stats = m.stats()
        assert stats["payloads_undecodable"] == 1, stats
        assert stats["late_answers"] == 1, stats
        assert stats["frames_malformed"] == 0, stats


def test_request_with_out_of_band_data_in_a_batch_is_answered(mpirun, nranks):
    mpirun(nranks, case_request_with_out_of_band_data_in_a_batch_is_answered)


# -- 7. Sender errors ---------------------------------------------------------------


class FailingItem(cv.CarriageableItem, name="tests.test_aggregation.FailingItem"):
    def required_bytes(self):
        return 8

    def dump(self, buffer):
        buffer[:4] = b"half"
        raise RuntimeError("dump failed half-way")

    @classmethod
    def load(cls, buffer, out_of_band):
        return cls()


def case_sender_errors():
    with cv.Messenger() as m:
        got = []
        m.on("t")(lambda msg: got.append((msg.source, msg.payload)))
        sender = m.sender("t")
        peer = (m.rank + 1) % m.size
        for dest in ("1", 1.0, None, [peer]):
            with pytest.raises(TypeError, match="destination rank must be an int"):
                sender.send(dest, 1)
        for dest in (m.size, -1, 2**70):
            with pytest.raises(ValueError, match="out of range"):
                sender.send(dest, 1)
        with pytest.raises(TypeError, match="missing required argument 'dest'"):
            sender.send()
        with pytest.raises(TypeError, match="at most 2 arguments"):
            sender.send(peer, 1, 2)

        sender.send(peer, "first")
        sender.send(peer, np.arange(10_000))  # zero-copy, between batched messages
        sender.send(peer, "second")
        before = m.stats()["messages_sent"]
        uncarriable = [
            object(),
            [1, 2, object()],
            {"k": {1, 2}},
            np.array([object(), 1]),
            (np.arange(100_000), object()),  # a zero-copy array, then a failure
        ]
        for bad in uncarriable:
            with pytest.raises(cv.CarriageError):
                sender.send(peer, bad)
            with pytest.raises(cv.CarriageError):
                m.send(peer, "t", bad)
        for bad in (FailingItem(), ["x", FailingItem()]):
            with pytest.raises(RuntimeError, match="half-way"):
                sender.send(peer, bad)
        assert m.stats()["messages_sent"] == before, "a failed send was counted"
        sender.send(peer, "third")
        m.send(peer, "t", ["fourth", 4])
        m.wait_quiet()
        source = (m.rank - 1) % m.size
        payloads = [p for s, p in got if s == source]
        assert payloads[0] == "first" and payloads[2:] == ["second", "third", ["fourth", 4]], (
            payloads
        )
        assert np.array_equal(payloads[1], np.arange(10_000))
        assert m.stats()["frames_malformed"] == 0
    with pytest.raises(cv.ConveyorError, match="closed"):
        sender.send(0, 1)
    with pytest.raises(cv.ConveyorError, match="closed"):
        m.sender("t")


def test_sender_errors(mpirun, nranks):
    mpirun(nranks, case_sender_errors)


class Tag(str):
    pass


def case_messenger_send_to_a_tag_sent_to_before():
    # m.send to a tag it sent to before goes in C to the tag's cached Sender;
    # whatever that path does not take (another type of rank or tag, a rank
    # out of range, final=False) still gets the checks of m.send's own path.
    with cv.Messenger() as m:
        got = []
        m.on("t")(lambda msg: got.append(msg.payload))
        peer = (m.rank + 1) % m.size
        m.send(peer, "t", 0)  # caches the Sender of "t"
        m.send(peer, "t")  # no payload: None
        m.send(np.int64(peer), "t", 2)  # not an int: m.send's own path
        m.send(peer, Tag("t"), 3)  # a str subclass: the same
        m.send(peer, "t", payload=4)
        for dest in ("1", 1.0, None, [peer]):
            with pytest.raises(TypeError, match="destination rank must be an int"):
                m.send(dest, "t", 1)
        for dest in (m.size, -1, 2**70, -(2**70)):
            with pytest.raises(ValueError, match="out of range"):
                m.send(dest, "t", 1)
        with pytest.raises(ValueError, match="final=False answers a request"):
            m.send(peer, "t", 1, final=False)
        with pytest.raises(cv.CarriageError):
            m.send(peer, "t", object())
        m.wait_quiet()
        assert got == [0, None, 2, 3, 4]
        assert m.stats()["frames_malformed"] == 0
    with pytest.raises(cv.ConveyorError, match="closed"):
        m.send(peer, "t", 5)


def test_messenger_send_to_a_tag_sent_to_before(mpirun, nranks):
    mpirun(nranks, case_messenger_send_to_a_tag_sent_to_before)
