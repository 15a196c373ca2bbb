"""Flood benchmark: do senders slow down for a rank that cannot keep up?

Run on 2 or more ranks (meant for 4 ranks on a 2-core machine)::

    mpiexec -n 4 python bench/flood.py [--messages 10000000] [--sleep-every 2000]
                                       [--window BYTES] [--pad BYTES]
                                       [--rss-bound-mib 256] [--raw] [--json FILE]

Ranks 0 .. n-2 send ``--messages`` small messages in all (split evenly), one
``Sender.send`` each, to the last rank, whose handler sleeps 1 ms every
``--sleep-every`` messages: a deliberately slow receiver. A message is its
sender's sequence number (plus ``--pad`` bytes if asked). Flow control
(``CONVEYOR_WINDOW_BYTES``, 8 MiB by default; ``--window`` sets it for this
run, ``--window 0`` turns it off) should slow the senders to the receiver's
pace instead of letting messages pile up in its memory.

Checked and reported (rank 0 prints a table):

delivery
    the slow rank counts the messages of each sender, checks that their
    sequence numbers arrive in order with none missing or repeated, and
    compares the sum of the sequence numbers with the expected checksum.
memory
    every rank's peak RSS (``ru_maxrss``) against ``--rss-bound-mib`` (256 MiB),
    and its growth over the RSS it had before the flood.
pace
    wall time of the flood (from a barrier to the end of ``wait_quiet``),
    messages per second, how often sends waited for credit (``sends_held``)
    and how many credit frames went each way.

``--raw`` then runs the same flood with raw mpi4py, one pickled
``comm.isend`` per message (requests completed every 1024 sends) and a
``comm.recv`` loop on the slow rank with the same sleeps, and reports its
rate and the conveyor / mpi4py ratio. Its memory is sampled from
``/proc/self/statm`` during the run (the process peak includes conveyor's).

Exit status: 0 if everything passed, 1 if a message was lost, duplicated or
reordered, 3 if only the memory bound was exceeded. ``--json`` writes
metadata, the summary and per-rank figures.
"""

import argparse
import json
import os
import resource
import sys
import time

from mpi4py import MPI

import conveyor as cv
from conveyor._bench.runinfo import run_metadata

MiB = 1 << 20
TAG_RAW = 77


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def size_arg(text):
    """An int with an optional K, M or G suffix (powers of 1024)."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def share(total, senders, rank):
    """How many of `total` messages sender `rank` sends."""
    return total // senders + (rank < total % senders)


class SlowReceiver:
    """The last rank's bookkeeping: per-source counts, order and checksum."""

    def __init__(self, size, sleep_every, sleep_s):
        self.count = [0] * size
        self.next = [0] * size
        self.out_of_order = [0] * size
        self.total = [0] * size
        self.handled = 0
        self.sleep_every = sleep_every
        self.sleep_s = sleep_s
        self.rss_samples = 0.0

    def take(self, source, seq):
        if seq != self.next[source]:
            self.out_of_order[source] += 1
        self.next[source] = seq + 1
        self.count[source] += 1
        self.total[source] += seq
        self.handled += 1
        if self.handled % self.sleep_every == 0:
            time.sleep(self.sleep_s)
            if self.handled % (64 * self.sleep_every) == 0:
                self.rss_samples = max(self.rss_samples, current_rss_mib())

    def check(self, senders, messages):
        """Return the list of problems (empty: every message exactly once, in order)."""
        problems = []
        for source in range(senders):
            n = share(messages, senders, source)
            if self.count[source] != n:
                problems.append(f"rank {source}: {self.count[source]} messages received, {n} sent")
            if self.out_of_order[source]:
                problems.append(f"rank {source}: {self.out_of_order[source]} out of sequence")
            if self.total[source] != n * (n - 1) // 2:
                problems.append(
                    f"rank {source}: checksum {self.total[source]} != {n * (n - 1) // 2}"
                )
        return problems


