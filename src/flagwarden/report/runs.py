"""The report's pipeline runs: one row per ``run_pinned`` audit record.

``with flagwarden.run(run_id):`` pins each flag's batch decision for that run the first time
the run plans the flag, and appends one ``run_pinned`` record (ref ``run:<run id>:<flag>``):
the run, the stage it was pinned at, killed or not, the mode and the vendor answer's source.
:func:`pipeline_run` reads one; a record whose data does not have that shape raises
:class:`ValueError` with what is wrong, and the report leaves it out and names it, as it does
a record whose data is not JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from flagwarden.audit.log import AuditRecord

__all__ = ["RUNS_NOTE", "RUN_PINNED", "PipelineRun", "RunMode", "pipeline_run"]

RUN_PINNED = "run_pinned"
RUNS_NOTE = (
    "Each run pinned a flag's decision the first time it planned the flag: a retried or "
    "resumed run routes every record as its first attempt did (a kill still wins)."
)
RunMode = Literal["constant", "bucket", "per_key"]
_MODES: tuple[str, ...] = get_args(RunMode)


@dataclass
class PipelineRun:
    """A run's pinned decision for one flag, as its first attempt took it."""

    run: str  # the run id (user text)
    flag: str
    stage: float | None  # the approved percent it was pinned at (None: the flag had no policy)
    killed: bool
    mode: RunMode
    source: str  # where the vendor's answer came from: vendor, snapshot, env, file, default, ""
    at: datetime
    actor: str | None


def _text(data: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise ValueError(f"{key!r} is not {'a string' if empty else 'a non-empty string'}")
    return value


def _stage(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 100
    ):
        raise ValueError("'stage' is not a percent from 0 to 100")
    return float(value)


def pipeline_run(record: AuditRecord) -> PipelineRun:
    """The run a ``run_pinned`` record states; :class:`ValueError` (what is wrong) when its
    data is not what flagwarden writes: a field missing or of the wrong type, an unknown mode,
    or a ``ref`` that names another run or flag."""
    data = record.data
    if not isinstance(record.flag, str) or not record.flag:
        raise ValueError("it names no flag")
    run = _text(data, "run")
    killed = data.get("killed")
    if not isinstance(killed, bool):
        raise ValueError("'killed' is not true or false")
    version = data.get("state_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError("'state_version' is not an integer")
    mode = data.get("mode")
    if mode not in _MODES:
        raise ValueError(f"'mode' is not one of {', '.join(_MODES)}")
    if data.get("ref") != f"run:{run}:{record.flag}":
        raise ValueError("'ref' does not name this run and flag")
    return PipelineRun(
        run=run,
        flag=record.flag,
        stage=_stage(data.get("stage", math.nan)),  # missing: not a percent (null: no policy)
        killed=killed,
        mode=mode,
        source=_text(data, "source", empty=True),
        at=record.at,
        actor=record.actor,
    )
