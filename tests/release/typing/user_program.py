"""A user's program, typed: `make lint` checks it with mypy --strict, test_typing runs it.

It uses the public API as the README does, with the annotations a user
writes: a future's answer type, a handler's signature. Run it on any
number of ranks; it prints PASS.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

import conveyor as cv


class Logger(cv.Receiver):
    """An object receiver: keeps the lines it is sent, answers with their count."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def receive(self, msg: cv.Message) -> int:
        self.lines.append(str(msg.payload))
        return len(self.lines)


def square(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return x * x


async def ask(m: cv.Messenger, dest: int) -> int:
    try:
        answer: int = await m.arequest(dest, "log", "from a coroutine", timeout=20)
        return answer
    finally:
        m.detach()


def main() -> None:
    with cv.Messenger() as m:
        received: list[int] = []

        @m.on("kmers")
        def count(msg: cv.Message) -> None:
            received.extend(msg.payload.tolist())

        m.register("log", Logger())
        peer = (m.rank + 1) % m.size
        m.wait_quiet()  # every receiver is registered

        m.send(peer, "kmers", np.arange(10, dtype=np.uint64))
        fut: cv.Future[int] = m.request(cv.Address(peer, "log"), "hello")
        logged: int = fut.result(timeout=20)
        sender: cv.Sender = m.sender("kmers")
        sender.send_many(np.full(4, peer), np.arange(4, dtype=np.uint64))
        logged = asyncio.run(ask(m, peer))
        m.wait_quiet()
        assert sorted(received) == [0, 0, 1, 1, 2, 2, 3, 3, *range(4, 10)], received
        assert logged == 2, logged

        m.store.put("reads/1", np.arange(3))
        fetched: cv.Future[np.ndarray] = m.fetch(m.rank, "reads/1")
        copied: cv.Future[dict[str, Any]] = m.order(m.rank, cv.Copy("reads/1", to=peer))
        assert fetched.result(timeout=20).tolist() == [0, 1, 2]
        assert copied.result(timeout=20)["to"] == [peer]

        facts: cv.Table = m.table("facts")
        facts.put(("rank", m.rank), {"size": m.size}).result(timeout=20)
        fact: dict[str, int] = facts.wait(("rank", peer)).result(timeout=20)
        assert fact == {"size": m.size}, fact
        m.wait_quiet()

        with m.driver() as d:
            if d is not None:
                x: cv.DistArray = d.array(np.arange(8.0))
                y = cv.dcall(square, x) + 1
                assert float(y.sum()) == float((np.arange(8.0) ** 2 + 1).sum())
                assert y.resolve().shape == (8,)
    print("PASS")


if __name__ == "__main__":
    main()
