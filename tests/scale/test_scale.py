"""The core cases at many ranks (issue 18 item 3): 16, 32 and 64 ranks on a small machine.

Each case runs under mpiexec, oversubscribed (64 ranks on 2 cores here),
with virtual hosts (``CONVEYOR_HOSTS``: uneven blocks of about eight
ranks) and once per routing mode of `ROUTES` (``CONVEYOR_ROUTE``). The
cases: start-up alone, point-to-point sends with per-pair order and
exactly-once delivery (large arrays among them), an all-to-all of many
small items (aggregated), request round trips with a remote error, a
cascade that ``wait_quiet`` must wait for, the collectives, item fetches
and orders, and an aligned call on a DistArray.

``make test`` runs the reduced form: every case in one job at 16 ranks.
``make test-scale`` (``pytest --scale tests/scale``) runs each case as its
own job at 16, 32 and 64 ranks. A hang is a failure: every job has a
timeout, at which each rank logs its state and prints its stacks
(``conftest.explain_hang``).
No assertion depends on timing.
"""

import math
import os
import time
import zlib

import numpy as np
import pytest

import conveyor as cv

from _helpers import no_state_left, nothing_left, world

# The routing modes every case runs under (CONVEYOR_ROUTE; auto is grid2d
# from 64 ranks on), and those of `make test`'s reduced form.
ROUTES = ("direct", "host", "grid2d", "auto")
SMALL_ROUTES = ("direct", "grid2d")

# The rank counts of `make test-scale`; `make test` runs SMALL only.
RANKS = (16, 32, 64)
SMALL = 16

# Seconds a job may take before it counts as hung, by rank count: generous,
# as 64 ranks on 2 cores shared with other jobs start slowly (tens of seconds).
TIMEOUT = {16: 120, 32: 240, 64: 480}

# Arrays of 32 KiB, above the zero-copy threshold (16 KiB): they travel
# outside the batches. One message in five is one: 30 MiB to each rank at
# 64 ranks (256 KiB arrays made it 10 s of the case's 10.3 s there).
LARGE_ITEMS = 1 << 12


