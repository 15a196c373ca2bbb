"""Soak: a steady mix of everything for a long time; do values stay right and memory flat?

Run on 3 ranks (any number from 2 works)::

    mpiexec -n 3 python bench/soak.py [--seconds 600] [--warmup S] [--leak-mib 16]
                                      [--small N] [--large N] [--json FILE]

The ranks run rounds until rank 0 has seen ``--seconds`` go by. In each
round every rank, through the public API only:

small sends
    ``--small`` ints in sequence through a `Sender` to every other rank,
    and a few dicts (a string, a float, a small array) with ``m.send``;
requests
    ``--requests`` to every other rank, some with a small array, whose
    answers must be the handler's function of what was asked;
large arrays
    ``--large`` arrays of 1 to 4 MiB (``--large-mib``) to every other
    rank, each checked element by element on arrival;
tables
    puts keys of its own in a table, waits for every other rank's keys
    (often before they are set: the wait is deferred at the key's home),
    then deletes its own;
store orders
    puts an item, fetches its neighbour's, orders the neighbour to `Copy`
    its item to a third rank and to `Move` another one here; then checks
    what arrived in its store, and that the moved item left its source;
DistArray
    builds a `DistArray` from a piece of its own, a second one scattered
    in chunks that do not line up with it, and checks ``dcall`` on both
    (aligned) and a scalar, ``dmap`` over the result, a reduction and
    ``collect`` against numpy; then drops them all.

A wrong value, a message missing at the end of a round (every round ends
with ``wait_quiet``), a message repeated or out of order, a failed request
or a handler error is a problem. After ``--warmup`` seconds (a tenth of
the run by default) each rank samples its resident size
(``/proc/self/statm``) and its engine's cache of receive buffers
(``buffer_cache_bytes``: freed buffers of 1 MiB and more, kept by design
up to ``CONVEYOR_BUFFER_CACHE_BYTES``) at the end of a round, once a
second. The start of the steady state is the median of the first tenth
of these samples, its end the median of the last tenth, so that a step
of a few freed arrays held for a while is not taken for growth. A leak is
RSS growth from start to end beyond what the buffer cache grew by.
Reported per rank: RSS at the start and end, the buffer cache at both,
the process's peak RSS (``ru_maxrss``), the operations of each kind, and
what is left at the end in the chunk table (``m.chunk_stats()``, all 0
expected), the store and the table.

Exit status 0 if everything passed, 1 on a wrong or lost value, a
chunk, item or key left behind, or a leak above ``--leak-mib`` (16 MiB)
on any rank. ``--json`` writes metadata, the summary and the per-rank
figures.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

import conveyor as cv

MiB = 1 << 20
WAIT_S = 120.0  # a wait this long is a lost answer, not a slow one
MAX_PROBLEMS = 20  # kept per rank: the first ones tell what went wrong

# Counters that must stay 0 for the whole run (m.stats()).
MUST_BE_ZERO = (
    "frames_malformed",
    "frames_forged",
    "unknown_tag",
    "payloads_undecodable",
    "handler_errors",
    "answers_malformed",
    "late_answers",
    "pending_requests",
    "open_requests",
)


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def pattern(source, seq, nbytes):
    """The large array number `seq` of rank `source`: different in every element and message."""
    n = nbytes // 8
    return np.arange(n, dtype=np.uint64) * np.uint64(3) + np.uint64((source << 48) + (seq << 24))


def item_value(rank, turn, kind):
    """The store item `kind` ("item" or "move") of rank `rank` in round `turn`."""
    return pattern(rank, 2 * turn + (kind == "move"), 1 * MiB)


def question(seq):
    """What request `seq` of a round asks: an int, or every 8th time a small array."""
    return np.full(8, seq, dtype=np.float64) if seq % 8 == 0 else seq


def echo(payload):
    """What the request handler answers to `payload`."""
    seq, value = payload
    if isinstance(value, np.ndarray):
        return seq, value * 2.0
    return seq, value * 3 + 1


def axpy(x, y, a):
    """The function of the soak's ``dcall``: ``a * x + y``."""
    return a * x + y


def chunk_sum(x):
    """The function of the soak's ``dmap``: a chunk's sum, as a 1-element array."""
    return np.array([x.sum()], dtype=np.float64)


