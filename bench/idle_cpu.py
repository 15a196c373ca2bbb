"""Idle-CPU benchmark: do ranks waiting inside conveyor keep a core busy?

Run on 2 or more ranks (meant for 4 ranks on a 2-core machine)::

    mpiexec -n 4 python bench/idle_cpu.py [--asyncio] [--seconds 5] [--pings 40]
                                          [--gap-ms 20] [--json FILE]

Rank 0 runs a single-threaded pure-Python CPU loop for ``--seconds`` of wall
time while ranks 1.. wait; this is done three times, with the idle ranks
waiting in three different ways:

baseline
    ``time.sleep`` (no MPI, no conveyor): what the computing rank gets when
    the others truly sleep.
request
    each idle rank blocks in ``m.request(0, "done").result(timeout=...)``,
    which rank 0 only answers after its compute.
progress
    each idle rank loops ``m.progress(1.0)`` until rank 0 sends it "stop".

For each phase it reports rank 0's CPU share (process CPU time / wall time
of the compute loop, target >= 80 % of a core with conveyor waiters), the
work it got done relative to the baseline, and each idle rank's CPU use in
% of a core over the same phase (``time.process_time``) together with how
often its waits went to sleep (``stats()["waits_slept"]``).

responsiveness
    Idle ranks loop in ``m.progress(1.0)``; rank 0 sleeps ``--gap-ms``
    (long enough for the waiter to be in its sleep phase), then sends
    ``m.request(r, "ping")`` to the idle ranks in turn; the handler returns
    its CLOCK_MONOTONIC time at once. Reported: round trip (median, p90;
    target median <= 1 ms) and the one-way time from send to handler
    (the clock is shared by all processes of one machine).

With ``--asyncio`` the idle ranks sit in an asyncio event loop instead
(``asyncio.run``, the messenger attached to the loop: the engine's
background thread makes MPI progress and wakes the loop through an eventfd)
and the phases after the baseline are

arequest
    each idle rank awaits ``m.arequest(0, "done")``, answered after the
    compute.
event
    each idle rank awaits an ``asyncio.Event`` that its "stop" handler sets.
aquiet
    each idle rank awaits ``m.aquiet()``, which returns once rank 0 has
    finished computing and called ``m.wait_quiet()`` (a termination wave is
    in flight all along).

and the responsiveness test pings idle ranks that await a stop event in
their loop (rank 0 is the same in both modes: it computes and pings
without an event loop). Idle CPU is the whole process's (all threads, the
background thread included). "sleeps/s" counts the naps of waits in
blocking calls only (0 in an event loop, where the background thread naps
instead); "wakes/s" counts the idle processes' voluntary context switches
(every sleep of any thread) per second, in both modes.

Rank 0 prints a table; ``--json`` writes metadata, per-rank figures and
every ping sample. Settings read from ``CONVEYOR_*`` variables (for
instance ``CONVEYOR_SPIN_US``, ``CONVEYOR_MAX_SLEEP_US``) are recorded.
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI

import conveyor as cv
from conveyor._bench.runinfo import run_metadata

CPU_SHARE_TARGET = 0.80  # computing rank's share of a core, conveyor waiters
RTT_MEDIAN_TARGET = 1e-3  # seconds
WARMUP_PINGS = 3  # untimed pings per idle rank


def mono():
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def compute(seconds):
    """Spin a pure-Python loop for `seconds` of wall time; return its figures."""
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    chunks = 0
    x = 0
    while True:
        for i in range(2000):
            x += i * i
        chunks += 1
        if time.perf_counter() >= end:
            break
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_share": cpu / wall,
        "chunks": chunks,
        "chunks_per_s": chunks / wall,
        "invol_ctx_switches": ru1.ru_nivcsw - ru0.ru_nivcsw,
    }


class Idle:
    """Measures an idle rank's CPU time, wall time, sleeps and wake-ups over a phase."""

    def __init__(self, m=None):
        self.m = m

    def __enter__(self):
        self.slept0 = self.m.stats()["waits_slept"] if self.m else 0
        self.vcsw0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.cpu0
        self.wakes = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - self.vcsw0
        self.slept = (self.m.stats()["waits_slept"] - self.slept0) if self.m else 0

    def result(self):
        return {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "cpu_pct": 100.0 * self.cpu / self.wall,
            "waits_slept": self.slept,
            "vol_ctx_switches": self.wakes,
        }


