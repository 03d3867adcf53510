"""A kill always wins: a store that lost its data, or was restored from an older copy, counts
versions from 1 again, and workers whose cache holds a higher version must still follow it."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from flagwarden.config import load_settings
from flagwarden.governance.cache import StateCache
from flagwarden.governance.project import Governance
from flagwarden.governance.state import open_state_store
from tests.conftest import POLICY, Project, governed_project, run_cli, wait_for
from tests.governance.worker import spawn

FLAG = POLICY["flag"]


@contextlib.contextmanager
def governed_cache(
    config: Path, url: str, flags: Iterable[str] = (FLAG,), *, reload_interval: float = 3600
) -> Iterator[tuple[Governance, StateCache]]:
    """The project's governance (to make changes) and a worker's cache of ``url`` (to see
    them), closed afterwards; the long default reload leaves refreshing to the test."""
    gov = Governance.open(load_settings(config))
    store = open_state_store(url, config.parent)
    cache = StateCache(store, flags, reload_interval=reload_interval)
    try:
        yield gov, cache
    finally:
        cache.close()
        gov.close()


def _sqlite_path(url: str) -> Path:
    return Path(url[len("sqlite:///") :])


def losing(state_url: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(keep, lose): ``keep`` remembers the store as it is now (for SQLite: a copy made with
    SQLite's backup API); ``lose`` takes the data away as an operator's accident would."""
    if state_url.startswith("sqlite"):
        path = _sqlite_path(state_url)
        copy = path.with_suffix(".copy")

        def keep() -> None:
            with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)

        def lose() -> None:  # restored from the older copy, online
            with sqlite3.connect(copy) as src, sqlite3.connect(path) as dst:
                src.backup(dst)

        return keep, lose
    if state_url.startswith("redis"):
        prefix = state_url.rsplit("prefix=", 1)[1]

        def lose() -> None:  # restarted without persistence: everything of ours is gone
            client = redis.Redis()
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)

        return lambda: None, lose

    def lose() -> None:  # the table dropped (and recreated by the next writer)
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute("DROP TABLE flagwarden_state")

    return lambda: None, lose


def churn(config: Path, n: int) -> None:
    """Versions go up: pause and resume ``n`` times."""
    for i in range(n):
        for action in ("pause", "resume"):
            result = run_cli(config, action, FLAG, "--reason", f"churn {i}")
            assert result.returncode == 0, result.stderr


def test_the_cache_follows_a_store_that_lost_its_data(project: Project, state_url: str):
    """In one process, deterministic: the store's lower version replaces the cached one."""
    config = governed_project(project, state=state_url)
    keep, lose = losing(state_url)
    with governed_cache(config, state_url) as (gov, cache):
        gov.rollout().advance(FLAG, actor="t", reason="go", to=50, force=True)
        keep()
        for i in range(3):
            gov.rollout().pause(FLAG, actor="t", reason=f"p{i}")
            gov.rollout().resume(FLAG, actor="t", reason=f"r{i}")
        cache.refresh(None)
        assert (cache.get(FLAG).version, cache.get(FLAG).stage) == (7, 50)
        generation = cache.generation
        lose()
        fresh = Governance.open(load_settings(config))  # another process: the CLI's kill
        try:
            done = fresh.rollout().kill(FLAG, actor="t", reason="after the wipe")
        finally:
            fresh.close()
        assert done.after.version < 7
        cache.refresh(FLAG)
        assert cache.get(FLAG).killed
        cache.refresh(None)
        assert cache.get(FLAG).killed and cache.get(FLAG).version == done.after.version
        if not state_url.startswith("sqlite"):  # a restored copy keeps its generation
            assert cache.generation and cache.generation != generation


def test_a_full_reload_of_an_emptied_store_serves_control(project: Project, state_url: str):
    config = governed_project(project, state=state_url)
    _, lose = losing(state_url)
    with governed_cache(config, state_url) as (gov, cache):
        gov.rollout().advance(FLAG, actor="t", reason="go", to=50, force=True)
        cache.refresh(None)
        assert cache.get(FLAG).stage == 50
        if state_url.startswith("sqlite"):  # the file deleted: the store reopens a new one
            for suffix in ("", "-wal", "-shm"):
                Path(f"{_sqlite_path(state_url)}{suffix}").unlink(missing_ok=True)
        else:
            lose()

        def reloaded() -> bool:
            # A dropped table is an error for one read (the last state is kept), then the
            # reconnection recreates it empty.
            cache.refresh(None)
            return cache.healthy

        wait_for(reloaded, timeout=5)
        state = cache.get(FLAG)  # the store no longer knows the flag: stage 0, control
        assert (state.stage, state.killed, state.version) == (0, False, 0)


@pytest.mark.slow
def test_a_kill_after_the_store_lost_its_data_reaches_every_worker(
    project: Project, state_url: str
):
    config = governed_project(project, state=state_url)
    keep, lose = losing(state_url)
    result = run_cli(config, "advance", FLAG, "--to", "100", "--force", "--reason", "all in")
    assert result.returncode == 0, result.stderr
    keep()
    churn(config, 2)  # the workers will cache version 5
    workers = spawn(config, 2)
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        lose()
        killed_at = time.time()
        result = run_cli(config, "kill", FLAG, "--reason", "after the wipe")
        assert result.returncode == 0, result.stderr
        # A lower version than the workers hold (5): the store restored at 1, or emptied.
        lower = 2 if state_url.startswith("sqlite") else 1
        assert result.stdout.rstrip().endswith(f"(version {lower})"), result.stdout
        for worker in workers:
            line = worker.stdout.readline().split()
            assert line and line[0] == "control", line
            # By the store's change notification, not the 10 s backstop.
            assert float(line[1]) - killed_at < 5.0
            worker.wait(30)
    finally:
        for worker in workers:
            worker.kill()


