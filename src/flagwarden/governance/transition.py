"""What a transition is: its result (:class:`Transition`), the rules it broke on purpose
(:class:`Violation`), its refusals, and who made it (:func:`resolve_actor`)."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field

from flagwarden.errors import FlagwardenError
from flagwarden.governance.state import FlagState, OutboxEntry

__all__ = [
    "ACTOR_ENV",
    "ApprovalRequired",
    "ConcurrentChange",
    "Transition",
    "TransitionRefused",
    "Violation",
    "require_reason",
    "resolve_actor",
    "storable",
]

ACTOR_ENV = "FLAGWARDEN_ACTOR"


def require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise TransitionRefused("a reason is required: say why, it goes to the audit log")
    return storable(reason)


def storable(text: str) -> str:
    """Text any store accepts: bytes that were not UTF-8 (command-line arguments arrive as
    lone surrogates) become U+FFFD instead of failing the write after the change."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def resolve_actor(actor: str | None) -> str:
    """``--actor``, else ``$FLAGWARDEN_ACTOR``, else the OS user."""
    if actor:
        return storable(actor)
    if os.environ.get(ACTOR_ENV):
        return storable(os.environ[ACTOR_ENV])
    try:
        return storable(getpass.getuser())
    except Exception:
        return f"uid:{os.getuid()}"


class TransitionRefused(FlagwardenError):
    """The policy or a concurrent change refused a transition; nothing was changed."""


class ConcurrentChange(TransitionRefused):
    """Another change landed between reading the state and storing the next one."""


class ApprovalRequired(TransitionRefused):
    """The advance passed every rule but goes to a stage under four-eyes: it waits for a
    change request to be approved (:mod:`flagwarden.governance.approvals`)."""

    def __init__(
        self,
        flag: str,
        before: FlagState,
        target: float,
        required: int,
        violations: tuple[Violation, ...] = (),
    ) -> None:
        super().__init__(
            f"{flag}: advancing to {target:g}% needs {required} approval(s) from another "
            "identity with the approver role"
        )
        self.flag, self.before, self.target, self.required = flag, before, target, required
        self.violations = violations  # what the advance would break (--force), for approvers


@dataclass(frozen=True)
class Violation:
    """A rule broken on purpose (``--force``, ``--to``): allowed, and recorded."""

    kind: str  # stage_skipped | soak_cut_short | advanced_while_paused | prerequisite_short
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class Transition:
    action: str
    before: FlagState
    after: FlagState
    violations: tuple[Violation, ...] = ()
    changed: bool = True  # False: it already was so (nothing stored, nothing audited)
    note: str = ""  # why nothing changed
    cascade: tuple[Transition, ...] = ()  # dependants paused by this change
    cascade_failures: tuple[str, ...] = ()  # dependants that could not be paused, and why
    audit_error: str | None = None  # took effect; its records wait in the outbox (why)
    entry: OutboxEntry | None = field(default=None, repr=False, compare=False)  # its records
