"""Factor's distributed-concurrency example, with conveyor's actors.

Factor's post spawns two processes on a node: ``process1``, which answers a
synchronous send with "Message Received!", and a ``logger``, which prints
the messages sent to it asynchronously. Here both are actors spawned by
rank 0 on the last rank under a name, and every rank finds them by name,
asks ``process1`` and tells the logger.

    conveyor run -n 4 examples/actors.py
"""

from __future__ import annotations

import conveyor as cv


class Process1:
    """Answers every synchronous send."""

    def receive(self, message: str) -> str:
        return "Message Received!"


class Logger:
    """Prints the messages it is sent, in the order they come, and counts them."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)
        print(f"{self.prefix} {line}", flush=True)

    def count(self) -> int:
        return len(self.lines)


def main() -> int:
    with cv.Messenger() as m:
        home = m.size - 1
        if m.rank == 0:
            m.spawn(home, Process1, name="process1")
            m.spawn(home, Logger, "[logger]", name="logger")
        m.barrier()  # both exist: every rank may look them up
        process1, logger = m.lookup("process1"), m.lookup("logger")
        answer = process1.receive(f"hello from rank {m.rank}").result(timeout=30)
        logger.log.send(f"rank {m.rank} was told {answer!r}")
        m.wait_quiet()  # every log line is handled: no message is in flight
        if m.rank == 0:
            print("lines logged:", logger.count().result(timeout=30), flush=True)
        m.wait_quiet()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
