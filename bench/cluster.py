"""Background jobs/s of a 2-server cluster against one server, on the same PostgreSQL.

Every setup runs ``server.py``'s ``bg`` load (2 clients pipelining SUBMIT_JOB_BG,
16-byte payloads and distinct 36-byte uniques, at most ``--max-backlog`` jobs queued;
4 no-op workers with 8 GRAB_JOB_UNIQ in flight each, in 2 processes) through
``trio-gearmand -q postgres`` servers sharing one database:

* ``one``: one server with ``--cluster bench`` (the reference of the ratios);
* ``two``: two servers with the same table and ``--cluster bench``; client ``i``
  submits to server ``i % 2`` and each worker process has a connection to each
  server (2 workers per server);
* ``plain``: one ``-q postgres`` server without ``--cluster``, for comparison;
* ``cross``: two cluster servers, every client on the first and every worker on the
  second, so that every job goes through the database from one server to the other.

Every measurement starts fresh servers on a fresh table (dropped afterwards) and
times jobs/s from the first submit to the last job's first WORK_COMPLETE. Server
CPU is utime + stime of every server process (``/proc/PID/stat``, every thread);
PostgreSQL's is that of its whole process tree, the processes that ended meanwhile
included (when the benchmark runs the database itself). The setups are interleaved
within each repeat; medians and ranges over ``--repeats``.

The database is ``$BENCH_POSTGRES_DSN``'s, or else a throw-away cluster
(``tests/postgres_peer.py``: initdb + pg_ctl on a free loopback port, PostgreSQL's
defaults, fsync on).

Usage (from the repository root)::

    python bench/cluster.py                                  # every setup, 3 repeats
    python bench/cluster.py --quick                          # a smoke run (about 15 s)
    python bench/cluster.py --setups one,two --jobs 50000 --repeats 5 --json /tmp/c.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import attrs
from _loadgen_servers import (
    POSTGRES_DSN_ENV,
    Database,
    drop_tables,
    machine,
    postgres_database,
    run_server,
)
from server import (
    DEFAULTS,
    Options,
    Placement,
    Results,
    Throughput,
    add_run_options,
    describe,
    disturbance,
    hot_spots,
    least_disturbed,
    measure_bg,
    ratio,
    summarize,
    to_json,
)
from store_postgres import store_setting

SETUPS: Final = ("one", "two", "plain", "cross")
REFERENCE: Final = "one"
DESCRIPTIONS: Final = {
    "one": "1 server, --cluster",
    "two": "2 servers, --cluster; clients and workers on both",
    "plain": "1 server, no cluster",
    "cross": "2 servers, --cluster; clients on the 1st, workers on the 2nd",
}
CLUSTER: Final = "bench"
MODE: Final = "bg"
JOBS: Final = 30_000
QUICK_JOBS: Final = 3_000
_tables = itertools.count(1)


def start_setup(stack: contextlib.ExitStack, setup: str, table: str) -> Placement:
    """Start the servers of ``setup`` (stopped when ``stack`` closes); where the load goes."""
    if setup == "plain":
        return Placement.on(stack.enter_context(run_server("ours-postgres", (), table)))
    member = ("--cluster", CLUSTER)
    # One after the other: the first creates the cluster's tables.
    first = stack.enter_context(run_server("ours-postgres", member, table))
    if setup == "one":
        return Placement.on(first)
    second = stack.enter_context(run_server("ours-postgres", member, table))
    both = (first, second)
    if setup == "two":
        return Placement(both, both, both)
    if setup == "cross":
        return Placement(both, (first,), (second,))
    raise ValueError(f"unknown setup {setup!r}; known: {', '.join(SETUPS)}")


def measure_setup(setup: str, opts: Options, db: Database) -> Throughput:
    """One ``bg`` measurement of ``setup`` on fresh servers and a fresh table.

    Once the servers have stopped (SIGTERM: each writes its last commit), the jobs'
    table should be empty; rows left are noted on the measurement.
    """
    table = f"bench_cluster_{os.getpid()}_{next(_tables)}"
    jobs_table = table if setup == "plain" else f"{table}_{CLUSTER}"
    try:
        with contextlib.ExitStack() as stack:
            placement = start_setup(stack, setup, table)
            entry = measure_bg(placement, opts, opts.bg_jobs)
        left = rows(db.dsn, jobs_table)
        if left:
            entry.note = "; ".join(filter(None, [entry.note, f"{left} rows left in the table"]))
        return entry
    finally:
        drop_tables(db.dsn, table, f"{table}_{CLUSTER}")


def rows(dsn: str, table: str) -> int:
    """The number of rows in ``table``."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn) as conn:
        cursor = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        found = cursor.fetchone()
    return int(found[0]) if found else 0


def run(setups: Sequence[str], opts: Options, repeats: int, db: Database) -> Results:
    """Every setup in turn, ``repeats`` times; each measurement the least disturbed of
    ``1 + opts.retries`` (see :func:`server.least_disturbed`)."""
    by_setup: dict[str, list[object]] = {setup: [] for setup in setups}
    for repeat in range(repeats):
        for setup in setups:
            started = time.perf_counter()
            step = opts
            if opts.profile is not None:  # py-spy records the first server of the setup
                step = attrs.evolve(opts, profile=opts.profile / setup)
                step.profile.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            kept = least_disturbed(
                f"{MODE} {setup}",
                step,
                opts.retries,
                functools.partial(measure_setup, setup, step, db),
            )
            by_setup[setup].append(kept)
            print(
                f"  [{repeat + 1}/{repeats}] {setup:6} {describe(kept)}"
                f"  ({time.perf_counter() - started:.1f} s)",
                file=sys.stderr,
            )
    return {MODE: by_setup}


