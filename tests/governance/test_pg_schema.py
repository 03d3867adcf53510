"""PostgreSQL state stores create their tables once per process, not on every connection, and
create them again when they were dropped under a running process."""

from __future__ import annotations

import psycopg
import pytest

from flagwarden.governance import sql_store
from flagwarden.governance.sql_store import PostgresStateStore
from flagwarden.governance.state import FlagState


@pytest.fixture
def ddl_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times the tables were created (the real function, counted)."""
    calls = [0]
    real = sql_store.create_tables

    def counted(*args: object) -> None:
        calls[0] += 1
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sql_store, "create_tables", counted)
    return calls


def test_tables_are_created_once_per_process(pg_url: str, ddl_count: list[int]):
    stores = [PostgresStateStore(pg_url) for _ in range(5)]
    try:
        for i, store in enumerate(stores):
            assert store.load("flag") is None or store.load("flag").version == i
            state = store.load("flag") or FlagState("flag")
            assert store.compare_and_set(state.changed(actor="t", reason="t", stage=1.0 + i))
            store.close()  # the next store connects afresh
        assert ddl_count == [1]
    finally:
        for store in stores:
            store.close()


def test_tables_dropped_under_a_running_process_are_created_again(pg_url: str, ddl_count):
    store = PostgresStateStore(pg_url)
    try:
        assert store.compare_and_set(FlagState("flag").changed(actor="t", reason="t", stage=5.0))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE flagwarden_state, flagwarden_outbox")
        assert store.load("flag") is None  # no error: created again, empty
        other = PostgresStateStore(pg_url)
        assert other.load("flag") is None
        other.close()
        assert ddl_count[0] == 2
    finally:
        store.close()


def test_a_lost_connection_reconnects_without_the_ddl(pg_url: str, ddl_count: list[int]):
    """A PostgreSQL restart drops every connection: the reconnect must not queue on the DDL."""
    store = PostgresStateStore(pg_url)
    try:
        assert store.compare_and_set(FlagState("flag").changed(actor="t", reason="t", stage=5.0))
        pid = store._conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sql_store.StateStoreUnavailable):
            store.load("flag")  # the dropped connection is seen once
        loaded = store.load("flag")  # and reconnected
        assert loaded is not None and loaded.stage == 5.0
        assert ddl_count == [1]
    finally:
        store.close()
