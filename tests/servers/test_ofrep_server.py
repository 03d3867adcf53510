"""The local OFREP server, driven by the published OFREP provider (and plain HTTP for what the
provider does not send: bulk evaluation, ETags, malformed requests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import mmh3
import pytest
import requests
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from openfeature.provider.no_op_provider import NoOpProvider

from tests.servers.ofrep import OFREPServer

FLAGS: dict[str, Any] = {
    "metadata": {"flagSetId": "checkout"},
    "flags": {
        "new-checkout": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", "off"]},
            "metadata": {"owner": "payments"},
        },
        "banner": {
            "state": "ENABLED",
            "variants": {"a": "hello", "b": "bye"},
            "defaultVariant": "a",
        },
        "batch-size": {"state": "ENABLED", "variants": {"s": 10, "l": 500}, "defaultVariant": "l"},
        "ratio": {
            "state": "ENABLED",
            "variants": {"low": 0.25, "high": 0.75},
            "defaultVariant": "high",
        },
        "limits": {
            "state": "ENABLED",
            "variants": {"std": {"rps": 5, "burst": [1, 2]}, "big": {"rps": 50, "burst": []}},
            "defaultVariant": "std",
        },
        "rollout": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 30], ["off", 70]]},
        },
        "retired": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
        "undecided": {"state": "ENABLED", "variants": {"x": "x"}, "defaultVariant": None},
    },
}
BULK = "/ofrep/v1/evaluate/flags"


@pytest.fixture
def server() -> Iterator[OFREPServer]:
    srv = OFREPServer(FLAGS).start()
    yield srv
    srv.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., OpenFeatureClient]]:
    """An OpenFeature client over a published OFREPProvider, in a domain of its own."""
    domains: list[str] = []

    def make(url: str, **options: Any) -> OpenFeatureClient:
        domain = f"ofrep-{uuid.uuid4().hex[:8]}"
        domains.append(domain)
        options.setdefault("timeout", 2.0)
        api.set_provider_and_wait(OFREPProvider(url, **options), domain=domain)
        return api.get_client(domain)

    yield make
    for domain in domains:
        api.set_provider(NoOpProvider(), domain=domain)


def evaluate(server: OFREPServer, key: str, body: Any = None, **kw: Any) -> requests.Response:
    if body is None:
        body = {"context": {}}
    return requests.post(f"{server.url}/ofrep/v1/evaluate/flags/{key}", json=body, timeout=5, **kw)


def flagd_fraction(flag_key: str, key: str, weights: list[tuple[str, int]]) -> str:
    """flagd 2.x ``fractional``: murmur3 of CBOR([flagKey, targetingKey]), scaled to the
    weights (written out here, not taken from flagd-core, which the server uses)."""
    digest = mmh3.hash(cbor2.dumps([flag_key, key], canonical=True), signed=False)
    bucket = (digest * sum(w for _, w in weights)) >> 32
    for variant, weight in weights:
        if bucket < weight:
            return variant
        bucket -= weight
    raise AssertionError("unreachable")


def test_each_type_through_the_published_provider(server, connect):
    client = connect(server.url)
    assert client.get_provider_status() is ProviderStatus.READY
    gold = client.get_boolean_details(
        "new-checkout", False, EvaluationContext("u1", {"tier": "gold"})
    )
    assert (gold.value, gold.variant, gold.reason, gold.error_code) == (
        True,
        "on",
        Reason.TARGETING_MATCH,
        None,
    )
    # flag metadata merged over the flag set's, as flagd does
    assert gold.flag_metadata == {"flagSetId": "checkout", "owner": "payments"}
    tin = client.get_boolean_details("new-checkout", True, EvaluationContext("u1", {"tier": "tin"}))
    assert (tin.value, tin.variant) == (False, "off")

    banner = client.get_string_details("banner", "x")
    assert (banner.value, banner.variant, banner.reason) == ("hello", "a", Reason.STATIC)
    size = client.get_integer_details("batch-size", 1)
    assert (size.value, size.variant) == (500, "l") and type(size.value) is int
    ratio = client.get_float_details("ratio", 0.0)
    assert (ratio.value, ratio.variant, ratio.error_code) == (0.75, "high", None)
    limits = client.get_object_details("limits", {})
    assert limits.value == {"rps": 5, "burst": [1, 2]} and limits.variant == "std"

    # What the client sent: the context's targeting key and attributes, as OFREP's "context".
    sent = [r for r in server.requests if r.path.endswith("/new-checkout")]
    assert sent[0].method == "POST"
    assert sent[0].body == {"context": {"targetingKey": "u1", "tier": "gold"}}
    assert sent[0].status == 200
    assert server.requests[-1].path == "/ofrep/v1/evaluate/flags/limits"


def test_disabled_and_no_default_variant_leave_the_code_default(server, connect):
    client = connect(server.url)
    retired = client.get_boolean_details("retired", False)
    assert (retired.value, retired.variant, retired.reason, retired.error_code) == (
        False,
        None,
        Reason.DISABLED,
        None,
    )
    undecided = client.get_string_details("undecided", "code")
    assert (undecided.value, undecided.reason, undecided.error_code) == ("code", "DEFAULT", None)
    # On the wire: no "value" (OFREP's code default), a null variant.
    body = evaluate(server, "retired").json()
    metadata = {"flagSetId": "checkout"}
    assert body == {"key": "retired", "reason": "DISABLED", "variant": None, "metadata": metadata}


def test_fractional_buckets_keys_as_flagd_does(server, connect):
    client = connect(server.url)
    keys = [f"order-{i}" for i in range(200)]
    served = [client.get_boolean_details("rollout", False, EvaluationContext(k)) for k in keys]
    expected = [flagd_fraction("rollout", k, [("on", 30), ("off", 70)]) for k in keys]
    assert [d.variant for d in served] == expected
    assert all(d.reason == Reason.TARGETING_MATCH for d in served)
    assert 30 <= expected.count("on") <= 90  # ~30% of 200, both variants served
    # No targeting key: flagd's fractional has nothing to hash and falls to the default variant.
    anonymous = client.get_boolean_details("rollout", True)
    assert (anonymous.value, anonymous.variant, anonymous.reason) == (False, "off", "DEFAULT")


def test_flag_not_found_and_type_mismatch(server, connect):
    client = connect(server.url)
    missing = client.get_boolean_details("no-such-flag", True)
    assert (missing.value, missing.error_code, missing.reason) == (
        True,
        ErrorCode.FLAG_NOT_FOUND,
        Reason.ERROR,
    )
    assert "no-such-flag" in (missing.error_message or "")
    assert server.requests[-1].status == 404
    mismatch = client.get_boolean_details("banner", False)
    assert (mismatch.value, mismatch.error_code) == (False, ErrorCode.TYPE_MISMATCH)
    # The published client type-checks the JSON value strictly: an integer variant is not a
    # float (flagd-core itself would widen it) ...
    widened = client.get_float_details("batch-size", 1.5)
    assert (widened.value, widened.error_code) == (1.5, ErrorCode.TYPE_MISMATCH)
    # ... yet a boolean passes as an integer (bool is an int in Python).
    as_int = client.get_integer_details("new-checkout", 7)
    assert (as_int.value, as_int.error_code) == (False, None)


def test_invalid_definitions_answer_errors_and_the_server_lives_on(server, connect):
    doc: dict[str, Any] = {
        "flags": {
            "good": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"},
            "bad-state": {"state": "MAYBE", "variants": {"a": "A"}, "defaultVariant": "a"},
            "no-variants": {"state": "ENABLED", "defaultVariant": "a"},
            "ghost-variant": {
                "state": "ENABLED",
                "variants": {"a": "A"},
                "defaultVariant": "a",
                "targeting": {"if": [True, "zz", "a"]},
            },
            "unknown-op": {
                "state": "ENABLED",
                "variants": {"a": "A"},
                "defaultVariant": "a",
                "targeting": {"no-such-operator": [1]},
            },
        }
    }
    server.set_flags(doc)
    assert set(server.invalid_flags) == {"bad-state", "no-variants"}
    client = connect(server.url)
    assert client.get_string_value("good", "x") == "A"
    for key in ("bad-state", "no-variants", "unknown-op"):
        details = client.get_string_details(key, "x")
        assert (details.value, details.error_code) == ("x", ErrorCode.PARSE_ERROR), key
    ghost = client.get_string_details("ghost-variant", "x")
    assert (ghost.value, ghost.error_code) == ("x", ErrorCode.GENERAL)
    assert evaluate(server, "bad-state").status_code == 400

    for broken in ("{not json", {"flags": ["a"]}, {"flags": {}, "metadata": {"k": None}}):
        server.set_flags(broken)
        details = client.get_string_details("good", "x")
        assert (details.value, details.error_code) == ("x", ErrorCode.PARSE_ERROR)
        assert requests.post(server.url + BULK, json={}, timeout=5).json()["errorCode"] == (
            "PARSE_ERROR"
        )
    server.set_flags(doc)
    assert client.get_string_value("good", "x") == "A"


def test_bearer_token(server, connect):
    server.require_token("s3cret")
    anonymous = connect(server.url)
    denied = anonymous.get_boolean_details("new-checkout", True)
    assert (denied.value, denied.error_code, denied.error_message) == (
        True,
        ErrorCode.GENERAL,
        "unauthorized",
    )
    assert server.requests[-1].status == 401
    wrong = evaluate(server, "banner", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert requests.post(server.url + BULK, json={}, timeout=5).status_code == 401

    client = connect(server.url, headers_factory=lambda: {"Authorization": "Bearer s3cret"})
    assert client.get_string_value("banner", "x") == "hello"
    last = server.requests[-1]
    assert last.status == 200 and last.headers["Authorization"] == "<redacted>"
    assert all("s3cret" not in str(r.headers) for r in server.requests)
    server.require_token(None)
    assert anonymous.get_string_value("banner", "x") == "hello"


def test_rate_limit_pauses_the_client_and_failures_map_to_general(server, connect):
    client = connect(server.url)
    server.fail_with(429, retry_after=1)
    limited = client.get_string_details("banner", "x")
    assert (limited.value, limited.error_code) == ("x", ErrorCode.GENERAL)
    assert "Rate limited" in (limited.error_message or "")
    raw = evaluate(server, "banner")
    assert (raw.status_code, raw.headers["Retry-After"]) == (429, "1")
    server.clear_failure()
    seen = len(server.requests)
    paused = client.get_string_details("banner", "x")  # within Retry-After: never sent
    assert paused.error_code == ErrorCode.GENERAL and "paused" in (paused.error_message or "")
    assert len(server.requests) == seen
    time.sleep(1.1)
    assert client.get_string_value("banner", "x") == "hello"

    for status, message in ((503, "injected"), (403, "forbidden"), (400, "injected")):
        server.fail_with(status)
        details = client.get_string_details("banner", "x")
        assert (details.value, details.error_code) == ("x", ErrorCode.GENERAL), status
        assert message in (details.error_message or ""), status
        assert server.requests[-1].status == status
    server.clear_failure()
    assert client.get_string_value("banner", "x") == "hello"


def test_outage_then_restart_on_the_same_url(server, connect):
    client = connect(server.url, timeout=1.0)
    assert client.get_string_value("banner", "x") == "hello"  # a keep-alive connection is open
    url = server.url
    server.stop()
    started = time.monotonic()
    down = client.get_string_details("banner", "x")
    assert (down.value, down.error_code) == ("x", ErrorCode.GENERAL)
    assert time.monotonic() - started < 1.0
    # No provider events or status change: the published provider only raises per evaluation.
    assert client.get_provider_status() is ProviderStatus.READY
    assert server.restart() is server and server.url == url
    assert client.get_string_value("banner", "x") == "hello"
    assert server.restart().restart() is server  # restarting a running server works too
    assert client.get_string_value("banner", "x") == "hello"


def test_a_hung_server_costs_the_client_its_timeout(server, connect):
    client = connect(server.url, timeout=0.3)
    server.delay(5)
    started = time.monotonic()
    hung = client.get_string_details("banner", "x")
    assert (hung.value, hung.error_code) == ("x", ErrorCode.GENERAL)
    assert "timed out" in (hung.error_message or "").lower()
    assert 0.25 < time.monotonic() - started < 1.5
    started = time.monotonic()
    server.stop()  # the held request is cut, not waited for
    assert time.monotonic() - started < 1.0
    server.delay(0)
    server.start()
    assert client.get_string_value("banner", "x") == "hello"


def test_provider_is_ready_with_the_server_down(server, connect):
    """The published provider has no initialize: READY at once, whatever the server."""
    server.stop()
    client = connect(server.url, timeout=0.5)
    assert client.get_provider_status() is ProviderStatus.READY
    assert client.get_string_details("banner", "x").error_code == ErrorCode.GENERAL


def test_bulk_evaluation_and_etag(server):
    body = {"context": {"targetingKey": "u1", "tier": "gold"}}
    first = requests.post(server.url + BULK, json=body, timeout=5)
    assert first.status_code == 200
    etag = first.headers["ETag"]
    answer = first.json()
    assert answer["metadata"] == {"flagSetId": "checkout"}
    flags = {f["key"]: f for f in answer["flags"]}
    assert set(flags) == set(FLAGS["flags"])
    assert flags["new-checkout"]["value"] is True
    assert flags["new-checkout"]["reason"] == "TARGETING_MATCH"
    assert "value" not in flags["retired"] and flags["retired"]["reason"] == "DISABLED"

    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = requests.post(
            server.url + BULK, json=body, headers={"If-None-Match": header}, timeout=5
        )
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    other = {"context": {"targetingKey": "u1", "tier": "tin"}}
    changed = requests.post(
        server.url + BULK, json=other, headers={"If-None-Match": etag}, timeout=5
    )
    assert changed.status_code == 200 and changed.headers["ETag"] != etag

    doc = {
        "flags": {
            **FLAGS["flags"],
            "broken": {"state": "ENABLED", "variants": {}, "defaultVariant": "a"},
        }
    }
    server.set_flags(doc)
    updated = requests.post(
        server.url + BULK, json=body, headers={"If-None-Match": etag}, timeout=5
    )
    assert updated.status_code == 200 and updated.headers["ETag"] != etag
    broken = {f["key"]: f for f in updated.json()["flags"]}["broken"]
    assert broken["errorCode"] == "PARSE_ERROR" and broken["errorDetails"]

    bad = requests.post(server.url + BULK, json={"context": []}, timeout=5)
    assert bad.status_code == 400 and bad.json()["errorCode"] == "INVALID_CONTEXT"
    assert "key" not in bad.json()


def test_malformed_requests(server):
    not_json = requests.post(
        f"{server.url}/ofrep/v1/evaluate/flags/banner", data=b"{nope", timeout=5
    )
    assert not_json.status_code == 400
    assert not_json.json()["errorCode"] == "PARSE_ERROR"
    assert not_json.json()["key"] == "banner"
    assert server.requests[-1].body is None and server.requests[-1].raw == b"{nope"
    for body in ({"context": "u1"}, {"context": {"targetingKey": 7}}):
        answer = evaluate(server, "banner", body)
        assert (answer.status_code, answer.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    assert evaluate(server, "banner", {}).json()["value"] == "hello"  # no context: empty one
    assert evaluate(server, "a%20b").json()["key"] == "a b"  # keys are URL-decoded
    assert requests.post(f"{server.url}/nowhere", json={}, timeout=5).status_code == 404
    assert requests.get(f"{server.url}/ofrep/v1/evaluate/flags/banner", timeout=5).status_code == (
        405
    )
    with pytest.raises(ValueError):
        server.fail_with(200)
    server.clear_requests()
    assert server.requests == []
