"""Tutorial, step 1: every rank greets the next one."""

import conveyor as cv

with cv.Messenger() as m:  # every rank runs this; m.rank is this rank's number

    @m.on("greet")  # the receiver of the tag "greet" on this rank
    def greet(msg):
        print(f"rank {m.rank} got {msg.payload!r} from rank {msg.source}")

    right = (m.rank + 1) % m.size
    m.send(right, "greet", f"hello from rank {m.rank}")  # returns at once
    m.wait_quiet()  # collective: returns once every message is handled