def test_status_lists_what_each_worker_sees(project: Project, state_url: str):
    config = governed_project(project, state=state_url)
    assert (
        run_cli(config, "advance", FLAG, "--to", "100", "--force", "--reason", "go").returncode == 0
    )
    workers = spawn(config, 1)
    try:
        assert workers[0].stdout.readline().strip() == "ready"

        def seen() -> list[dict[str, object]]:
            import json

            result = run_cli(config, "status", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["workers"]

        found = wait_for(seen, timeout=20, interval=0.5)
        (report,) = found
        assert report["versions"][FLAG] == 1 and report["generation"]
        assert report["behind"] == [] and report["worker"].endswith(f"-{workers[0].pid}")
    finally:
        for worker in workers:
            worker.kill()


def _corrupt_row(state_url: str, project: Project, flag: str, data: str) -> None:
    """Write ``data`` as ``flag``'s stored state, bypassing flagwarden (a bad restore, a
    hand edit, a newer version's fields)."""
    if state_url.startswith("sqlite"):
        with sqlite3.connect(_sqlite_path(state_url)) as conn:
            conn.execute(
                "INSERT INTO flagwarden_state (flag, version, data) VALUES (?, 1, ?) "
                "ON CONFLICT (flag) DO UPDATE SET data = excluded.data",
                (flag, data),
            )
    elif state_url.startswith("redis"):
        prefix = state_url.rsplit("prefix=", 1)[1]
        client = redis.Redis()
        client.hset(f"{prefix}:state:{flag}", mapping={"version": 1, "data": data})
        client.sadd(f"{prefix}:flags", flag)
    else:
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO flagwarden_state (flag, version, data) VALUES (%s, 1, %s) "
                "ON CONFLICT (flag) DO UPDATE SET data = excluded.data",
                (flag, data),
            )


def test_one_unreadable_state_row_does_not_keep_a_kill_out(project: Project, state_url: str):
    config = governed_project(project, state=state_url)
    with governed_cache(config, state_url, [FLAG, "other", "newer"]) as (gov, cache):
        gov.rollout().advance(FLAG, actor="t", reason="go", to=50, force=True)
        _corrupt_row(state_url, project, "other", "{not json")
        newer = '{"flag": "newer", "stage": 5, "version": 1, "field_from_the_future": 1}'
        _corrupt_row(state_url, project, "newer", newer)
        cache.refresh(None)
        assert cache.get(FLAG).stage == 50
        assert cache.get("newer").stage == 5  # fields it does not know are not its business
        gov.rollout().kill(FLAG, actor="t", reason="nulls")
        cache.refresh(None)
        assert cache.get(FLAG).killed and cache.healthy
        assert cache.store is not None and "other" in cache.store.last_unreadable


def test_a_write_this_process_made_never_undoes_a_later_one(project: Project, state_url: str):
    """The cache takes its own write only if no read that started later got there first."""
    config = governed_project(project, state=state_url)
    with governed_cache(config, state_url) as (gov, cache):
        first = gov.rollout().advance(FLAG, actor="t", reason="go", to=50, force=True).after
        ticket = cache.ticket()  # taken before the write, as Rollout does
        gov.rollout().kill(FLAG, actor="other process", reason="nulls")
        cache.refresh(FLAG)  # the other process's kill arrives first
        cache.put(first, ticket)  # then this process's older write
        assert cache.get(FLAG).killed


def test_a_recreated_sqlite_file_is_followed(project: Project):
    """The store file deleted and created anew (with its -wal and -shm): an open connection
    keeps reading the deleted file, so the worker notices the new one (its inode), reopens
    and follows a kill written there. (Replacing a live WAL-mode file by renaming another
    over it is unsafe for SQLite itself; restore with its backup API, as the test above.)"""
    url = f"sqlite:///{project.root}/.flagwarden/state.db"
    config = governed_project(project, state=url)
    path = _sqlite_path(url)
    assert (
        run_cli(config, "advance", FLAG, "--to", "50", "--force", "--reason", "go").returncode == 0
    )
    store = open_state_store(url, project.root)
    cache = StateCache(store, [FLAG], reload_interval=3600)  # no backstop: the poller must
    try:
        cache.start()
        assert cache.get(FLAG).stage == 50
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        result = run_cli(config, "kill", FLAG, "--reason", "after the store was recreated")
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith("(version 1)")
        wait_for(lambda: cache.get(FLAG).killed, timeout=5)
    finally:
        cache.close()


def test_the_backstop_reload_catches_a_change_whose_notification_was_lost(
    project: Project, redis_url: str
):
    """Pub/sub drops messages (a subscriber reconnecting, a full output buffer): a kill
    written without its announcement still arrives by the periodic full reload."""
    config = governed_project(project, state=redis_url)
    with governed_cache(config, redis_url, reload_interval=0.3) as (gov, cache):
        live = gov.rollout().advance(FLAG, actor="t", reason="go", to=50, force=True).after
        cache.start()
        assert cache.get(FLAG).stage == 50
        killed = live.changed(actor="t", reason="kill, unannounced", killed=True)
        prefix = redis_url.rsplit("prefix=", 1)[1]
        redis.Redis().hset(
            f"{prefix}:state:{FLAG}", mapping={"version": killed.version, "data": killed.to_json()}
        )  # no PUBLISH: the notification is lost
        wait_for(lambda: cache.get(FLAG).killed, timeout=3)
