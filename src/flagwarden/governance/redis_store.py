"""The state store in Redis: many machines, changes announced on a pub/sub channel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from flagwarden.governance.state import (
    ChangeCallback,
    ErrorCallback,
    FlagState,
    StateStore,
    StateStoreUnavailable,
    keep_listening,
)
from flagwarden.storage import store_failure

__all__ = ["RedisStateStore"]


# -- Redis -------------------------------------------------------------------------------

_CAS_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) - 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'data', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[3])
return 1
"""


class RedisStateStore(StateStore):
    """Many machines; changes announced on a pub/sub channel."""

    def __init__(self, url: str, prefix: str = "flagwarden") -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._cas = self._redis.register_script(_CAS_SCRIPT)
        self._channel = f"{prefix}:state-changes"
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

    def load(self, flag: str) -> FlagState | None:
        raw = self._call(lambda: self._redis.hget(self._key(flag), "data"))
        return FlagState.from_json(raw) if raw else None

    def load_all(self) -> dict[str, FlagState]:
        flags = sorted(
            f.decode() for f in self._call(lambda: self._redis.smembers(f"{self.prefix}:flags"))
        )
        if not flags:
            return {}
        pipe = self._redis.pipeline()
        for flag in flags:
            pipe.hget(self._key(flag), "data")
        raws = self._call(pipe.execute)
        return {
            flag: FlagState.from_json(raw) for flag, raw in zip(flags, raws, strict=True) if raw
        }

    def compare_and_set(self, new: FlagState) -> bool:
        keys = [self._key(new.flag), f"{self.prefix}:flags", self._channel]
        args: list[str | int] = [new.version, new.to_json(), new.flag]
        return bool(self._call(lambda: self._cas(keys=keys, args=args)))

    def watch(self, callback: ChangeCallback, on_error: ErrorCallback | None = None) -> None:
        import redis

        def listen() -> None:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            pubsub.subscribe(self._channel)
            callback(None)  # anything published while we were away
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message["type"] == "message":
                    callback(message["data"].decode())

        keep_listening(
            "flagwarden-state-redis",
            self.url,
            self._stop,
            listen,
            (redis.RedisError, OSError, ValueError),
            on_error,
        )

    def close(self) -> None:
        self._stop.set()
        self._redis.close()
