"""Sequencing: which flags require a flag, and which prerequisites of a policy fall short.

A policy's ``requires`` lets a flag advance only while each prerequisite flag stands at its
stage (not killed); :class:`~flagwarden.governance.rollout.Rollout` pauses the live
dependants when a prerequisite is killed or rolled back below the stage they need.
"""

from __future__ import annotations

from collections.abc import Mapping

from flagwarden.governance.policy import Policy
from flagwarden.governance.state import FlagState, StateStore
from flagwarden.humanize import percent

__all__ = ["dependants", "short_prerequisites"]


def dependants(policies: Mapping[str, Policy], flag: str) -> list[tuple[Policy, float]]:
    """Policies that require ``flag``, with the stage each needs it at."""
    return [
        (policy, prerequisite.stage)
        for policy in policies.values()
        for prerequisite in policy.requires
        if prerequisite.flag == flag
    ]


def short_prerequisites(
    policies: Mapping[str, Policy], store: StateStore, policy: Policy
) -> list[str]:
    """Each prerequisite of ``policy`` that does not stand at its stage now, and why."""
    short = []
    for prerequisite in policy.requires:
        if prerequisite.flag not in policies:
            short.append(f"{prerequisite.flag} (it has no policy)")
            continue
        state = store.load(prerequisite.flag) or FlagState(prerequisite.flag)
        if state.killed:
            short.append(f"{prerequisite.flag} at {percent(prerequisite.stage)} (it is killed)")
        elif state.stage < prerequisite.stage:
            short.append(
                f"{prerequisite.flag} at {percent(prerequisite.stage)} "
                f"(it is at {percent(state.stage)})"
            )
    return short
