"""The monitor's model: snapshots from admin replies, rates, filters, totals. No I/O."""

from __future__ import annotations

import pytest

from trio_gearman._monitor.model import (
    Connection,
    Filters,
    FunctionCounts,
    History,
    Rates,
    Snapshot,
    function_rates,
    snapshot_from_replies,
    status_view,
)
from trio_gearman._proto._admin import FunctionPriorityStatus, FunctionStatus, WorkerInfo

A = "10.0.0.1:4730"
B = "10.0.0.2:4730"


def up(
    server: str, at: float, *functions: FunctionCounts, connections: tuple[Connection, ...] = ()
) -> Snapshot:
    return Snapshot(
        server,
        at,
        1_700_000_000.0 + at,
        version="1.1.20",
        priorities=True,
        functions=functions,
        connections=connections,
    )


def down(server: str, at: float, reason: str = "cannot connect: Connection refused") -> Snapshot:
    return Snapshot(server, at, 1_700_000_000.0 + at, error=reason)


def counts(name: str, waiting: int, running: int = 0, workers: int = 0) -> FunctionCounts:
    return FunctionCounts(name, waiting + running, running, workers, 0, waiting, 0)


def view(history: History, filters: Filters | None = None, now: float = 100.0) -> dict[str, object]:
    return status_view(
        history, filters or Filters(), now=now, wall=1_700_000_000.0 + now, interval=2.0
    )


def rows(value: object) -> list[dict[str, object]]:
    assert isinstance(value, list)
    return value


# --- snapshots ---------------------------------------------------------------------------


def test_a_snapshot_joins_status_and_prioritystatus() -> None:
    snapshot = snapshot_from_replies(
        A,
        monotonic=5.0,
        wall=1.5,
        version="1.1.20",
        status=[FunctionStatus(b"resize", 4, 1, 2), FunctionStatus(b"gone", 0, 0, 0)],
        priority_status=[
            FunctionPriorityStatus(b"resize", 1, 2, 0, 2),
            FunctionPriorityStatus(b"new", 0, 3, 0, 0),  # came between the two commands
        ],
        workers=[WorkerInfo(7, b"127.0.0.1", b"w1", (b"resize",)), WorkerInfo(8, b"::1", b"-")],
    )
    assert snapshot.up
    assert snapshot.priorities
    assert snapshot.version == "1.1.20"
    assert snapshot.functions == (
        FunctionCounts("resize", 4, 1, 2, 1, 2, 0),
        FunctionCounts("gone", 0, 0, 0, None, None, None),
        FunctionCounts("new", 3, 0, 0, 0, 3, 0),
    )
    assert [f.waiting for f in snapshot.functions] == [3, 0, 3]
    assert snapshot.connections == (
        Connection(7, "127.0.0.1", "w1", ("resize",)),
        Connection(8, "::1", "-", ()),
    )


def test_without_prioritystatus_waiting_is_total_less_running() -> None:
    snapshot = snapshot_from_replies(
        A,
        monotonic=0.0,
        wall=0.0,
        version="0.9",
        status=[FunctionStatus(b"f", 5, 2, 1), FunctionStatus(b"odd", 1, 3, 1)],
        priority_status=None,
        workers=[],
    )
    assert not snapshot.priorities
    f, odd = snapshot.functions
    assert (f.waiting, f.by_priority, f.high) == (3, False, None)
    assert odd.waiting == 0  # never negative, even if the server's figures are odd


def test_names_that_are_not_utf8_stay_distinct() -> None:
    snapshot = snapshot_from_replies(
        A,
        monotonic=0.0,
        wall=0.0,
        version="x",
        status=[FunctionStatus(b"\xff", 1, 0, 0), FunctionStatus(b"\xfe", 2, 0, 0)],
        priority_status=None,
        workers=[],
    )
    assert [f.function for f in snapshot.functions] == ["\\xff", "\\xfe"]


# --- history and rates ---------------------------------------------------------------------


def test_rates_are_jobs_per_second_between_two_snapshots() -> None:
    base = up(A, 10.0, counts("resize", 10, running=2), counts("idle", 0))
    newest = up(A, 14.0, counts("resize", 2, running=2), counts("fresh", 8))
    assert function_rates(base, newest) == {
        "resize": Rates(waiting=-2.0, total=-2.0),
        "fresh": Rates(waiting=2.0, total=2.0),  # not listed before: counts from zero
    }
    assert function_rates(newest, newest) == {}


