"""A vendor that says it has data answers from it, even while its start is still returning.

The failover chain asks ``has_data`` before each evaluation: a vendor that said yes and then
answered PROVIDER_NOT_READY (its client not yet handed over) turned a forked child's first
answer into the caller's default although the parent's data was there to serve. Each test
looks at the vendor at the moment its SDK holds the data but has not handed the client over.
"""

from __future__ import annotations

from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType
from splitio.client.factory import SplitFactory

from flagwarden.profiles import LaunchDarklyProfile, SplitProfile
from flagwarden.providers import launchdarkly
from flagwarden.providers.launchdarkly import LaunchDarklyVendor
from flagwarden.providers.split import SplitVendor
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

FLAG = "new-scoring-model"


def _serves_once_started(vendor: Any) -> None:
    assert vendor.start()
    assert vendor.has_data
    details = vendor.resolve(FlagType.BOOLEAN, FLAG, False, EvaluationContext("order-1"))
    assert (details.value, details.error_code) == (True, None)


def test_launchdarkly_has_no_data_until_its_client_is_handed_over(monkeypatch):
    seen: list[tuple[bool, bool]] = []

    class Observed(launchdarkly.LaunchDarklyProvider):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # returns once the SDK's store is filled
            seen.append((vendor._store.has_data, vendor.has_data))

    monkeypatch.setattr(launchdarkly, "LaunchDarklyProvider", Observed)
    server = LaunchDarklyServer().start()
    try:
        server.set_flag(boolean_flag(FLAG, serve=True))
        vendor = LaunchDarklyVendor(LaunchDarklyProfile(**server.profile()))
        try:
            _serves_once_started(vendor)
        finally:
            vendor.shutdown()
    finally:
        server.stop()
    assert seen == [(True, False)]


def test_split_has_no_data_until_its_client_is_handed_over(monkeypatch):
    seen: list[tuple[bool, bool]] = []
    client = SplitFactory.client

    def observed(factory: SplitFactory) -> Any:
        factory.block_until_ready(5)  # the data is there; the client is not handed over yet
        seen.append((factory.ready, vendor.has_data))
        return client(factory)

    monkeypatch.setattr(SplitFactory, "client", observed)
    server = SplitServer().start()
    try:
        server.set_split(split_definition(FLAG, on_percent=100))
        vendor = SplitVendor(SplitProfile(**server.profile()))
        try:
            _serves_once_started(vendor)
        finally:
            vendor.shutdown()
    finally:
        server.stop()
    assert seen == [(True, False)]
