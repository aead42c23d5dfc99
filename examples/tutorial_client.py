"""The tutorial's first client: submit one job to ``reverse`` and print the result.

Start ``reverse_worker.py`` first, then::

    python examples/tutorial_client.py 127.0.0.1:4730 "Hello, Gearman"
"""

from __future__ import annotations

import sys

import trio

import trio_gearman


async def main(server: str, text: str) -> None:
    async with trio_gearman.Client([server]) as client:
        with trio.fail_after(10):  # no worker for 'reverse'? then give up
            result = await client.submit("reverse", text)
    print(result.decode())


if __name__ == "__main__":
    server = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:4730"
    trio.run(main, server, sys.argv[2] if len(sys.argv) > 2 else "Hello, Gearman")
