"""Read a trio-gearmand's Prometheus metrics and say what needs attention.

Start the server with its metrics port (the ``monitor`` extra)::

    trio-gearmand --http-port 9100

then::

    python examples/scrape_metrics.py http://127.0.0.1:9100/metrics

prints one line per function (waiting, running, workers, done) and a warning for
each function whose jobs wait while no worker can take them: the first alert to
set in Prometheus too (``docs/howto/monitoring.rst``). Exits 1 when there is one.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, dict[str, float]]:
    """Per function: waiting, running, workers and done, from one scrape of ``url``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    functions: dict[str, dict[str, float]] = defaultdict(
        lambda: {"waiting": 0, "running": 0, "workers": 0, "done": 0}
    )
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.labels.get("function")
            if name is None:
                continue
            if sample.name == "gearman_jobs_waiting":
                functions[name]["waiting"] += sample.value
            elif sample.name == "gearman_jobs_running":
                functions[name]["running"] += sample.value
            elif sample.name == "gearman_workers":
                functions[name]["workers"] += sample.value
            elif sample.name == "gearman_jobs_ended_total":
                functions[name]["done"] += sample.value
    return dict(functions)


def main() -> int:
    """Scrape once, print, warn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url", help="e.g. http://127.0.0.1:9100/metrics")
    args = parser.parse_args()
    functions = scrape(args.url)
    print(f"{'function':<24} {'waiting':>8} {'running':>8} {'workers':>8} {'done':>8}")
    stuck = []
    for name, counts in sorted(functions.items()):
        waiting, running = int(counts["waiting"]), int(counts["running"])
        workers, done = int(counts["workers"]), int(counts["done"])
        print(f"{name:<24} {waiting:>8} {running:>8} {workers:>8} {done:>8}")
        if waiting and not workers:
            stuck.append(name)
    for name in stuck:
        print(f"warning: {name}: jobs wait and no worker can take them", file=sys.stderr)
    return 1 if stuck else 0


if __name__ == "__main__":
    sys.exit(main())
