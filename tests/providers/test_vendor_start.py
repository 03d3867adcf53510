"""A vendor that says it has data answers from it, even while its start is still returning.

The failover chain asks ``has_data`` before each evaluation: a vendor that says yes and then
answers PROVIDER_NOT_READY (its client not yet handed over) turned a forked child's first answer
into the caller's default although the parent's data was there to serve.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType

from flagwarden.config import LaunchDarklyProfile, SplitProfile
from flagwarden.providers.launchdarkly import LaunchDarklyVendor
from flagwarden.providers.split import SplitVendor
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

FLAG = "new-scoring-model"


def _errors_while_starting(vendor: Any) -> list[str]:
    """Start ``vendor`` while another thread evaluates whenever it says it has data; once
    started, it has data and serves the flag on."""
    errors: list[str] = []
    done = threading.Event()
    ctx = EvaluationContext("order-1")

    def spin() -> None:
        while not done.is_set():
            if vendor.has_data:
                details = vendor.resolve(FlagType.BOOLEAN, FLAG, False, ctx)
                if details.error_code is not None:
                    errors.append(f"{details.error_code}: {details.error_message}")

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        assert vendor.start()
    finally:
        done.set()
        spinner.join()
    assert vendor.has_data
    assert vendor.resolve(FlagType.BOOLEAN, FLAG, False, ctx).value is True
    return errors


@pytest.mark.parametrize("trial", range(3))
def test_launchdarkly_has_data_only_when_it_can_answer(trial: int) -> None:
    server = LaunchDarklyServer().start()
    try:
        server.set_flag(boolean_flag(FLAG, serve=True))
        vendor = LaunchDarklyVendor(LaunchDarklyProfile(**server.profile()))
        try:
            errors = _errors_while_starting(vendor)
        finally:
            vendor.shutdown()
    finally:
        server.stop()
    assert errors == []


@pytest.mark.parametrize("trial", range(3))
def test_split_has_data_only_when_it_can_answer(trial: int) -> None:
    server = SplitServer().start()
    try:
        server.set_split(split_definition(FLAG, on_percent=100))
        vendor = SplitVendor(SplitProfile(**server.profile()))
        try:
            errors = _errors_while_starting(vendor)
        finally:
            vendor.shutdown()
    finally:
        server.stop()
    assert errors == []
