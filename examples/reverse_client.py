"""Submit jobs to the ``reverse`` function and print the results.

Start ``reverse_worker.py`` first, then::

    python examples/reverse_client.py 127.0.0.1:4730 hello world
"""

from __future__ import annotations

import sys

import trio

import trio_gearman


async def main(server: str, words: list[str]) -> None:
    async with trio_gearman.Client([server], client_id="reverse-client") as client:
        # One job, following its progress as it runs...
        async with client.submit_job("reverse", words[0]) as job:
            async for update in job:
                print(f"update: {update}")
        print(f"{words[0]} -> {job.result.decode()}")
        # ...then all the others at once; results come back in input order.
        with trio.fail_after(30):
            results = await client.map("reverse", words[1:])
        for word, result in zip(words[1:], results, strict=True):
            print(f"{word} -> {result.decode()}")


if __name__ == "__main__":
    server = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730"
    trio.run(main, server, sys.argv[2:] or ["hello", "world"])