def format_table(results: Results, setups: Sequence[str], db_measured: bool) -> str:
    """The setups' medians as a markdown table, with ratios to :data:`REFERENCE`."""
    rows: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for setup in setups:
        entries = [e for e in results[MODE][setup] if isinstance(e, Throughput)]
        if entries:
            rows[setup] = summarize(entries)
        notes += [f"{setup}: {e.note}" for e in entries if e.note]
        failed = len(results[MODE][setup]) - len(entries)
        if failed:
            notes.append(f"{setup}: {failed} measurement(s) failed")
    reference = rows.get(REFERENCE, {}).get("rate", float("nan"))
    db_unit = "" if db_measured else " (not measured)"
    lines = [
        f"| setup | servers | jobs/s (min-max) | / {REFERENCE} | p50 ms | p99 ms "
        f"| server CPU-s / 10k jobs | server cores | PostgreSQL CPU-s / 10k jobs{db_unit} "
        "| PostgreSQL cores | load gen CPU-s / 10k jobs | softirq, cores | other load, cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup, s in rows.items():
        lines.append(
            f"| {setup} | {DESCRIPTIONS[setup]} "
            f"| {s['rate']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}) "
            f"| {ratio(s['rate'], reference)} "
            f"| {s['p50'] * 1e3:.2f} | {s['p99'] * 1e3:.2f} "
            f"| {s['server_cpu']:.3f} | {s['server_cores']:.2f} "
            f"| {s['db_cpu']:.3f} | {s['db_cores']:.2f} "
            f"| {s['loadgen_cpu']:.3f} | {s['softirq']:.2f} | {s['others']:.2f} |"
        )
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _setups(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in SETUPS for n in names):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SETUPS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; print the table on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--setups", type=_setups, default=list(SETUPS), help=",".join(SETUPS))
    add("--jobs", type=int, help=f"jobs per run (default {JOBS:,}; --quick {QUICK_JOBS:,})")
    add("--repeats", type=int, help="runs per setup (default 3; --quick 1)")
    add("--quick", action="store_true", help="a short smoke run")
    add("--clients", type=int, default=DEFAULTS.clients, help="default %(default)s")
    add("--workers", type=int, default=DEFAULTS.workers, help="default %(default)s")
    add(
        "--max-backlog",
        type=int,
        default=DEFAULTS.max_backlog,
        help="jobs queued at most (default %(default)s; 0: no limit)",
    )
    add(
        "--bg-grabs",
        type=int,
        default=DEFAULTS.bg_grabs,
        help="GRAB_JOB_UNIQ in flight per worker (default %(default)s)",
    )
    add_run_options(parser)
    add("--profile", type=Path, metavar="DIR", help="record each setup's first server with py-spy")
    args = parser.parse_args(argv)
    quick = args.quick
    opts = Options(
        bg_jobs=args.jobs or (QUICK_JOBS if quick else JOBS),
        clients=args.clients,
        workers=args.workers,
        max_backlog=args.max_backlog,
        bg_grabs=args.bg_grabs,
        timeout=args.timeout,
        max_other_load=args.max_other_load,
        retries=args.retries if args.retries is not None else (0 if quick else DEFAULTS.retries),
        settle=1.0 if quick else DEFAULTS.settle,
        profile=args.profile,
    )
    repeats = args.repeats or (1 if quick else 3)
    started = time.perf_counter()
    command = " ".join(sys.argv[1:] if argv is None else argv)
    with postgres_database() as db:
        opts.db_pid = db.pid
        where = "a throw-away cluster" if db.pid is not None else f"${POSTGRES_DSN_ENV}"
        header = (
            f"Run {datetime.datetime.now().isoformat(timespec='seconds')}: {machine()}; "
            f"PostgreSQL {store_setting(db.dsn, 'server_version')} ({where}, fsync="
            f"{store_setting(db.dsn, 'fsync')}); load average {os.getloadavg()[0]:.2f} "
            f"at start. Command: python bench/cluster.py {command}"
        )
        print(header, file=sys.stderr)
        results = run(args.setups, opts, repeats, db)
    print(f"\n{header}")
    print(
        f"Background jobs per run: {opts.bg_jobs:,} ({opts.clients} clients, {opts.workers} "
        f"workers); repeats: {repeats} (medians shown); "
        f"wall time {time.perf_counter() - started:.0f} s.\n"
    )
    print(disturbance(results, opts) + "\n")
    print(format_table(results, args.setups, opts.db_pid is not None))
    if opts.profile is not None:
        for setup in args.setups:
            for found in sorted((opts.profile / setup).glob("*.txt")):
                print(f"\n{setup}: {hot_spots(found)}")
    if args.json is not None:
        options = attrs.asdict(opts, filter=lambda field, _: field.name != "profile")
        data = {"header": header, "options": options, "results": to_json(results)}
        args.json.write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
