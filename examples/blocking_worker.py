"""A worker whose function calls a blocking library: it runs in a worker thread.

Register a plain ``def`` function and the worker runs each job of it in a thread
(``anyio.to_thread``), so the blocking call (here: zlib on megabytes of data)
never stalls the event loop: the worker keeps talking to the server and other
jobs keep running. At most ``concurrency`` such threads run at once. From the
thread, ``anyio.from_thread.run`` calls back into the event loop, e.g. to report
progress.

To keep the example self-contained the worker runs in the same process as the
client; in production they are separate programs. Run it against a job server::

    python examples/blocking_worker.py 127.0.0.1:4730
"""

from __future__ import annotations

import sys
import zlib

import anyio.from_thread
import trio

import trio_gearman

CHUNK = 1 << 20  # compress 1 MiB at a time


def compress(job: trio_gearman.Job) -> bytes:
    """Deflate the job's data, chunk by chunk; runs in a worker thread."""
    data = memoryview(job.data)
    chunks = max(1, -(-len(data) // CHUNK))
    compressor = zlib.compressobj(level=9)
    output = []
    for index in range(chunks):
        output.append(compressor.compress(data[index * CHUNK : (index + 1) * CHUNK]))
        # Back in the event loop for a moment: send WORK_STATUS to the client.
        anyio.from_thread.run(job.send_status, index + 1, chunks)
    output.append(compressor.flush())
    return b"".join(output)


async def ping(job: trio_gearman.Job) -> bytes:
    """An async function on the same worker: answered while compress() runs."""
    return b"pong"


async def submit(server: str) -> None:
    data = b"".join(b"line %d of a long, repetitive log file\n" % n for n in range(200_000))
    async with trio_gearman.Client([server]) as client:
        async with trio.open_nursery() as nursery:

            async def ping_while_compressing() -> None:
                print(f"ping: {(await client.submit('ping', b'')).decode()}")

            async with client.submit_job("compress", data) as job:
                nursery.start_soon(ping_while_compressing)
                async for update in job:
                    if isinstance(update, trio_gearman.WorkStatus):
                        print(f"compressed {update.numerator}/{update.denominator} MiB")
        compressed = job.result
    assert zlib.decompress(compressed) == data
    print(f"{len(data):,} bytes -> {len(compressed):,} bytes")


async def main(server: str) -> None:
    worker = trio_gearman.Worker([server], client_id="compressor", concurrency=2)
    worker.register("compress", compress)
    worker.register("ping", ping)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(60):
            await submit(server)
        worker.stop()


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730")
