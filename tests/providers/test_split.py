"""Split through flagwarden.configure(), against a local server speaking its protocol."""

from __future__ import annotations

import time

import mmh3
import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagType, Reason

import flagwarden
from flagwarden.providers.split import TreatmentError, parse_treatment
from tests.conftest import Project, wait_for
from tests.servers.split import SplitServer, split_definition


def split_bucket(key: str, seed: int) -> int:
    """Split's documented bucketing for algo 2: murmur3 (seed and hash unsigned) % 100 + 1."""
    return mmh3.hash(key, seed & 0xFFFFFFFF, signed=False) % 100 + 1


def configure_split(project: Project, server: SplitServer, **profile: object):
    project.profile("split", {**server.profile(), **profile})
    project.config("split")
    return flagwarden.configure(project.root / "flagwarden.yaml")


def test_percentage_rollout_matches_split_bucketing(project, split_server):
    split_server.set_split(split_definition("new-scoring-model", on_percent=30, seed=-1214))
    client = configure_split(project, split_server)
    keys = [f"order-{i}" for i in range(5000)]
    served = [
        client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
    ]
    assert served == [split_bucket(k, -1214) <= 30 for k in keys]
    assert 1300 < sum(served) < 1700


def test_traffic_allocation_matches_split_bucketing(project, split_server):
    split_server.set_split(
        split_definition(
            "new-scoring-model", on_percent=100, traffic_allocation=20, traffic_allocation_seed=99
        )
    )
    client = configure_split(project, split_server)
    keys = [f"k{i}" for i in range(3000)]
    details = [
        client.get_boolean_details("new-scoring-model", True, EvaluationContext(k)) for k in keys
    ]
    assert [d.value for d in details] == [split_bucket(k, 99) <= 20 for k in keys]
    outside = next(d for d in details if d.value is False)
    assert outside.reason == Reason.DEFAULT
    assert outside.flag_metadata["split.label"] == "not in split"


def test_labels_become_reasons(project, split_server):
    split_server.set_split(split_definition("killed-one", on_percent=100, killed=True))
    split_server.set_split(split_definition("plain", on_percent=100))
    split_server.set_split(split_definition("listed", whitelist={"on": ["vip"]}))
    split_server.set_split(split_definition("segmented", in_segment="beta"))
    split_server.set_segment("beta", ["tester"])
    client = configure_split(project, split_server)
    killed = client.get_boolean_details("killed-one", True, EvaluationContext("a"))
    assert (killed.value, killed.reason) == (False, Reason.DISABLED)
    assert (
        client.get_boolean_details("plain", False, EvaluationContext("a")).reason == Reason.DEFAULT
    )
    listed = client.get_boolean_details("listed", False, EvaluationContext("vip"))
    assert (listed.value, listed.reason) == (True, Reason.TARGETING_MATCH)
    seg = client.get_boolean_details("segmented", False, EvaluationContext("tester"))
    assert (seg.value, seg.reason, seg.flag_metadata["split.label"]) == (
        True,
        Reason.TARGETING_MATCH,
        "in segment beta",
    )
    missing = client.get_boolean_details("nope", True, EvaluationContext("a"))
    assert (missing.value, missing.error_code, missing.flag_metadata["flagwarden.source"]) == (
        True,
        "FLAG_NOT_FOUND",
        "default",
    )


def test_typed_values(project, split_server):
    split_server.set_split(
        split_definition(
            "model",
            on_percent=100,
            treatments=("v2", "v1"),
            configurations={"v2": '{"name": "v2", "threshold": 0.7}'},
        )
    )
    split_server.set_split(split_definition("batch", on_percent=100, treatments=("5000", "500")))
    client = configure_split(project, split_server)
    ctx = EvaluationContext("k")
    assert client.get_object_value("model", {}, ctx) == {"name": "v2", "threshold": 0.7}
    assert client.get_string_value("model", "x", ctx) == "v2"
    assert client.get_integer_value("batch", 1, ctx) == 5000
    assert client.get_float_value("batch", 1.0, ctx) == 5000.0
    wrong = client.get_boolean_details("model", False, ctx)
    assert (wrong.value, wrong.error_code) == (False, "TYPE_MISMATCH")


@pytest.mark.parametrize(
    ("flag_type", "treatment", "config", "expected"),
    [
        (FlagType.BOOLEAN, "on", None, True),
        (FlagType.BOOLEAN, "OFF", None, False),
        (FlagType.BOOLEAN, "true", None, True),
        (FlagType.INTEGER, "42", None, 42),
        (FlagType.FLOAT, "0.5", None, 0.5),
        (FlagType.OBJECT, "v2", '{"a": 1}', {"a": 1}),
    ],
)
def test_parse_treatment(flag_type, treatment, config, expected):
    assert parse_treatment(flag_type, treatment, config) == expected


@pytest.mark.parametrize(
    ("flag_type", "treatment", "config", "code"),
    [
        (FlagType.BOOLEAN, "maybe", None, "TYPE_MISMATCH"),
        (FlagType.INTEGER, "many", None, "TYPE_MISMATCH"),
        (FlagType.OBJECT, "v2", None, "TYPE_MISMATCH"),
        (FlagType.OBJECT, "v2", "{not json", "PARSE_ERROR"),
        (FlagType.OBJECT, "v2", "3", "TYPE_MISMATCH"),
    ],
)
def test_parse_treatment_errors(flag_type, treatment, config, code):
    with pytest.raises(TreatmentError) as info:
        parse_treatment(flag_type, treatment, config)
    assert info.value.code == code


def test_polled_change_is_served(project, split_server):
    split_server.set_split(split_definition("new-scoring-model", on_percent=0))
    client = configure_split(project, split_server)
    ctx = EvaluationContext("k")
    assert client.get_boolean_value("new-scoring-model", True, ctx) is False
    split_server.set_split(split_definition("new-scoring-model", on_percent=100))
    wait_for(lambda: client.get_boolean_value("new-scoring-model", False, ctx), timeout=10)


def test_not_ready_never_blocks_an_evaluation(project):
    dead = SplitServer()  # never started: nothing listens on its port
    project.profile("split", dead.profile(start_wait=0.2))
    project.config("split", fallback={"snapshot": None})
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    start = time.perf_counter()
    for _ in range(200):
        details = client.get_boolean_details("new-scoring-model", False, EvaluationContext("k"))
    elapsed = time.perf_counter() - start
    assert details.error_code == "PROVIDER_NOT_READY"
    assert details.flag_metadata["flagwarden.source"] == "default"
    assert elapsed < 1.0  # the published provider sleeps 100 ms per call here


def test_shutdown_destroys_the_factory(project, split_server):
    split_server.set_split(split_definition("f", on_percent=100))
    client = configure_split(project, split_server)
    vendor = flagwarden.current().provider.vendor
    assert client.get_boolean_value("f", False, EvaluationContext("k")) is True
    factory = vendor._factory
    flagwarden.shutdown()
    assert factory.destroyed
