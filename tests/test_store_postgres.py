"""The PostgreSQL queue against a real, throw-away PostgreSQL cluster.

The first tests are the store contract (``trio_gearman._server.store.base``) and
take their store from the ``make_store`` fixture, so they can run against other
stores too; the later ones are about PostgreSQL itself: its tables, its names, its
connection string, and the database going away and coming back.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trio_gearman._server.store.base import QueueStore, StoreContents, StoredJob, StoreError
from trio_gearman._server.store.postgres import PostgresStore

from .gearmand_peer import free_port
from .postgres_peer import PostgresCluster, require_psycopg

pytestmark = pytest.mark.postgres

StoreFactory = Callable[[], QueueStore]
LOGGER = "trio_gearman.server.store"


def job(number: int, **fields: Any) -> StoredJob:
    """A stored job with handle ``H:test:<number>`` and plain fields."""
    values: dict[str, Any] = {
        "handle": b"H:test:%d" % number,
        "function": b"f",
        "unique": b"",
        "data": b"data %d" % number,
        "priority": 1,
    }
    values.update(fields)
    return StoredJob(**values)


@pytest.fixture
def needs_psycopg() -> None:
    """Skip (fail under CI) a test that needs psycopg but no database."""
    require_psycopg()


@pytest.fixture
def table(request: pytest.FixtureRequest) -> str:
    """A table name of this test's own (the cluster is shared by the session)."""
    return "q_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]


@pytest.fixture
def make_store(postgres_dsn: str, table: str) -> Iterator[Callable[[], PostgresStore]]:
    """Fresh stores on one table, as restarted servers would open it; closed afterwards."""
    stores: list[PostgresStore] = []

    def make() -> PostgresStore:
        store = PostgresStore(postgres_dsn, table)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def reopen(make_store: StoreFactory) -> StoreContents:
    """What a freshly started server would read."""
    store = make_store()
    try:
        return store.open()
    finally:
        store.close()


def query(dsn: str, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on a connection of its own (as another client)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement.encode(), params)
        return cursor.fetchall() if cursor.description else []


# --- the store contract -----------------------------------------------------------------


def test_open_on_an_empty_database(make_store: StoreFactory) -> None:
    assert make_store().open() == StoreContents([], 0)
    assert reopen(make_store) == StoreContents([], 0)


def test_jobs_come_back_in_submission_order_with_every_field(make_store: StoreFactory) -> None:
    store = make_store()
    store.open()
    first = [
        job(10, function=b"fn\x00with nul", unique=b"\xff\xfe not utf-8", data=b"\x00" * 3),
        job(2, priority=0, reducer=b"reduce\x00r", epoch=None),
        job(7, priority=2, epoch=1_900_000_000),
    ]
    second = [
        job(1, unique=b"-", data=b"", epoch=2**40),
        job(30, function=b"\x80\x81", data=bytes(range(256)) * 4, priority=0),
    ]
    store.commit(first, [], 10)
    store.commit(second, [], 30)
    assert reopen(make_store) == StoreContents([*first, *second], 30)


def test_removed_jobs_are_gone_and_unknown_handles_are_no_error(
    make_store: StoreFactory,
) -> None:
    store = make_store()
    store.open()
    store.commit([job(1), job(2), job(3)], [], None)
    store.commit([job(4)], [b"H:test:2", b"H:test:99", b"no such handle"], None)
    store.commit([], [b"H:test:4", b"H:test:4"], None)
    assert reopen(make_store).jobs == [job(1), job(3)]


def test_a_job_added_and_removed_in_later_commits(make_store: StoreFactory) -> None:
    store = make_store()
    store.open()
    store.commit([job(1)], [], 1)
    store.commit([job(2)], [b"H:test:1"], 2)
    assert reopen(make_store) == StoreContents([job(2)], 2)


def test_handle_limit_only_grows(make_store: StoreFactory) -> None:
    store = make_store()
    store.open()
    limits = []
    for limit in (10, 5, None, 0, 12):
        store.commit([], [], limit)
        limits.append(reopen(make_store).handle_limit)
    assert limits == [10, 10, 10, 10, 12]


