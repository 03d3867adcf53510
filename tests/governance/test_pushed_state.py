"""Redis pushes each change's new state with its notification; a worker takes a push only when
it cannot be stale news, and the read the flag's name triggers right after decides the rest."""

from __future__ import annotations

import json
import time

import redis

from flagwarden.governance.cache import StateCache
from flagwarden.governance.state import FlagState, open_state_store
from tests.conftest import POLICY, wait_for

FLAG = POLICY["flag"]


def test_a_change_publishes_its_state_then_the_flags_name(redis_url: str):
    store = open_state_store(redis_url)
    prefix = redis_url.rsplit("prefix=", 1)[1]
    pubsub = redis.Redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(f"{prefix}:state-pushed", f"{prefix}:state-changes")
    killed = FlagState(FLAG).changed(actor="t", reason="t", killed=True)
    assert store.compare_and_set(killed)
    messages: list[dict] = []
    deadline = time.monotonic() + 10
    while len(messages) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)  # None for the subscribe confirmations
        if message is not None:
            messages.append(message)
    assert len(messages) == 2, messages
    pushed, name = messages
    assert pushed["channel"] == f"{prefix}:state-pushed".encode()
    doc = json.loads(pushed["data"])
    assert doc["flag"] == FLAG and isinstance(doc["generation"], str) and doc["generation"]
    assert FlagState.from_json(doc["data"]).killed is True
    assert (name["channel"], name["data"]) == (f"{prefix}:state-changes".encode(), FLAG.encode())
    pubsub.close()
    store.close()


def test_a_push_is_taken_only_when_it_cannot_be_stale(redis_url: str):
    store = open_state_store(redis_url)
    cache = StateCache(store, [FLAG])
    v1 = FlagState(FLAG).changed(actor="t", reason="t", stage=5)
    assert store.compare_and_set(v1)
    cache.refresh(FLAG)
    current = cache.get(FLAG)
    generation = current.generation
    assert current.version == 1 and generation

    older = FlagState(FLAG, stage=50, version=0, generation=generation)
    cache.take(older)  # a lower version of the same generation, not a kill: the read decides
    assert cache.get(FLAG) is current

    newer = FlagState(FLAG, stage=25, version=2, generation=generation)
    cache.take(newer)
    assert cache.get(FLAG) is newer

    # A kill delayed past a later change (or from a store restored from an older copy) is
    # not taken from the push: the read that follows decides.
    stale_kill = FlagState(FLAG, stage=5, killed=True, version=1, generation=generation)
    cache.take(stale_kill)
    assert cache.get(FLAG) is newer

    other = FlagState(FLAG, stage=1, version=1, generation="another-store")
    cache.take(other)  # another generation: newer news
    assert cache.get(FLAG) is other

    cache.refresh(FLAG)  # the store's answer wins whatever its version
    assert cache.get(FLAG).version == 1 and cache.get(FLAG).stage == 5
    cache.close()


def test_a_worker_takes_the_pushed_state_and_then_the_stores_answer(redis_url: str):
    """A push alone changes what the worker serves; the name that follows makes it read the
    store, whose answer wins (here the push was not stored: the read undoes it)."""
    store = open_state_store(redis_url)
    prefix = redis_url.rsplit("prefix=", 1)[1]
    assert store.compare_and_set(FlagState(FLAG).changed(actor="t", reason="t", stage=5))
    cache = StateCache(store, [FLAG])
    cache.start()
    wait_for(lambda: cache.get(FLAG).stage == 5)
    stored = cache.get(FLAG)
    kill = FlagState(FLAG, stage=5, killed=True, version=stored.version + 1)
    push = {"flag": FLAG, "generation": stored.generation, "data": kill.to_json()}
    publisher = redis.Redis()
    wait_for(lambda: publisher.pubsub_numsub(f"{prefix}:state-pushed")[0][1] == 1)
    publisher.publish(f"{prefix}:state-pushed", json.dumps(push))
    wait_for(lambda: cache.get(FLAG).killed)  # taken from the push: the store never had it
    publisher.publish(f"{prefix}:state-changes", FLAG)
    wait_for(lambda: not cache.get(FLAG).killed)  # the read: the store's answer wins
    assert cache.get(FLAG).version == stored.version
    publisher.close()
    cache.close()
