"""Relaying (CONVEYOR_ROUTE): small messages through other ranks, large ones straight.

Whatever the path, every message arrives once, in the order its sender sent
it to that rank, from the rank that sent it; a relaying rank that computes
still relays; forged relayed batches and fences are dropped.
"""

import os
import struct

import numpy as np
import pytest

import conveyor as cv
from conveyor._native import core

from _helpers import bare_header, conveyor_warnings, no_state_left, world

MODES = ["direct", "host", "grid2d"]


def case_order_across_paths(mode, pool=None):
    # Each rank sends every rank (itself too) small messages, which are
    # relayed, mixed with large arrays and requests, which go straight; the
    # receivers check each source's sequence. With a batch `pool`
    # (CONVEYOR_BATCH_POOL_BYTES), the batch buffers stayed within it.
    rounds = 300
    with cv.Messenger() as m:
        assert m.route == mode
        got = {}

        @m.on("seq")
        def seq(msg):
            i = msg.payload if isinstance(msg.payload, int) else int(msg.payload[0])
            if not isinstance(msg.payload, int):
                assert msg.payload.size == 4096 and msg.payload[-1] == msg.source
            got.setdefault(msg.source, []).append(i)

        @m.on("ask")
        def ask(msg):
            got.setdefault(msg.source, []).append(msg.payload)
            return (m.rank, msg.payload)

        futures = []
        for i in range(rounds):
            for dest in range(m.size):
                if i % 37 == 3:
                    big = np.full(4096, m.rank, dtype=np.int64)
                    big[0] = i
                    m.send(dest, "seq", big)  # 32 KiB: zero-copy, direct
                elif i % 53 == 7:
                    futures.append((dest, i, m.request(dest, "ask", i)))
                else:
                    m.send(dest, "seq", i)
        for dest, i, future in futures:
            assert future.result(timeout=30) == (dest, i)
        m.wait_quiet()
        assert sorted(got) == list(range(m.size))
        for source, sequence in got.items():
            assert sequence == list(range(rounds)), (source, sequence[:40])
        stats = no_state_left(m)
        relayed = world().allreduce(stats["messages_relayed"])
        assert (relayed > 0) == (mode != "direct" and m.size > 2), (mode, relayed)
        if mode != "direct":
            assert stats["fences_sent"] > 0, stats
        if pool is not None:
            assert 0 < stats["batch_bytes_peak"] <= int(pool), stats
            assert stats["batch_pool_flushes"] > 0, stats
        m.wait_quiet()


@pytest.mark.parametrize("mode", MODES)
def test_order_across_paths(mpirun, mode):
    env = {"CONVEYOR_ROUTE": mode, "CONVEYOR_HOSTS": "2"}
    mpirun(4, case_order_across_paths, mode, env=env)


@pytest.mark.parametrize(
    "settings",
    [
        # Windows this small hold frames back: fences wait in line with them.
        {"CONVEYOR_WINDOW_BYTES": "4096", "CONVEYOR_DATA_WINDOW_BYTES": str(64 << 10)},
        # Only the owners' calls make progress.
        {"CONVEYOR_BACKGROUND": "0"},
        # Batches of a few messages: many relayed frames per pair.
        {"CONVEYOR_BATCH_BYTES": "512"},
    ],
    ids=["small-windows", "no-background", "small-batches"],
)
def test_order_across_paths_under_pressure(mpirun, settings):
    env = {"CONVEYOR_ROUTE": "grid2d", "CONVEYOR_HOSTS": "3", **settings}
    mpirun(5, case_order_across_paths, "grid2d", env=env, timeout=120)


@pytest.mark.parametrize("mode", MODES)
def test_batch_buffers_stay_within_the_pool(mpirun, mode):
    # 2 KiB for the batches to 5 ranks: every batch leaves early, each pair's order holds.
    env = {"CONVEYOR_ROUTE": mode, "CONVEYOR_HOSTS": "3", "CONVEYOR_BATCH_POOL_BYTES": "2048"}
    mpirun(5, case_order_across_paths, mode, "2048", env=env, timeout=120)