def test_ten_thousand_jobs_in_one_commit(make_store: StoreFactory) -> None:
    store = make_store()
    store.open()
    jobs = [job(n, unique=b"%036d" % n, priority=n % 3) for n in range(1, 10_001)]
    store.commit(jobs, [], 10_000)
    assert reopen(make_store) == StoreContents(jobs, 10_000)
    store.commit([], [j.handle for j in jobs[::2]], None)
    assert reopen(make_store).jobs == jobs[1::2]


def test_a_failed_commit_writes_nothing_and_the_store_goes_on(make_store: StoreFactory) -> None:
    store = make_store()
    store.open()
    store.commit([job(1), job(2)], [], 2)
    # A handle that is already stored breaks the contract: the whole batch is refused.
    with pytest.raises(StoreError, match="duplicate key"):
        store.commit([job(3), job(1, data=b"again")], [b"H:test:2"], 3)
    assert reopen(make_store) == StoreContents([job(1), job(2)], 2)
    store.commit([job(3)], [b"H:test:2"], 3)
    assert reopen(make_store) == StoreContents([job(1), job(3)], 3)


# --- PostgreSQL's own ---------------------------------------------------------------------


def test_open_creates_both_tables(postgres_dsn: str, table: str) -> None:
    def exists(name: str) -> bool:
        return query(postgres_dsn, "SELECT to_regclass(%s) IS NOT NULL", name) == [(True,)]

    assert not exists(table)
    store = PostgresStore(postgres_dsn, table)
    try:
        store.open()
    finally:
        store.close()
    assert exists(table)
    assert exists(table + "_meta")


@pytest.mark.parametrize(
    ("layout", "which"),
    [
        # Roughly gearmand's own queue table: another server's jobs, not ours.
        ("{t} (unique_key varchar(64) PRIMARY KEY, function_name varchar(255), data bytea)", ""),
        # Our column names, one of another type.
        (
            "{t} (seq bigint, handle bytea, function text, unique_key bytea, data bytea,"
            " priority smallint, reducer bytea, when_epoch bigint)",
            "",
        ),
        ("{t}_meta (key text, value text)", "_meta"),
    ],
)
def test_a_table_of_another_layout_is_refused(
    postgres_dsn: str, table: str, layout: str, which: str
) -> None:
    query(postgres_dsn, "CREATE TABLE " + layout.format(t=table))
    store = PostgresStore(postgres_dsn, table)
    try:
        with pytest.raises(StoreError) as caught:
            store.open()
    finally:
        store.close()
    message = str(caught.value)
    assert f"the table {table}{which} in postgres@127.0.0.1:" in message
    assert "is not a trio-gearmand queue" in message
    assert "choose another table name" in message
    # Refused, not touched: the meta table the failed open() created is rolled back.
    assert query(postgres_dsn, "SELECT to_regclass(%s) IS NULL", table + "_meta") == [
        (which == "",)
    ]


@pytest.mark.parametrize(
    "name",
    ["", "1queue", "a-b", "a b", "q;drop table x", "public.queue", '"q"', "é", "q" * 59],
)
def test_a_table_name_must_be_a_plain_sql_name(postgres_dsn: str, name: str) -> None:
    with pytest.raises(ValueError, match="is not a table name"):
        PostgresStore(postgres_dsn, name)


def test_a_table_name_folds_to_lower_case(postgres_dsn: str, table: str) -> None:
    store = PostgresStore(postgres_dsn, table.upper() + "_X")
    try:
        store.open()
        store.commit([job(1)], [], 1)
    finally:
        store.close()
    assert store.table == table + "_x"
    assert query(postgres_dsn, f"SELECT count(*) FROM {table.upper()}_X") == [(1,)]


def test_the_longest_table_name_has_room_for_its_meta_table(postgres_dsn: str) -> None:
    store = PostgresStore(postgres_dsn, "q" * 58)
    try:
        store.open()
        store.commit([], [], 7)
    finally:
        store.close()
    assert query(postgres_dsn, f"SELECT value FROM {'q' * 58}_meta") == [(7,)]