def conveyor_flood(world, args):
    slow = world.size - 1
    senders = world.size - 1
    receiver = SlowReceiver(world.size, args.sleep_every, args.sleep_ms * 1e-3)
    with cv.Messenger() as m:
        if args.pad:
            pad = b"p" * args.pad
            m.on("item")(lambda msg: receiver.take(msg.source, msg.payload[0]))
        else:
            m.on("item")(lambda msg: receiver.take(msg.source, msg.payload))
        m.wait_quiet()
        baseline = current_rss_mib()
        world.Barrier()
        t0 = time.perf_counter()
        send_s = 0.0
        if world.rank != slow:
            send = m.sender("item").send
            n = share(args.messages, senders, world.rank)
            if args.pad:
                for seq in range(n):
                    send(slow, (seq, pad))
            else:
                for seq in range(n):
                    send(slow, seq)
            send_s = time.perf_counter() - t0
        m.wait_quiet()
        wall = time.perf_counter() - t0
        stats = m.stats()
    out = {
        "rank": world.rank,
        "role": "slow receiver" if world.rank == slow else "sender",
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "wall_s": wall,
        "send_loop_s": send_s,
        "stats": {
            k: stats[k]
            for k in (
                "messages_sent",
                "messages_handled",
                "messages_aggregated",
                "batches_sent",
                "batches_received",
                "frames_sent",
                "sends_held",
                "credits_sent",
                "credits_received",
                "background_flushes",
                "waits_slept",
            )
        },
    }
    if world.rank == slow:
        out["problems"] = receiver.check(senders, args.messages)
        out["received"] = receiver.handled
    return out


