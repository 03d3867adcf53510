"""Run-pinned decisions: a pipeline run routes every record as its first attempt did.

``with flagwarden.run("orders-2026-11-26"):`` (or ``plan(..., run_id=...)``) pins each flag's
:class:`~flagwarden.governance.assignment.Assignment` for that run in the state store the first
time the run plans the flag (a document of kind ``run:<run id>``, key the flag; of two workers
pinning at once, the store's compare-and-set keeps one, and both use it). A retried or resumed
run gets the pinned decision back, even if the rollout advanced or the vendor changed in
between: the same stage, salt and values, so every record is routed as before.

A kill still wins: while the flag is killed (in the store or by ``FLAGWARDEN_KILL``), a pinned
run gets control like everyone; revived, it gets its pin again. The first pin of a run and flag
is recorded in the audit log (``run_pinned``: the run, the stage, the mode, the source), so the
compliance report can list the runs.

A ``per_key`` decision (the vendor's own rule depends on the record key) pins only that: the
vendor is asked key by key on every attempt, at the stage of the moment; pinning cannot make
the vendor's per-key answers reproducible. A pin that cannot be read or written (the store
unreachable, a damaged document) is reported and the run plans afresh: a flag problem never
stops a pipeline, but that attempt is not pinned (``Assignment.pinned`` is False).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from flagwarden.errors import FlagwardenError
from flagwarden.governance.assignment import FORMAT, Assignment, Exposure
from flagwarden.logs import get_logger

if TYPE_CHECKING:
    from flagwarden.runtime import Runtime

__all__ = ["MAX_RUN_ID", "current_run", "pinned", "run"]

_log = get_logger("flagwarden.runs")
_current: ContextVar[str | None] = ContextVar("flagwarden_run", default=None)

MAX_RUN_ID = 200
"""The longest run id (characters)."""


def _checked(run_id: Any) -> str:
    if not isinstance(run_id, str) or not run_id.strip():
        raise ValueError(f"a run id is a non-empty string, not {run_id!r}")
    if len(run_id) > MAX_RUN_ID or not run_id.isprintable():
        raise ValueError(
            f"a run id is at most {MAX_RUN_ID} printable characters (no newlines or control "
            "characters)"
        )
    return run_id


@contextmanager
def run(run_id: str) -> Iterator[str]:
    """Pin every ``plan`` and ``assign`` of this block (this thread or task) to ``run_id``."""
    token = _current.set(_checked(run_id))
    try:
        yield run_id
    finally:
        _current.reset(token)


def current_run() -> str | None:
    """The run id of the enclosing ``flagwarden.run`` block, if any."""
    return _current.get()


def pinned(
    runtime: Runtime,
    run_id: str,
    flag: str,
    default: Any,
    context: dict[str, Any],
    targeting_key: str | None,
    decide: Callable[[], Assignment],
) -> Assignment:
    """The run's pinned decision for ``flag`` under this context and default type (pinned now
    from ``decide()`` if it has none); ``decide()`` whenever the flag is killed. A decision
    taken while killed is never pinned, and a pin that says killed is replaced."""
    run_id = _checked(run_id)
    if runtime.governed.state(flag).killed:
        return decide()  # a kill wins over any pin
    kind = f"run:{run_id}"
    key = f"{flag}#{_fingerprint(default, context, targeting_key)}"
    store = runtime.governed.cache.store
    remembered = (store.url if store is not None else "", kind, key)
    memo = _memo.get(remembered)
    if memo is not None:  # a pin never changes: read once per process and store
        return _callers(memo, default, context, targeting_key)
    fresh: Assignment | None = None
    try:
        if store is None:
            raise OSError("the state store is not available")
        raw = store.documents(kind).get(key)
        found = _loads(raw) if raw is not None else None
        if found is None or found.killed:  # none yet, or one a kill race left: pin afresh
            fresh = replace(decide(), run_id=run_id, pinned=True)
            if fresh.killed:  # killed meanwhile: served, never pinned
                return replace(fresh, pinned=False)
            if store.put_document(kind, key, _dumps(fresh), expected=raw):
                _audit(runtime, run_id, fresh)
                found = fresh
            else:  # another worker pinned it first
                raw = store.documents(kind).get(key)
                if raw is None:
                    raise OSError("the pin was neither written nor found")
                found = _loads(raw)
    except _UNPINNED as exc:  # unreachable store, damaged pin: this attempt is not pinned
        _log.error(
            "flagwarden.run_pin_failed",
            run=run_id,
            flag=flag,
            error=f"{type(exc).__name__}: {exc}"[:300],
        )
        return replace(fresh or decide(), run_id=run_id, pinned=False)
    if len(_memo) >= _MEMO_SIZE:  # a long-lived process of many runs: forget the old ones
        _memo.clear()
    _memo[remembered] = found
    return _callers(found, default, context, targeting_key)


def _callers(
    pin: Assignment, default: Any, context: dict[str, Any], targeting_key: str | None
) -> Assignment:
    """A pin for this caller: its default, and its context only when the vendor is asked per
    key with it (as an unpinned plan: a bucket or constant plan carries no context, so a
    caller's attributes, secrets included, never travel with a job that does not need them)."""
    if pin.mode == "per_key":
        return replace(pin, default=default, context=context, context_key=targeting_key)
    return replace(pin, default=default, context={}, context_key=None)


# Pins this process has read or written, by (store URL, kind, key): they never change.
_memo: dict[tuple[str, str, str], Assignment] = {}
_MEMO_SIZE = 4096

# What costs a pin, not the plan: the store (its errors are OSError or StoreError subclasses
# of FlagwardenError), a damaged or foreign document.
_UNPINNED = (OSError, FlagwardenError, ValueError, TypeError, KeyError, AttributeError)


def _fingerprint(default: Any, context: dict[str, Any], targeting_key: str | None) -> str:
    """What a pin is for besides the flag: the default's type and the caller's context (as a
    hash: the context itself never reaches the store)."""
    text = json.dumps(
        {"type": type(default).__name__, "attributes": context, "key": targeting_key},
        sort_keys=True,
        default=repr,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _dumps(assignment: Assignment) -> str:
    doc = asdict(assignment)
    doc["context"] = {}  # the caller's attributes and key stay the caller's: never stored
    doc["context_key"] = None
    return json.dumps(doc, sort_keys=True)


_FIELDS: dict[str, tuple[type, ...]] = {
    "flag": (str,),
    "mode": (str,),
    "source": (str,),
    "error": (str, type(None)),
    "stage": (int, float, type(None)),
    "killed": (bool,),
    "state_version": (int,),
    "outcome": (dict, type(None)),
    "salt": (str,),
    "limit": (int, float),
    "vendor_variant": (str,),
    "vendor_reason": (str,),
    "why": (str,),
    "run_id": (str, type(None)),
    "pinned": (bool,),
    "format": (int,),
}


def _loads(raw: str) -> Assignment:
    """A stored pin, checked field by field (a damaged one raises ValueError)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError(f"a pin is a JSON object, not {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise ValueError(
            f"a pin of another format ({doc.get('format')!r}, this flagwarden's {FORMAT})"
        )
    for name, types in _FIELDS.items():
        if not isinstance(doc.get(name), types) or (
            types[0] in (int, float) and isinstance(doc.get(name), bool)
        ):
            raise ValueError(f"a pin whose {name} is {doc.get(name)!r}")
    if doc["mode"] not in ("constant", "bucket", "per_key"):
        raise ValueError(f"a pin with mode {doc['mode']!r}")
    outcome = doc.get("outcome")
    if outcome is not None:
        doc["outcome"] = Exposure(**outcome)
    elif doc["mode"] == "constant":
        raise ValueError("a constant pin without its outcome")
    return Assignment(**doc)


def _audit(runtime: Runtime, run_id: str, assignment: Assignment) -> None:
    from flagwarden.audit.log import AuditError
    from flagwarden.governance.transition import resolve_actor

    audit = runtime.governance.audit
    if audit is None:
        return
    data = {
        "run": run_id,
        "stage": assignment.stage,
        "killed": assignment.killed,
        "state_version": assignment.state_version,
        "mode": assignment.mode,
        "source": assignment.source,
    }
    try:
        audit.append(
            "run_pinned",
            data,
            flag=assignment.flag,
            actor=resolve_actor(None),
            ref=f"run:{run_id}:{assignment.flag}",
        )
    except AuditError as exc:
        _log.error("flagwarden.run_pin_unaudited", run=run_id, flag=assignment.flag, error=str(exc))
