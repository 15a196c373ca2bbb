"""The ventilator example: a chunk cache, deadlines and cancellation, run as a user would run it.

Whole runs go under mpiexec (and in plain python) and are checked through the
summary the example writes with ``--json``; the sums are checked against
Collatz step counts written here in plain Python. Cases that must not depend
on timing (a cancel that lands while chunks wait at a worker, a re-issue
after a deadline) drive the example's roles step by step on one rank.
"""

import functools
import json
import sys
import time

import numpy as np
import pytest

from conftest import load_example, run_command, run_example

ventilator = load_example("ventilator")
run_ventilator = functools.partial(run_example, "ventilator")


def run_json(nranks, tmp_path, *args):
    """Run the example with --json; return (summary, stdout) once it passed."""
    path = tmp_path / "summary.json"
    result = run_ventilator(nranks, "--json", path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout, result.stdout
    summary = json.loads(path.read_text())
    assert summary["failures"] == [] and summary["left"] == [], summary
    return summary, result.stdout


@functools.cache
def collatz(n):
    """Collatz steps from n down to 1, in plain Python (0 for n < 2)."""
    if n < 2:
        return 0
    return 1 + collatz(n // 2 if n % 2 == 0 else 3 * n + 1)


def collatz_sum(start, stop):
    # Recursion depth: the trajectories below 10**6 are shorter than 525 steps.
    return sum(collatz(n) for n in range(start, stop))


def chunk_names(start, stop, size, function="collatz"):
    return {chunk.name for chunk in ventilator.split(function, start, stop, size)}


def requests_by_number(summary):
    return {r["number"]: r for r in summary["requests"]}


def check_sums(summary):
    """Every request that finished has the sum of plain-Python Collatz step counts."""
    for r in summary["requests"]:
        if r["status"] == "done":
            assert r["last"]["sum"] == collatz_sum(r["start"], r["stop"]), r


def check_nothing_left(summary):
    for rank, stats in summary["stats"].items():
        assert stats["pending_requests"] == 0 and stats["open_requests"] == 0, (rank, stats)


# -- pieces -------------------------------------------------------------------


def test_collatz_steps_match_python():
    x = np.arange(0, 3000)
    assert ventilator.collatz_steps(x).tolist() == [collatz(int(n)) for n in x]
    assert ventilator.collatz_steps(np.array([27, 97, 871])).tolist() == [111, 118, 178]


def test_is_prime_matches_python():
    x = np.arange(0, 5000)
    expected = [n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(5000)]
    assert ventilator.is_prime(x).tolist() == expected
    assert ventilator.is_prime(np.array([1_000_003, 1_000_001])).tolist() == [True, False]


@pytest.mark.parametrize(
    "start, stop, size",
    [
        (0, 100, 10),
        (5, 95, 10),
        (7, 8, 10),
        (0, 0, 10),
        (3, 1000, 1),
        (10, 40, 10),
        (123, 4567, 250),
    ],
)
def test_split_covers_the_range_on_a_common_grid(start, stop, size):
    chunks = ventilator.split("collatz", start, stop, size)
    assert [c.lo for c in chunks[1:]] == [c.hi for c in chunks[:-1]]
    if start < stop:
        assert chunks[0].lo == start and chunks[-1].hi == stop
    else:
        assert chunks == []
    for c in chunks:
        assert 0 < c.hi - c.lo <= size
        # Cut only at multiples of the size (or the request's ends): any
        # request covering a whole grid cell has that cell as a chunk.
        assert c.lo % size == 0 or c.lo == start
        assert c.hi % size == 0 or c.hi == stop
        assert ventilator.Chunk.parse(c.name) == c


def test_overlapping_requests_share_their_chunks():
    first, second = chunk_names(0, 1000, 100), chunk_names(500, 1500, 100)
    assert len(first & second) == 5
    assert chunk_names(0, 1000, 100, "prime").isdisjoint(first)  # the function is part of the key


@pytest.mark.parametrize(
    "size, workers", [(1, (0,)), (2, (1,)), (3, (2,)), (4, (2, 3)), (6, (2, 3, 4, 5))]
)
def test_layout(size, workers):
    layout = ventilator.Layout.of(size)
    assert (layout.client, layout.ventilator, layout.workers) == (0, 1 % size, workers)


# -- whole runs ------------------------------------------------------------------

# Small and quick: 20 chunks per request, 40 in request 3 (cancelled after 4).
VALUES, CHUNK, CANCEL_AFTER = 50_000, 2_500, 4


@pytest.mark.parametrize("nranks", [None, 1, 2, 3, 4], ids=["python", "np1", "np2", "np3", "np4"])
def test_cache_and_cancellation(nranks, tmp_path):
    # A deadline no chunk misses, so that nothing is re-issued: then no chunk
    # may be computed twice, whatever the overlap of the requests.
    summary, _ = run_json(
        nranks,
        tmp_path,
        "--values",
        VALUES,
        "--chunk",
        CHUNK,
        "--deadline",
        60,
        "--stuck-worker",
        "none",
        "--cancel-after",
        CANCEL_AFTER,
    )
    check_sums(summary)
    check_nothing_left(summary)
    requests = requests_by_number(summary)
    assert [requests[n]["status"] for n in (1, 2, 3, 4)] == ["done", "done", "cancelled", "done"]
    assert summary["reissued"] == {} and summary["counts"].get("duplicates", 0) == 0

    computed = summary["computed"]
    assert set(computed.values()) == {1}, "a chunk was computed twice"
    first, second = (
        chunk_names(0, VALUES, CHUNK),
        chunk_names(VALUES // 2, VALUES // 2 + VALUES, CHUNK),
    )
    shared = first & second
    assert len(shared) == 10
    # Request 2 came right after request 1: its shared chunks were in
    # progress or done, none was issued again.
    first2 = requests[2]["first"]
    assert first2["cached"] + first2["joined"] == len(shared)
    # Request 4 repeats request 1 once it is done: the cache answers at once.
    assert requests[4]["first"] == {**requests[1]["last"], "cached": 20, "joined": 0}
    assert summary["counts"]["cache_hits"] == first2["cached"] + 20

    # Request 3 was cancelled midway: after its cancellation the ventilator
    # issued none of its chunks, so only those done or in flight by then
    # were computed (each at most once).
    (cancelled,) = summary["cancelled"]
    assert cancelled["request"] == 3 and len(cancelled["chunks"]) == 40
    assert cancelled["done"] >= CANCEL_AFTER
    third = [name for name in cancelled["chunks"] if name in computed]
    assert len(third) <= cancelled["done"] + cancelled["in_flight"]
    assert len(third) < 40
    assert set(computed) == first | second | set(third)


def test_default_demo_reissues_the_stuck_workers_chunks(tmp_path):
    # As in the example's docstring: mpiexec -n 4 python examples/ventilator.py
    # (worker 3 hangs 1.5 s in every chunk, the deadline is 0.5 s).
    start = time.monotonic()
    summary, out = run_json(4, tmp_path)
    seconds = time.monotonic() - start
    assert "worker 3 is stuck" in out
    check_sums(summary)
    check_nothing_left(summary)
    assert summary["suspects"] == [3]
    reissued = summary["reissued"]
    assert reissued
    # Worker 3 finished its first chunk after worker 2 had: its late result
    # was ignored, and its answer to the cancelled attempt dropped.
    assert summary["counts"]["duplicates"] >= 1
    assert summary["stats"]["1"]["late_answers"] >= 1
    twice = {name for name, n in summary["computed"].items() if n > 1}
    assert twice and twice <= set(reissued)
    assert {r["number"]: r["status"] for r in summary["requests"]} == {
        1: "done",
        2: "done",
        3: "cancelled",
        4: "done",
    }
    assert seconds < 30


def test_kill_worker_completes_every_chunk_on_the_workers_left(tmp_path):
    # As in the example's docstring: conveyor run --fault-tolerant -n 4
    # examples/ventilator.py --kill-worker. Worker 2 crashes holding chunks;
    # a hang (the ventilator waiting for them for ever) fails the test.
    path = tmp_path / "summary.json"
    example = str(ventilator.__file__)
    cmd = [sys.executable, "-m", "conveyor", "run", "--fault-tolerant", "-n", "4"]
    cmd += [example, "--kill-worker", "--json", str(path)]
    result = run_command(cmd, timeout=120, env={"CONVEYOR_HEARTBEAT_S": "3"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "worker 2 crashes (os._exit) as it starts its chunk" in output, output
    assert "PASS" in result.stdout, output
    summary = json.loads(path.read_text())
    assert summary["failures"] == [] and summary["left"] == [], summary
    assert summary["lost"] == [2] and summary["counts"]["lost"] >= 1, summary
    assert sorted(summary["stats"]) == ["0", "1", "3"]  # no report from the dead worker
    check_sums(summary)
    check_nothing_left(summary)
    # The chunks the dead worker held, those that finished requests needed,
    # were computed by the workers left (its own reports never came).
    done = [r for r in summary["requests"] if r["status"] == "done"]
    assert len(done) == 3
    wanted = set().union(*(chunk_names(r["start"], r["stop"], 2_500) for r in done))
    lost = set(summary["lost_chunks"]) & wanted
    assert lost and lost <= set(summary["computed"]), summary


@pytest.mark.parametrize(
    "nranks, args, message",
    [
        (
            4,
            ["--stuck-worker", "0"],
            "--stuck-worker 0 is not a worker (the workers are ranks 2, 3)",
        ),
        (3, ["--stuck-worker", "2"], "--stuck-worker needs another worker"),
        (None, ["--stuck-worker", "two"], "--stuck-worker must be a rank, 'auto' or 'none'"),
        (None, ["--chunk", "0"], "--chunk must be at least 1"),
        (3, ["--kill-worker"], "--kill-worker needs another worker"),
        (None, ["--deadline", "0"], "need --deadline > 0"),
    ],
    ids=["not-a-worker", "only-worker", "not-a-rank", "chunk0", "kill-only-worker", "deadline0"],
)
def test_bad_arguments(nranks, args, message):
    result = run_ventilator(nranks, *args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- roles driven step by step on one rank ----------------------------------------


def _serve_until(m, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        m.progress(0.01)


def case_cancel_skips_waiting_chunks():
    import conveyor as cv

    v = load_example("ventilator")
    with cv.Messenger() as m:
        vent = v.Ventilator(m, (0,), chunk=10, window=3, deadline=60.0)
        worker = v.Worker(m, sink=0)
        request = {"number": 1, "function": "collatz", "start": 0, "stop": 100}
        stream = m.request_stream(0, "job", request, timeout=10)
        assert next(stream) == {"done": 0, "chunks": 10, "cached": 0, "joined": 0}
        _serve_until(m, lambda: len(worker.queue) == 3)  # the window: 3 chunks issued
        assert worker.step()
        assert next(stream)["done"] == 1
        stream.cancel()
        job = vent.jobs[(0, 1)]
        _serve_until(m, lambda: job.msg.cancelled)
        vent.step()  # sees the cancellation: the job and its chunks are dropped
        assert vent.jobs == {} and vent.counts["cancelled"] == 1
        # Chunk 1's result made room for chunk 4: 3 chunks wait at the worker.
        assert vent.counts["issued"] == 4, vent.counts
        _serve_until(
            m, lambda: len(worker.queue) == 3 and all(msg.cancelled for msg in worker.queue)
        )
        assert worker.step() and worker.step() and worker.step() and not worker.step()
        assert worker.skipped == 3 and worker.computed == {"collatz/0-10": 1}
        m.wait_quiet()
        # No chunk was issued after the cancellation, and nothing is left.
        assert vent.counts["issued"] == 4, vent.counts
        assert vent.pending == {} and vent.attempts == {} and vent.load == {0: 0}
        assert list(m.store) == ["collatz/0-10"]  # the chunk computed stays in the cache
        stats = m.stats()
        assert stats["pending_requests"] == 0 and stats["open_requests"] == 0, stats
        assert list(stream) == []


def test_cancel_skips_waiting_chunks(mpirun):
    mpirun(1, case_cancel_skips_waiting_chunks, timeout=30)


def case_deadline_reissues_and_first_result_wins():
    import conveyor as cv

    v = load_example("ventilator")
    with cv.Messenger() as m:
        vent = v.Ventilator(m, (0,), chunk=10, window=2, deadline=0.05)
        worker = v.Worker(m, sink=0)
        request = {"number": 7, "function": "collatz", "start": 0, "stop": 10}
        stream = m.request_stream(0, "job", request, timeout=10)
        assert next(stream)["chunks"] == 1
        _serve_until(m, lambda: len(worker.queue) == 1)
        time.sleep(0.1)  # the worker does not answer in time
        vent.step()
        assert vent.reissued == {"collatz/0-10": 1} and vent.suspects == {0}
        # The only worker is suspect too: it gets the chunk again.
        _serve_until(m, lambda: len(worker.queue) == 2)
        # Both attempts computed before the second learns it was cancelled:
        # the first result wins, the second is a duplicate, ignored.
        assert worker.step() and worker.step()
        final = list(stream)[-1]
        assert final["sum"] == collatz_sum(0, 10)
        m.wait_quiet()
        assert vent.counts["duplicates"] == 1 and worker.computed == {"collatz/0-10": 2}
        assert vent.pending == {} and vent.attempts == {} and vent.jobs == {}
        stats = m.stats()
        assert stats["late_answers"] == 1, stats  # the answer to the cancelled attempt
        assert stats["pending_requests"] == 0 and stats["open_requests"] == 0, stats


def test_deadline_reissues_and_first_result_wins(mpirun):
    mpirun(1, case_deadline_reissues_and_first_result_wins, timeout=30)