def test_the_history_keeps_one_snapshot_beyond_the_window_as_the_base() -> None:
    history = History([A], window=10.0)
    for at in (0.0, 4.0, 8.0, 12.0, 16.0):
        history.add(up(A, at, counts("f", int(at))))
    assert [s.monotonic for s in history.snapshots(A)] == [4.0, 8.0, 12.0, 16.0]
    base = history.rate_base(A)
    assert base is not None
    assert base.monotonic == 4.0
    (server,) = rows(view(history)["servers"])
    (function,) = rows(server["functions"])
    assert function["waiting_rate"] == 1.0  # (16 - 4) jobs over 12 s


def test_rates_start_again_after_an_outage() -> None:
    history = History([A], window=60.0)
    history.add(up(A, 0.0, counts("f", 100)))
    history.add(down(A, 2.0))
    assert history.rate_base(A) is None
    history.add(up(A, 4.0, counts("f", 0)))
    assert history.rate_base(A) is None  # one answer since: no rate yet
    history.add(up(A, 6.0, counts("f", 4)))
    base = history.rate_base(A)
    assert base is not None
    assert base.monotonic == 4.0
    (server,) = rows(view(history)["servers"])
    (function,) = rows(server["functions"])
    assert function["waiting_rate"] == 2.0


def test_since_tells_when_the_state_changed() -> None:
    history = History([A])
    assert history.since(A) is None
    assert history.latest(A) is None
    history.add(up(A, 1.0))
    history.add(up(A, 2.0))
    assert history.since(A) == 1_700_000_001.0
    history.add(down(A, 3.0))
    history.add(down(A, 4.0))
    assert history.since(A) == 1_700_000_003.0


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        History([A], window=0)


def test_a_snapshot_of_a_server_not_watched_is_refused() -> None:
    with pytest.raises(KeyError):
        History([A]).add(up(B, 0.0))


# --- filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "shown"),
    [
        ("", ["resize", "resize_hq", "thumbnail", "Email.Send"]),
        ("size", ["resize", "resize_hq"]),
        ("EMAIL", ["Email.Send"]),
        ("resize*", ["resize", "resize_hq"]),
        ("*e", ["resize"]),
        ("?humbnail", ["thumbnail"]),
        ("[rt]*", ["resize", "resize_hq", "thumbnail"]),
        ("nothing", []),
    ],
)
def test_function_filter(pattern: str, shown: list[str]) -> None:
    names = ["resize", "resize_hq", "thumbnail", "Email.Send"]
    assert [n for n in names if Filters(function=pattern).function_shown(n)] == shown


def test_filters_from_query_parameters() -> None:
    filters = Filters.from_query([f"{A}, {B}", "", "c:1"], "  resize ")
    assert filters == Filters(frozenset({A, B, "c:1"}), "resize")
    assert Filters.from_query([], None) == Filters()
    assert filters.server_shown(A)
    assert not filters.server_shown("d:1")
    assert Filters().server_shown("anything")
    assert filters.as_json() == {"servers": sorted([A, B, "c:1"]), "function": "resize"}


# --- the view ---------------------------------------------------------------------------------


def two_servers() -> History:
    history = History([A, B], window=30.0)
    worker_a = Connection(3, "10.1.0.5", "resizer-1", ("resize", "thumbnail"))
    client_a = Connection(4, "10.1.0.6", "-")
    history.add(up(A, 0.0, counts("resize", 4, running=1, workers=1), counts("thumbnail", 0)))
    history.add(
        up(
            A,
            2.0,
            counts("resize", 8, running=1, workers=1),
            counts("thumbnail", 0, workers=1),
            connections=(worker_a, client_a),
        )
    )
    history.add(up(B, 0.0, FunctionCounts("resize", 2, 0, 0, 2, 0, 0)))
    history.add(
        up(
            B,
            2.0,
            FunctionCounts("resize", 3, 0, 0, 3, 0, 0),
            FunctionCounts("email", 1, 0, 0, None, None, None),
            connections=(Connection(9, "10.2.0.1", "mailer", ("email_digest",)),),
        )
    )
    return history


