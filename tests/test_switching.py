"""The same pipeline code gives the same decisions under each vendor, switched by config only."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from tests.conftest import Project, wait_for
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag, value_flag
from tests.servers.split import SplitServer, split_definition

VIPS = [f"order-{i}" for i in range(0, 300, 7)]
ORDERS = [f"order-{i}" for i in range(300)]


def pipeline(client: Any) -> list[tuple[str, bool, str, int]]:
    """Ordinary pipeline code: nothing in it knows which vendor answers."""
    rows = []
    for order in ORDERS:
        ctx = EvaluationContext(targeting_key=order)
        rows.append(
            (
                order,
                client.get_boolean_value("new-scoring-model", False, ctx),
                client.get_string_value("enrichment-source", "geo-v0", ctx),
                client.get_integer_value("batch-size", 1, ctx),
            )
        )
    return rows


@pytest.fixture
def vendors(project: Project):
    ld = LaunchDarklyServer().start()
    ld.set_flag(boolean_flag("new-scoring-model", serve=False, targets={True: VIPS}))
    ld.set_flag(value_flag("enrichment-source", ["geo-v1", "geo-v2"], 1))
    ld.set_flag(value_flag("batch-size", [500, 5000], 1))
    split = SplitServer().start()
    # Split spells the flag with underscores: flag_keys maps it.
    split.set_split(split_definition("new_scoring_model", whitelist={"on": VIPS}))
    split.set_split(
        split_definition("enrichment-source", on_percent=100, treatments=("geo-v2", "geo-v1"))
    )
    split.set_split(split_definition("batch-size", on_percent=100, treatments=("5000", "500")))
    flags = {
        "flags": {
            "new-scoring-model": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "off",
                "targeting": {"if": [{"in": [{"var": "targetingKey"}, VIPS]}, "on", "off"]},
            },
            "enrichment-source": {
                "state": "ENABLED",
                "variants": {"m": "geo-v2"},
                "defaultVariant": "m",
            },
            "batch-size": {"state": "ENABLED", "variants": {"l": 5000}, "defaultVariant": "l"},
        }
    }
    (project.root / "flags.json").write_text(json.dumps(flags))
    project.profile("launchdarkly", ld.profile())
    project.profile("split", split.profile())
    project.profile("file", {"type": "file", "path": "../flags.json"})
    project.config("launchdarkly", flag_keys={"new-scoring-model": {"split": "new_scoring_model"}})
    yield ld, split
    ld.stop()
    split.stop()


def test_same_decisions_under_each_vendor(project, vendors, monkeypatch):
    results = {}
    for provider in ("launchdarkly", "split", "file"):
        monkeypatch.setenv("FLAGWARDEN_PROVIDER", provider)
        client = flagwarden.configure(project.root / "flagwarden.yaml")
        assert flagwarden.current().profile.type == provider
        results[provider] = pipeline(client)
        flagwarden.shutdown()
    assert results["launchdarkly"] == results["split"] == results["file"]
    assert sum(row[1] for row in results["split"]) == len(VIPS)
    assert {row[2:] for row in results["file"]} == {("geo-v2", 5000)}


def test_shadow_counts_disagreements_and_serves_primary(project, vendors):
    _, split = vendors
    # The migration target disagrees on one flag.
    split.set_split(split_definition("batch-size", on_percent=100, treatments=("500", "5000")))
    project.config(
        "launchdarkly",
        flag_keys={"new-scoring-model": {"split": "new_scoring_model"}},
        shadow={"provider": "split", "sample_rate": 1.0},
    )
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    rows = pipeline(client)
    assert {row[3] for row in rows} == {5000}  # the primary's answer is served
    shadow = flagwarden.current().provider._shadow
    assert shadow is not None
    assert shadow.drain(10)
    wait_for(lambda: sum(shadow.counts.values()) == 3 * len(ORDERS))
    assert shadow.counts["mismatch"] == len(ORDERS)  # batch-size, for every order
    assert shadow.counts["match"] == 2 * len(ORDERS)  # the aliased flag and the string flag agree
    assert shadow.counts["error"] == 0