class Checks:
    """One rank's record of what arrived: counts, sequences and the problems found."""

    def __init__(self, size):
        self.next_small = [0] * size
        self.next_note = [0] * size
        self.next_large = [0] * size
        self.problems = []
        self.problem_count = 0
        self.counts = dict.fromkeys(
            (
                "small_sent",
                "small_received",
                "notes_sent",
                "notes_received",
                "requests",
                "large_sent",
                "large_received",
                "large_mib",
                "table_puts",
                "table_waits",
                "table_deletes",
                "fetches",
                "copies",
                "moves",
                "distarrays",
                "dcalls",
                "dmaps",
                "collects",
                "rounds",
            ),
            0,
        )

    def problem(self, text):
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def expect(self, what, got, want):
        """Record a problem unless `got` is `want` (same types, arrays element by element)."""
        if not same(got, want):
            self.problem(f"{what}: got {summary(got)}, expected {summary(want)}")

    def in_sequence(self, what, expected, source, seq):
        """Check that `seq` is the next of `source` in `expected`, and step it."""
        if seq != expected[source]:
            self.problem(f"{what} from rank {source}: number {seq}, expected {expected[source]}")
        expected[source] = seq + 1

    def small(self, source, seq):
        self.in_sequence("small message", self.next_small, source, seq)
        self.counts["small_received"] += 1

    def note(self, source, payload):
        if not isinstance(payload, dict):
            self.problem(f"note from rank {source}: got {summary(payload)}")
            return
        seq = payload.get("seq")
        self.in_sequence("note", self.next_note, source, seq)
        self.expect(f"note {seq} from rank {source}", payload, note_of(source, seq))
        self.counts["notes_received"] += 1

    def large(self, source, payload):
        seq, array = payload
        self.in_sequence("large array", self.next_large, source, seq)
        self.expect(
            f"large array {seq} from rank {source}", array, pattern(source, seq, array.nbytes)
        )
        self.counts["large_received"] += 1
        self.counts["large_mib"] += array.nbytes / MiB

    def all_arrived(self, turn, args, rank, size):
        """At the end of round `turn` (quiet): every other rank's messages of it, no more."""
        for source in range(size):
            if source == rank:
                continue
            for what, got, per_round in (
                ("small messages", self.next_small[source], args.small),
                ("notes", self.next_note[source], args.notes),
                ("large arrays", self.next_large[source], args.large),
            ):
                if got != (turn + 1) * per_round:
                    self.problem(
                        f"round {turn}: {got} {what} from rank {source}, "
                        f"{(turn + 1) * per_round} sent"
                    )


