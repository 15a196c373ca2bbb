"""Flow control: a rank that cannot keep up slows its senders down.

At most CONVEYOR_WINDOW_BYTES are in flight to one rank until it reports
them consumed (credit). A top-level send to a congested rank waits, serving
incoming messages; a send from a handler never waits (it queues). These
tests shrink the window so that the mechanism works all the time.
"""

import os
import time

import numpy as np
import pytest

import conveyor as cv

from _helpers import peak_rss_mib

MiB = 1 << 20


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


# -- 8. the flood ----------------------------------------------------------------
# Three ranks send 1,000,000 messages each, one Sender.send per message, to a
# fourth rank whose handler sleeps 1 ms every 500 messages. Each message is
# (sequence number, 100 bytes): ~160 bytes on the wire, 480 MB for the whole
# flood, so a drowned receiver could not stay under the bound. Measured on
# the 2-core development machine with this test's settings and a 1 MiB
# window: every rank peaks at ~65 MiB, 1-4 MiB above its size before the
# flood. Unthrottled (CONVEYOR_WINDOW_BYTES=0) the slow rank peaked at
# 200-450 MiB and each sender at ~185 MiB (135 MiB of growth): this test
# fails then.

FLOOD_MESSAGES = 1_000_000
FLOOD_RSS_BOUND_MIB = 256  # peak RSS of every rank
FLOOD_GROWTH_BOUND_MIB = 64  # peak RSS above what the rank used before the flood
FLOOD_SLEEP_EVERY = 500
FLOOD_PAD = b"p" * 100


def case_flood(n):
    from mpi4py import MPI

    n = int(n)
    world = MPI.COMM_WORLD
    with cv.Messenger() as m:
        slow = m.size - 1
        expected_next = [0] * m.size
        out_of_order = [0] * m.size
        total = [0] * m.size
        handled = [0]

        @m.on("item")
        def item(msg):
            source = msg.source
            seq = msg.payload[0]
            if seq != expected_next[source]:
                out_of_order[source] += 1
            expected_next[source] = seq + 1
            total[source] += seq
            handled[0] += 1
            if handled[0] % FLOOD_SLEEP_EVERY == 0:
                time.sleep(0.001)

        m.wait_quiet()
        baseline = current_rss_mib()
        if m.rank != slow:
            send = m.sender("item").send
            pad = FLOOD_PAD
            for seq in range(n):
                send(slow, (seq, pad))
        m.wait_quiet()
        stats = m.stats()
        peak = peak_rss_mib()
        report = world.gather((m.rank, peak, peak - baseline, stats), root=slow)
        if m.rank == slow:
            for source in range(m.size - 1):
                # Each source's sequence arrived whole, once, in order.
                assert out_of_order[source] == 0, (source, out_of_order)
                assert expected_next[source] == n, (source, expected_next)
                assert total[source] == n * (n - 1) // 2, source
            assert handled[0] == n * (m.size - 1)
            assert stats["credits_sent"] > 0, stats
            for rank, peak, grown, s in report:
                assert peak < FLOOD_RSS_BOUND_MIB, f"rank {rank} peaked at {peak:.0f} MiB"
                assert grown < FLOOD_GROWTH_BOUND_MIB, f"rank {rank} grew by {grown:.0f} MiB"
                if rank != slow:
                    # The senders were slowed down: sends waited for credit.
                    assert s["messages_sent"] == n
                    assert s["sends_held"] > 0 and s["credits_received"] > 0, (rank, s)
            print("flood:", [(r, round(p), round(g, 1), s["sends_held"]) for r, p, g, s in report])


@pytest.mark.parametrize("route", ["direct", "grid2d"])
def test_flood_slow_receiver(mpirun, route):
    # grid2d at 4 ranks: rank 1 relays rank 0's flood, and must hold it back
    # (its relay pool) rather than take it all in for the slow rank.
    env = {"CONVEYOR_WINDOW_BYTES": str(1 * MiB), "CONVEYOR_ROUTE": route}
    mpirun(4, case_flood, FLOOD_MESSAGES, timeout=120, env=env)


# -- 9. storms in both directions ---------------------------------------------------

STORM_TTL = 3