def test_description_names_the_database_without_the_password(
    postgres_cluster: PostgresCluster,
) -> None:
    store = PostgresStore(postgres_cluster.dsn, "jobs")
    assert store.description == (
        f"postgresql postgres@127.0.0.1:{postgres_cluster.port}/gearman_test table jobs"
    )
    assert postgres_cluster.password not in store.description
    uri = PostgresStore("postgresql://gm:s3cret@db.example:6543/queue?sslmode=require")
    assert uri.description == "postgresql gm@db.example:6543/queue table gearman_queue"
    documented = PostgresStore("host=db user=gearman dbname=queue password=secret")
    assert documented.description == "postgresql gearman@db:5432/queue table gearman_queue"


@pytest.mark.usefixtures("needs_psycopg")
def test_a_malformed_connection_string_is_refused() -> None:
    with pytest.raises(StoreError, match=r'not a PostgreSQL connection string: .*"port"'):
        PostgresStore("host=db port")
    # libpq would quote the piece after the space: a piece of the password.
    with pytest.raises(StoreError, match=r"connection string: libpq cannot parse it$"):
        PostgresStore("host=db password=top secret")


@pytest.mark.usefixtures("needs_psycopg")
def test_an_unreachable_database_is_a_store_error_without_the_password() -> None:
    port = free_port()
    store = PostgresStore(
        f"host=127.0.0.1 port={port} user=u password=hunter2 dbname=q", connect_timeout=2
    )
    with pytest.raises(StoreError) as caught:
        store.open()
    assert str(caught.value).startswith(f"cannot reach PostgreSQL at u@127.0.0.1:{port}/q: ")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        store.commit([job(1)], [], 1)
    store.close()


def _count(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records if record.name == LOGGER)


