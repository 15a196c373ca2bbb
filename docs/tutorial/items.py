"""Tutorial, step 4: item stores, fetches, and orders between other ranks."""

import numpy as np

import conveyor as cv

with cv.Messenger() as m:
    m.store.put(f"block/{m.rank}", np.full(3, m.rank))  # one item per rank
    m.wait_quiet()  # collective, so every rank has stored its item after it

    if m.rank == 0:
        last = m.size - 1
        print("fetched:", m.fetch(last, f"block/{last}").result(timeout=10))
        # The last rank sends its item to rank 1 itself: it never passes here.
        m.order(last, cv.Copy(f"block/{last}", to=1)).result(timeout=10)
        m.order(last, cv.Move(f"block/{last}", to=0, as_name="moved")).result(timeout=10)
    m.wait_quiet()
    print(f"rank {m.rank} holds {sorted(m.store)}")
