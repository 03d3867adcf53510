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

from flagwarden.errors import ConfigError, FlagwardenError
from flagwarden.governance.assign import assign
from flagwarden.runtime import Runtime, configure, current, record_metric, shutdown

__all__ = [
    "ConfigError",
    "FlagwardenError",
    "Runtime",
    "assign",
    "configure",
    "current",
    "record_metric",
    "shutdown",
]
__version__ = "0.1.0"