def case_relaying_rank_computes():
    # At 4 ranks the grid is 2 x 2: rank 1 relays 0's small messages to 3.
    # Rank 1 blocks in plain mpi4py until 0 has 3's answer, so only its
    # background thread can relay the request.
    comm = world()
    with cv.Messenger() as m:
        m.on("echo")(lambda msg: (m.rank, msg.payload))
        assert m._transport.engine.background
        if m.rank == 0:
            assert m.request(3, "echo", "via 1").result(timeout=30) == (3, "via 1")
            comm.send("done", dest=1)
        elif m.rank == 1:
            assert comm.recv(source=0) == "done"
            assert m.stats()["messages_relayed"] >= 1
        m.wait_quiet()


def test_relaying_rank_computes(mpirun):
    mpirun(4, case_relaying_rank_computes, env={"CONVEYOR_ROUTE": "grid2d"})


KIND_RELAYED, KIND_FENCE = 8, 9


def control(kind, ref, body):
    """A frame with no tag and no out-of-band data, as a forger writes it."""
    return bare_header(kind, ref) + body


def case_forged_relay_frames():
    # A forged Relayed frame could claim any origin (a message from rank 0
    # that rank 0 never sent) and a forged fence could hold a rank's
    # messages for ever: without their sender engine's stamp both are dropped.
    with cv.Messenger() as m:
        got = []
        m.on("t")(lambda msg: got.append((msg.source, msg.payload)))
        dest = (m.rank + 1) % m.size
        source = (m.rank - 1) % m.size
        engine = m._transport.engine
        # Entries as a relaying engine writes them: varints origin, dest and
        # size, then the message in short form (kind, ref, tag size, tag,
        # body); a size of 0 makes a fence, whose count follows.
        body = core.testing.encode_frame(1, 0, "", "spoofed", 1 << 20, False)[0][24:]
        inner = bytes([1, 0, 1]) + b"t" + body
        entries = bytes([0, dest, len(inner)]) + inner
        fence_entry = bytes([source, dest, 0]) + b"\x80\x80\x80\x80\x80\x80\x80\x80\x10"
        stamp = struct.pack("<Q", int.from_bytes(os.urandom(8), "little"))
        with conveyor_warnings() as caught:
            engine.post_raw(dest, control(KIND_RELAYED, 1, stamp + entries))
            engine.post_raw(dest, control(KIND_RELAYED, 1, stamp + fence_entry))
            engine.post_raw(dest, control(KIND_RELAYED, 1, b"\x01"))  # no room for a stamp
            engine.post_raw(dest, control(KIND_FENCE, 2**60, stamp))
            engine.post_raw(dest, control(KIND_FENCE, 2**60, b""))
            for i in range(20):
                m.send(dest, "t", i)
            m.wait_quiet()
        assert got == [(source, i) for i in range(20)], got
        assert m.stats()["frames_forged"] == 5, m.stats()
        assert sum("did not send (a forged frame)" in w for w in caught) == 5, caught
        m.wait_quiet()


@pytest.mark.parametrize("mode", MODES)
def test_forged_relay_frames(mpirun, mode):
    mpirun(3, case_forged_relay_frames, env={"CONVEYOR_ROUTE": mode, "CONVEYOR_HOSTS": "3"})


def case_modes_disagree():
    os.environ["CONVEYOR_ROUTE"] = "grid2d" if world().Get_rank() == 0 else "host"
    with pytest.raises(cv.ConveyorError, match="different CONVEYOR_ROUTE modes"):
        cv.Messenger()
    os.environ["CONVEYOR_ROUTE"] = "grid2d"
    with pytest.raises(ValueError, match="fault_tolerant=True needs CONVEYOR_ROUTE=direct"):
        cv.Messenger(fault_tolerant=True)
    os.environ["CONVEYOR_ROUTE"] = "nowhere"
    with pytest.raises(ValueError, match="CONVEYOR_ROUTE='nowhere' is not one of"):
        cv.Messenger()
    del os.environ["CONVEYOR_ROUTE"]
    with cv.Messenger() as m:
        assert m.route == "direct"  # auto, below 64 ranks
        m.wait_quiet()


def test_modes_disagree(mpirun):
    mpirun(3, case_modes_disagree)