def raw_flood(world, args):
    """The same flood with raw mpi4py: one pickled isend per message."""
    slow = world.size - 1
    senders = world.size - 1
    receiver = SlowReceiver(world.size, args.sleep_every, args.sleep_ms * 1e-3)
    comm = world.Dup()
    comm.Barrier()
    t0 = time.perf_counter()
    rss = current_rss_mib()
    if world.rank != slow:
        n = share(args.messages, senders, world.rank)
        pad = b"p" * args.pad
        reqs = []
        for seq in range(n):
            reqs.append(comm.isend((seq, pad) if args.pad else seq, dest=slow, tag=TAG_RAW))
            if len(reqs) == 1024:
                MPI.Request.Waitall(reqs)
                reqs.clear()
                if seq % (64 * 1024) == 64 * 1024 - 1:
                    rss = max(rss, current_rss_mib())
        MPI.Request.Waitall(reqs)
    else:
        status = MPI.Status()
        for _ in range(args.messages):
            item = comm.recv(source=MPI.ANY_SOURCE, tag=TAG_RAW, status=status)
            receiver.take(status.Get_source(), item[0] if args.pad else item)
        rss = max(rss, receiver.rss_samples)
    comm.Barrier()
    wall = time.perf_counter() - t0
    comm.Free()
    out = {"rank": world.rank, "wall_s": wall, "sampled_rss_mib": max(rss, current_rss_mib())}
    if world.rank == slow:
        out["problems"] = receiver.check(senders, args.messages)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=10_000_000,
        help="messages in all, split over the senders (default 10,000,000)",
    )
    parser.add_argument(
        "--sleep-every",
        type=int,
        default=2000,
        help="the slow rank sleeps after every this many messages (default 2000)",
    )
    parser.add_argument(
        "--sleep-ms", type=float, default=1.0, help="how long it sleeps, ms (default 1)"
    )
    parser.add_argument(
        "--window",
        type=size_arg,
        default=None,
        help="CONVEYOR_WINDOW_BYTES for this run, e.g. 1M; 0: no flow control "
        "(default: the environment's, else 8M)",
    )
    parser.add_argument(
        "--pad", type=int, default=0, help="send (seq, PAD bytes) instead of seq (default 0)"
    )
    parser.add_argument(
        "--rss-bound-mib",
        type=float,
        default=256.0,
        help="peak RSS every rank must stay under, MiB (default 256)",
    )
    parser.add_argument(
        "--raw",
        action="store_true",
        help="also run the flood with raw mpi4py isend/recv, for comparison",
    )
    parser.add_argument("--json", metavar="FILE", help="write metadata, summary, per-rank figures")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.sleep_every < 1 or args.sleep_ms < 0 or args.pad < 0:
        parser.error("--messages and --sleep-every must be >= 1, --sleep-ms and --pad >= 0")

    world = MPI.COMM_WORLD
    if world.size < 2:
        print("flood.py needs at least 2 ranks (mpiexec -n 4)", file=sys.stderr)
        return 2
    if args.window is not None:
        os.environ["CONVEYOR_WINDOW_BYTES"] = str(args.window)
    window = int(os.environ.get("CONVEYOR_WINDOW_BYTES") or 8 * MiB)

    started = time.perf_counter()
    results = world.gather(conveyor_flood(world, args), root=0)
    raw = world.gather(raw_flood(world, args), root=0) if args.raw else None
    if world.rank != 0:
        return 0

    slow = world.size - 1
    senders = world.size - 1
    per_sleep = args.sleep_every
    window_text = "off" if window == 0 else f"{window / MiB:g} MiB"
    print(
        f"flood: {senders} senders -> rank {slow} (sleeps {args.sleep_ms:g} ms every "
        f"{per_sleep} messages), {args.messages:,} messages"
        f"{f' of (seq, {args.pad} B)' if args.pad else ''}, window {window_text}, "
        f"{os.cpu_count()} CPUs"
    )
    print()
    head = (
        f"{'rank':>4} {'role':<13} {'peak RSS MiB':>12} {'grown':>7} {'sent':>11} "
        f"{'handled':>11} {'sends held':>10} {'credits sent/recv':>18} {'batches':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        s = r["stats"]
        credits = f"{s['credits_sent']}/{s['credits_received']}"
        print(
            f"{r['rank']:>4} {r['role']:<13} {r['peak_rss_mib']:12.1f} "
            f"{r['peak_rss_mib'] - r['baseline_rss_mib']:7.1f} {s['messages_sent']:>11,} "
            f"{s['messages_handled']:>11,} {s['sends_held']:>10,} {credits:>18} "
            f"{s['batches_sent']:>8,}"
        )
    print()
    wall = max(r["wall_s"] for r in results)
    rate = args.messages / wall
    problems = results[slow]["problems"]
    peak = max(r["peak_rss_mib"] for r in results)
    delivered = not problems
    bounded = peak < args.rss_bound_mib
    held = sum(r["stats"]["sends_held"] for r in results if r["rank"] != slow)
    print(
        f"delivery  every message exactly once, in order (counts, sequence, checksum): "
        f"{'PASS' if delivered else 'FAIL'}"
    )
    for p in problems:
        print(f"          {p}")
    print(
        f"memory    peak RSS of every rank < {args.rss_bound_mib:g} MiB: "
        f"{'PASS' if bounded else 'FAIL'} (max {peak:.1f} MiB)"
    )
    loops = ", ".join(f"{r['send_loop_s']:.2f}" for r in results if r["rank"] != slow)
    print(
        f"pace      {wall:.2f} s, {rate:,.0f} messages/s; sends held for credit: {held:,} "
        f"(senders' loops {loops} s)"
    )
    summary = {
        "messages": args.messages,
        "senders": senders,
        "window_bytes": window,
        "wall_s": wall,
        "messages_per_s": rate,
        "max_peak_rss_mib": peak,
        "rss_bound_mib": args.rss_bound_mib,
        "delivered": delivered,
        "bounded": bounded,
        "sends_held": held,
        "problems": problems,
    }
    if raw is not None:
        raw_wall = max(r["wall_s"] for r in raw)
        raw_rate = args.messages / raw_wall
        raw_problems = raw[slow]["problems"]
        raw_rss = max(r["sampled_rss_mib"] for r in raw)
        print(
            f"raw       mpi4py isend/recv per message (pickle): {raw_wall:.2f} s, "
            f"{raw_rate:,.0f} messages/s, sampled RSS max {raw_rss:.1f} MiB, "
            f"{'all delivered' if not raw_problems else '; '.join(raw_problems)}"
        )
        print(f"ratio     conveyor / mpi4py message rate: {rate / raw_rate:.2f}x")
        summary["raw"] = {
            "wall_s": raw_wall,
            "messages_per_s": raw_rate,
            "sampled_rss_mib": raw_rss,
            "problems": raw_problems,
            "ratio_conveyor_over_raw": rate / raw_rate,
        }
    total_wall = time.perf_counter() - started
    print(f"\nwall time {total_wall:.0f} s", flush=True)

    if args.json:
        meta = run_metadata(
            ranks=world.size,
            messages=args.messages,
            sleep_every=args.sleep_every,
            sleep_ms=args.sleep_ms,
            window_bytes=window,
            pad=args.pad,
            rss_bound_mib=args.rss_bound_mib,
            wall_seconds=total_wall,
        )
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "summary": summary, "per_rank": results, "raw": raw},
                f,
                indent=1,
                ensure_ascii=False,
            )
    if not delivered:
        return 1
    return 0 if bounded else 3


if __name__ == "__main__":
    sys.exit(main())
