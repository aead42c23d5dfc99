"""Gearman from an asyncio program: a worker task and a client, no Trio code in sight.

trio_gearman is written against AnyIO, so its Worker and Client run under asyncio
as they do under Trio. Run it against a job server::

    python examples/asyncio_app.py 127.0.0.1:4730
"""

from __future__ import annotations

import asyncio
import sys

import trio_gearman


async def shout(job: trio_gearman.Job) -> bytes:
    """Return the job's data in capitals."""
    await asyncio.sleep(0)  # a job function is a coroutine of this event loop
    return job.data.upper()


async def main(server: str) -> None:
    worker = trio_gearman.Worker([server], client_id="asyncio-worker")
    worker.register("shout", shout)
    serving = asyncio.create_task(worker.run())
    words = [b"alpha", b"beta", b"gamma"]
    async with trio_gearman.Client([server]) as client:
        jobs = (client.submit("shout", word) for word in words)
        results = await asyncio.wait_for(asyncio.gather(*jobs), timeout=10)
    for word, result in zip(words, results, strict=True):
        print(f"{word.decode()} -> {result.decode()}", flush=True)
    worker.stop(timeout=5)  # stop grabbing; run() returns once running jobs are done
    await serving


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730"))
