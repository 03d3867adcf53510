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
    decide: Callable[[], Assignment],
) -> Assignment:
    """The run's pinned decision for ``flag`` (pinned now from ``decide()`` if it has none);
    ``decide()`` whenever the flag is killed. ``default`` and ``context`` are the caller's."""
    run_id = _checked(run_id)
    if runtime.governed.state(flag).killed:
        return decide()  # a kill wins over any pin
    store = runtime.governed.cache.store
    kind = f"run:{run_id}"
    fresh: Assignment | None = None
    try:
        if store is None:
            raise OSError("the state store is not available")
        raw = store.documents(kind).get(flag)
        if raw is None:
            fresh = replace(decide(), run_id=run_id, pinned=True)
            if store.put_document(kind, flag, _dumps(fresh), expected=None):
                _audit(runtime, run_id, fresh)
                return fresh
            raw = store.documents(kind).get(flag)  # another worker pinned it first
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
    return replace(found, default=default, context=context)


# What costs a pin, not the plan: the store (its errors are OSError or StoreError subclasses
# of FlagwardenError), a damaged or foreign document (ValueError, TypeError, KeyError).
_UNPINNED = (OSError, FlagwardenError, ValueError, TypeError, KeyError)


def _dumps(assignment: Assignment) -> str:
    doc = asdict(assignment)
    doc["context"] = {}  # the caller's attributes stay the caller's: never in the store
    return json.dumps(doc, sort_keys=True)


def _loads(raw: str) -> Assignment:
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(
            f"a pin of another format ({doc.get('format')!r}, this flagwarden's {FORMAT})"
        )
    outcome = doc.get("outcome")
    if outcome is not None:
        doc["outcome"] = Exposure(**outcome)
    assignment = Assignment(**doc)
    if assignment.mode not in ("constant", "bucket", "per_key"):
        raise ValueError(f"a pin with mode {assignment.mode!r}")
    return assignment


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