def hosts_for(nranks):
    """``CONVEYOR_HOSTS`` for `nranks`: about eight ranks a host, in uneven blocks."""
    return str(nranks // 8 + 1)


def scale_env(nranks, route):
    return {"CONVEYOR_HOSTS": hosts_for(nranks), "CONVEYOR_ROUTE": route}


def digest(*values):
    """A stable 32-bit mix of ints."""
    return zlib.crc32(np.asarray(values, dtype=np.int64).tobytes())


# -- the cases --------------------------------------------------------------------


def case_startup():
    """Start-up alone: make a messenger, see the hosts, wait for quiet."""
    with cv.Messenger() as m:
        blocks = int(os.environ["CONVEYOR_HOSTS"])
        assert len(m.hosts) == blocks, m.hosts
        assert sorted(r for host in m.hosts for r in host) == list(range(m.size))
        assert m.rank in m.host_ranks
        m.wait_quiet()
        no_state_left(m)


def case_point_to_point():
    """Every rank sends to every rank, small and large: per-pair order, exactly once."""
    per_pair = 12
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        seen = [[] for _ in range(size)]  # per source: the sequence numbers, in arrival order
        bad = []

        @m.on("p2p")
        def p2p(msg):
            seq, value = msg.payload
            want = digest(msg.source, m.rank, seq)
            got = int(value[0]) if isinstance(value, np.ndarray) else value
            if got != want or (isinstance(value, np.ndarray) and value[-1] != want):
                bad.append((msg.source, seq))
            seen[msg.source].append(seq)

        m.wait_quiet()
        for seq in range(per_pair):
            for step in range(size):  # a different order of peers on every rank
                dest = (rank + step) % size
                value = digest(rank, dest, seq)
                if (seq + dest) % 5 == 0:  # a large array now and then, zero-copy
                    value = np.full(LARGE_ITEMS, value, dtype=np.int64)
                m.send(dest, "p2p", (seq, value))
        m.wait_quiet()
        assert bad == [], bad[:5]
        for source in range(size):
            assert seen[source] == list(range(per_pair)), (source, seen[source])
        stats = no_state_left(m)
        assert stats["handler_errors"] == 0 and stats["bytes_zero_copy_sent"] > 0


def case_all_to_all():
    """An all-to-all of many small items through a Sender: aggregated, each item once."""
    items = 4000
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        counts = np.zeros(size, dtype=np.int64)
        sums = np.zeros(size, dtype=np.int64)

        @m.on("a2a", per_item=True)
        def a2a(msg):
            counts[msg.source] += 1
            sums[msg.source] += int(msg.payload)

        m.wait_quiet()
        rng = np.random.default_rng([7, rank])
        dests = rng.integers(0, size, items)
        values = rng.integers(0, 1 << 40, items, dtype=np.uint64)
        sender = m.sender("a2a")
        half = items // 2  # the first half in vectors, the second one item at a time
        for start in range(0, half, 500):
            sender.send_many(dests[start : start + 500], values[start : start + 500])
        for dest, value in zip(dests[half:].tolist(), values[half:].tolist()):
            sender.send(dest, value)
        m.wait_quiet()
        sent_counts = np.bincount(dests, minlength=size)
        sent_sums = np.bincount(dests, weights=values.astype(np.float64), minlength=size)
        expected = world().alltoall([(int(c), float(s)) for c, s in zip(sent_counts, sent_sums)])
        for source, (count, total) in enumerate(expected):
            assert counts[source] == count, (source, counts[source], count)
            assert abs(sums[source] - total) <= 1e-9 * max(total, 1.0), (source, sums[source])
        stats = no_state_left(m)
        assert stats["messages_aggregated"] >= items - half, stats
        assert 0 < stats["batches_sent"] < (items - half) / 4, stats
        # Relayed, each rank batches for its next hops only (about 2√P with grid2d).
        relayed = world().allreduce(stats["messages_relayed"])
        assert (relayed > 0) == (m.route != "direct"), (m.route, relayed)
        if m.route == "grid2d":
            assert stats["batches_open_peak"] <= 2 * math.isqrt(size - 1) + 2, stats


class Echo(cv.Receiver):
    def receive(self, msg):
        if msg.payload == "fail":
            raise ValueError(f"refused on rank {msg.source}")
        return ("echo", msg.payload)


def case_requests():
    """Requests from every rank to every rank, all in flight at once, and a remote error."""
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        m.register("echo", Echo())

        @m.on("square")
        def square(msg):
            return msg.payload * msg.payload

        m.barrier()
        squares = {dest: m.request(dest, "square", rank * size + dest) for dest in range(size)}
        echoes = {dest: m.request(dest, "echo", [rank, dest]) for dest in range(size)}
        for dest in range(size):
            assert squares[dest].result(timeout=120) == (rank * size + dest) ** 2
            assert echoes[dest].result(timeout=120) == ("echo", [rank, dest])
        # A handler that raises answers with a RemoteError; its rank runs on.
        failing = m.request((rank + 1) % size, "echo", "fail")
        with pytest.raises(cv.RemoteError, match="refused"):
            failing.result(timeout=120)
        m.wait_quiet()
        stats = no_state_left(m)
        assert stats["handler_errors"] == 1, stats


def case_quiet_cascade():
    """wait_quiet returns only once a cascade of forwarded messages has ended."""
    hops = 40
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        handled = [0]

        @m.on("hop")
        def hop(msg):
            origin, left = msg.payload
            handled[0] += 1
            if left > 0:  # a pseudo-random next rank, the same on every run
                m.send(digest(origin, left) % size, "hop", (origin, left - 1))

        m.wait_quiet()
        for k in range(3):
            m.send((rank + k + 1) % size, "hop", (rank * 3 + k, hops))
        m.wait_quiet()
        # Nothing was in flight when wait_quiet returned: every hop is counted.
        assert world().allreduce(handled[0]) == size * 3 * (hops + 1)
        no_state_left(m)


def case_collectives():
    """The messenger's collectives, which serve while they wait, at many ranks."""
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        m.barrier(timeout=120)
        assert m.bcast(f"from {size - 1}" if rank == size - 1 else None, root=size - 1) == (
            f"from {size - 1}"
        )
        assert m.allgather(rank * rank) == [r * r for r in range(size)]
        assert m.allreduce(rank + 1) == size * (size + 1) // 2
        gathered = m.gather(np.full(3, rank), root=1 % size)
        if rank == 1 % size:
            assert [int(a[0]) for a in gathered] == list(range(size))
        else:
            assert gathered is None
        assert m.scatter(list(range(0, 2 * size, 2)) if rank == 0 else None) == 2 * rank
        m.wait_quiet()
        no_state_left(m)


def case_store():
    """Item fetches from other ranks, and orders that move items between two others."""
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        m.store.put(f"item/{rank}", np.arange(100, dtype=np.int64) + rank)
        m.barrier()
        peers = sorted({(rank + k) % size for k in (1, size // 2, size - 1)})
        futures = {peer: m.fetch(peer, f"item/{peer}") for peer in peers}
        for peer, future in futures.items():
            np.testing.assert_array_equal(
                future.result(timeout=120), np.arange(100, dtype=np.int64) + peer
            )
        # Third-party orders: this rank asks the next one to copy its item to the one after.
        source, dest = (rank + 1) % size, (rank + 2) % size
        done = m.order(source, cv.Copy(f"item/{source}", to=[dest], as_name=f"copy/{rank}"))
        assert done.result(timeout=120)["to"] == [dest]
        m.barrier()
        np.testing.assert_array_equal(
            m.store[f"copy/{(rank - 2) % size}"],
            np.arange(100, dtype=np.int64) + (rank - 1) % size,
        )
        m.wait_quiet()
        no_state_left(m)


def case_darray():
    """An aligned call on two DistArrays chunked differently, every chunk on its own rank."""
    with cv.Messenger() as m:
        size, rank = m.size, m.rank
        # Equal lengths, different boundaries: most rows come from another rank.
        x_lengths = [50 + r for r in range(size)]
        y_lengths = x_lengths[::-1]
        total = sum(x_lengths)
        x_start = sum(x_lengths[:rank])
        y_start = sum(y_lengths[:rank])
        x = cv.DistArray.from_local(m, np.arange(x_start, x_start + x_lengths[rank], dtype=float))
        y = cv.DistArray.from_local(
            m, 2.0 * np.arange(y_start, y_start + y_lengths[rank], dtype=float)
        )
        if rank == 0:
            z = cv.dcall(np.add, x, y)
            np.testing.assert_array_equal(z.collect(), 3.0 * np.arange(total))
            assert z.sum() == 3.0 * total * (total - 1) / 2
            del z
        del x, y
        nothing_left(m)


CASES = {
    "startup": case_startup,
    "point_to_point": case_point_to_point,
    "all_to_all": case_all_to_all,
    "requests": case_requests,
    "quiet_cascade": case_quiet_cascade,
    "collectives": case_collectives,
    "store": case_store,
    "darray": case_darray,
}


def case_all():
    """Every case, one after the other, in one job (the reduced form).

    Rank 0 prints how long each took on the slowest rank, start-up (the
    first messenger) included in the first: ``mpiexec -n 64 python
    tests/_mpi_entry.py tests/scale/test_scale.py case_all`` with
    ``CONVEYOR_HOSTS`` set gives the figures of the README.
    """
    for name, case in CASES.items():
        started = time.monotonic()
        case()
        took = world().allreduce(time.monotonic() - started, op=max)
        if world().Get_rank() == 0:
            print(f"{name}: {took:.2f} s", flush=True)


# -- the tests ----------------------------------------------------------------------


def run_scale(mpirun, nranks, route, case):
    result = mpirun(nranks, case, timeout=TIMEOUT[nranks], env=scale_env(nranks, route))
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("route", SMALL_ROUTES)
def test_every_case_at_16_ranks(mpirun, route):
    """The reduced form `make test` runs: all the cases in one job of 16 ranks."""
    run_scale(mpirun, SMALL, route, case_all)


@pytest.mark.scale
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("nranks", RANKS, ids=lambda n: f"np{n}")
@pytest.mark.parametrize("name", list(CASES))
def test_case(mpirun, name, nranks, route):
    run_scale(mpirun, nranks, route, CASES[name])
