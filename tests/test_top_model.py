"""``trio-gearman top``'s model: admin answers to snapshots, snapshots to sorted rows."""

from __future__ import annotations

import pytest

from trio_gearman._cli.top_model import (
    FunctionCounts,
    ServerSnapshot,
    change_per_second,
    failed_snapshot,
    format_change,
    function_rows,
    printable,
    snapshot,
)
from trio_gearman._proto._admin import FunctionPriorityStatus, FunctionStatus, WorkerInfo

CONNECTIONS = [
    WorkerInfo(30, b"127.0.0.1", b"-", (b"resize",)),
    WorkerInfo(31, b"127.0.0.1", b"w2", (b"resize", b"mail")),
    WorkerInfo(32, b"127.0.0.1", b"-", ()),
]


def shot(server: str, time: float, *counts: FunctionCounts) -> ServerSnapshot:
    return ServerSnapshot(server, time, version="1", connections=1, workers=0, functions=counts)


def test_waiting_jobs_come_from_prioritystatus_running_and_workers_from_status() -> None:
    taken = snapshot(
        "a:4730",
        12.5,
        status=[FunctionStatus(b"resize", 7, 2, 2), FunctionStatus(b"mail", 3, 1, 1)],
        priority_status=[FunctionPriorityStatus(b"resize", 1, 3, 1, 2)],
        workers=CONNECTIONS,
        version="1.1.20",
    )
    assert taken == ServerSnapshot(
        "a:4730",
        12.5,
        version="1.1.20",
        connections=3,
        workers=2,
        functions=(
            FunctionCounts(b"resize", 5, 2, 2, (1, 3, 1)),
            # Not in prioritystatus's answer (it came a moment later): status's count.
            FunctionCounts(b"mail", 2, 1, 1),
        ),
    )
    assert taken.up
    assert taken.functions[0].held == 7


def test_without_prioritystatus_waiting_is_total_less_running() -> None:
    taken = snapshot(
        "a:4730",
        0.0,
        status=[FunctionStatus(b"resize", 7, 2, 2), FunctionStatus(b"odd", 1, 3, 0)],
        priority_status=None,
        workers=[],
        version="1.1.8",
    )
    assert taken.functions == (
        FunctionCounts(b"resize", 5, 2, 2),
        FunctionCounts(b"odd", 0, 3, 0),  # never negative, whatever a server says
    )
    assert (taken.connections, taken.workers) == (0, 0)


def test_a_failed_poll_has_no_functions() -> None:
    failed = failed_snapshot("b:4730", 3.0, "cannot connect: Connection refused")
    assert not failed.up
    assert failed.error == "cannot connect: Connection refused"
    assert function_rows([failed]) == []


def test_rows_are_sorted_by_waiting_then_running_then_name_then_server() -> None:
    first = shot(
        "a:1",
        0.0,
        FunctionCounts(b"idle", 0, 0, 1),
        FunctionCounts(b"busy", 0, 4, 4),
        FunctionCounts(b"backlog", 9, 0, 0),
        FunctionCounts(b"same", 2, 1, 1),
    )
    second = shot("b:1", 0.0, FunctionCounts(b"same", 2, 1, 1), FunctionCounts(b"backlog", 1, 5, 2))
    rows = function_rows([first, second, failed_snapshot("c:1", 0.0, "down")])
    assert [(row.function, row.server) for row in rows] == [
        ("backlog", "a:1"),
        ("same", "a:1"),
        ("same", "b:1"),
        ("backlog", "b:1"),
        ("busy", "a:1"),
        ("idle", "a:1"),
    ]
    assert all(row.change is None for row in rows)  # no previous poll


def test_change_is_the_held_jobs_difference_per_second_between_polls() -> None:
    before = {
        "a:1": shot(
            "a:1", 10.0, FunctionCounts(b"grows", 4, 1, 1), FunctionCounts(b"drains", 9, 1, 1)
        ),
        "b:1": failed_snapshot("b:1", 10.0, "down"),
    }
    now = [
        shot(
            "a:1",
            12.0,
            FunctionCounts(b"grows", 8, 2, 1),  # 5 -> 10 jobs in 2 s
            FunctionCounts(b"drains", 3, 1, 1),  # 10 -> 4
            FunctionCounts(b"new", 1, 0, 0),
            FunctionCounts(b"steady", 0, 0, 1),
        ),
        shot("b:1", 12.0, FunctionCounts(b"back", 6, 0, 0)),
    ]
    changes = {(row.server, row.function): row.change for row in function_rows(now, before)}
    assert changes == {
        ("a:1", "grows"): 2.5,
        ("a:1", "drains"): -3.0,
        ("a:1", "new"): None,  # not listed last time
        ("a:1", "steady"): None,
        ("b:1", "back"): None,  # the server did not answer last time
    }


def test_change_needs_time_to_have_passed() -> None:
    counts = FunctionCounts(b"f", 1, 0, 0)
    assert change_per_second(counts, FunctionCounts(b"f", 3, 0, 0), 0.5) == 4.0
    assert change_per_second(counts, counts, 0.0) is None
    assert change_per_second(None, counts, 1.0) is None


@pytest.mark.parametrize(
    ("change", "text"),
    [(None, "-"), (0.0, "0"), (2.5, "+2.5"), (-3.0, "-3.0"), (0.04, "+0.0"), (1234.56, "+1234.6")],
)
def test_format_change(change: float | None, text: str) -> None:
    assert format_change(change) == text


def test_function_names_cannot_steer_the_terminal() -> None:
    assert printable(b"resize") == "resize"
    assert printable("größe".encode()) == "größe"
    assert printable(b"red\x1b[31m\tx\n") == "red\\x1b[31m\\tx\\n"
    assert printable(b"bad\xff") == "bad\\xff"
