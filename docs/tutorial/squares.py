"""Tutorial, step 2: requests, their answers, and errors that travel back."""

import conveyor as cv

with cv.Messenger() as m:

    @m.on("square")
    def square(msg):
        return msg.payload**2  # the return value answers the request

    @m.on("countdown")
    def countdown(msg):
        for i in range(msg.payload, 0, -1):
            msg.reply(i, final=False)  # one answer of several
        return "liftoff"  # the final answer

    @m.on("divide")
    def divide(msg):
        a, b = msg.payload
        return a / b

    if m.rank == 0:
        last = m.size - 1
        futures = [m.request(rank, "square", rank + 1) for rank in range(m.size)]
        print("squares:", [future.result(timeout=10) for future in futures])
        print("countdown:", list(m.request_stream(last, "countdown", 3, timeout=10)))
        try:
            m.request(last, "divide", (1, 0)).result(timeout=10)
        except cv.RemoteError as error:
            print(f"rank {error.rank} raised {error.remote_type}: {error.remote_message}")
    m.wait_quiet()
