"""What a notification says: the JSON document, Slack's one line, and the summaries of
transitions, guard breaches and outage windows.

A payload is built when the act happens (in the caller's thread), so ``at`` is the time of
the act, not of its delivery.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, get_args

from flagwarden.config import NotifyEvent
from flagwarden.humanize import duration, percent

__all__ = [
    "EVENTS",
    "breach_summary",
    "json_body",
    "outage_summary",
    "slack_body",
    "slack_text",
    "transition_summary",
    "wanted",
]

EVENTS: tuple[str, ...] = get_args(NotifyEvent)
# A kill and a rollback are transitions too: a target that wants ``transition`` hears them.
_ALSO = {"kill": "transition", "rollback": "transition"}
# Slack shows at most 40,000 characters; a notification is one line a person reads.
_SLACK_MAX = 3000
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def wanted(event: str, events: Sequence[str] | None) -> bool:
    """Whether a target that listens to ``events`` (None: all) hears ``event``."""
    return events is None or event in events or _ALSO.get(event, "") in events


def _plain(value: Any) -> Any:
    """``value`` as JSON can carry it: no NaN or infinity, dates as ISO text, the rest as text."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def json_body(
    event: str, flag: str | None, summary: str, at: str, fields: Mapping[str, Any]
) -> bytes:
    """``{"event", "flag", "summary", "at", "actor", "reason", ...fields}`` as UTF-8 JSON."""
    doc: dict[str, Any] = {
        "event": event,
        "flag": flag,
        "summary": summary,
        "at": at,
        "actor": fields.get("actor"),
        "reason": fields.get("reason"),
    }
    for key, value in fields.items():
        doc.setdefault(key, value)  # the fields never overwrite what the act is
    return json.dumps(_plain(doc), ensure_ascii=False, allow_nan=False).encode("utf-8")


def slack_text(event: str, summary: str) -> str:
    """One line, escaped as Slack asks (``&``, ``<``, ``>``): a reason cannot mention
    ``<!channel>``, a user or a group, nor make a link."""
    line = _BREAKS.sub(" ", f"flagwarden {event}: {summary}").strip()
    if len(line) > _SLACK_MAX:
        line = line[: _SLACK_MAX - 1] + "…"
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(event: str, summary: str) -> bytes:
    """A Slack incoming-webhook message: ``{"text": "<one line>"}``."""
    return json.dumps({"text": slack_text(event, summary)}, ensure_ascii=False).encode("utf-8")


def transition_summary(
    action: str,
    flag: str,
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    actor: str | None,
    reason: str | None,
) -> str:
    """``new-scoring-model killed by alice (control for everyone): null spike``."""
    was, now = percent(before.get("stage")), percent(after.get("stage"))
    what = {
        "advance": f"advanced from {was} to {now}",
        "rollback": f"rolled back from {was} to {now}"
        + (" (control for everyone)" if after.get("stage") == 0 else ""),
        "kill": "killed (control for everyone)",
        "revive": f"revived (stage {now} applies again"
        + (", still paused)" if after.get("paused") else ")"),
        "pause": f"paused at {now}",
        "resume": f"resumed at {now}" + (" (still killed)" if after.get("killed") else ""),
    }.get(action, action)
    return f"{flag} {what} by {actor or 'someone'}: {reason or '(no reason)'}"


def breach_summary(flag: str, action: str, detail: str, stage: float | None) -> str:
    """``new-scoring-model: guard breach: null-rate=0.5 (max 0.02); rolled back to 0%``."""
    done = (
        "rolled back to 0% (control for everyone)"
        if action == "rollback"
        else f"paused at {percent(stage)}"
    )
    return f"{flag}: {detail}; {done}"


def outage_summary(name: str, fields: Mapping[str, Any]) -> str:
    """A vendor outage window opening (``flagwarden.outage_started``) or closing."""
    provider = fields.get("provider") or "the vendor"
    if name == "flagwarden.outage_started":
        fallback = {
            "vendor_cache": "its in-memory cache",
            "snapshot": "the last-known-good snapshot",
            "default": "the callers' defaults",
        }.get(str(fields.get("fallback")), str(fields.get("fallback")))
        return f"{provider} is out ({fields.get('cause')}); answering from {fallback}"
    seconds = fields.get("duration_seconds")
    took = duration(float(seconds)) if isinstance(seconds, int | float) else "an unknown time"
    served = fields.get("served") or {}
    counts = ", ".join(f"{source} {count}" for source, count in sorted(served.items()))
    said = f" (answers meanwhile: {counts})" if counts else ""
    if fields.get("ended_by") == "shutdown":
        return f"{provider} outage window closed at shutdown after {took}, still out{said}"
    return f"{provider} answers again after {took} out{said}"
