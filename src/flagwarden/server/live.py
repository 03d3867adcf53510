"""Live updates for open dashboards: server-sent events fed by the state store's own change
notification (Redis pub/sub, PostgreSQL LISTEN/NOTIFY, SQLite's poll), whoever made the change.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["Broadcaster"]

KEEPALIVE_SECONDS = 15.0
_QUEUE = 64  # events a slow page may fall behind by; it then gets one "reload everything"


class Broadcaster:
    """Fan-out from any thread to every open event stream of one event loop; :meth:`close`
    ends every stream (the server is stopping)."""

    def __init__(self) -> None:
        self._streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def listeners(self) -> int:
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """End every open stream cleanly, and any opened from now on (thread-safe)."""
        with self._lock:
            self._closed = True
            streams = list(self._streams)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for queue in streams:
            loop.call_soon_threadsafe(_end, queue)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to every stream (thread-safe, never blocks)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with self._lock:
            streams = list(self._streams)
        for queue in streams:
            loop.call_soon_threadsafe(_offer, queue, event)

    async def stream(self, gone: Callable[[], Any]) -> AsyncIterator[str]:
        """Server-sent events until the client goes (``await gone()`` is true) or the
        broadcaster closes."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_QUEUE)
        with self._lock:
            if self._closed:
                return
            self._streams.add(queue)
        try:
            yield "retry: 2000\n\n"
            while not await gone():
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if event is None:  # closed: the server is stopping
                    return
                yield f"event: change\ndata: {json.dumps(event, sort_keys=True)}\n\n"
        finally:
            with self._lock:
                self._streams.discard(queue)


def _offer(queue: asyncio.Queue[dict[str, Any] | None], event: dict[str, Any]) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:  # a page that stopped reading: tell it to reload all
        while not queue.empty():
            if queue.get_nowait() is None:  # unless it is ending anyway
                queue.put_nowait(None)
                return
        queue.put_nowait({"flags": [], "reload": True})


def _end(queue: asyncio.Queue[dict[str, Any] | None]) -> None:
    while not queue.empty():  # what it has not read yet no longer matters
        queue.get_nowait()
    queue.put_nowait(None)
