"""The SQLite persistent queue, driven through the server's state machine (no sockets)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from trio_gearman._exceptions import GearmanError
from trio_gearman._proto._packets import (
    Error,
    GetStatus,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Priority,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkFail,
)
from trio_gearman._server.store import SqliteStore, StoredJob

from .proto.test_server_state_harness import PREFIX, Harness, handle


def open_store(path: Path, table: str = "gearman_queue") -> SqliteStore:
    return SqliteStore(path, PREFIX, table, busy_timeout=0)


def restart(path: Path, old: Harness | None = None) -> tuple[Harness, SqliteStore]:
    """A new server on the same database, as a restarted trio-gearmand builds it."""
    store = open_store(path)
    harness = Harness(store=store)
    harness.state.wall_offset = time.time() - harness.now
    store.replay(harness.state, time.time())
    return harness, store


def test_add_done_and_load_in_submission_order(tmp_path: Path) -> None:
    store = open_store(tmp_path / "q.db")
    harness = Harness(store=store)
    client = harness.connect()
    replies = client.request(
        SubmitJob(b"f", b"", b"one", background=True),
        SubmitJob(b"g", b"", b"two", priority=Priority.HIGH, background=True),
        SubmitJob(b"f", b"", b"foreground"),
        SubmitJob(b"f", b"", b"three", priority=Priority.LOW, background=True),
    )
    assert replies == [JobCreated(handle(n)) for n in (1, 2, 3, 4)]
    assert [job.data for job in store.load()] == [b"one", b"two", b"three"]
    worker = harness.worker(b"g")
    worker.send(GrabJobUniq())
    worker.send(WorkComplete(handle(2), b"ok"))
    assert store.load() == [
        StoredJob(handle(1), b"f", b"", b"one", 1, b"", None),
        StoredJob(handle(4), b"f", b"", b"three", 2, b"", None),
    ]
    store.close()
    # What was committed is in the file for any other reader.
    assert len(open_store(tmp_path / "q.db").load()) == 2


def test_failed_and_cancelled_jobs_leave_the_store(tmp_path: Path) -> None:
    harness, store = restart(tmp_path / "q.db")
    client = harness.connect()
    client.send(*(SubmitJob(b"f", b"", b"%d" % i, background=True) for i in range(3)))
    assert harness.connect().admin(b"cancel job " + handle(3)) == b"OK\r\n"
    worker = harness.worker(b"f")
    worker.send(GrabJobUniq())
    worker.send(WorkFail(handle(1)))
    assert [job.handle for job in store.load()] == [handle(2)]


def test_replay_keeps_handles_and_never_reuses_them(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    first, store = restart(path)
    client = first.connect()
    client.send(*(SubmitJob(b"f", b"", b"%d" % i, background=True) for i in range(1, 4)))
    worker = first.worker(b"f")
    worker.send(GrabJobUniq())
    worker.send(WorkComplete(handle(1), b""))
    client.send(SubmitJob(b"f", b"", b"4", background=True))
    # The newest job (the highest handle) finishes too: its number stays used.
    assert first.connect().admin(b"cancel job " + handle(4)) == b"OK\r\n"
    assert [job.handle for job in store.load()] == [handle(2), handle(3)]
    assert store.handles_issued == 4
    store.close()  # a crash: no counter written at shutdown

    second, store = restart(path)
    assert second.state.handles_issued == 4
    worker = second.worker(b"f")
    worker.send(GrabJobUniq(), GrabJobUniq())
    assigned = worker.received()
    assert [(m.handle, m.data) for m in assigned if isinstance(m, JobAssignUniq)] == [
        (handle(2), b"2"),
        (handle(3), b"3"),
    ]
    assert second.connect().request(SubmitJob(b"f", b"", b"5", background=True)) == [
        JobCreated(handle(5))
    ]
    assert second.connect().request(GetStatus(handle(2))) == [
        StatusRes(handle(2), True, True, 0, 0)
    ]


def test_clean_shutdown_records_foreground_handles(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    first, store = restart(path)
    first.connect().send(*(SubmitJob(b"f", b"", b"fg%d" % i) for i in range(7)))
    store.close(first.state.handles_issued)
    second, _ = restart(path)
    assert second.connect().request(SubmitJob(b"f", b"", b"x", background=True)) == [
        JobCreated(handle(8))
    ]


def test_empty_uniques_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    first, store = restart(path)
    client = first.connect()
    client.send(
        SubmitJob(b"f", b"", b"a", background=True),
        SubmitJob(b"f", b"", b"b", background=True),
        SubmitJob(b"f", b"-", b"c", background=True),
        SubmitJob(b"f", b"-", b"c", background=True),  # coalesced by data
        SubmitJob(b"f", b"key", b"d", background=True),
    )
    store.close()
    second, store = restart(path)
    assert [(j.unique, j.data) for j in store.load()] == [
        (b"", b"a"),
        (b"", b"b"),
        (b"-", b"c"),
        (b"key", b"d"),
    ]
    assert second.state.jobs_queued == 4
    # The unique indexes are rebuilt: a resubmission coalesces onto the old job.
    assert second.connect().request(SubmitJob(b"f", b"key", b"other", background=True)) == [
        JobCreated(handle(4))
    ]


def test_reducer_and_epoch_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    first, store = restart(path)
    later = int(time.time()) + 3600
    first.connect().send(
        SubmitReduceJob(b"f", b"u", b"r", b"", b"reduce me", background=True),
        SubmitJobEpoch(b"f", b"", later, b"later"),
        SubmitJobEpoch(b"f", b"", int(time.time()) - 10, b"past"),
    )
    assert [(j.reducer, j.epoch) for j in store.load()] == [(b"r", None), (b"", later), (b"", None)]
    store.close()

    second, store = restart(path)
    assert second.state.jobs_queued == 3
    ((job, due),) = second.state.scheduled_jobs()
    assert job.data == b"later"
    assert due + second.state.wall_offset == pytest.approx(later)
    worker = second.worker(b"f")
    worker.send(GrabJobUniq(), GrabJobUniq(), GrabJobUniq())
    assert [m.data for m in worker.received() if isinstance(m, JobAssignUniq)] == [
        b"reduce me",
        b"past",
    ]
    second.advance(3601)
    assert second.state.jobs_queued == 1
    assert store.load()[0].reducer == b"r"


def test_a_failed_add_refuses_the_submit_with_queue_error(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    harness, store = restart(path)
    client = harness.connect()
    assert client.request(SubmitJob(b"f", b"", b"ok", background=True)) == [JobCreated(handle(1))]
    # Another process holds the write lock: the insert fails at once.
    other = sqlite3.connect(path, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    assert client.request(SubmitJob(b"f", b"", b"refused", background=True)) == [
        Error(b"QUEUE_ERROR", b"QUEUE_ERROR")
    ]
    assert client.request(SubmitJob(b"f", b"", b"foreground")) == [JobCreated(handle(2))]
    other.rollback()
    other.close()
    assert client.request(SubmitJob(b"f", b"", b"again", background=True)) == [
        JobCreated(handle(3))
    ]
    assert [job.data for job in store.load()] == [b"ok", b"again"]
    assert harness.state.jobs_queued == 3


def test_a_table_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gearmand.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT, data BLOB)")
    db.commit()
    db.close()
    with pytest.raises(GearmanError, match="not a trio-gearmand queue"):
        open_store(path)
    assert open_store(path, "jobs").load() == []
    with pytest.raises(ValueError, match="not a table name"):
        open_store(path, "jobs; DROP TABLE x")


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    open_store(tmp_path / "q.db").close()
    db = sqlite3.connect(tmp_path / "q.db")
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
