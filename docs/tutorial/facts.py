"""Tutorial, step 5: a distributed table of facts that any rank can wait for."""

import conveyor as cv

with cv.Messenger() as m:
    t = m.table("results")
    if m.rank == 0:
        # Wait for keys nobody has set yet; each future resolves when one is.
        waits = [t.wait(f"done/{rank}") for rank in range(m.size)]
    t.put(f"done/{m.rank}", 10 * m.rank).result(timeout=10)

    if m.rank == 0:
        print("results:", [w.result(timeout=10) for w in waits])
        print("done/0 is", t.get("done/0").result(timeout=10))
        t.delete("done/0").result(timeout=10)
        try:
            t.get("done/0").result(timeout=10)
        except cv.RemoteError as error:
            print("after delete:", error.remote_type)
    m.wait_quiet()
