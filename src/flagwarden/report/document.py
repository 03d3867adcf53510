"""The compliance report as a typed document: what the renderers read and the JSON is made of.

The JSON form is :func:`dataclasses.asdict` of :class:`Report` with every datetime written as
ISO 8601 UTC to the second, plus ``digest``: the SHA-256 of the JSON body without ``digest``
(:func:`report_digest`). The renderers read the dataclasses (full-precision times), never JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from flagwarden.report.runs import PipelineRun
from flagwarden.report.text import iso

__all__ = [
    "AuditStatus",
    "BreachPoint",
    "Change",
    "Exposures",
    "FlagNow",
    "FlagReport",
    "GlossaryEntry",
    "GuardChart",
    "GuardDecision",
    "LimitStep",
    "Outage",
    "Period",
    "Removal",
    "Report",
    "Requirement",
    "SeriesPoint",
    "SharePoint",
    "SoakRow",
    "SoakStatus",
    "StageLimit",
    "StageState",
    "TimelinePoint",
    "UnreadableRecord",
    "Unregistered",
    "Verdict",
    "ViolationEvent",
    "ViolationNote",
    "report_digest",
]

SoakStatus = Literal["compliant", "in progress", "cut short"]
VerdictStatus = Literal["followed", "not followed", "unverified"]


def report_digest(report: Mapping[str, Any]) -> str:
    """SHA-256 of a JSON report's body: every field but ``digest``."""
    body = {k: v for k, v in report.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """The JSON form of a document part: what ``_jsonable(asdict(value))`` gives, built in one
    pass (``asdict`` deep-copies every leaf first: most of the time of a large report)."""
    fields = getattr(type(value), "__dataclass_fields__", None)
    if fields is not None:
        return {name: _jsonable(getattr(value, name)) for name in fields}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Period:
    since: datetime
    until: datetime


@dataclass
class UnreadableRecord:
    """An audit record the report could not read (its data is not JSON): left out, named."""

    seq: int
    kind: str
    flag: str | None
    problem: str


@dataclass
class AuditStatus:
    verified: bool
    records_checked: int
    chain_head: str
    problem: str | None = None
    first_bad_record: int | None = None
    unreadable_records: list[UnreadableRecord] = field(default_factory=list)
    signed: bool = False  # records carry Ed25519 signatures
    # verified | not checked (no public key) | failed: ... | unsigned
    signatures: str = "unsigned"
    pending_records: int = 0  # change records still waiting in the state store's outbox


@dataclass
class StageState:
    stage: float
    killed: bool
    paused: bool


@dataclass
class FlagNow:
    """The flag's state when the report was generated (whatever ``--until`` says)."""

    stage: float
    killed: bool
    paused: bool
    version: int
    stage_entered_at: datetime | None
    updated_by: str | None
    reason: str | None


@dataclass
class Requirement:
    flag: str
    stage: float


@dataclass
class TimelinePoint:
    at: datetime
    action: str
    stage: float
    killed: bool
    paused: bool
    actor: str | None


@dataclass
class ViolationNote:
    kind: str
    detail: str


@dataclass
class Change:
    at: datetime
    actor: str | None
    action: str
    reason: str | None
    before: StageState
    after: StageState
    violations: list[ViolationNote]
    automatic: bool  # made by the watch (actor flagwarden-watch)
    cause: dict[str, str] | None = None  # {flag, action}: a prerequisite's kill or rollback
    tick: str | None = None  # the watch tick whose guard verdicts led to it
    soak_seconds: float | None = None  # an advance: the soak its policy required then
    requested_by: str | None = None  # four-eyes: who asked for it (the actor)...
    approved_by: list[str] | None = None  # ...and who approved it (None: no approval needed)
    request: str | None = None  # the change request's id


@dataclass
class SoakRow:
    stage: float
    entered_at: datetime
    left_at: datetime | None  # None: still held at the end of the period
    left_to: float | None
    held_seconds: float
    required_seconds: float
    status: SoakStatus
    soak_met: bool  # held at least the required time
    forced: bool  # left with a recorded soak_cut_short (--force)


@dataclass
class GuardDecision:
    """One guard's verdict in one watch tick (shown once, however many records carry it)."""

    at: datetime
    tick: str | None
    guard: str
    stage: float | None
    verdict: str
    value: float | None
    samples: int
    control: float | None
    limit: str
    upper: float | None
    lower: float | None
    detail: str
    failures: int | None  # consecutive breaches counted at this tick
    outcome: str  # what the tick did: advance | rollback | pause | hold


@dataclass
class ViolationEvent:
    at: datetime
    kind: str
    detail: str
    count: int
    actor: str | None
    action: str | None = None  # the forced transition, for stage_skipped & co.
    reason: str | None = None
    from_stage: float | None = None
    to_stage: float | None = None
    until: datetime | None = None  # end of an aggregated window (unknown_variant & co.)


@dataclass
class SeriesPoint:
    at: datetime
    value: float
    n: int  # observations behind the value
    stage: float | None = None  # the stage it was measured at (None: not stamped)
    epoch: int | None = None  # the state version that entered that stage


@dataclass
class LimitStep:
    """From ``at`` on (until the next step), the limit that applied: None where none did."""

    at: datetime
    stage: float
    upper: float | None
    lower: float | None


@dataclass
class BreachPoint:
    at: datetime
    value: float
    stage: float | None


@dataclass
class StageLimit:
    stage: float
    max: float | None
    min: float | None


@dataclass
class GuardChart:
    guard: str
    source: Literal["metric", "promql"]
    query: str  # the metric name, or the PromQL expression
    relative_to_control: bool
    limits: list[StageLimit]  # the policy's limit at each stage
    treatment: list[SeriesPoint] = field(default_factory=list)
    control: list[SeriesPoint] = field(default_factory=list)
    values: list[SeriesPoint] = field(default_factory=list)  # promql: the guard's own readings
    limit_steps: list[LimitStep] = field(default_factory=list)
    breaches: list[BreachPoint] = field(default_factory=list)
    measurements: int = 0  # measurements read (before bucketing)
    bucketed: bool = False
    note: str = ""


@dataclass
class SharePoint:
    at: datetime
    share: float
    evaluations: int


@dataclass
class Exposures:
    total: int
    by_arm: dict[str, int]
    capped: int  # the stage cap at work: counted, not a violation
    by_source: dict[str, int]
    treatment_share: list[SharePoint]


@dataclass
class Verdict:
    status: VerdictStatus
    text: str  # the paragraph
    summary: str  # "1 stage skipped, 1 soak cut short" or "no violations"
    problems: list[str]  # each kind of problem, with who, when and why


@dataclass
class FlagReport:
    flag: str
    owner: str
    description: str
    expires: date | None
    expired: bool
    stages: list[float]
    soak_seconds: float
    on_breach: str
    auto_advance: bool
    requires: list[Requirement]
    verdict: Verdict
    state: FlagNow
    state_at_since: StageState | None  # from the last transition before the period
    timeline: list[TimelinePoint]
    changes: list[Change]
    soak: list[SoakRow]
    guards: list[GuardDecision]
    guard_charts: list[GuardChart]
    breaches: int
    rollbacks: int
    kills: int
    automatic_rollbacks: int
    automatic_pauses: int
    manual_rollbacks: int
    manual_kills: int
    violations: dict[str, int]
    violation_details: list[ViolationEvent]
    exposures: Exposures


@dataclass
class Outage:
    provider: str | None
    vendor: str | None
    cause: str | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_seconds: float | None
    served: dict[str, int]
    ended_by: str | None


@dataclass
class Unregistered:
    flag: str
    evaluations: int


@dataclass
class Removal:
    flag: str
    owner: str
    why: str


@dataclass
class GlossaryEntry:
    kind: str
    meaning: str


@dataclass
class Report:
    generated_at: datetime
    period: Period
    selected_flags: list[str] | None  # --flag; None: every governed flag
    provider: str
    audit: AuditStatus
    glossary: list[GlossaryEntry]
    flags: list[FlagReport]
    runs: list[PipelineRun]  # run_pinned records: each run's pinned decision per flag
    outages: list[Outage]
    unregistered_flags: list[Unregistered]
    to_remove: list[Removal]
    digest: str = ""

    def body(self) -> dict[str, Any]:
        """The JSON body: everything but ``digest``."""
        doc: dict[str, Any] = _jsonable(self)
        doc.pop("digest")
        return doc

    def seal(self) -> Report:
        """Set ``digest``; the body it covers is kept for :meth:`to_json` (a sealed report is
        not changed afterwards: its digest would no longer match)."""
        body = self.body()
        self.digest = report_digest(body)
        self._sealed = (self.digest, body)
        return self

    def to_json(self) -> dict[str, Any]:
        sealed = getattr(self, "_sealed", None)
        body = sealed[1] if sealed is not None and sealed[0] == self.digest else self.body()
        return {**body, "digest": self.digest}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