def case_storm(n):
    """Every rank floods its neighbour; handlers bounce each ping back STORM_TTL times."""
    from mpi4py import MPI

    n = int(n)
    world = MPI.COMM_WORLD
    with cv.Messenger() as m:
        rank, size = m.rank, m.size
        peer = (rank + 1) % size
        counts = {"ping": 0, "pong": 0, "ping_sum": 0, "big": 0, "nested": 0}
        pong = m.sender("pong")

        @m.on("ping")
        def ping(msg):
            ttl, i = msg.payload[:2]
            counts["ping"] += 1
            counts["ping_sum"] += i
            if len(msg.payload) > 2:
                counts["big"] += int(msg.payload[2][0] == i)
            pong.send(msg.source, i)  # from a handler: queues, never waits
            if ttl > 0:
                m.send(msg.source, "ping", (ttl - 1,) + tuple(msg.payload[1:]))
            if i % 5000 == 1234 and ttl == STORM_TTL:
                # A handler that waits (nested) while everyone is congested.
                assert m.request(msg.source, "echo", i).result(timeout=60) == i
                counts["nested"] += 1

        @m.on("pong")
        def on_pong(msg):
            counts["pong"] += 1

        m.on("echo")(lambda msg: msg.payload)
        m.wait_quiet()
        sender = m.sender("ping")
        for i in range(n):
            if i % 500 == 0:
                # Larger than the whole window, bounced like the others.
                sender.send(peer, (STORM_TTL, i, np.full(20_000, i, dtype=np.int64)))
            else:
                sender.send(peer, (STORM_TTL, i))
            if i % 2000 == 0:
                assert m.request(peer, "echo", i).result(timeout=60) == i  # top level
        m.wait_quiet()
        stats = m.stats()
        totals = world.allreduce(
            np.array(
                [
                    counts["ping"],
                    counts["pong"],
                    counts["ping_sum"],
                    counts["big"],
                    counts["nested"],
                    stats["sends_held"],
                    stats["credits_sent"],
                    stats["handler_errors"],
                ]
            )
        )
        hops = size * n * (STORM_TTL + 1)
        assert totals[0] == hops and totals[1] == hops, totals
        assert totals[2] == size * (STORM_TTL + 1) * (n * (n - 1) // 2)
        assert totals[3] == size * (STORM_TTL + 1) * len(range(0, n, 500))
        assert totals[4] == size * len([i for i in range(n) if i % 5000 == 1234])
        assert totals[5] > 0 and totals[6] > 0, totals  # the window was hit, credit flowed
        assert totals[7] == 0


@pytest.mark.parametrize("n", [1, 2, 4])
def test_storm_without_deadlock(mpirun, n):
    mpirun(n, case_storm, 50_000, timeout=120, env={"CONVEYOR_WINDOW_BYTES": str(64 * 1024)})


# -- 10. a message larger than the window -------------------------------------------


def case_larger_than_window():
    with cv.Messenger() as m:
        got = []
        m.on("x")(lambda msg: got.append((msg.source, msg.payload)))
        m.on("big")(lambda msg: np.ones(1 << 17) * msg.payload)  # a 1 MiB answer
        peer = (m.rank + 1) % m.size
        big = np.arange(1 << 17, dtype=np.float64)  # 1 MiB, zero-copy
        inline = list(range(100_000))  # a ~0.9 MB frame, not zero-copy
        for i in range(50):
            m.send(peer, "x", i)
        m.send(peer, "x", big)
        m.send(peer, "x", big * 2)
        m.send(peer, "x", inline)
        for i in range(50, 100):
            m.send(peer, "x", i)
        answer = m.request(peer, "big", 3.0).result(timeout=30)
        assert answer.shape == (1 << 17,) and np.all(answer == 3.0)
        m.wait_quiet()
        stats = m.stats()
        assert stats["sends_held"] > 0, stats  # the big one waited for the small ones' credit
        source = (m.rank - 1) % m.size
        payloads = [p for s, p in got if s == source]
        assert len(payloads) == 103
        assert payloads[:50] == list(range(50)) and payloads[53:] == list(range(50, 100))
        assert np.array_equal(payloads[50], big) and np.array_equal(payloads[51], big * 2)
        assert payloads[52] == inline


def test_message_larger_than_window(mpirun, nranks):
    mpirun(nranks, case_larger_than_window, env={"CONVEYOR_WINDOW_BYTES": str(64 * 1024)})


# -- 11. the pool of all windows -----------------------------------------------------
# Every rank sends to every other without serving, so that nothing it sends
# is credited until the others wait: with the default windows (8 MiB of
# frames, 256 MiB of arrays to each rank) it then has all of it in flight
# at once, 0.6 MB of frames or 6 MiB of arrays. The pools
# (CONVEYOR_WINDOW_POOL_BYTES, CONVEYOR_DATA_WINDOW_POOL_BYTES) hold it back
# to them plus one frame per destination: a batch (at most
# CONVEYOR_BATCH_BYTES), or an array. Order per pair and exactly-once
# hold, relayed or not, and no rank waits for ever on the credit another
# pair owes.

POOL_BYTES = 64 * 1024
POOL_ARRAY = 32 * 1024  # 256 KiB arrays, zero-copy
BATCH_BYTES = 32 * 1024


def case_window_pool(arrays, count):
    from mpi4py import MPI

    arrays, count = arrays == "arrays", int(count)
    with cv.Messenger() as m:
        got = {source: [] for source in range(m.size) if source != m.rank}
        m.on("x")(lambda msg: got[msg.source].append(msg.payload))
        m.on("a")(lambda msg: got[msg.source].append(int(msg.payload[0])))
        MPI.COMM_WORLD.Barrier()
        x, a = m.sender("x"), m.sender("a")
        for i in range(count):
            for peer in got:
                if arrays:
                    a.send(peer, np.full(POOL_ARRAY, i, dtype=np.int64))
                else:
                    x.send(peer, i)
        m.wait_quiet()
        for source, payloads in got.items():
            assert payloads == list(range(count)), source
        stats = m.stats()
        assert stats["window_pool_waits"] > 0, stats
        if arrays:
            bound = POOL_BYTES + (m.size - 1) * POOL_ARRAY * 8
            assert stats["in_flight_data_bytes_peak"] <= bound, stats
        else:
            bound = POOL_BYTES + (m.size - 1) * BATCH_BYTES
            assert stats["in_flight_frame_bytes_peak"] <= bound, stats


@pytest.mark.parametrize("route", ["direct", "grid2d"])
@pytest.mark.parametrize("arrays,count", [("messages", 5_000), ("arrays", 8)])
def test_window_pool(mpirun, route, arrays, count):
    env = {
        "CONVEYOR_ROUTE": route,
        "CONVEYOR_WINDOW_POOL_BYTES": str(POOL_BYTES),
        "CONVEYOR_DATA_WINDOW_POOL_BYTES": str(POOL_BYTES),
    }
    mpirun(4, case_window_pool, arrays, count, env=env, timeout=120)
