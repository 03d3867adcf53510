"""flagwarden: vendor-neutral, policy-enforcing feature flags for data pipelines.

Pipelines evaluate flags through an ordinary OpenFeature client::

    import flagwarden
    from openfeature.evaluation_context import EvaluationContext

    client = flagwarden.configure()
    if client.get_boolean_value("new-scoring-model", False, EvaluationContext("order-42")):
        ...
    flagwarden.shutdown()
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from flagwarden.errors import ConfigError, FlagwardenError

if TYPE_CHECKING:
    from flagwarden.governance.assign import assign, plan, record_exposures
    from flagwarden.governance.assignment import Assignment
    from flagwarden.governance.runs import run
    from flagwarden.runtime import Runtime, configure, current, record_metric, shutdown

# Imported on first use: ``import flagwarden`` (and the command line, which imports it as a
# package) does not pay for the OpenFeature SDK, the provider chain and the policy engine.
_LAZY = {
    "Assignment": "flagwarden.governance.assignment",
    "assign": "flagwarden.governance.assign",
    "plan": "flagwarden.governance.assign",
    "record_exposures": "flagwarden.governance.assign",
    "Runtime": "flagwarden.runtime",
    "configure": "flagwarden.runtime",
    "current": "flagwarden.runtime",
    "record_metric": "flagwarden.runtime",
    "run": "flagwarden.governance.runs",
    "shutdown": "flagwarden.runtime",
}

__all__ = [
    "Assignment",
    "ConfigError",
    "FlagwardenError",
    "Runtime",
    "assign",
    "configure",
    "current",
    "plan",
    "record_exposures",
    "record_metric",
    "run",
    "shutdown",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # A submodule (``flagwarden.runtime``...), as when this package imported them eagerly.
        if name.startswith("_"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        try:
            return import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
