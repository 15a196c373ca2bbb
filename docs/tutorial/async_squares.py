"""Tutorial, step 7: a messenger served from an asyncio event loop."""

import asyncio

import conveyor as cv


async def main():
    async with cv.Messenger() as m:  # the running loop serves the messenger

        @m.on("slow_square")
        async def slow_square(msg):  # runs as a task; many run at once
            await asyncio.sleep(0.5)  # say, a database lookup
            return msg.payload**2

        if m.rank == 0:
            started = asyncio.get_running_loop().time()
            requests = [m.arequest(i % m.size, "slow_square", i) for i in range(20)]
            answers = await asyncio.gather(*requests)
            seconds = asyncio.get_running_loop().time() - started
            print("answers:", answers)
            print("at once, not one after the other:", seconds < 0.5 * 20 / m.size)
        await m.aquiet()  # the asyncio wait_quiet


asyncio.run(main())