class Rank:
    def __init__(self, m):
        self.m = m
        self.done = 0  # rank 0: "done" requests received
        self.stop = False
        self.stopped = None  # asyncio.Event while an idle rank serves from a loop
        m.on("done")(self._done)
        m.on("stop")(self._stop)
        m.on("ping")(self._ping)

    def _done(self, msg):
        self.done += 1
        return None

    def _stop(self, msg):
        self.stop = True
        if self.stopped is not None:
            self.stopped.set()

    def _ping(self, msg):
        return mono()

    def serve(self):
        """Idle rank: handle messages until "stop"."""
        self.stop = False
        while not self.stop:
            self.m.progress(1.0)

    def serve_async(self, how, timeout):
        """Idle rank in an event loop: wait in the way `how` says, then leave the loop."""

        async def wait():
            self.stopped = asyncio.Event()  # before attach: "stop" may come at once
            self.m.attach()
            try:
                if how == "arequest":
                    await self.m.arequest(0, "done", None, timeout=timeout)
                elif how == "event":
                    await self.stopped.wait()
                else:
                    await self.m.aquiet()
            finally:
                self.stopped = None
                self.m.detach()

        asyncio.run(wait())


def phase(name, world, m, peer, seconds):
    """One compute phase; returns rank 0's compute figures or this rank's idle figures."""
    world.Barrier()
    if world.rank == 0:
        out = compute(seconds)
        if name in ("request", "arequest"):
            while peer.done < world.size - 1:
                m.progress(1.0)
            peer.done = 0
        elif name in ("progress", "event"):
            for r in range(1, world.size):
                m.send(r, "stop", None)
        elif name == "aquiet":
            m.wait_quiet()  # joins the idle ranks' aquiet()
    else:
        if name == "baseline":
            with Idle() as idle:
                time.sleep(seconds)
        elif name == "request":
            with Idle(m) as idle:
                m.request(0, "done", None).result(timeout=seconds + 120)
        elif name == "progress":
            with Idle(m) as idle:
                peer.serve()
        else:
            with Idle(m) as idle:
                peer.serve_async(name, seconds + 120)
        out = idle.result()
    if name != "baseline":
        m.wait_quiet()
    return out


def responsiveness(world, m, peer, pings, gap, use_asyncio):
    world.Barrier()
    if world.rank != 0:
        with Idle(m) as idle:
            if use_asyncio:
                peer.serve_async("event", None)
            else:
                peer.serve()
        m.wait_quiet()
        return idle.result()
    samples = []
    targets = list(range(1, world.size))
    for i in range(WARMUP_PINGS + pings):
        for r in targets:
            time.sleep(gap)
            t_send = mono()
            t_handled = m.request(r, "ping", None).result(timeout=10)
            t_back = mono()
            if i >= WARMUP_PINGS:
                samples.append(
                    {"rank": r, "rtt_s": t_back - t_send, "oneway_s": t_handled - t_send}
                )
    for r in targets:
        m.send(r, "stop", None)
    m.wait_quiet()
    return samples


