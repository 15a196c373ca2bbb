"""Tutorial, step 3: many small messages, and batches of rows routed in C++."""

import numpy as np

import conveyor as cv

with cv.Messenger() as m:
    got = {"ints": 0, "rows": 0, "total": 0}

    @m.on("int")
    def one_int(msg):
        got["ints"] += 1

    @m.on("rows")
    def rows(msg):  # once per batch: all the rows sent to this rank, as one array
        got["rows"] += len(msg.payload)
        got["total"] += int(msg.payload.sum())

    right = (m.rank + 1) % m.size
    s = m.sender("int")  # packs small messages to one rank into one MPI message
    for i in range(100_000):
        s.send(right, i)

    values = np.arange(m.rank * 1000, (m.rank + 1) * 1000, dtype=np.int64)
    m.sender("rows").send_many(values % m.size, values)  # value v goes to rank v % size

    m.wait_quiet()
    print(f"rank {m.rank}: {got['ints']} ints, {got['rows']} rows adding up to {got['total']}")
