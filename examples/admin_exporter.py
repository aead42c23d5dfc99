"""A Prometheus exporter sketch: a job server's admin counts as metrics.

Each scrape of ``/metrics`` opens an admin connection (``AdminClient``), asks for
``status``, ``prioritystatus``, ``workers`` and ``version``, and answers in
Prometheus' text format. It works against gearmand 1.1.15 or newer and against
trio-gearmand. Print the metrics once::

    python examples/admin_exporter.py 127.0.0.1:4730 --once

or serve them over HTTP until Ctrl-C (or SIGTERM)::

    python examples/admin_exporter.py 127.0.0.1:4730 --port 9475

A sketch, not a product: one scrape at a time is fine, there is no TLS and no
authentication, and a server older than 1.1.15 (no ``prioritystatus``) reads as
down.
"""

from __future__ import annotations

import argparse
import functools
import signal

import trio

import trio_gearman

HELP = {
    "gearman_up": "1 if the job server answered the admin commands, else 0.",
    "gearman_info": "The job server's version, as a label.",
    "gearman_connections": "Connections to the job server: workers, clients, admin.",
    "gearman_function_jobs": "Jobs of the function, queued or running.",
    "gearman_function_jobs_running": "Jobs of the function that a worker is running.",
    "gearman_function_jobs_waiting": "Jobs of the function waiting for a worker, by priority.",
    "gearman_function_workers": "Workers registered for the function.",
}

Sample = tuple[str, dict[str, str], int]


async def collect(server: str) -> list[Sample]:
    """Read the server's counts through its admin protocol (at most 5 s)."""
    try:
        with trio.fail_after(5):
            async with trio_gearman.AdminClient(server) as admin:
                status = await admin.status()
                waiting = await admin.priority_status()
                connections = await admin.workers()
                version = await admin.version()
    except (trio_gearman.GearmanError, trio.TooSlowError):
        return [("gearman_up", {}, 0)]
    samples: list[Sample] = [
        ("gearman_up", {}, 1),
        ("gearman_info", {"version": version}, 1),
        ("gearman_connections", {}, len(connections)),
    ]
    for row in status:
        labels = {"function": row.function.decode(errors="replace")}
        samples.append(("gearman_function_jobs", labels, row.total))
        samples.append(("gearman_function_jobs_running", labels, row.running))
        samples.append(("gearman_function_workers", labels, row.workers))
    for line in waiting:
        function = line.function.decode(errors="replace")
        for priority, count in (("high", line.high), ("normal", line.normal), ("low", line.low)):
            labels = {"function": function, "priority": priority}
            samples.append(("gearman_function_jobs_waiting", labels, count))
    return samples


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(samples: list[Sample]) -> str:
    """The samples in Prometheus' text exposition format, grouped by metric."""
    lines = []
    for name, text in HELP.items():
        rows = [(labels, value) for metric, labels, value in samples if metric == name]
        if not rows:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
        for labels, value in rows:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            lines.append(f"{name}{{{label_text}}} {value}" if labels else f"{name} {value}")
    return "\n".join(lines) + "\n"


async def handle_http(server: str, stream: trio.SocketStream) -> None:
    """Answer one HTTP/1.0 request: ``GET /metrics``, anything else is 404."""
    async with stream:
        request = b""
        with trio.move_on_after(10):
            while b"\r\n\r\n" not in request and len(request) < 8192:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
        method, _, rest = request.partition(b" ")
        if method == b"GET" and rest.partition(b" ")[0] == b"/metrics":
            status = "200 OK"
            body = render(await collect(server)).encode()
        else:
            status = "404 Not Found"
            body = b"try /metrics\n"
        head = (
            f"HTTP/1.0 {status}\r\n"
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        await stream.send_all(head.encode() + body)


async def serve(server: str, host: str, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            handler = functools.partial(handle_http, server)
            serve_tcp = functools.partial(trio.serve_tcp, handler, port, host=host)
            listeners = await nursery.start(serve_tcp)
            bound = listeners[0].socket.getsockname()[1]
            print(f"serving the metrics of {server} on http://{host}:{bound}/metrics", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    print("stopped", flush=True)


async def print_once(server: str) -> None:
    print(render(await collect(server)), end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("server", nargs="?", default="127.0.0.1:4730", help="host:port")
    parser.add_argument("--once", action="store_true", help="print the metrics and exit")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve HTTP on")
    parser.add_argument("--port", type=int, default=9475, help="port to serve HTTP on")
    options = parser.parse_args()
    if options.once:
        trio.run(print_once, options.server)
    else:
        trio.run(serve, options.server, options.host, options.port)


if __name__ == "__main__":
    main()
