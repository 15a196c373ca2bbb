"""An asyncio key-value service: every rank serves its share of a table.

Each rank runs an asyncio event loop that serves a ``conveyor.Messenger``
(``async with cv.Messenger() as m``). Keys are spread over the ranks by a
hash; the owner of a key answers lookups with an ``async def`` handler that
simulates slow storage (``await asyncio.sleep``), so it can serve thousands
of lookups at once instead of one after the other. This demonstrates

- ``async def`` receivers: their tasks run on the loop, many at a time, and
  a request's answer is the coroutine's return value;
- ``await m.arequest(...)`` with ``asyncio.gather``: many lookups in flight
  from one rank, while its loop stays free for other tasks;
- ``await m.aquiet()``: termination detection that also waits for the async
  handlers still running (here: until every key is stored on its owner).

Rank 0 loads the table (every rank sends its share of the keys to their
owners), fires ``--requests`` lookups of random keys, checks every answer,
and prints the throughput and PASS or FAIL (exit status 1 on a mismatch)::

    mpiexec -n 4 python examples/async_service.py
    python examples/async_service.py --requests 20000 --latency-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import zlib
from typing import Any

import conveyor as cv


def owner(key: str, size: int) -> int:
    """The rank that stores `key` (a stable hash: the same on every rank)."""
    return zlib.crc32(key.encode()) % size


def value_of(i: int) -> dict[str, Any]:
    """What key number `i` maps to (so the answers can be checked)."""
    return {"id": i, "square": i * i, "name": f"item-{i:06d}"}


class Store:
    """This rank's share of the table, behind slow (simulated) storage."""

    def __init__(self, m: cv.Messenger, latency: float) -> None:
        self.data: dict[str, Any] = {}
        self.latency = latency
        self.reads = 0
        m.on("kv.put")(self.put)
        m.on("kv.get")(self.get)
        m.on("kv.stats")(self.stats)

    async def put(self, msg: cv.Message) -> None:
        """A plain send: store one (key, value) pair."""
        key, value = msg.payload
        await asyncio.sleep(0)  # a real store would write to disk or a database here
        self.data[key] = value

    async def get(self, msg: cv.Message) -> Any:
        """A request: answer with the value of the key (None if absent)."""
        await asyncio.sleep(self.latency)  # simulated I/O; the loop serves others meanwhile
        self.reads += 1
        return self.data.get(msg.payload)

    def stats(self, msg: cv.Message) -> list[int]:
        """A sync handler works next to the async ones."""
        return [len(self.data), self.reads]


async def lookups(
    m: cv.Messenger, nkeys: int, nrequests: int, concurrency: int, seed: int
) -> tuple[list[Any], list[int], float]:
    """Fire `nrequests` lookups of random keys; return (answers, wanted, seconds)."""
    rng = random.Random(seed)
    wanted = [rng.randrange(nkeys) for _ in range(nrequests)]
    in_flight = asyncio.Semaphore(concurrency)

    async def lookup(i: int) -> Any:
        key = f"key-{i}"
        async with in_flight:
            return await m.arequest(owner(key, m.size), "kv.get", key, timeout=60)

    start = time.perf_counter()
    answers = await asyncio.gather(*(lookup(i) for i in wanted))
    return answers, wanted, time.perf_counter() - start


async def main(args: argparse.Namespace) -> int:
    async with cv.Messenger() as m:
        Store(m, args.latency_ms * 1e-3)  # registers its receivers
        await m.aquiet()  # every rank has registered its receivers

        # Load: every rank sends its share of the keys to their owners.
        start = time.perf_counter()
        for i in range(m.rank, args.keys, m.size):
            key = f"key-{i}"
            m.send(owner(key, m.size), "kv.put", [key, value_of(i)])
        await m.aquiet()  # returns on every rank once every put is stored
        load_seconds = time.perf_counter() - start

        if m.rank != 0:
            await m.aquiet()  # serve rank 0's lookups until it is done
            return 0

        answers, wanted, seconds = await lookups(
            m, args.keys, args.requests, args.concurrency, args.seed
        )
        counts = await asyncio.gather(
            *(m.arequest(r, "kv.stats", timeout=60) for r in range(m.size))
        )
        await m.aquiet()

    wrong = sum(answer != value_of(i) for answer, i in zip(answers, wanted))
    stored = sum(c[0] for c in counts)
    rate = len(answers) / seconds
    serial = args.requests * args.latency_ms * 1e-3
    ranks = f"{m.size} rank" + ("s" if m.size != 1 else "")
    print(
        f"async_service: {ranks}, {args.keys:,} keys, {args.latency_ms:g} ms simulated "
        f"I/O per lookup, at most {args.concurrency:,} lookups in flight"
    )
    print(f"loaded   {stored:,} keys in {load_seconds:.2f} s")
    print(
        f"lookups  {len(answers):,} in {seconds:.2f} s: {rate:,.0f} requests/s "
        f"(one at a time: at least {serial:.1f} s, {serial / seconds:.0f}x longer)"
    )
    print("per rank " + " ".join(f"{c[1]:,}" for c in counts) + " lookups served")
    ok = wrong == 0 and stored == args.keys and sum(c[1] for c in counts) == args.requests
    print("PASS" if ok else f"FAIL: {wrong} wrong answers, {stored} keys stored")
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keys", type=int, default=10_000, help="keys in the table (default 10000)"
    )
    parser.add_argument(
        "--requests", type=int, default=20_000, help="lookups rank 0 fires (default 20000)"
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=2.0,
        help="simulated storage latency of one lookup, ms (default 2)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1000,
        help="most lookups in flight at once (default 1000)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random keys")
    args = parser.parse_args(argv)
    if args.keys < 1 or args.requests < 1 or args.concurrency < 1 or args.latency_ms < 0:
        parser.error("--keys, --requests and --concurrency must be >= 1, --latency-ms >= 0")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
