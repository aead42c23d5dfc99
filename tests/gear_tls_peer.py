"""gear (Zuul's Gearman library) as a TLS client and worker, run as a child process.

Usage: ``python gear_tls_peer.py PORT KEY CERT CA JOBS [CONNECT_TIMEOUT]``. A gear worker registers
``reverse`` and a gear client submits ``JOBS`` jobs over TLS with client
certificates (gear's only TLS mode); each result is printed as one line
``handle<TAB>result``, then ``done``. Exit status 1 if no connection comes up
within ``CONNECT_TIMEOUT`` seconds (default 10; ``no server``).
"""

from __future__ import annotations

import sys
import threading
import warnings

warnings.simplefilter("ignore")  # gear's own use of deprecated APIs is not ours to judge

import gear  # type: ignore[import-untyped]  # noqa: E402


def main() -> int:
    port, key, cert, ca, count = sys.argv[1:6]
    connect_timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
    finished = threading.Semaphore(0)

    class Client(gear.Client):  # type: ignore[misc]
        def handleWorkComplete(self, packet: object) -> object:
            job = super().handleWorkComplete(packet)
            finished.release()
            return job

    worker = gear.Worker("tls-worker")
    worker.addServer("127.0.0.1", int(port), ssl_key=key, ssl_cert=cert, ssl_ca=ca)
    client = Client("tls-client")
    client.addServer("127.0.0.1", int(port), ssl_key=key, ssl_cert=cert, ssl_ca=ca)
    try:
        worker.waitForServer(timeout=connect_timeout)
        client.waitForServer(timeout=connect_timeout)
    except gear.TimeoutError:
        print("no server", flush=True)
        return 1
    worker.registerFunction("reverse")

    def serve() -> None:
        while True:
            job = worker.getJob()
            job.sendWorkComplete(job.arguments[::-1])

    threading.Thread(target=serve, daemon=True).start()
    jobs = [gear.TextJob("reverse", f"job {n}") for n in range(int(count))]
    for job in jobs:
        client.submitJob(job, timeout=10)
    for _ in jobs:
        if not finished.acquire(timeout=10):
            break
    for job in jobs:
        print(f"{job.handle.decode()}\t{''.join(job.data)}", flush=True)
    print("done", flush=True)
    worker.shutdown()
    client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
