"""The state store in Redis: many machines, changes announced on a pub/sub channel."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from flagwarden.governance.state import (
    WORKER_TTL,
    ChangeCallback,
    ErrorCallback,
    FlagState,
    OutboxEntry,
    StateCallback,
    StateStore,
    StateStoreUnavailable,
    keep_listening,
    new_generation,
    parse_outbox,
    parse_states,
)
from flagwarden.storage import store_failure

__all__ = ["RedisStateStore"]


# -- Redis -------------------------------------------------------------------------------

# KEYS: state hash, flag set, channel, generation, outbox hash, state channel.
# ARGV: version, state json, flag, a new generation id (kept only if there is none: a store
# that lost its data starts a new generation), outbox ref ("" for none), outbox json, the
# ref the stored change must have ("*": any).
# Two announcements, in this order (a subscriber gets them in publish order): the new state
# itself on the state channel (a worker applies it at once, without a read), then the flag's
# name on the channel every version of flagwarden listens to (a worker reads the flag: the
# store's answer, authoritative, follows every push).
_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
if ARGV[7] ~= '*' then
  local stored, ref = redis.call('HGET', KEYS[1], 'data'), ''
  if stored then
    local ok, doc = pcall(cjson.decode, stored)
    if ok and type(doc) == 'table' and type(doc['ref']) == 'string' then ref = doc['ref'] end
  end
  if ref ~= ARGV[7] then return 0 end
end
redis.call('SET', KEYS[4], ARGV[4], 'NX')
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[5], ARGV[6]) end
local pushed = {flag = ARGV[3], generation = redis.call('GET', KEYS[4]), data = ARGV[2]}
redis.call('PUBLISH', KEYS[6], cjson.encode(pushed))
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""

# KEYS: the kind's hash, channel. ARGV: key, doc, "1" if something is expected, expected doc,
# flag to announce ("" for none).
_PUT_DOCUMENT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' then
  if current ~= ARGV[4] then return 0 end
elseif current then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[5] ~= '' then redis.call('PUBLISH', KEYS[2], ARGV[5]) end
return 1
"""


class RedisStateStore(StateStore):
    """Many machines; changes announced on a pub/sub channel."""

    def __init__(self, url: str, prefix: str = "flagwarden") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        try:
            self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        except ValueError as exc:  # a URL redis-py cannot read (a port that is not a number)
            raise StateStoreUnavailable(store_failure(url, exc)) from None
        self._cas = self._redis.register_script(_CAS_SCRIPT)
        self._put_document = self._redis.register_script(_PUT_DOCUMENT_SCRIPT)
        self._channel = f"{prefix}:state-changes"
        self._state_channel = f"{prefix}:state-pushed"
        self._generation = f"{prefix}:generation"
        self._outbox = f"{prefix}:outbox"
        self._workers = f"{prefix}:workers"
        self._stop = threading.Event()
        self._pubsub: Any = None

    def _key(self, flag: str) -> str:
        return f"{self.prefix}:state:{flag}"

    def _call(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise StateStoreUnavailable(store_failure(self.url, exc)) from None

    def _with_generation(
        self, raws: dict[str, bytes | None], generation: bytes | None
    ) -> dict[str, FlagState]:
        self.last_generation = generation.decode() if generation else ""
        states, self.last_unreadable = parse_states(
            ((flag, raw) for flag, raw in raws.items() if raw), self.last_generation
        )
        return states

    def load(self, flag: str) -> FlagState | None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hget(self._key(flag), "data")
        pipe.get(self._generation)
        raw, generation = self._call(pipe.execute)
        return self._with_generation({flag: raw}, generation).get(flag)

    def load_all(self) -> dict[str, FlagState]:
        flags = sorted(
            f.decode() for f in self._call(lambda: self._redis.smembers(f"{self.prefix}:flags"))
        )
        pipe = self._redis.pipeline(transaction=True)
        for flag in flags:
            pipe.hget(self._key(flag), "data")
        pipe.get(self._generation)
        *raws, generation = self._call(pipe.execute)
        return self._with_generation(dict(zip(flags, raws, strict=True)), generation)

    def compare_and_set(
        self,
        new: FlagState,
        outbox: OutboxEntry | None = None,
        *,
        previous: FlagState | None = None,
    ) -> bool:
        keys = [
            self._key(new.flag),
            f"{self.prefix}:flags",
            self._channel,
            self._generation,
            self._outbox,
            self._state_channel,
        ]
        args: list[str | int] = [
            new.version,
            new.to_json(),
            new.flag,
            new_generation(),
            outbox.ref if outbox else "",
            outbox.to_json() if outbox else "",
            "*" if previous is None else previous.ref or "",
        ]
        return bool(self._call(lambda: self._cas(keys=keys, args=args)))

    def pending_outbox(self) -> list[OutboxEntry]:
        return parse_outbox(self._call(lambda: self._redis.hvals(self._outbox)))

    def clear_outbox(self, ref: str) -> None:
        self._call(lambda: self._redis.hdel(self._outbox, ref))

    def heartbeat(self, worker: str, report: dict[str, Any]) -> None:
        doc = json.dumps({**report, "_beat": time.time()}, sort_keys=True, default=str)
        self._call(lambda: self._redis.hset(self._workers, worker, doc))

    def workers(self) -> dict[str, dict[str, Any]]:
        raws = self._call(lambda: self._redis.hgetall(self._workers))
        now, found, gone = time.time(), {}, []
        for worker, raw in raws.items():
            doc = json.loads(raw)
            age = now - float(doc.pop("_beat", 0))
            if age <= WORKER_TTL:
                found[worker.decode()] = doc
            elif age > WORKER_TTL * 10:
                gone.append(worker)
        if gone:
            self._call(lambda: self._redis.hdel(self._workers, *gone))
        return dict(sorted(found.items()))

    def documents(self, kind: str) -> dict[str, str]:
        raws = self._call(lambda: self._redis.hgetall(f"{self.prefix}:documents:{kind}"))
        return {key.decode(): raw.decode() for key, raw in sorted(raws.items())}

    def put_document(
        self, kind: str, key: str, doc: str, *, expected: str | None, announce: str = ""
    ) -> bool:
        keys = [f"{self.prefix}:documents:{kind}", self._channel]
        args = [key, doc, "0" if expected is None else "1", expected or "", announce]
        return bool(self._call(lambda: self._put_document(keys=keys, args=args)))

    def watch(
        self,
        callback: ChangeCallback,
        on_error: ErrorCallback | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        import redis

        state_channel = self._state_channel.encode()

        def listen() -> None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            pubsub.subscribe(self._channel, *([self._state_channel] if on_state else []))
            callback(None)  # anything published while we were away
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if not message or message["type"] != "message":
                    continue
                if message["channel"] != state_channel:
                    callback(message["data"].decode())
                elif on_state is not None:
                    pushed = self._pushed(message["data"])
                    if pushed is not None:
                        on_state(pushed)

        keep_listening(
            "flagwarden-state-redis",
            self.url,
            self._stop,
            listen,
            (redis.RedisError, OSError, ValueError),
            on_error,
        )

    @staticmethod
    def _pushed(raw: bytes) -> FlagState | None:
        """The state a change announced; None for a message that cannot be read (the read
        that the flag's name triggers right after it decides alone)."""
        try:
            doc = json.loads(raw)
            states, _ = parse_states([(doc["flag"], doc["data"])], str(doc["generation"] or ""))
        except (ValueError, KeyError, TypeError):
            return None
        return states.get(doc["flag"])

    def close(self) -> None:
        self._stop.set()
        self._redis.close()
