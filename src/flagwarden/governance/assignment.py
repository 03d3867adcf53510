"""A batch's routing decision, taken once and applied anywhere: :class:`Assignment`.

``flagwarden.plan`` (:mod:`flagwarden.governance.assign`) asks the vendor once, reads the
flag's state and policy, and freezes the outcome here: served to every key (``constant``: a
killed flag, the vendor's control, stage 100, a unit shared by the batch), decided per key by
its bucket (``bucket``: the salt, the stage's limit and the two values), or asked per key
through the client because the vendor's own rule depends on the key (``per_key``).

An Assignment is small, immutable and picklable, and ``bucket`` and ``constant`` ones apply
without the vendor SDK, the state store or ``configure()``: a Spark, Dask or Ray worker gets the
same answers as the process that planned. Its pickle carries a format number; a worker running
a flagwarden that does not know it refuses it (:class:`AssignmentError`) rather than guessing.

Counting is separate from applying (a worker's counts would not add up across processes):
:meth:`Assignment.exposures` says what ``n`` applied keys count as (per variant, reason, arm,
capped, violation), for the planning process to record once (``flagwarden.record_exposures``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flagwarden.errors import FlagwardenError
from flagwarden.governance import columns
from flagwarden.governance.columns import Engine

__all__ = ["FORMAT", "Assignment", "AssignmentError", "Exposure", "Mode"]

FORMAT = 1
"""The pickle format of an Assignment; bumped whenever what it means changes."""

Mode = Literal["constant", "bucket", "per_key"]


class AssignmentError(FlagwardenError):
    """An Assignment that cannot be applied here (a format this flagwarden does not know, or a
    per-key one without ``configure()`` in this process)."""


@dataclass(frozen=True, slots=True)
class Exposure:
    """What some of a batch's answers count as (as one evaluation would be counted)."""

    variant: str
    reason: str
    arm: str
    capped: bool
    count: int
    violation: str | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """The decision for one flag over a batch of keys (see the module docstring)."""

    flag: str
    default: Any
    mode: Mode
    source: str  # where the vendor's answer came from (vendor, snapshot, env, file, default)
    error: str | None  # the vendor answer's error code, if any
    stage: float | None  # the approved percent (None: the flag has no policy)
    killed: bool
    state_version: int
    # constant: the value every key gets, and what it counts as
    value: Any = None
    outcome: Exposure | None = None
    # the policy's arm values (every mode; None without a policy): a kill serves control
    control: Any = None
    treatment: Any = None
    # bucket: a key inside the stage gets ``treatment`` (counted as the vendor's answer),
    # any other key ``control`` (capped); an empty or missing key is no unit
    salt: str = ""
    limit: float = 0.0
    vendor_variant: str = ""
    vendor_reason: str = ""
    # per_key: why the vendor must be asked per key
    why: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # the batch's shared attributes
    context_key: str | None = None  # the context's targeting key (for keys that are missing)
    run_id: str | None = None
    pinned: bool = False  # the run's pinned decision (flagwarden.run): a retry gets it back
    format: int = FORMAT

    # -- applying ---------------------------------------------------------------------

    def apply(self, keys: Any, *, engine: Engine = "auto") -> Any:
        """The value served for each key, in the keys' shape (a list, or a pandas, polars or
        pyarrow column of the same kind and index): exactly what ``flagwarden.assign`` gives.
        ``engine`` as in :func:`flagwarden.governance.columns.route`."""
        return self.route(keys, engine=engine)[0]

    def route(self, keys: Any, *, engine: Engine = "auto") -> tuple[Any, int, int]:
        """The served values with (treated, missing): the keys inside the stage, and the empty
        or missing ones (both 0 unless the mode is ``bucket``)."""
        self._check_format()
        if columns.size(keys) == 0:
            return columns.constant(keys, self.default), 0, 0
        if self.mode == "constant":
            return columns.constant(keys, self.value), 0, 0
        if self.mode == "bucket":
            return columns.route(
                keys, self.salt, self.limit, self.treatment, self.control, engine=engine
            )
        return self._per_key(keys), 0, 0

    def _per_key(self, keys: Any) -> Any:
        from openfeature.evaluation_context import EvaluationContext

        from flagwarden.governance.assign import getter
        from flagwarden.runtime import current

        runtime = current()
        if runtime is None:
            raise AssignmentError(
                f"{self.flag}: the vendor is asked per key ({self.why}): this process needs "
                "flagwarden.configure() first"
            )
        get = getter(runtime.client, self.default)
        base = EvaluationContext(self.context_key, dict(self.context))
        return columns.wrap(
            keys,
            [
                get(self.flag, self.default, base.merge(EvaluationContext(targeting_key=k)))
                for k in columns.as_strings(keys)
            ],
        )

    # -- counting ---------------------------------------------------------------------

    def exposures(
        self, n: int, *, treated: int = 0, missing: int = 0, killed: int = 0
    ) -> list[Exposure]:
        """What ``n`` applied keys count as: ``killed`` of them served control because the flag
        was killed while the job ran (see :mod:`flagwarden.governance.killcheck`), and of the
        others ``treated`` inside the stage and ``missing`` no unit (a ``bucket`` assignment's
        :meth:`route` gives both). The answers of a ``per_key`` assignment were counted where
        the client gave them (only its killed ones are here)."""
        counts = (n, treated, missing, killed)
        if min(counts) < 0 or treated + missing + killed > n:
            raise ValueError(
                f"counts out of range: n={n}, treated={treated}, missing={missing}, killed={killed}"
            )
        out = [Exposure("control", "DISABLED", "control", False, killed)] if killed else []
        n -= killed
        if n == 0 or self.mode == "per_key":
            return out
        if self.mode == "constant":
            assert self.outcome is not None
            return [*out, _times(self.outcome, n)]
        if treated:
            out.append(
                Exposure(self.vendor_variant, self.vendor_reason, "treatment", False, treated)
            )
        if n - treated - missing:
            out.append(Exposure("control", "SPLIT", "control", True, n - treated - missing))
        if missing:
            out.append(Exposure("control", "SPLIT", "control", False, missing, "missing_unit"))
        return out

    # -- pickling ---------------------------------------------------------------------

    def _check_format(self) -> None:
        if self.format != FORMAT:
            raise AssignmentError(
                f"{self.flag}: an Assignment of format {self.format}; this flagwarden applies "
                f"format {FORMAT}: plan and apply with the same flagwarden version"
            )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (asdict(self),))


def _restore(fields: dict[str, Any]) -> Assignment:
    """An unpickled Assignment; refused when its format is not this flagwarden's (checked
    first: another format may have other fields)."""
    if fields.get("format") != FORMAT:
        raise AssignmentError(
            f"{fields.get('flag')}: an Assignment of format {fields.get('format')}; this "
            f"flagwarden applies format {FORMAT}: plan and apply with the same flagwarden version"
        )
    outcome = fields.get("outcome")
    if isinstance(outcome, dict):
        fields = {**fields, "outcome": Exposure(**outcome)}
    return Assignment(**fields)


def _times(outcome: Exposure, n: int) -> Exposure:
    return Exposure(
        outcome.variant, outcome.reason, outcome.arm, outcome.capped, n, outcome.violation
    )
