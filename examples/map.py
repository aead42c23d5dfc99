"""Run a set of jobs at once with ``Client.map`` and get the results in order.

``map`` submits one foreground job per item, keeps at most ``concurrency`` of them
in flight, and returns the results in the order of the items, however the jobs
finish. A codec turns the items into payloads and the results back into values;
here both are JSON. When a job fails, ``map`` cancels the others and raises that
job's error.

To keep the example self-contained the worker runs in the same process as the
client; in production they are separate programs. Run it against a job server::

    python examples/map.py 127.0.0.1:4730
"""

from __future__ import annotations

import json
import random
import sys

import trio

import trio_gearman


async def square(job: trio_gearman.Job) -> bytes:
    """Square a JSON number; refuse negative ones (the job fails with an error text)."""
    number = json.loads(job.data)
    if number < 0:
        raise trio_gearman.JobException(f"{number} is negative")
    await trio.sleep(random.uniform(0, 0.05))  # finish in any order
    return json.dumps(number * number).encode()


async def run_map(server: str) -> None:
    async with trio_gearman.Client([server], codec=trio_gearman.JsonCodec()) as client:
        squares = await client.map("square", range(10), concurrency=4)
        print(f"squares: {squares}")
        try:
            await client.map("square", [1, 2, -3, 4])
        except trio_gearman.JobException as exc:
            print(f"failed: {exc.data.decode()}")


async def main(server: str) -> None:
    worker = trio_gearman.Worker([server], client_id="squarer", concurrency=4)
    worker.register("square", square)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await run_map(server)
        worker.stop()


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730")
