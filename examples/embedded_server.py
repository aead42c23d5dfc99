"""An embedded job server for tests, without pytest: ``open_test_server``.

The server runs in the current event loop for the length of the ``async with``
block, on a free loopback port; the test looks inside it as it goes. It works on
any test runner, under Trio or asyncio (through AnyIO)::

    python examples/embedded_server.py            # under Trio
    python examples/embedded_server.py asyncio    # under asyncio
"""

from __future__ import annotations

import sys

import anyio

import trio_gearman
from trio_gearman.testing import JobOutcome, open_test_server


async def reverse(job: trio_gearman.Job) -> bytes:
    return job.data[::-1]


async def main() -> None:
    with anyio.fail_after(10):
        async with open_test_server(job_retries=2) as server:
            async with trio_gearman.Client(server.address) as client:
                await client.submit_background("reverse", b"queued first")
                assert server.queued("reverse") == 1  # no worker yet

                worker = trio_gearman.Worker(server.address)
                worker.register("reverse", reverse)
                async with anyio.create_task_group() as tg:
                    await tg.start(worker.run)
                    assert await client.submit("reverse", b"hello") == b"olleh"
                    await server.wait_idle()  # the background job is done too
                    worker.stop()

            for record in server.history:
                assert record.outcome is JobOutcome.COMPLETED
                print(f"{record.function} {record.data!r} -> {record.result!r}")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "trio")
