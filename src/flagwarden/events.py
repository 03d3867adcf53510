"""One sink for flagwarden's operational events (outage windows, provider state, snapshots).

Every event is logged through structlog and handed to the subscribers; the audit log is one.
A failing subscriber is logged and skipped: operational bookkeeping never breaks a pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flagwarden.logs import get_logger

__all__ = ["Event", "EventSink", "OutageWindow"]

_log = get_logger("flagwarden")


@dataclass(frozen=True)
class Event:
    name: str
    at: datetime
    fields: Mapping[str, Any]


@dataclass
class OutageWindow:
    """The time a vendor could not answer, and what answered instead."""

    provider: str
    cause: str
    started_at: datetime
    ended_at: datetime | None = None
    served: dict[str, int] = field(default_factory=dict)

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    def as_fields(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "cause": self.cause,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_seconds": self.duration_seconds,
            "served": dict(self.served),
        }


Subscriber = Callable[[Event], None]


class EventSink:
    """Fan-out of structured operational events to the log and to subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber`` with every event from now on; returns the unsubscribe function."""
        with self._lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def emit(self, name: str, *, level: str = "info", **fields: Any) -> Event:
        event = Event(name=name, at=datetime.now(UTC), fields=fields)
        getattr(_log, level)(name, **fields)
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:
                _log.exception("flagwarden.event_subscriber_failed", event=name)
        return event
