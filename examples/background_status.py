"""Queue background jobs, then poll the server for their progress until they are done.

A background job outlives the client that queued it: the client gets a handle at
once and may ask the server about the job later (GET_STATUS), from any
connection. The worker reports progress with ``job.send_status``; the server keeps
the last report for status queries. Once the job is finished the server forgets
it, and its status reads "unknown".

To keep the example self-contained the worker runs in the same process as the
client; in production they are separate programs. Run it against a job server::

    python examples/background_status.py 127.0.0.1:4730
"""

from __future__ import annotations

import sys

import trio

import trio_gearman


async def count(job: trio_gearman.Job) -> None:
    """Count to the number in the job's data, reporting progress at every step."""
    steps = int(job.data)
    for step in range(1, steps + 1):
        await trio.sleep(0.05)  # stands for real work
        await job.send_status(step, steps)


async def queue_and_poll(server: str) -> None:
    async with trio_gearman.Client([server], client_id="status-poller") as client:
        handles = [await client.submit_background("count", str(steps)) for steps in (4, 8)]
        for handle in handles:
            print(f"queued {handle}")
        pending = list(handles)
        while pending:
            for handle in list(pending):
                status = await client.get_status(handle)
                if not status.known:  # finished: the server has forgotten it
                    print(f"{handle}: done")
                    pending.remove(handle)
                elif status.progress is not None:  # the worker has reported progress
                    print(f"{handle}: running, {status.numerator}/{status.denominator}")
                elif status.running:
                    print(f"{handle}: running")
                else:
                    print(f"{handle}: queued")
            await trio.sleep(0.1)


async def main(server: str) -> None:
    worker = trio_gearman.Worker([server], client_id="counter", concurrency=2)
    worker.register("count", count)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(30):
            await queue_and_poll(server)
        worker.stop()


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730")