def same(got, want):
    """Whether `got` equals `want`, with the same types all through (arrays: dtype, shape)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, np.ndarray):
        return (
            got.dtype == want.dtype and got.shape == want.shape and bool(np.array_equal(got, want))
        )
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, (tuple, list)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return bool(got == want)


def note_of(source, seq):
    """The note number `seq` of rank `source`: a dict of a str, a float and a small array."""
    return {
        "seq": seq,
        "text": f"note {seq} of rank {source}",
        "x": seq / 7,
        "v": np.arange(seq % 5),
    }


def summary(value):
    if isinstance(value, np.ndarray):
        return f"array {value.dtype}{list(value.shape)} starting {value.ravel()[:3].tolist()}"
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def sizes(args, seq):
    """The byte size of large array `seq`: 1 .. --large-mib MiB in turn."""
    return (1 + seq % args.large_mib) * MiB


def one_round(m, turn, args, checks, table):
    """Every kind of work once; collective."""
    rank, size = m.rank, m.size
    others = [r for r in range(size) if r != rank]
    nxt, third = (rank + 1) % size, (rank + 2) % size
    counts = checks.counts

    # The round's items and keys, before anyone asks for them.
    m.store.put(f"soak.item.{rank}", item_value(rank, turn, "item"))
    m.store.put(f"soak.move.{rank}", item_value(rank, turn, "move"))
    puts = [table.put(("soak", turn, rank, j), (turn, rank, j)) for j in range(args.keys)]
    m.barrier(timeout=WAIT_S)

    # Traffic: requests and orders go out first, so that their answers
    # come back while the sends below keep the ranks busy.
    asked = [
        (dest, seq, m.request(dest, "soak.echo", (seq, question(seq))))
        for dest in others
        for seq in range(args.requests)
    ]
    waits = [
        (key, table.wait(key))
        for source in others
        for key in [("soak", turn, source, j) for j in range(args.keys)]
    ]
    fetched = m.fetch(nxt, f"soak.item.{nxt}")
    copied = m.order(nxt, cv.Copy(f"soak.item.{nxt}", to=third, as_name=f"soak.copy.{rank}"))
    moved = m.order(nxt, cv.Move(f"soak.move.{nxt}", to=rank, as_name="soak.moved"))
    small = m.sender("soak.small")
    base_small = turn * args.small
    base_note = turn * args.notes
    base_large = turn * args.large
    for dest in others:
        for seq in range(base_small, base_small + args.small):
            small.send(dest, seq)
        for seq in range(base_note, base_note + args.notes):
            m.send(dest, "soak.note", note_of(rank, seq))
        for seq in range(base_large, base_large + args.large):
            m.send(dest, "soak.large", (seq, pattern(rank, seq, sizes(args, seq))))
    counts["small_sent"] += args.small * len(others)
    counts["notes_sent"] += args.notes * len(others)
    counts["large_sent"] += args.large * len(others)

    for dest, seq, future in asked:
        want = echo((seq, question(seq)))
        checks.expect(f"request {seq} to rank {dest}", future.result(timeout=WAIT_S), want)
        counts["requests"] += 1
    for future in puts:
        checks.expect("table put", future.result(timeout=WAIT_S), None)
        counts["table_puts"] += 1
    for key, future in waits:
        checks.expect(f"table key {key}", future.result(timeout=WAIT_S), key[1:])
        counts["table_waits"] += 1
    checks.expect(
        f"item fetched from rank {nxt}",
        fetched.result(timeout=WAIT_S),
        item_value(nxt, turn, "item"),
    )
    counts["fetches"] += 1
    for what, future, to in (("copy", copied, [third]), ("move", moved, [rank])):
        done = future.result(timeout=WAIT_S)
        if not (isinstance(done, dict) and done.get("to") == to):
            checks.problem(f"round {turn}: the {what} order to rank {nxt} answered {summary(done)}")
    counts["copies"] += 1
    counts["moves"] += 1
    m.wait_quiet(timeout=WAIT_S)

    # What arrived, then the round's items and keys go.
    checks.all_arrived(turn, args, rank, size)
    copier = (rank - 2) % size  # the rank that ordered a copy to here
    holder = (rank - 1) % size
    checks.expect(
        f"round {turn}: item copied here from rank {holder}",
        m.store.get(f"soak.copy.{copier}"),
        item_value(holder, turn, "item"),
    )
    checks.expect(
        f"round {turn}: item moved here from rank {nxt}",
        m.store.get("soak.moved"),
        item_value(nxt, turn, "move"),
    )
    if f"soak.move.{rank}" in m.store:
        checks.problem(f"round {turn}: the item moved from here is still here")
    for name in (f"soak.copy.{copier}", "soak.moved"):
        m.store.pop(name, None)
    for future in [table.delete(("soak", turn, rank, j)) for j in range(args.keys)]:
        future.result(timeout=WAIT_S)
        counts["table_deletes"] += 1

    distarray_work(m, turn, args, checks)
    counts["rounds"] += 1


def distarray_work(m, turn, args, checks):
    """DistArrays made, called on, mapped, reduced and collected; collective."""
    rank, size = m.rank, m.size
    counts = checks.counts
    lengths = [args.rows + 97 * ((turn + r) % 5) for r in range(size)]
    starts = np.cumsum([0] + lengths)
    whole = np.arange(starts[-1], dtype=np.float64) + turn
    x = cv.DistArray.from_local(m, whole[starts[rank] : starts[rank + 1]])
    # Chunks that do not line up with x's, placed round the ranks from the next one.
    y = m.array(
        whole[::-1] * (rank + 1),
        chunks=size + 2,
        ranks=[(rank + 1 + k) % size for k in range(size + 2)],
    )
    z = cv.dcall(axpy, x, y, 2.0)
    expected = 2.0 * whole + whole[::-1] * (rank + 1)
    checks.expect(f"round {turn}: dcall(axpy, x, y, 2).collect()", z.collect(), expected)
    sums = cv.dmap(chunk_sum, z).collect()
    if not np.isclose(sums.sum(), expected.sum(), rtol=1e-12):
        checks.problem(
            f"round {turn}: dmap(chunk_sum, z) sums to {sums.sum()}, not {expected.sum()}"
        )
    total = x.sum()
    if total != whole.sum():
        checks.problem(f"round {turn}: x.sum() is {total}, not {whole.sum()}")
    counts["distarrays"] += 4
    counts["dcalls"] += 1
    counts["dmaps"] += 1
    counts["collects"] += 2
    del x, y, z


def serve(m, checks):
    """The soak's handlers."""
    m.on("soak.small")(lambda msg: checks.small(msg.source, msg.payload))
    m.on("soak.note")(lambda msg: checks.note(msg.source, msg.payload))
    m.on("soak.large")(lambda msg: checks.large(msg.source, msg.payload))
    m.on("soak.echo")(lambda msg: echo(msg.payload))