def test_the_view_adds_up_functions_across_servers() -> None:
    result = view(two_servers(), now=3.0)
    functions = {row["function"]: row for row in rows(result["functions"])}
    assert list(functions) == ["email", "resize", "thumbnail"]  # sorted
    resize = functions["resize"]
    assert resize["servers"] == [A, B]
    assert (resize["waiting"], resize["high"], resize["normal"], resize["running"]) == (11, 3, 8, 1)
    assert (resize["total"], resize["workers"]) == (12, 1)
    assert resize["waiting_rate"] == 2.5  # A: +4 in 2 s, B: +1 in 2 s
    assert resize["no_workers"] is False  # B has none, but A serves it
    email = functions["email"]
    assert (email["high"], email["waiting"], email["waiting_rate"]) == (None, 1, 0.5)
    assert email["no_workers"] is True
    assert functions["thumbnail"]["no_workers"] is False  # nothing waits

    totals = result["totals"]
    assert totals == {
        "servers": 2,
        "up": 2,
        "down": 0,
        "functions": 3,
        "connections": 3,
        "worker_connections": 2,
        "waiting": 12,
        "running": 1,
        "total": 13,
        "workers": 2,
        "waiting_rate": 3.0,
        "total_rate": 3.0,
    }
    assert [w["client_id"] for w in rows(result["workers"])] == ["resizer-1", "mailer"]
    server_a = rows(result["servers"])[0]
    assert server_a["age"] == 1.0
    assert server_a["polled_at"] == "2023-11-14T22:13:22.000Z"
    assert (server_a["connections"], server_a["worker_connections"]) == (2, 1)
    assert result["interval"] == 2.0
    assert result["window"] == 30.0


def test_a_server_down_is_shown_with_its_reason_and_left_out_of_the_sums() -> None:
    history = two_servers()
    history.add(down(B, 4.0, "no answer within 2 s"))
    result = view(history, now=4.5)
    server_a, server_b = rows(result["servers"])
    assert server_a["up"] is True
    assert server_b == {
        "server": B,
        "up": False,
        "error": "no answer within 2 s",
        "version": None,
        "priorities": None,
        "polled_at": "2023-11-14T22:13:24.000Z",
        "age": 0.5,
        "since": "2023-11-14T22:13:24.000Z",
        "connections": None,
        "worker_connections": None,
        "functions": [],
    }
    functions = {row["function"]: row for row in rows(result["functions"])}
    assert functions["resize"]["servers"] == [A]
    assert functions["resize"]["waiting"] == 8
    assert "email" not in functions
    totals = result["totals"]
    assert isinstance(totals, dict)
    assert (totals["up"], totals["down"], totals["connections"]) == (1, 1, 2)


def test_a_server_not_polled_yet() -> None:
    result = view(History([A]))
    (server,) = rows(result["servers"])
    assert (server["up"], server["error"], server["functions"]) == (None, "not polled yet", [])
    totals = result["totals"]
    assert isinstance(totals, dict)
    assert (totals["up"], totals["down"], totals["waiting"], totals["waiting_rate"]) == (
        0,
        1,
        0,
        None,
    )


def test_filters_narrow_servers_functions_workers_and_totals() -> None:
    history = two_servers()
    by_function = view(history, Filters(function="email*"), now=3.0)
    assert [row["function"] for row in rows(by_function["functions"])] == ["email"]
    # A worker is shown when one of its functions matches.
    assert [w["client_id"] for w in rows(by_function["workers"])] == ["mailer"]
    assert next(rows(s["functions"]) for s in rows(by_function["servers"])) == []
    totals = by_function["totals"]
    assert isinstance(totals, dict)
    assert totals["waiting"] == 1
    assert totals["servers"] == 2

    by_server = view(history, Filters(servers=frozenset({B})), now=3.0)
    assert [s["server"] for s in rows(by_server["servers"])] == [B]
    assert [row["function"] for row in rows(by_server["functions"])] == ["email", "resize"]
    assert [w["client_id"] for w in rows(by_server["workers"])] == ["mailer"]
    assert by_server["filters"] == {"servers": [B], "function": ""}
    totals = by_server["totals"]
    assert isinstance(totals, dict)
    assert (totals["servers"], totals["waiting"]) == (1, 4)

    nothing = view(history, Filters(servers=frozenset({"elsewhere:1"})))
    assert nothing["servers"] == []
    assert nothing["functions"] == []
    assert nothing["totals"] == {
        "servers": 0,
        "up": 0,
        "down": 0,
        "functions": 0,
        "connections": 0,
        "worker_connections": 0,
        "waiting": 0,
        "running": 0,
        "total": 0,
        "workers": 0,
        "waiting_rate": None,
        "total_rate": None,
    }
