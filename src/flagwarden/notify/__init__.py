"""Webhook notifications (``notify:`` in flagwarden.yaml): who hears about kills, rollbacks,
every transition, guard breaches, approvals and vendor outage windows.

``Notifier(targets).publish(event, flag=..., summary=..., **fields)`` never blocks and never
raises; one background thread posts JSON (``format: json``) or a Slack message
(``format: slack``) with retries. A webhook URL is a credential: logs, errors and the metrics
(``flagwarden_notifications_sent_total{target}``, ``flagwarden_notifications_failed_total
{target}``) name a target by its ``name`` (else ``notify.INDEX``), never by its URL.
"""

from __future__ import annotations

from flagwarden.notify.messages import EVENTS
from flagwarden.notify.notifier import CLOSE_TIMEOUT, NOTIFY_THREAD, QUEUE_SIZE, Notifier

__all__ = ["CLOSE_TIMEOUT", "EVENTS", "NOTIFY_THREAD", "QUEUE_SIZE", "Notifier"]
