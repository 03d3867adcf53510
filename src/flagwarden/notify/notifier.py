"""The notifier: a bounded queue of deliveries and one supervised thread that posts them.

``publish`` never blocks and never raises: it renders one message per target that wants the
event and queues it (a full queue drops it, counted as failed). The thread
(``flagwarden-notify``, :func:`flagwarden.background.run_supervised`, started at the first
message) posts the message that is due first; a retry is scheduled, not slept, so a webhook
that is down does not hold up the others beyond one attempt's timeout. ``close`` gives the
queue at most ``timeout`` seconds to drain (a CLI exits soon after a kill even when a
webhook is down), then counts and logs what was not delivered.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flagwarden.background import run_supervised
from flagwarden.config import NotifyTarget
from flagwarden.logs import get_logger
from flagwarden.notify import messages
from flagwarden.notify.delivery import make_opener, post, retry_delay
from flagwarden.telemetry.metrics import NOTIFICATIONS_FAILED, NOTIFICATIONS_SENT

__all__ = ["CLOSE_TIMEOUT", "NOTIFY_THREAD", "QUEUE_SIZE", "Notifier"]

_log = get_logger("flagwarden.notify")

NOTIFY_THREAD = "flagwarden-notify"
CLOSE_TIMEOUT = 3.0  # seconds close() lets the queue drain (a CLI exits this soon after a kill)
QUEUE_SIZE = 1000  # messages waiting (for delivery or a retry); more are dropped
_IDLE = 1.0  # seconds the thread waits for work before a pass ends


@dataclass(eq=False)
class _Delivery:
    target: int
    event: str
    body: bytes
    attempts: int = 0
    settled: bool = False


class Notifier:
    """Webhook notifications to ``targets`` (``notify:`` in flagwarden.yaml)."""

    def __init__(
        self,
        targets: Sequence[NotifyTarget],
        *,
        queue_size: int = QUEUE_SIZE,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.targets = tuple(targets)
        self.labels = tuple(target.label(i) for i, target in enumerate(self.targets))
        self.queue_size = queue_size
        self.close_timeout = close_timeout
        self.dropped = 0  # messages a full (or closed) queue turned away
        self._closed = False
        self._opener = make_opener()
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """A fresh queue and no thread (at start, and in a forked child: the parent's thread
        and its queue stay with the parent, which delivers them)."""
        self._cond = threading.Condition()
        self._pending: list[tuple[float, int, _Delivery]] = []  # a heap by due time
        self._order = itertools.count()
        self._inflight: _Delivery | None = None
        self._deadline: float | None = None  # set by close()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropping = False
        self._pid = os.getpid()

    # -- publishing --------------------------------------------------------------------

    def publish(self, event: str, *, flag: str | None, summary: str, **fields: Any) -> None:
        """Queue ``event`` for every target that wants it (one message per target, however
        many of its events match). Never blocks, never raises."""
        try:
            self._publish(event, flag, summary, fields)
        except Exception as exc:  # a notification never breaks the act it reports
            with contextlib.suppress(Exception):
                _log.error(
                    "flagwarden.notification_failed",
                    target="*",
                    notify_event=event,
                    attempts=0,
                    error=f"{type(exc).__name__}: {exc}"[:200],
                )

    def _publish(self, event: str, flag: str | None, summary: str, fields: dict[str, Any]) -> None:
        if event not in messages.EVENTS:
            raise ValueError(f"unknown notification event {event!r}")
        if os.getpid() != self._pid:  # forked without the at-fork hook (a C extension's fork)
            self._reset()
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        turned_away: list[_Delivery] = []
        for index, target in enumerate(self.targets):
            if not messages.wanted(event, target.events):
                continue
            body = (
                messages.slack_body(event, summary)
                if target.format == "slack"
                else messages.json_body(event, flag, summary, at, fields)
            )
            delivery = _Delivery(index, event, body)
            with self._cond:
                if self._closed or len(self._pending) >= self.queue_size:
                    delivery.settled = True
                    turned_away.append(delivery)
                    continue
                heapq.heappush(self._pending, (time.monotonic(), next(self._order), delivery))
                self._dropping = False
                if self._thread is None:
                    self._thread = run_supervised(NOTIFY_THREAD, self._step, 0.0, self._stop)
                self._cond.notify_all()
        for delivery in turned_away:
            self._dropped(delivery)

    def publish_transition(self, done: Any) -> None:
        """A stored state change (a :class:`~flagwarden.governance.transition.Transition`):
        ``kill`` and ``rollback`` as themselves, every other action as ``transition``."""
        try:
            before, after = done.before.summary(), done.after.summary()
            data: Mapping[str, Any] = {}
            if done.entry is not None and done.entry.records:
                data = done.entry.records[0].get("data") or {}
            actor, reason = done.after.updated_by, done.after.reason
            fields: dict[str, Any] = {
                "actor": actor,
                "reason": reason,
                "action": done.action,
                "before": before,
                "after": after,
                "version": done.after.version,
                "ref": done.after.ref,
            }
            for key in ("violations", "cause", "tick"):
                if key in data:
                    fields[key] = data[key]
            event = done.action if done.action in ("kill", "rollback") else "transition"
            summary = messages.transition_summary(
                done.action, done.before.flag, before, after, actor, reason
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                _log.error("flagwarden.notification_failed", target="*", error=repr(exc)[:200])
            return
        self.publish(event, flag=done.before.flag, summary=summary, **fields)

    def publish_breach(
        self, decision: Mapping[str, Any], *, actor: str, stage: float | None = None
    ) -> None:
        """A watch pass rolled back or paused a flag on a guard breach (``Decision.as_dict()``:
        ``flag``, ``action``, ``detail``, ``guards``)."""
        fields = dict(decision)
        flag = fields.pop("flag", None)
        summary = messages.breach_summary(
            str(flag), str(fields.get("action")), str(fields.get("detail")), stage
        )
        self.publish(
            "breach", flag=flag, summary=summary, actor=actor, reason=fields.get("detail"), **fields
        )

    def on_event(self, event: Any) -> None:
        """An :class:`~flagwarden.events.EventSink` subscriber: outage windows opening
        (``flagwarden.outage_started``) and closing (``flagwarden.outage``)."""
        kind = {"flagwarden.outage_started": "outage_start", "flagwarden.outage": "outage_end"}
        if event.name not in kind:
            return
        fields = dict(event.fields)
        summary = messages.outage_summary(event.name, fields)
        self.publish(kind[event.name], flag=None, summary=summary, **fields)

    # -- delivering --------------------------------------------------------------------

    def _step(self) -> None:
        """One delivery attempt (the message due first), or nothing within a second."""
        with self._cond:
            delivery = None
            while delivery is None:
                if self._stop.is_set():
                    return
                now = time.monotonic()
                if self._pending and self._pending[0][0] <= now:
                    delivery = heapq.heappop(self._pending)[2]
                    if delivery.settled:
                        delivery = None
                    continue
                wait = min(self._pending[0][0] - now, _IDLE) if self._pending else _IDLE
                if not self._cond.wait(wait) and not self._pending:
                    return  # idle: the pass ends (and its health is reported)
            self._inflight = delivery
            deadline = self._deadline
        try:
            self._attempt(delivery, deadline)
        finally:
            with self._cond:
                self._inflight = None
                self._cond.notify_all()

    def _attempt(self, delivery: _Delivery, deadline: float | None) -> None:
        target = self.targets[delivery.target]
        timeout = target.timeout
        if deadline is not None:  # closing: no attempt outlives the close timeout
            timeout = max(0.05, min(timeout, deadline - time.monotonic()))
        delivery.attempts += 1
        outcome = post(self._opener, target.url, delivery.body, timeout)
        error = outcome.error
        with self._cond:
            if delivery.settled:  # close() gave up on it meanwhile, and said so
                return
            if not outcome.ok and outcome.retryable and delivery.attempts <= target.retries:
                due = time.monotonic() + retry_delay(
                    target.backoff, delivery.attempts, outcome.retry_after
                )
                if self._deadline is None or due <= self._deadline:
                    heapq.heappush(self._pending, (due, next(self._order), delivery))
                    return
                error = f"{error}; no time left to retry before close"
            delivery.settled = True
        if outcome.ok:
            self._sent(delivery)
        else:
            self._failed(delivery, error, outcome.status)

    # -- outcomes ----------------------------------------------------------------------

    def _sent(self, delivery: _Delivery) -> None:
        label = self.labels[delivery.target]
        NOTIFICATIONS_SENT.labels(label).inc()
        _log.info(
            "flagwarden.notification_sent",
            target=label,
            notify_event=delivery.event,
            attempts=delivery.attempts,
        )

    def _failed(self, delivery: _Delivery, error: str | None, status: int | None = None) -> None:
        label = self.labels[delivery.target]
        NOTIFICATIONS_FAILED.labels(label).inc()
        _log.error(
            "flagwarden.notification_failed",
            target=label,
            notify_event=delivery.event,
            attempts=delivery.attempts,
            status=status,
            error=error,
        )

    def _dropped(self, delivery: _Delivery) -> None:
        label = self.labels[delivery.target]
        NOTIFICATIONS_FAILED.labels(label).inc()
        self.dropped += 1
        with self._cond:
            said, self._dropping = self._dropping, True
        if not said:  # once per spell of a full queue, not once per message
            _log.warning(
                "flagwarden.notification_dropped",
                target=label,
                notify_event=delivery.event,
                why="the notifier is closed" if self._closed else "the queue is full",
                queue_size=self.queue_size,
            )

    # -- the end -----------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within ``timeout`` seconds (default :data:`CLOSE_TIMEOUT`),
        then stop; what is still undelivered is logged and counted as failed."""
        timeout = self.close_timeout if timeout is None else timeout
        with self._cond:
            if self._closed:
                return
            self._closed = True
            deadline = self._deadline = time.monotonic() + max(timeout, 0.0)
            # Retries due after the deadline will not happen: say so now, not at the deadline.
            late = [d for due, _, d in self._pending if due > deadline and not d.settled]
            for delivery in late:
                delivery.settled = True
            self._pending = [item for item in self._pending if not item[2].settled]
            heapq.heapify(self._pending)
            self._cond.notify_all()
        for delivery in late:
            self._failed(
                delivery, f"not delivered: its next retry was due after close ({timeout:g}s)"
            )
        with self._cond:
            while (self._pending or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.0))
            left = [d for _, _, d in self._pending if not d.settled]
            inflight = self._inflight
            if inflight is not None and not inflight.settled:
                left.append(inflight)
            for delivery in left:
                delivery.settled = True
            self._pending = []
            self._stop.set()
            self._cond.notify_all()
        for delivery in left:
            said = f"not delivered within the close timeout ({timeout:g}s)"
            if delivery is inflight:
                said = f"still being sent at the close timeout ({timeout:g}s): outcome unknown"
            self._failed(delivery, said)
        _live.discard(self)

    def after_fork_in_child(self) -> None:
        self._reset()


_live: weakref.WeakSet[Notifier] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for notifier in list(_live):
        with contextlib.suppress(Exception):
            notifier.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
