"""A worker that reverses its job's data.

Run it against a job server, then submit jobs with ``reverse_client.py``::

    python examples/reverse_worker.py 127.0.0.1:4730

It serves until SIGINT (Ctrl-C) or SIGTERM, then stops grabbing and gives running
jobs up to five seconds to finish.
"""

from __future__ import annotations

import signal
import sys

import trio

import trio_gearman


async def reverse(job: trio_gearman.Job) -> bytes:
    """Report progress, then return the data reversed."""
    await job.send_status(1, 2)
    return job.data[::-1]


async def main(server: str) -> None:
    worker = trio_gearman.Worker([server], client_id="reverse-worker", concurrency=8)
    worker.register("reverse", reverse)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            print(f"serving 'reverse' on {server}", flush=True)
            async for _ in signals:
                worker.stop(timeout=5)  # run() returns once the jobs are done
                break
    print("stopped", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730")
