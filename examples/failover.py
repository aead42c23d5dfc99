"""Three job servers, a worker and a client: kill a server and watch the jobs carry on.

Everything runs in this one process, on free loopback ports: three embedded job
servers (from ``trio_gearman.testing``, so that the example needs nothing else), a
worker and a client configured with all three::

    python examples/failover.py

In the middle of a batch of 300 jobs, one server goes down: it stops accepting
connections and drops the ones it has, losing the jobs it held, as a server
process killed with SIGKILL would. The client resubmits the lost jobs to the other
servers (``retry_on_server_loss=True``), the worker carries on with the other two,
and when the server comes back both register with it again.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from contextlib import AsyncExitStack

import trio

import trio_gearman
from trio_gearman.testing import EmbeddedServer, open_test_server

JOBS = 300


def show(title: str, client: trio_gearman.Client[bytes]) -> None:
    print(f"{title}:")
    for health in client.servers():
        print(f"  {health}")


async def main() -> None:
    async with AsyncExitStack() as stack:
        servers: list[EmbeddedServer] = [
            await stack.enter_async_context(open_test_server(job_handle_prefix=f"H:{name}"))
            for name in "abc"
        ]
        addresses = [server.address for server in servers]
        victim = servers[1]
        ran_on: Counter[str] = Counter()  # jobs run, by the server that handed them out
        kill = trio.Event()

        async def reverse(job: trio_gearman.Job) -> bytes:
            ran_on[job.handle.decode().split(":")[1]] += 1
            if ran_on.total() == JOBS // 3:
                kill.set()
            await trio.sleep(0.001)
            return job.data[::-1]

        worker = trio_gearman.Worker(addresses, client_id="failover-worker", concurrency=20)
        worker.register("reverse", reverse)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            async with trio_gearman.Client(addresses, retry_on_server_loss=True) as client:
                show("three servers", client)

                async def kill_server_b() -> None:
                    await kill.wait()
                    print(f"server b ({victim.address}) goes down with jobs in flight")
                    await victim.pause_accepting()
                    await victim.drop_connections(workers=True, clients=True)

                nursery.start_soon(kill_server_b)
                words = [f"job-{n}".encode() for n in range(JOBS)]
                results = await client.map("reverse", words, concurrency=60)
                right = sum(
                    result == word[::-1] for result, word in zip(results, words, strict=True)
                )
                print(f"{right} of {JOBS} jobs done right")
                # b's unfinished jobs ran again elsewhere: more runs than jobs
                print("they ran on: " + ", ".join(f"{s} {ran_on[s]}" for s in "abc"))
                show("server b is down", client)

                print("server b comes back (empty)")
                await victim.restart()
                for side in (client, worker):  # each reconnects by itself, after a back-off
                    while not all(health.up for health in side.servers()):
                        await side.wait_servers_changed()
                ran_on.clear()
                await client.map("reverse", words[:90], concurrency=10)
                print("the next 90 jobs ran on: " + ", ".join(f"{s} {ran_on[s]}" for s in "abc"))
                show("three servers again", client)
            worker.stop()


if __name__ == "__main__":
    # Links going down are logged as warnings (once per outage, not per attempt).
    logging.basicConfig(format="  log: %(message)s", level=logging.WARNING, stream=sys.stdout)
    trio.run(main)
