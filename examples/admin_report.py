"""Report what a job server is doing, through its admin protocol; optionally cap a queue.

Prints the server's version, then per function the jobs queued, running and waiting
at each priority and the workers that can run it, then every connection and its
functions::

    python examples/admin_report.py 127.0.0.1:4730

With ``--maxqueue FUNCTION=N`` it first limits how many jobs the function may hold
(queued and running); submissions beyond that are refused (0 removes the limit)::

    python examples/admin_report.py 127.0.0.1:4730 --maxqueue resize=10000
"""

from __future__ import annotations

import argparse

import trio

import trio_gearman


async def report(admin: trio_gearman.AdminClient) -> None:
    print(f"server {admin.server}, version {await admin.version()}")
    waiting = {row.function: row for row in await admin.priority_status()}
    print(f"{'function':<20} {'jobs':>6} {'running':>8} {'high/normal/low':>16} {'workers':>8}")
    for row in sorted(await admin.status(), key=lambda row: row.function):
        line = waiting.get(row.function)
        queues = f"{line.high}/{line.normal}/{line.low}" if line else "-"
        name = row.function.decode(errors="replace")
        print(f"{name:<20} {row.total:>6} {row.running:>8} {queues:>16} {row.workers:>8}")
    for connection in await admin.workers():
        functions = b" ".join(connection.functions).decode(errors="replace") or "-"
        client_id = connection.client_id.decode(errors="replace")
        print(f"connection {connection.address.decode()} {client_id}: {functions}")


async def main(server: str, limits: list[tuple[str, int]]) -> None:
    with trio.fail_after(10):
        async with trio_gearman.AdminClient(server) as admin:
            for function, size in limits:
                await admin.maxqueue(function, size)
                print(f"maxqueue {function} {size}: OK")
            await report(admin)


def limit(text: str) -> tuple[str, int]:
    function, _, size = text.rpartition("=")
    if not function or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected FUNCTION=N, got {text!r}")
    return function, int(size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("server", nargs="?", default="127.0.0.1:4730", help="host:port")
    parser.add_argument("--maxqueue", type=limit, action="append", default=[], metavar="FUNCTION=N")
    options = parser.parse_args()
    trio.run(main, options.server, options.maxqueue)