def pctl(values, q):
    """q-th percentile (0..100), linear interpolation."""
    return float(np.percentile(np.asarray(values), q))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="wall time of each compute phase on rank 0 (default 5)",
    )
    parser.add_argument(
        "--pings",
        type=int,
        default=40,
        help="timed pings per idle rank in the responsiveness test (default 40)",
    )
    parser.add_argument(
        "--gap-ms", type=float, default=20.0, help="idle time before each ping, ms (default 20)"
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="idle ranks wait in an asyncio event loop (arequest, event, aquiet)",
    )
    parser.add_argument("--json", metavar="FILE", help="write metadata, per-rank figures, samples")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.pings < 1 or args.gap_ms < 0:
        parser.error("--seconds must be > 0, --pings >= 1, --gap-ms >= 0")

    world = MPI.COMM_WORLD
    if world.size < 2:
        print("idle_cpu.py needs at least 2 ranks (mpiexec -n 4)", file=sys.stderr)
        return 2

    phases = (
        ("baseline", "arequest", "event", "aquiet")
        if args.asyncio
        else ("baseline", "request", "progress")
    )
    started = time.perf_counter()
    results = {}
    with cv.Messenger() as m:
        peer = Rank(m)
        m.wait_quiet()
        for name in phases:
            results[name] = world.gather(phase(name, world, m, peer, args.seconds), root=0)
        results["responsiveness"] = world.gather(
            responsiveness(world, m, peer, args.pings, args.gap_ms * 1e-3, args.asyncio), root=0
        )
    wall = time.perf_counter() - started
    if world.rank != 0:
        return 0

    ncpu = os.cpu_count()
    mode = "in an asyncio event loop" if args.asyncio else "in blocking calls"
    print(
        f"idle_cpu: {world.size} ranks on {ncpu} CPUs, idle ranks wait {mode}; rank 0 computes "
        f"{args.seconds:g} s per phase; "
        f"CONVEYOR_SPIN_US={os.environ.get('CONVEYOR_SPIN_US', '50 (default)')} "
        f"CONVEYOR_MAX_SLEEP_US={os.environ.get('CONVEYOR_MAX_SLEEP_US', '500 (default)')}"
    )
    print()
    base_rate = results["baseline"][0]["chunks_per_s"]
    summary = {}
    head = (
        f"{'idle ranks wait in':<22} {'rank0 CPU':>9} {'work vs':>8} {'ctx sw':>7}   "
        f"{'idle ranks CPU % of a core':<28} {'sleeps/s':>9} {'wakes/s':>8}  {'target':>8}  met"
    )
    print(head)
    print("-" * len(head))
    labels = {
        "baseline": "time.sleep (baseline)",
        "request": "request().result()",
        "progress": "progress(1.0) loop",
        "arequest": "await arequest()",
        "event": "await Event.wait()",
        "aquiet": "await aquiet()",
    }
    for name in phases:
        r0, idle = results[name][0], results[name][1:]
        share = r0["cpu_share"]
        work = r0["chunks_per_s"] / base_rate
        idle_pcts = [d["cpu_pct"] for d in idle]
        sleeps = statistics.mean(d["waits_slept"] / d["wall_s"] for d in idle)
        wakes = statistics.mean(d["vol_ctx_switches"] / d["wall_s"] for d in idle)
        if name == "baseline":
            target, met = "-", "-"
        else:
            target = f">={CPU_SHARE_TARGET:.0%}"
            met = "yes" if share >= CPU_SHARE_TARGET else "NO"
        idle_txt = " ".join(f"{p:5.1f}" for p in idle_pcts)
        print(
            f"{labels[name]:<22} {share:9.1%} {work:7.2f}x {r0['invol_ctx_switches']:7d}   "
            f"{idle_txt:<28} {sleeps:9.0f} {wakes:8.0f}  {target:>8}  {met}"
        )
        summary[name] = {
            "rank0_cpu_share": share,
            "work_vs_baseline": work,
            "idle_cpu_pct": idle_pcts,
            "idle_cpu_pct_total": sum(idle_pcts),
            "idle_sleeps_per_s": sleeps,
            "idle_wakes_per_s": wakes,
            "met": None if name == "baseline" else share >= CPU_SHARE_TARGET,
        }
    print()

    samples = results["responsiveness"][0]
    rtt = [s["rtt_s"] * 1e6 for s in samples]
    one = [s["oneway_s"] * 1e6 for s in samples]
    idle = results["responsiveness"][1:]
    met = statistics.median(rtt) <= RTT_MEDIAN_TARGET * 1e6
    label = "responsiveness, asyncio" if args.asyncio else "responsiveness"
    head = (
        f"{label + ' (gap ' + format(args.gap_ms, 'g') + ' ms)':<30} {'median':>8} "
        f"{'p90':>8} {'max':>8}  {'target':>10}  met"
    )
    print(head)
    print("-" * len(head))
    print(
        f"{'round trip, us':<30} {statistics.median(rtt):8.0f} {pctl(rtt, 90):8.0f} "
        f"{max(rtt):8.0f}  {'<=' + format(RTT_MEDIAN_TARGET * 1e6, '.0f'):>10}  "
        f"{'yes' if met else 'NO'}"
    )
    print(
        f"{'send -> handler, us':<30} {statistics.median(one):8.0f} {pctl(one, 90):8.0f} "
        f"{max(one):8.0f}  {'-':>10}  -"
    )
    idle_pct = " ".join(f"{d['cpu_pct']:.1f}" for d in idle)
    print(f"({len(samples)} pings; idle ranks' CPU meanwhile: {idle_pct} % of a core)")
    summary["responsiveness"] = {
        "rtt_us_median": statistics.median(rtt),
        "rtt_us_p90": pctl(rtt, 90),
        "rtt_us_max": max(rtt),
        "oneway_us_median": statistics.median(one),
        "oneway_us_p90": pctl(one, 90),
        "idle_cpu_pct": [d["cpu_pct"] for d in idle],
        "met": met,
    }
    print(f"\nwall time {wall:.0f} s", flush=True)

    if args.json:
        meta = run_metadata(
            ranks=world.size,
            seconds=args.seconds,
            pings=args.pings,
            gap_ms=args.gap_ms,
            asyncio=args.asyncio,
            wall_seconds=wall,
        )
        with open(args.json, "w") as f:
            json.dump(
                {"meta": meta, "summary": summary, "per_rank": results},
                f,
                indent=1,
                ensure_ascii=False,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