def test_the_database_goes_away_and_comes_back(
    postgres_cluster: PostgresCluster,
    make_store: Callable[[], PostgresStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store()
    store.open()
    store.commit([job(1), job(2)], [], 2)
    where = f"cannot reach PostgreSQL at postgres@127.0.0.1:{postgres_cluster.port}/gearman_test"
    with postgres_cluster.stopped():
        # The connection is cut: the first call fails on it (nothing to write is
        # still a check), the later ones to connect.
        with pytest.raises(StoreError, match=where):
            store.commit([], [], None)
        with pytest.raises(StoreError, match=where):
            store.commit([job(3)], [b"H:test:1"], 3)
        with pytest.raises(StoreError, match=where):
            store.commit([job(4)], [], 4)
        assert _count(caplog, "PostgreSQL queue unreachable") == 1
        assert _count(caplog, "reachable again") == 0
    store.commit([job(5)], [b"H:test:2"], 5)
    store.commit([job(6)], [], 6)
    assert _count(caplog, "PostgreSQL queue unreachable") == 1
    assert _count(caplog, "PostgreSQL queue reachable again") == 1
    assert reopen(make_store) == StoreContents([job(1), job(5), job(6)], 6)


def test_a_database_restarted_while_the_store_is_idle_is_no_error(
    postgres_cluster: PostgresCluster,
    make_store: Callable[[], PostgresStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store()
    store.open()
    store.commit([job(1)], [], 1)
    with postgres_cluster.stopped():
        pass
    store.commit([job(2)], [], 2)
    assert _count(caplog, "Reconnecting to PostgreSQL") == 1
    assert _count(caplog, "unreachable") == 0
    assert reopen(make_store) == StoreContents([job(1), job(2)], 2)


def test_open_after_a_restart_while_idle_is_no_error(
    postgres_cluster: PostgresCluster, make_store: Callable[[], PostgresStore]
) -> None:
    store = make_store()
    store.open()
    store.commit([job(1)], [], 1)
    with postgres_cluster.stopped():
        pass
    assert store.open() == StoreContents([job(1)], 1)


def test_the_connection_lost_inside_a_transaction(
    postgres_dsn: str,
    table: str,
    make_store: Callable[[], PostgresStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    store = make_store()
    store.open()
    store.commit([job(1)], [], 1)
    # The backend kills itself in the middle of the COPY: after BEGIN, before COMMIT.
    query(
        postgres_dsn,
        "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$",
    )
    query(postgres_dsn, f"CREATE TRIGGER die BEFORE INSERT ON {table} EXECUTE FUNCTION die()")
    try:
        with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at .*: terminating"):
            store.commit([job(2)], [b"H:test:1"], 2)
    finally:
        query(postgres_dsn, f"DROP TRIGGER die ON {table}")
        query(postgres_dsn, "DROP FUNCTION die()")
    assert _count(caplog, "PostgreSQL queue unreachable") == 1
    assert _count(caplog, "Reconnecting") == 0  # it had begun: no second try
    assert reopen(make_store) == StoreContents([job(1)], 1)
    store.commit([job(3)], [], 3)
    assert _count(caplog, "PostgreSQL queue reachable again") == 1
    assert reopen(make_store) == StoreContents([job(1), job(3)], 3)


def test_a_failing_statement_keeps_the_connection(
    postgres_dsn: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    caplog.set_level(logging.INFO, logger=LOGGER)
    store = PostgresStore(postgres_dsn + " options='-c lock_timeout=50'", table)
    try:
        store.open()
        with psycopg.connect(postgres_dsn) as other:
            other.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE".encode())
            with pytest.raises(StoreError) as caught:
                store.commit([job(1)], [], 1)
        assert str(caught.value).startswith(
            "cannot write the queue to PostgreSQL at postgres@127.0.0.1:"
        )
        assert "canceling statement due to lock timeout" in str(caught.value)
        store.commit([job(2)], [], 2)
    finally:
        store.close()
    assert caplog.records == []  # not a lost database, and no new connection
    assert reopen(lambda: PostgresStore(postgres_dsn, table)).jobs == [job(2)]


def test_a_read_only_database_is_refused_with_its_reason(postgres_dsn: str, table: str) -> None:
    # As a hot standby would be.
    store = PostgresStore(postgres_dsn + " options='-c default_transaction_read_only=on'", table)
    try:
        with pytest.raises(StoreError) as caught:
            store.open()
    finally:
        store.close()
    assert str(caught.value).startswith(
        "cannot read the queue from PostgreSQL at postgres@127.0.0.1:"
    )
    assert "read-only transaction" in str(caught.value)


@pytest.mark.usefixtures("needs_psycopg")
@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf")])
def test_connect_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="connect_timeout must be positive"):
        PostgresStore("host=db", connect_timeout=timeout)


def test_without_psycopg_the_store_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes ``import psycopg`` raise ImportError, as when it is absent.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"pip install 'trio-gearman\[postgres\]'"):
        PostgresStore("host=db")


def test_the_package_imports_without_psycopg() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import trio_gearman._server.store.postgres as pg\n"
        "try:\n    pg.PostgresStore('host=db')\n"
        "except pg.StoreError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert "pip install 'trio-gearman[postgres]'" in done.stdout


@pytest.mark.parametrize("impl", ["python", "binary"])
def test_the_slow_psycopg_implementation_is_logged_once_with_the_fix(impl: str) -> None:
    # The 'postgres' extra brings psycopg's C implementation (psycopg-binary).
    script = (
        "import logging; logging.basicConfig(format='%(levelname)s %(message)s');"
        "from trio_gearman._server.store.postgres import PostgresStore;"
        "PostgresStore('dbname=x'); PostgresStore('dbname=y')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PSYCOPG_IMPL": impl},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    warnings = [line for line in done.stderr.splitlines() if "pure-Python" in line]
    if impl == "python":
        assert len(warnings) == 1
        assert warnings[0].startswith("WARNING psycopg runs its pure-Python implementation")
        assert "pip install 'psycopg[binary]'" in warnings[0]
    else:
        assert warnings == []
