"""LaunchDarkly through flagwarden.configure(), against a local server speaking its protocol."""

from __future__ import annotations

import hashlib
import threading

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.flag_evaluation import Reason

import flagwarden
from tests.conftest import Project, wait_for
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag, value_flag


def ld_bucket(flag_key: str, salt: str, key: str) -> float:
    """LaunchDarkly's documented bucketing: SHA-1 of 'flagKey.salt.key', first 15 hex digits."""
    digest = hashlib.sha1(f"{flag_key}.{salt}.{key}".encode()).hexdigest()[:15]
    return int(digest, 16) / 0xFFFFFFFFFFFFFFF


def configure_ld(project: Project, server: LaunchDarklyServer, **profile: object):
    project.profile("launchdarkly", {**server.profile(), **profile})
    project.config("launchdarkly")
    return flagwarden.configure(project.root / "flagwarden.yaml")


@pytest.mark.parametrize("stream", [True, False])
def test_percentage_rollout_matches_launchdarkly_bucketing(project, ld_server, stream):
    ld_server.set_flag(boolean_flag("new-scoring-model", rollout_percent=30, salt="s4lt"))
    client = configure_ld(project, ld_server, stream=stream)
    keys = [f"order-{i}" for i in range(5000)]
    served = [
        client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
    ]
    expected = [ld_bucket("new-scoring-model", "s4lt", k) < 0.30 for k in keys]
    assert served == expected
    assert 1300 < sum(served) < 1700


def test_reasons_are_mapped_to_openfeature(project, ld_server):
    ld_server.set_flag(boolean_flag("rollout", rollout_percent=50))
    ld_server.set_flag(boolean_flag("fixed", serve=True))
    ld_server.set_flag(boolean_flag("off", on=False))
    ld_server.set_flag(boolean_flag("targeted", serve=False, targets={True: ["vip"]}))
    rule = {
        "id": "rule-1",
        "variation": 1,
        "clauses": [{"attribute": "tier", "op": "in", "values": ["gold"], "negate": False}],
        "trackEvents": False,
    }
    ld_server.set_flag(boolean_flag("ruled", serve=False, rules=[rule]))
    gated = boolean_flag("gated", serve=True)
    gated["prerequisites"] = [{"key": "off", "variation": 1}]
    ld_server.set_flag(gated)
    client = configure_ld(project, ld_server)

    def reason(key: str, ctx: EvaluationContext) -> str:
        details = client.get_boolean_details(key, False, ctx)
        assert details.error_code is None, details.error_message
        assert details.flag_metadata["flagwarden.source"] == "vendor"
        return details.reason

    anyone = EvaluationContext("someone")
    assert reason("rollout", anyone) == Reason.SPLIT
    assert reason("fixed", anyone) == Reason.DEFAULT
    assert reason("off", anyone) == Reason.DISABLED
    assert reason("targeted", EvaluationContext("vip")) == Reason.TARGETING_MATCH
    assert reason("ruled", EvaluationContext("x", {"tier": "gold"})) == Reason.TARGETING_MATCH
    assert reason("ruled", EvaluationContext("x", {"tier": "tin"})) == Reason.DEFAULT
    assert reason("gated", anyone) == Reason.DISABLED
    details = client.get_boolean_details("gated", True, anyone)
    assert details.value is False
    assert details.flag_metadata["launchdarkly.reason"] == "PREREQUISITE_FAILED"


def test_typed_values_and_errors(project, ld_server):
    ld_server.set_flag(value_flag("source", ["geo-v1", "geo-v2"], 1))
    ld_server.set_flag(value_flag("batch", [500, 5000], 1))
    ld_server.set_flag(value_flag("ratio", [0.5, 0.25], 1))
    ld_server.set_flag(value_flag("model", [{"name": "v1"}, {"name": "v2"}], 1))
    client = configure_ld(project, ld_server)
    ctx = EvaluationContext("k")
    assert client.get_string_value("source", "x", ctx) == "geo-v2"
    assert client.get_integer_value("batch", 1, ctx) == 5000
    assert client.get_float_value("ratio", 1.0, ctx) == 0.25
    assert client.get_object_value("model", {}, ctx) == {"name": "v2"}
    wrong = client.get_boolean_details("source", False, ctx)
    assert (wrong.value, wrong.error_code, wrong.flag_metadata["flagwarden.source"]) == (
        False,
        "TYPE_MISMATCH",
        "default",
    )
    missing = client.get_boolean_details("nope", True, ctx)
    assert (missing.value, missing.error_code) == (True, "FLAG_NOT_FOUND")


def test_streamed_change_is_served_and_announced(project, ld_server):
    ld_server.set_flag(boolean_flag("new-scoring-model", serve=False))
    client = configure_ld(project, ld_server)
    changed = threading.Event()

    def on_change(details: object) -> None:
        changed.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    try:
        ctx = EvaluationContext("k")
        assert client.get_boolean_value("new-scoring-model", True, ctx) is False
        ld_server.set_flag(boolean_flag("new-scoring-model", serve=True))
        wait_for(lambda: client.get_boolean_value("new-scoring-model", False, ctx))
        assert changed.wait(5)
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)


