"""The cluster's store against a real PostgreSQL: unique keys coalesce across members.

Each test uses a cluster name of its own on the session's throw-away PostgreSQL
(``tests/postgres_peer.py``) and drives :class:`ClusterStore` directly, as the
servers' writer threads do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from trio_gearman._server.store.base import StoredJob
from trio_gearman._server.store.cluster import ClusterStore

from .test_store_postgres import query

pytestmark = pytest.mark.postgres

MemberFactory = Callable[[], ClusterStore]


def job(number: int, unique: bytes = b"", data: bytes | None = None, **fields: Any) -> StoredJob:
    """A stored job with handle ``H:test:<number>``."""
    payload = b"data %d" % number if data is None else data
    return StoredJob(b"H:test:%d" % number, b"f", unique, payload, 1, **fields)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A cluster name of this test's own."""
    return "s_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-30:]


@pytest.fixture
def member(postgres_dsn: str, name: str) -> Iterator[MemberFactory]:
    """Opened stores of new members of the test's cluster; closed afterwards."""
    stores: list[ClusterStore] = []

    def make() -> ClusterStore:
        store = ClusterStore(postgres_dsn, name)
        stores.append(store)
        store.open()
        return store

    yield make
    for store in stores:
        store.close()


def commit_at_once(
    stores: list[ClusterStore], batches: list[list[StoredJob]]
) -> list[dict[bytes, bytes]]:
    """Commit ``batches[i]`` with ``stores[i]``, all at once (a thread each); their answers."""
    results: list[dict[bytes, bytes]] = [{} for _ in stores]
    barrier = threading.Barrier(len(stores))

    def commit(index: int) -> None:
        barrier.wait()
        results[index] = dict(stores[index].commit(batches[index], [], None))

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def rows(dsn: str, name: str) -> list[tuple[bytes, bytes]]:
    """``(handle, data)`` of every row of the cluster's table, oldest first."""
    found = query(dsn, f"SELECT handle, data FROM gearman_queue_{name} ORDER BY seq")
    return [(bytes(handle), bytes(data)) for handle, data in found]


def test_a_unique_key_coalesces_within_a_commit_across_commits_and_members(
    member: MemberFactory, postgres_dsn: str, name: str
) -> None:
    first, second = member(), member()
    assert first.commit([job(1, b"k"), job(2), job(3, b"k"), job(4, b"other")], [], None) == {
        b"H:test:3": b"H:test:1"
    }
    assert first.commit([job(5, b"k")], [], None) == {b"H:test:5": b"H:test:1"}
    assert second.commit([job(6, b"other"), job(7, b"new")], [], None) == {b"H:test:6": b"H:test:4"}
    # The rows keep the order of submission; the coalesced ones have none.
    assert [handle for handle, _ in rows(postgres_dsn, name)] == [
        b"H:test:1",
        b"H:test:2",
        b"H:test:4",
        b"H:test:7",
    ]
    # Another function's key is another key.
    other = StoredJob(b"H:test:8", b"g", b"k", b"", 1)
    assert second.commit([other], [], None) == {}


def test_once_the_row_is_gone_the_key_makes_a_new_job(member: MemberFactory) -> None:
    store = member()
    assert store.commit([job(1, b"k")], [], None) == {}
    assert store.commit([job(2, b"k")], [b"H:test:1"], None) == {}
    assert store.commit([job(3, b"k")], [], None) == {b"H:test:3": b"H:test:2"}


def test_the_unique_dash_coalesces_by_payload_and_an_empty_key_never(
    member: MemberFactory, postgres_dsn: str, name: str
) -> None:
    store = member()
    written = store.commit(
        [
            job(1, b"-", b"same"),
            job(2, b"-", b"other"),
            job(3, b"-", b"same"),
            job(4, b"", b"same"),
            job(5, b"", b"same"),
        ],
        [],
        None,
    )
    assert written == {b"H:test:3": b"H:test:1"}
    # A unique key equal to a payload's digest is not that payload's job.
    import hashlib

    digest = hashlib.sha256(b"same").digest()
    assert store.commit([job(6, digest, b"same")], [], None) == {}
    assert len(rows(postgres_dsn, name)) == 5


