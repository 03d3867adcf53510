"""The flagd file provider: in-process evaluation, reload on change, broken files lose nothing."""

from __future__ import annotations

import json
import threading

import cbor2
import mmh3
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent

import flagwarden
from tests.conftest import Project, wait_for

FLAGS = {
    "flags": {
        "new-scoring-model": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 30], ["off", 70]]},
        },
        "tier-gate": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", "off"]},
        },
        "disabled": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
    }
}


def flagd_fraction_on(flag_key: str, key: str, percent: int) -> bool:
    """flagd 2.x `fractional`: murmur3 of CBOR([flagKey, targetingKey]), scaled to the weights."""
    digest = mmh3.hash(cbor2.dumps([flag_key, key], canonical=True), signed=False)
    return (digest * 100) >> 32 < percent


def setup(project: Project, suffix: str = ".json") -> tuple:
    flag_file = project.root / f"flags{suffix}"
    flag_file.write_text(json.dumps(FLAGS))
    project.profile("file", {"type": "file", "path": f"../flags{suffix}", "poll_interval": 0.05})
    project.config("file")
    return flagwarden.configure(project.root / "flagwarden.yaml"), flag_file


def test_fractional_rollout_and_targeting(project):
    client, _ = setup(project)
    keys = [f"order-{i}" for i in range(3000)]
    served = [
        client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
    ]
    assert served == [flagd_fraction_on("new-scoring-model", k, 30) for k in keys]
    gold = client.get_boolean_details("tier-gate", False, EvaluationContext("k", {"tier": "gold"}))
    assert gold.value is True and gold.flag_metadata["flagwarden.source"] == "file"
    assert (
        client.get_boolean_value("tier-gate", True, EvaluationContext("k", {"tier": "tin"}))
        is False
    )
    off = client.get_boolean_details("disabled", False, EvaluationContext("k"))
    assert (off.value, off.reason) == (False, "DISABLED")


def test_yaml_file_reload_emits_configuration_changed(project):
    client, flag_file = setup(project, ".yaml")
    changed: list[object] = []
    seen = threading.Event()

    def on_change(details: object) -> None:
        changed.append(details)
        seen.set()

    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    try:
        ctx = EvaluationContext("k", {"tier": "tin"})
        assert client.get_boolean_value("tier-gate", True, ctx) is False
        doc = json.loads(json.dumps(FLAGS))
        doc["flags"]["tier-gate"]["defaultVariant"] = "on"
        doc["flags"]["tier-gate"].pop("targeting")
        flag_file.write_text(json.dumps(doc))  # JSON is valid YAML
        wait_for(lambda: client.get_boolean_value("tier-gate", False, ctx))
        assert seen.wait(5)
        assert "tier-gate" in changed[0].flags_changed
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)


def test_broken_reload_keeps_previous_flags(project):
    client, flag_file = setup(project)
    provider = flagwarden.current().provider.vendor
    flag_file.write_text("{ not json")
    wait_for(lambda: provider._stamp == provider._file_stamp())
    details = client.get_boolean_details(
        "tier-gate", False, EvaluationContext("k", {"tier": "gold"})
    )
    assert details.value is True and details.error_code is None


def test_broken_file_at_start_serves_defaults(project):
    (project.root / "flags.json").write_text('{"flags": {"x": {"state": "ENABLED"}}}')
    project.profile("file", {"type": "file", "path": "../flags.json"})
    project.config("file")
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    details = client.get_boolean_details("x", True, EvaluationContext("k"))
    assert (details.value, details.flag_metadata["flagwarden.source"]) == (True, "default")


def test_cold_start_with_the_flag_file_gone_serves_the_snapshot(project):
    client, flag_file = setup(project)
    runtime = flagwarden.current()
    wait_for(lambda: runtime.provider.snapshot_writer.writes >= 1)
    keys = [f"order-{i}" for i in range(500)]
    before = [
        client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
    ]
    flagwarden.shutdown()
    flag_file.rename(flag_file.with_suffix(".away"))  # the shared mount is gone
    client = flagwarden.configure(project.root / "flagwarden.yaml")
    details = [
        client.get_boolean_details("new-scoring-model", False, EvaluationContext(k)) for k in keys
    ]
    assert [d.value for d in details] == before
    assert {d.flag_metadata["flagwarden.source"] for d in details} == {"snapshot"}
    flag_file.with_suffix(".away").rename(flag_file)  # back: answers come from the file again
    wait_for(
        lambda: (
            client.get_boolean_details(
                "new-scoring-model", False, EvaluationContext("k")
            ).flag_metadata["flagwarden.source"]
            == "file"
        )
    )