def test_events_go_to_the_profile_events_uri(project, ld_server):
    ld_server.set_flag(boolean_flag("new-scoring-model", serve=True))
    client = configure_ld(project, ld_server)
    client.get_boolean_value("new-scoring-model", False, EvaluationContext("k"))
    flagwarden.shutdown()  # closing the SDK flushes its analytics events
    assert ld_server.events_received >= 1


def test_answers_are_the_published_providers_with_openfeature_reasons(project, ld_server):
    """Each evaluation calls the client itself and converts the result once; for every flag
    shape, type and context the answer is the published provider's (value, error code,
    variant, metadata), its raw LaunchDarkly reason names made OpenFeature reasons."""
    from openfeature.flag_evaluation import FlagType

    rollout_rule = {
        "id": "rule-r",
        "rollout": {
            "variations": [{"variation": 1, "weight": 40_000}, {"variation": 0, "weight": 60_000}]
        },
        "clauses": [{"attribute": "tier", "op": "in", "values": ["silver"], "negate": False}],
        "trackEvents": False,
    }
    fixed_rule = {
        "id": "rule-f",
        "variation": 1,
        "clauses": [{"attribute": "tier", "op": "in", "values": ["gold"], "negate": False}],
        "trackEvents": False,
    }
    ld_server.set_flag(boolean_flag("rollout", rollout_percent=50))
    ld_server.set_flag(boolean_flag("fixed", serve=True))
    ld_server.set_flag(boolean_flag("off", on=False))
    ld_server.set_flag(boolean_flag("targeted", serve=False, targets={True: ["vip"]}))
    ld_server.set_flag(boolean_flag("ruled", serve=False, rules=[rollout_rule, fixed_rule]))
    gated = boolean_flag("gated", serve=True)
    gated["prerequisites"] = [{"key": "off", "variation": 1}]
    ld_server.set_flag(gated)
    ld_server.set_flag(value_flag("source", ["geo-v1", "geo-v2"], 1))
    ld_server.set_flag(value_flag("batch", [500, 5000.7], 1))
    ld_server.set_flag(value_flag("ratio", [0.5, 3], 1))
    ld_server.set_flag(value_flag("model", [{"name": "v1"}, ["v", 2]], 1))
    ld_server.set_flag(value_flag("nothing", [None, None], 1))
    configure_ld(project, ld_server)
    vendor = flagwarden.current().provider.vendor
    wrapper = vendor._provider
    raw_reasons = {"FALLTHROUGH", "RULE_MATCH", "PREREQUISITE_FAILED"}
    defaults = {
        FlagType.BOOLEAN: ("resolve_boolean_details", False),
        FlagType.STRING: ("resolve_string_details", "d"),
        FlagType.INTEGER: ("resolve_integer_details", 7),
        FlagType.FLOAT: ("resolve_float_details", 0.5),
        FlagType.OBJECT: ("resolve_object_details", {"d": 1}),
    }
    contexts = [
        EvaluationContext(f"order-{i}", {"tier": tier})
        for i in range(40)
        for tier in ("silver", "gold", "none")
    ]
    contexts += [EvaluationContext("vip"), EvaluationContext(None), EvaluationContext("")]
    flags = ["rollout", "fixed", "off", "targeted", "ruled", "gated", "source", "batch"]
    flags += ["ratio", "model", "nothing", "missing"]
    seen: set[tuple[object, ...]] = set()
    for flag in flags:
        for flag_type, (method, default) in defaults.items():
            for ctx in contexts:
                ours = vendor.resolve(flag_type, flag, default, ctx)
                theirs = getattr(wrapper, method)(flag, default, ctx)
                assert ours.value == theirs.value and type(ours.value) is type(theirs.value)
                assert (ours.error_code, ours.error_message) == (
                    theirs.error_code,
                    theirs.error_message,
                )
                assert ours.variant == theirs.variant
                metadata = dict(ours.flag_metadata)
                if theirs.reason in raw_reasons:
                    assert metadata.pop("launchdarkly.reason") == theirs.reason
                    assert ours.reason in (
                        Reason.SPLIT,
                        Reason.DEFAULT,
                        Reason.TARGETING_MATCH,
                        Reason.DISABLED,
                    )
                else:
                    assert ours.reason == theirs.reason
                assert metadata == theirs.flag_metadata
                seen.add((theirs.reason, theirs.error_code))
    # the matrix reached every reason and the errors it can produce
    for kind in ("FALLTHROUGH", "RULE_MATCH", "PREREQUISITE_FAILED", Reason.DISABLED):
        assert any(reason == kind for reason, _ in seen), kind
    assert {code for _, code in seen} >= {
        None,
        "TYPE_MISMATCH",
        "FLAG_NOT_FOUND",
        "TARGETING_KEY_MISSING",
    }