def leftovers(m, table):
    """What the run left on this rank once quiet: all 0 expected."""
    chunks = m.chunk_stats()
    return {
        "chunk_table": chunks,
        "store_items": sorted(m.store),
        "table_keys": len(table.local_keys()),
    }


def soak(m, args):
    """The rounds; return this rank's figures."""
    checks = Checks(m.size)
    serve(m, checks)
    table = m.table("soak")
    m.wait_quiet()
    started = time.monotonic()
    samples = []  # (seconds since the start, RSS MiB, buffer cache MiB) once warm
    turn = 0
    while True:
        one_round(m, turn, args, checks, table)
        elapsed = time.monotonic() - started
        if elapsed >= args.warmup and (not samples or elapsed - samples[-1][0] >= 1.0):
            samples.append((elapsed, current_rss_mib(), m.stats()["buffer_cache_bytes"] / MiB))
        turn += 1
        if m.bcast(elapsed >= args.seconds, root=0, timeout=WAIT_S):
            break
    # The last round's items stay until here: leftovers counts only what should be gone.
    for kind in ("item", "move"):
        m.store.pop(f"soak.{kind}.{m.rank}", None)
    m.wait_quiet(timeout=WAIT_S)
    left = leftovers(m, table)
    stats = m.stats()
    return {
        "rank": m.rank,
        "seconds": time.monotonic() - started,
        "counts": checks.counts,
        "problems": checks.problems,
        "problem_count": checks.problem_count,
        **steady_rss(samples),
        "rss_peak_sampled_mib": max((rss for _, rss, _ in samples), default=None),
        "rss_peak_mib": peak_rss_mib(),
        "rss_samples": samples,
        "left": left,
        "stats": {
            k: stats[k]
            for k in ("messages_sent", "messages_handled", "bytes_zero_copy_sent", *MUST_BE_ZERO)
        },
    }