def test_an_epoch_job_and_every_field_survive_the_coalescing_insert(
    member: MemberFactory, postgres_dsn: str, name: str
) -> None:
    store = member()
    jobs = [
        StoredJob(b"H:test:1", b"f", b"k", b"\0bytes\xff", 0, b"reduce", 1_900_000_000),
        StoredJob(b"H:test:2", b"f", b"", b"", 2, b"", None),
    ]
    assert store.commit(jobs, [], None) == {}
    found = query(
        postgres_dsn,
        "SELECT handle, function, unique_key, data, priority, reducer, when_epoch"
        f" FROM gearman_queue_{name} ORDER BY seq",
    )
    assert [
        StoredJob(bytes(h), bytes(f), bytes(u), bytes(d), p, bytes(r), w)
        for h, f, u, d, p, r, w in found
    ] == jobs


def test_an_existing_table_gets_the_index_once_its_duplicates_are_gone(
    member: MemberFactory, postgres_dsn: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = f"gearman_queue_{name}"
    store = member()
    # A table of the previous version: no unique index, and rows sharing a key.
    query(postgres_dsn, f"DROP INDEX {table}_uniq")
    store.commit([job(1, b"k"), job(2, b"k")], [], None)
    with caplog.at_level(logging.ERROR, "trio_gearman.server.cluster"):
        late = member()
    assert "Cannot create the unique index" in caplog.text
    assert "do not coalesce" in caplog.text
    # It serves on, without coalescing.
    assert late.commit([job(3, b"k")], [], None) == {}
    query(postgres_dsn, f"DELETE FROM {table} WHERE handle <> 'H:test:1'::bytea")
    caplog.clear()
    with caplog.at_level(logging.ERROR, "trio_gearman.server.cluster"):
        again = member()
    assert caplog.text == ""
    assert again.commit([job(4, b"k")], [], None) == {b"H:test:4": b"H:test:1"}


def test_members_committing_the_same_keys_at_once_agree_on_one_job_each(
    member: MemberFactory, postgres_dsn: str, name: str
) -> None:
    stores = [member(), member()]
    for round_ in range(5):
        keys = [b"r%d-k%d" % (round_, n) for n in range(20)]
        batches = [
            [job(1000 * round_ + n, key) for n, key in enumerate(keys)],
            # The other member inserts the same keys in the other order: they may
            # deadlock, and the one PostgreSQL aborts tries again.
            [job(1000 * round_ + 100 + n, key) for n, key in enumerate(reversed(keys))],
        ]
        results = commit_at_once(stores, batches)
        found = query(
            postgres_dsn,
            f"SELECT unique_key, handle FROM gearman_queue_{name} WHERE unique_key = ANY(%s)",
            keys,
        )
        owner = {bytes(key): bytes(handle) for key, handle in found}
        assert len(found) == len(owner) == len(keys)  # one row per key
        # Every submission got the handle of its key's one job.
        for batch, coalesced in zip(batches, results, strict=True):
            for stored in batch:
                assert coalesced.get(stored.handle, stored.handle) == owner[stored.unique]


def test_a_commit_that_deadlocks_with_another_members_tries_again(
    member: MemberFactory, postgres_dsn: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    table = f"gearman_queue_{name}"
    stores = [member(), member()]
    # Each row takes a while to insert, so that both members hold their first key
    # when they come to their second: each waits for the other.
    query(
        postgres_dsn,
        f"CREATE FUNCTION {table}_slow() RETURNS trigger LANGUAGE plpgsql"
        " AS 'BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END'",
    )
    query(
        postgres_dsn,
        f"CREATE TRIGGER slow BEFORE INSERT ON {table} FOR EACH ROW"
        f" EXECUTE FUNCTION {table}_slow()",
    )
    batches = [[job(1, b"k1"), job(2, b"k2")], [job(3, b"k2"), job(4, b"k1")]]
    with caplog.at_level(logging.INFO, "trio_gearman.server.cluster"):
        results = commit_at_once(stores, batches)
    assert "met another member's insertion; trying again" in caplog.text
    owner = {
        bytes(key): bytes(handle)
        for key, handle in query(postgres_dsn, f"SELECT unique_key, handle FROM {table}")
    }
    assert len(owner) == 2
    for batch, coalesced in zip(batches, results, strict=True):
        for stored in batch:
            assert coalesced.get(stored.handle, stored.handle) == owner[stored.unique]
    # The member that gave way got the other's handles for both keys.
    assert sorted(len(coalesced) for coalesced in results) == [0, 2]