def steady_rss(samples):
    """RSS and buffer cache at the start and end of the steady state, MiB.

    Each is the median of the first or last tenth of `samples`.
    """
    if not samples:
        return dict.fromkeys(("rss_start_mib", "rss_end_mib", "cache_start_mib", "cache_end_mib"))
    tenth = max(1, len(samples) // 10)
    rss = [mib for _, mib, _ in samples]
    cache = [mib for _, _, mib in samples]
    return {
        "rss_start_mib": float(np.median(rss[:tenth])),
        "rss_end_mib": float(np.median(rss[-tenth:])),
        "cache_start_mib": float(np.median(cache[:tenth])),
        "cache_end_mib": float(np.median(cache[-tenth:])),
    }


def leaked_mib(r):
    """A rank's growth of RSS over the steady state, less what its buffer cache took of it."""
    return (r["rss_end_mib"] - r["rss_start_mib"]) - (r["cache_end_mib"] - r["cache_start_mib"])


def verdict(per_rank, leak_mib):
    """Return the problems of the whole run (empty: it passed)."""
    found = []
    for r in per_rank:
        rank = r["rank"]
        found += [f"rank {rank}: {p}" for p in r["problems"]]
        if r["problem_count"] > len(r["problems"]):
            found.append(f"rank {rank}: {r['problem_count'] - len(r['problems'])} more problems")
        for key in MUST_BE_ZERO:
            if r["stats"][key]:
                found.append(f"rank {rank}: stats()[{key!r}] is {r['stats'][key]}")
        chunks = r["left"]["chunk_table"]
        if any(chunks.values()):
            found.append(f"rank {rank}: left in the chunk table: {chunks}")
        if r["left"]["store_items"] or r["left"]["table_keys"]:
            found.append(
                f"rank {rank}: left {r['left']['store_items']} in the store, "
                f"{r['left']['table_keys']} table keys"
            )
        if r["rss_start_mib"] is None:
            found.append(f"rank {rank}: no RSS sample after the warm-up (run longer)")
        elif leaked_mib(r) > leak_mib:
            found.append(
                f"rank {rank}: RSS grew {leaked_mib(r):.1f} MiB over the steady state, "
                f"besides the buffer cache (bound {leak_mib:g} MiB)"
            )
    return found


def report(per_rank, args, found):
    """Print rank 0's table."""
    ranks = len(per_rank)
    seconds = max(r["seconds"] for r in per_rank)
    print(
        f"soak: {ranks} ranks, {seconds:.0f} s, {per_rank[0]['counts']['rounds']} rounds, "
        f"warm-up {args.warmup:g} s, leak bound {args.leak_mib:g} MiB, {os.cpu_count()} CPUs"
    )
    print()
    head = (
        f"{'rank':>4} {'RSS start':>9} {'end':>7} {'cache start':>11} {'end':>5} "
        f"{'leak':>5} {'peak':>6} {'small sends':>11} {'requests':>9} {'arrays in':>9} "
        f"{'GiB in':>7} {'table':>7} {'orders':>6} {'dcalls':>6} {'chunks left':>11}"
    )
    print(head)
    print("-" * len(head))
    for r in per_rank:
        c = r["counts"]
        if r["rss_start_mib"] is None:
            memory = f"{'-':>9} {'-':>7} {'-':>11} {'-':>5} {'-':>5}"
        else:
            memory = (
                f"{r['rss_start_mib']:9.1f} {r['rss_end_mib']:7.1f} "
                f"{r['cache_start_mib']:11.0f} {r['cache_end_mib']:5.0f} {leaked_mib(r):5.1f}"
            )
        print(
            f"{r['rank']:>4} {memory} {r['rss_peak_mib']:6.1f} "
            f"{c['small_sent'] + c['notes_sent']:>11,} {c['requests']:>9,} "
            f"{c['large_received']:>9,} {c['large_mib'] / 1024:7.1f} "
            f"{c['table_puts'] + c['table_waits'] + c['table_deletes']:>7,} "
            f"{c['fetches'] + c['copies'] + c['moves']:>6,} {c['dcalls'] + c['dmaps']:>6,} "
            f"{r['left']['chunk_table']['chunks']:>11}"
        )
    print()
    print(f"values, counts, leftovers and memory: {'PASS' if not found else 'FAIL'}")
    for text in found:
        print(f"  {text}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long, s (default 600)")
    parser.add_argument(
        "--warmup", type=float, help="seconds before RSS is sampled (default: a tenth of --seconds)"
    )
    parser.add_argument(
        "--leak-mib",
        type=float,
        default=16.0,
        help="RSS growth over the steady state allowed per rank, MiB (default 16)",
    )
    parser.add_argument(
        "--small", type=int, default=20000, help="small sends per other rank and round"
    )
    parser.add_argument(
        "--notes", type=int, default=200, help="dicts sent per other rank and round"
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per other rank and round"
    )
    parser.add_argument(
        "--large", type=int, default=8, help="large arrays per other rank and round"
    )
    parser.add_argument(
        "--large-mib", type=int, default=4, help="the largest arrays' size, MiB (default 4)"
    )
    parser.add_argument("--keys", type=int, default=100, help="table keys per rank and round")
    parser.add_argument(
        "--rows", type=int, default=100000, help="rows of each rank's DistArray piece"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write metadata, summary and per-rank figures"
    )
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = args.seconds / 10
    counts = (
        args.small,
        args.notes,
        args.requests,
        args.large,
        args.large_mib,
        args.keys,
        args.rows,
    )
    if min(counts) < 1:
        parser.error("the counts and sizes must be >= 1")

    with cv.Messenger() as m:
        if m.size < 2:
            print("soak.py needs at least 2 ranks (mpiexec -n 3)", file=sys.stderr)
            return 2
        per_rank = m.gather(soak(m, args), root=0)
    if per_rank is None:  # not rank 0
        return 0
    found = verdict(per_rank, args.leak_mib)
    report(per_rank, args, found)
    if args.json:
        from conveyor._bench.runinfo import run_metadata

        meta = run_metadata(ranks=len(per_rank), **vars(args))
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "passed": not found, "problems": found, "per_rank": per_rank},
                f,
                indent=1,
            )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
