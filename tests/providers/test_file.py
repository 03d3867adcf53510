"""The flagd file provider: in-process evaluation, reload on change, broken files lose nothing."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import cbor2
import mmh3
import pytest
import yaml
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagType
from openfeature.provider import ProviderStatus

import flagwarden
from flagwarden.errors import ConfigError
from flagwarden.providers import file as file_module
from flagwarden.providers.file import FileProvider, read_flag_file
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


def test_a_file_caught_mid_write_is_judged_on_a_second_look(tmp_path: Path):
    """Truncated, then written: the empty moment between is not an outage."""
    flag_file = tmp_path / "flags.json"
    flag_file.write_text(json.dumps(FLAGS))
    provider = FileProvider(flag_file, poll_interval=3600)  # the test is the only poller
    provider.initialize(EvaluationContext())

    def enabled(provider: FileProvider) -> bool:
        return provider.resolve(FlagType.BOOLEAN, "disabled", False, EvaluationContext("k")).value

    try:
        flag_file.write_text("")
        assert provider.reload_if_changed() is False
        assert provider.status is ProviderStatus.READY
        doc = json.loads(json.dumps(FLAGS))
        doc["flags"]["disabled"]["state"] = "ENABLED"
        flag_file.write_text(json.dumps(doc))
        assert provider.reload_if_changed() is True
        assert enabled(provider)
        flag_file.write_text("{ not json")
        assert provider.reload_if_changed() is False
        assert provider.status is ProviderStatus.READY
        assert provider.reload_if_changed() is False  # unchanged on the second look: broken
        assert provider.status is ProviderStatus.STALE
        assert enabled(provider)
    finally:
        provider.shutdown()


def test_a_reload_flagd_core_refuses_keeps_the_old_flags_and_all_derived_from_them(
    project: Project,
):
    """Nothing derived from a refused file is kept: variants, key dependence, invalid flags."""
    client, flag_file = setup(project)
    chain = flagwarden.current().provider
    vendor = chain.vendor
    keys = [f"order-{i}" for i in range(300)]
    gold = EvaluationContext("k", {"tier": "gold"})

    def rollout() -> list[bool]:
        return [
            client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
        ]

    before, document = rollout(), vendor.export_snapshot()
    assert before == [flagd_fraction_on("new-scoring-model", k, 30) for k in keys]
    assert vendor.depends_on_key("new-scoring-model") and vendor.invalid_flags == {}
    doc = json.loads(json.dumps(FLAGS))
    doc["flags"]["new-scoring-model"].pop("targeting")  # static: no longer key-dependent
    doc["flags"]["tier-gate"]["variants"] = {"on": "yes", "off": "no"}  # strings, not booleans
    doc["flags"]["broken"] = {"state": "ENABLED"}
    # Passes every check of ours, yet flagd-core refuses the whole file: its $ref substitution
    # is re.sub(..., json.dumps(rule), ...), whose replacement reads the \u00fc that
    # json.dumps writes for a non-ASCII character as a bad regex escape.
    doc["$evaluators"] = {"in-zurich": {"==": [{"var": "city"}, "Zürich"]}}
    flag_file.write_text(json.dumps(doc))
    assert [p.flag for p in read_flag_file(flag_file).problems] == ["broken"]
    outage = wait_for(lambda: chain.outage)
    assert "flagd-core refused the file" in outage.cause
    assert vendor.status is ProviderStatus.STALE
    assert rollout() == before and vendor.depends_on_key("new-scoring-model") is True
    d = client.get_boolean_details("tier-gate", False, gold)  # still the old boolean variants
    assert (d.value, d.error_code, d.flag_metadata["flagwarden.source"]) == (True, None, "file")
    assert vendor.invalid_flags == {} and vendor.export_snapshot() == document
    d = client.get_boolean_details("broken", True, EvaluationContext("k"))
    assert d.error_code is ErrorCode.FLAG_NOT_FOUND
    del doc["$evaluators"]  # the same file flagd-core takes: everything moves together
    flag_file.write_text(json.dumps(doc))
    wait_for(lambda: chain.outage is None)
    assert vendor.depends_on_key("new-scoring-model") is False
    assert list(vendor.invalid_flags) == ["broken"]
    assert client.get_string_value("tier-gate", "dflt", gold) == "yes"
    assert client.get_boolean_details("tier-gate", False, gold).error_code is (
        ErrorCode.TYPE_MISMATCH
    )


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


# -- flagd semantics: no default variant, invalid flags, types, a file that goes away ------

FLAGD_DATA = Path(__file__).parent / "flagd"


class LogRecorder:
    """Stands in for the module's structlog logger: (level, event, fields) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []

    def __getattr__(self, level: str):  # warning, error, info, exception...
        return lambda event, **fields: self.calls.append((level, event, fields))

    def named(self, event: str) -> list[dict[str, object]]:
        return [fields for _, name, fields in self.calls if name == event]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    recorder = LogRecorder()
    monkeypatch.setattr(file_module, "_log", recorder)
    return recorder


def serve(project: Project, doc: dict | str, suffix: str = ".json") -> tuple:
    """configure() over a flag file holding ``doc`` (YAML/JSON text, or a document to dump)."""
    flag_file = project.root / f"flags{suffix}"
    if not isinstance(doc, str):
        doc = yaml.safe_dump(doc) if suffix == ".yaml" else json.dumps(doc)
    flag_file.write_text(doc)
    project.profile("file", {"type": "file", "path": f"../flags{suffix}", "poll_interval": 0.05})
    project.config("file")
    return flagwarden.configure(project.root / "flagwarden.yaml"), flag_file


NO_DEFAULT = {
    "flags": {
        "null-default": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": None,
        },
        "no-default": {"state": "ENABLED", "variants": {"small": 10, "big": 1000}},
        "gold-or-null": {
            "state": "ENABLED",
            "variants": {"gold": "GOLD", "tin": "TIN"},
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "gold", None]},
        },
        "gold-or-nothing": {
            "state": "ENABLED",
            "variants": {"gold": "GOLD", "tin": "TIN"},
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "gold"]},
        },
    }
}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_no_default_variant_answers_the_callers_default_and_targeting_still_works(
    project: Project, suffix: str
):
    """flagd's semantics (flagd-testbed evaluator testkit, no-default-variant.feature)."""
    client, _ = serve(project, NO_DEFAULT, suffix)
    assert flagwarden.current().provider.vendor.invalid_flags == {}
    ctx = EvaluationContext("k", {"tier": "tin"})
    for flag, default in [("null-default", True), ("null-default", False)]:
        d = client.get_boolean_details(flag, default, ctx)
        assert (d.value, d.reason, d.variant, d.error_code) == (default, "DEFAULT", None, None)
        assert d.flag_metadata["flagwarden.source"] == "file"
    d = client.get_integer_details("no-default", 100, ctx)
    assert (d.value, d.reason, d.error_code) == (100, "DEFAULT", None)
    for flag in ("gold-or-null", "gold-or-nothing"):
        tin = client.get_string_details(flag, "Retired", ctx)
        assert (tin.value, tin.reason, tin.variant, tin.error_code) == (
            "Retired",
            "DEFAULT",
            None,
            None,
        )
        gold = client.get_string_details(flag, "Retired", EvaluationContext("k", {"tier": "gold"}))
        assert (gold.value, gold.reason, gold.variant) == ("GOLD", "TARGETING_MATCH", "gold")


IGNORED = (
    "ignored: is not a flagd flag field (state, variants, defaultVariant, targeting, metadata)"
)
BROKEN = {
    "bad-default": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "maybe"},
    "no-variants": {"state": "ENABLED", "defaultVariant": "on"},
    "not-a-mapping": ["on", "off"],
    "bad-state": {"state": "ON", "variants": {"on": True}, "defaultVariant": "on"},
    "bad-targeting": {
        "state": "ENABLED",
        "variants": {"on": True},
        "defaultVariant": "on",
        "targeting": "on",
    },
}
BROKEN_FIELDS = {
    "bad-default": ("flags.bad-default.defaultVariant", "'maybe' is not one of the variants"),
    "no-variants": ("flags.no-variants.variants", "is required but missing"),
    "not-a-mapping": ("flags.not-a-mapping", "expected a flag definition mapping, got list"),
    "bad-state": ("flags.bad-state.state", "expected ENABLED or DISABLED, got 'ON'"),
    "bad-targeting": ("flags.bad-targeting.targeting", "expected a JSON Logic rule"),
}


def test_a_broken_flag_is_skipped_and_reported_while_the_others_serve(
    project: Project, logs: LogRecorder
):
    doc = json.loads(json.dumps(FLAGS))
    doc["flags"].update(BROKEN)
    doc["flags"]["tier-gate"]["description"] = "flagd ignores unknown fields; flagd-core did not"
    client, flag_file = serve(project, doc)
    runtime = flagwarden.current()
    vendor = runtime.provider.vendor
    assert vendor.status is ProviderStatus.READY and runtime.provider.outage is None
    gold = client.get_boolean_details("tier-gate", False, EvaluationContext("k", {"tier": "gold"}))
    assert (gold.value, gold.error_code, gold.flag_metadata["flagwarden.source"]) == (
        True,
        None,
        "file",
    )
    assert set(vendor.invalid_flags) == set(BROKEN)
    for key, (where, problem) in BROKEN_FIELDS.items():
        assert vendor.invalid_flags[key].startswith(f"{where}: {problem}")
        d = client.get_boolean_details(key, True, EvaluationContext("k"))
        assert (d.value, d.reason, d.error_code) == (True, "ERROR", ErrorCode.PARSE_ERROR)
        assert where in d.error_message and problem in d.error_message
        assert str(vendor.path) in d.error_message and vendor.path.samefile(flag_file)
    # For `flagwarden check`: the file, the flag and the field of every problem.
    problems = read_flag_file(flag_file).problems
    assert [(p.path, p.flag, p.field) for p in problems if p.skipped] == [
        (str(flag_file), key, where) for key, (where, _) in BROKEN_FIELDS.items()
    ]
    assert [(p.flag, p.field, p.problem) for p in problems if not p.skipped] == [
        ("tier-gate", "flags.tier-gate.description", IGNORED)
    ]
    reported = logs.named("flagwarden.flag_definition_invalid")
    assert [(r["path"], r["flag"], r["field"]) for r in reported] == [
        (str(vendor.path), key, where) for key, (where, _) in BROKEN_FIELDS.items()
    ]
    noted = logs.named("flagwarden.flag_field_ignored")
    assert [(r["flag"], r["field"], r["skipped"]) for r in noted] == [
        ("tier-gate", "flags.tier-gate.description", False)
    ]
    time.sleep(0.3)  # six polls of an unchanged file: no new report
    assert len(logs.named("flagwarden.flag_definition_invalid")) == len(BROKEN)
    del doc["flags"]["bad-default"]  # a reload reports what is still broken, once
    flag_file.write_text(json.dumps(doc))
    wait_for(lambda: "bad-default" not in vendor.invalid_flags)
    time.sleep(0.2)
    assert len(logs.named("flagwarden.flag_definition_invalid")) == 2 * len(BROKEN) - 1
    d = client.get_boolean_details("bad-default", True, EvaluationContext("k"))
    assert (d.value, d.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)


def test_every_problem_of_a_flag_is_reported_and_an_ignored_field_is_only_a_note(
    project: Project, logs: LogRecorder
):
    doc = json.loads(json.dumps(FLAGS))
    doc["flags"]["typo"] = {"stat": "ENABLED", "variants": {}, "defaultVariant": "on"}
    doc["flags"]["all-wrong"] = {
        "state": "ON",
        "variants": {"on": True, "off": None},
        "defaultVariant": "maybe",
        "targeting": "on",
        "metadata": {"owner": ["team-a"], "tier": {"a": 1}},
    }
    # A typo in a field flagd ignores: noted, and the flag still serves as flagd serves it.
    doc["flags"]["tier-gate"]["defaultVarient"] = "on"
    client, flag_file = serve(project, doc)
    problems = read_flag_file(flag_file).problems
    assert [(p.flag, p.field, p.problem, p.skipped) for p in problems] == [
        ("tier-gate", "flags.tier-gate.defaultVarient", IGNORED, False),
        ("typo", "flags.typo.state", "is required but missing", True),
        ("typo", "flags.typo.variants", "expected a non-empty mapping of variants, got {}", True),
        ("typo", "flags.typo.defaultVariant", "'on' is not one of the variants []", True),
        ("typo", "flags.typo.stat", IGNORED, False),
        ("all-wrong", "flags.all-wrong.state", "expected ENABLED or DISABLED, got 'ON'", True),
        ("all-wrong", "flags.all-wrong.variants.off", "null is not a variant value", True),
        (
            "all-wrong",
            "flags.all-wrong.defaultVariant",
            "'maybe' is not one of the variants ['off', 'on']",
            True,
        ),
        (
            "all-wrong",
            "flags.all-wrong.targeting",
            "expected a JSON Logic rule (a mapping), got 'on'",
            True,
        ),
        (
            "all-wrong",
            "flags.all-wrong.metadata",
            "'owner': ['team-a'] is not a string, number or boolean",
            True,
        ),
        (
            "all-wrong",
            "flags.all-wrong.metadata",
            "'tier': {'a': 1} is not a string, number or boolean",
            True,
        ),
    ]
    assert str(problems[4]) == f"{flag_file}: flags.typo.stat: {IGNORED}"
    vendor = flagwarden.current().provider.vendor
    assert set(vendor.invalid_flags) == {"typo", "all-wrong"}  # only the skipped ones
    assert vendor.invalid_flags["typo"] == (
        "flags.typo.state: is required but missing; "
        "flags.typo.variants: expected a non-empty mapping of variants, got {}; "
        "flags.typo.defaultVariant: 'on' is not one of the variants []"
    )
    d = client.get_boolean_details("typo", True, EvaluationContext("k"))
    assert (d.value, d.error_code) == (True, ErrorCode.PARSE_ERROR)
    assert "flags.typo.state: is required" in d.error_message
    assert "flags.typo.defaultVariant: 'on' is not one of" in d.error_message
    d = client.get_boolean_details("all-wrong", True, EvaluationContext("k"))
    assert (d.value, d.error_code) == (True, ErrorCode.PARSE_ERROR)
    assert d.error_message.count("; flags.all-wrong.") == 5
    for tier, served in (("gold", True), ("tin", False)):  # defaultVarient changes nothing
        d = client.get_boolean_details(
            "tier-gate", not served, EvaluationContext("k", {"tier": tier})
        )
        assert (d.value, d.error_code, d.flag_metadata["flagwarden.source"]) == (
            served,
            None,
            "file",
        )
    assert len(logs.named("flagwarden.flag_definition_invalid")) == 9
    assert [r["field"] for r in logs.named("flagwarden.flag_field_ignored")] == [
        "flags.tier-gate.defaultVarient",
        "flags.typo.stat",
    ]


DATED_YAML = """\
metadata: {team: growth, ratio: .nan}
$evaluators:
  is-gold: {"==": [{var: tier}, gold]}
  signed-up-early: {"<": [{var: signup}, 2024-01-01]}
flags:
  sale:
    state: ENABLED
    variants: {"yes": true, "no": false}
    defaultVariant: "no"
    targeting:
      if: [{">=": [{var: signup}, 2024-01-01]}, "yes", "no"]
  launch-day:
    state: ENABLED
    variants: {day: 2024-03-01, never: none}
    defaultVariant: never
  early-bird:
    state: ENABLED
    variants: {"yes": true, "no": false}
    defaultVariant: "no"
    targeting: {if: [{$ref: signed-up-early}, "yes", "no"]}
  gold-gate:
    state: ENABLED
    variants: {"yes": true, "no": false}
    defaultVariant: "no"
    targeting: {if: [{$ref: is-gold}, "yes", "no"]}
  noted:
    created: 2024-01-01
    state: ENABLED
    variants: {"yes": true}
    defaultVariant: "yes"
"""


def test_a_value_json_cannot_carry_skips_only_its_flag_or_evaluator(project: Project):
    """An unquoted YAML date made flagd-core (or json.dumps) fail on the whole file."""
    client, flag_file = serve(project, DATED_YAML, ".yaml")
    runtime = flagwarden.current()
    vendor = runtime.provider.vendor
    assert vendor.status is ProviderStatus.READY and runtime.provider.outage is None
    misfit = "holds a value JSON cannot carry ({}): quote it in YAML"
    problems = read_flag_file(flag_file).problems
    assert [(p.flag, p.field, p.problem, p.skipped) for p in problems] == [
        (None, "metadata.ratio", misfit.format("float nan"), True),
        (None, "$evaluators.signed-up-early.<.1", misfit.format("date"), True),
        ("sale", "flags.sale.targeting.if.0.>=.1", misfit.format("date"), True),
        ("launch-day", "flags.launch-day.variants.day", misfit.format("date"), True),
        ("noted", "flags.noted.created", IGNORED, False),  # flagd ignores it: so do we
    ]
    assert set(vendor.invalid_flags) == {"sale", "launch-day"}
    ctx = EvaluationContext("k", {"tier": "gold", "signup": "2023-05-01"})
    for key in ("sale", "launch-day"):
        d = client.get_boolean_details(key, False, ctx)
        assert (d.value, d.error_code) == (False, ErrorCode.PARSE_ERROR)
        assert misfit.format("date") in d.error_message
    d = client.get_boolean_details("gold-gate", False, ctx)  # the other evaluator still serves
    assert (d.value, d.error_code, d.flag_metadata["flagwarden.source"]) == (True, None, "file")
    assert d.flag_metadata.get("team") is None  # the flag set's metadata is left out whole
    assert client.get_boolean_value("noted", False, ctx) is True
    # A flag naming the evaluator left out: flagd-core's own answer to an unknown $ref.
    d = client.get_boolean_details("early-bird", False, ctx)
    assert (d.value, d.error_code) == (False, ErrorCode.PARSE_ERROR)


def test_unquoted_yaml_on_off_variant_names_are_reported(project: Project):
    variants = "    state: ENABLED\n    variants: {on: true, off: false}\n"
    text = f"flags:\n  f:\n{variants}    defaultVariant: 'on'\n  g:\n{variants}"
    client, _ = serve(project, text, ".yaml")
    invalid = flagwarden.current().provider.vendor.invalid_flags
    assert set(invalid) == {"f", "g"} and "quote it in YAML" in invalid["f"]
    # Every name is reported; whether 'on' is a variant cannot be told from unusable names.
    assert invalid["f"] == (
        "flags.f.variants: variant name True is not a string (quote it in YAML); "
        "flags.f.variants: variant name False is not a string (quote it in YAML)"
    )
    d = client.get_boolean_details("f", False, EvaluationContext("k"))
    assert (d.value, d.error_code) == (False, ErrorCode.PARSE_ERROR)


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        (None, None, "cannot read the flag file (No such file or directory)"),
        ("{ not json", None, "malformed flag file"),
        ('{"flag": {}}', "flags", "expected a mapping of flag definitions"),
        ('{"flags": [{"key": "a"}]}', "flags", "expected a mapping of flag definitions"),
    ],
)
def test_read_flag_file_raises_for_the_whole_file(tmp_path: Path, content, field, problem):
    path = tmp_path / "flags.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        read_flag_file(path)
    assert (caught.value.file, caught.value.field) == (str(path), field)
    assert problem in caught.value.problem


TYPED = {
    "flags": {
        "bool": {"state": "ENABLED", "variants": {"on": True}, "defaultVariant": "on"},
        "int": {"state": "ENABLED", "variants": {"one": 1, "ten": 10}, "defaultVariant": "ten"},
        "float": {"state": "ENABLED", "variants": {"half": 0.5}, "defaultVariant": "half"},
        "str": {"state": "ENABLED", "variants": {"hi": "hi"}, "defaultVariant": "hi"},
        "obj": {"state": "ENABLED", "variants": {"o": {"a": 1}}, "defaultVariant": "o"},
        "bool-targeted": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "on", "off"]},
        },
        "disabled": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
    }
}
# What each flag answers when asked for as each type; None: TYPE_MISMATCH (the caller's default).
TYPE_TABLE = {
    "bool": {"boolean": True, "integer": None, "float": None, "string": None, "object": None},
    "int": {"boolean": None, "integer": 10, "float": 10.0, "string": None, "object": None},
    "float": {"boolean": None, "integer": None, "float": 0.5, "string": None, "object": None},
    "str": {"boolean": None, "integer": None, "float": None, "string": "hi", "object": None},
    "obj": {"boolean": None, "integer": None, "float": None, "string": None, "object": {"a": 1}},
    "bool-targeted": {
        "boolean": True,
        "integer": None,
        "float": None,
        "string": None,
        "object": None,
    },
}
DEFAULTS = {"boolean": False, "integer": 7, "float": 0.25, "string": "dflt", "object": {"d": 0}}


def test_type_mismatches_answer_the_callers_default(project: Project):
    """Every flag type asked for as every type: bool is not a number here (flagd-core says 1.0).

    The expectations follow flagd-testbed's evaluator testkit (errors.feature, "Type mismatch
    across the value types"), which names the Python case: isinstance(True, int) is True.
    """
    client, _ = serve(project, TYPED)
    ctx = EvaluationContext("k", {"tier": "gold"})
    wrong = []
    for flag, answers in TYPE_TABLE.items():
        for kind, expected in answers.items():
            default = DEFAULTS[kind]
            d = getattr(client, f"get_{kind}_details")(flag, default, ctx)
            got = (d.value, type(d.value), d.error_code)
            if expected is None:
                want = (default, type(default), ErrorCode.TYPE_MISMATCH)
                if got != want or d.reason != "ERROR":
                    wrong.append((flag, kind, got, d.reason))
            elif got != (expected, type(expected), None):
                wrong.append((flag, kind, got, d.reason))
    assert wrong == []
    off = client.get_float_details("disabled", 0.25, ctx)  # DISABLED serves the caller's default
    assert (off.value, off.reason, off.error_code) == (0.25, "DISABLED", None)


def test_deleted_flag_file_opens_an_outage_window_and_restoring_it_closes_it(
    project: Project, logs: LogRecorder
):
    client, flag_file = setup(project)
    chain = flagwarden.current().provider
    keys = [f"order-{i}" for i in range(200)]
    gold = EvaluationContext("k", {"tier": "gold"})

    def answers() -> list[bool]:
        return [
            client.get_boolean_value("new-scoring-model", False, EvaluationContext(k)) for k in keys
        ]

    before = answers()
    seen: dict[ProviderEvent, list[object]] = {e: [] for e in ProviderEvent}
    handlers = {e: (lambda d, e=e: seen[e].append(d)) for e in ProviderEvent}
    api.add_handler(ProviderEvent.PROVIDER_STALE, handlers[ProviderEvent.PROVIDER_STALE])
    try:
        flag_file.unlink()
        outage = wait_for(lambda: chain.outage)
        assert chain.status is ProviderStatus.STALE and chain.vendor.status is ProviderStatus.STALE
        assert str(chain.vendor.path) in outage.cause and "No such file" in outage.cause
        wait_for(lambda: seen[ProviderEvent.PROVIDER_STALE])
        assert str(chain.vendor.path) in seen[ProviderEvent.PROVIDER_STALE][0].message
        # The last good definitions keep answering, from the vendor's memory.
        assert answers() == before
        d = client.get_boolean_details("tier-gate", False, gold)
        assert (d.value, d.error_code, d.flag_metadata["flagwarden.source"]) == (True, None, "file")
        time.sleep(0.3)  # six polls of a missing file: reported once
        assert len(logs.named("flagwarden.flag_file_unusable")) == 1
        assert len(seen[ProviderEvent.PROVIDER_STALE]) == 1
        for event in (ProviderEvent.PROVIDER_READY, ProviderEvent.PROVIDER_CONFIGURATION_CHANGED):
            api.add_handler(event, handlers[event])
        doc = json.loads(json.dumps(FLAGS))
        doc["flags"]["tier-gate"]["defaultVariant"] = "on"
        doc["flags"]["tier-gate"].pop("targeting")
        flag_file.write_text(json.dumps(doc))
        wait_for(lambda: chain.outage is None)
        assert chain.status is ProviderStatus.READY
        window = chain.outages[-1]
        assert window is outage and window.ended_at is not None
        assert window.served.get("file", 0) >= len(keys) + 1
        wait_for(lambda: seen[ProviderEvent.PROVIDER_CONFIGURATION_CHANGED])
        assert seen[ProviderEvent.PROVIDER_READY]
        assert client.get_boolean_value("tier-gate", False, EvaluationContext("k")) is True
        assert len(logs.named("flagwarden.flag_file_recovered")) == 1
    finally:
        for event, handler in handlers.items():
            with contextlib.suppress(ValueError):
                api.remove_handler(event, handler)


def test_unparseable_then_unreadable_file_is_one_outage_reported_per_problem(
    project: Project, logs: LogRecorder
):
    client, flag_file = setup(project)
    chain = flagwarden.current().provider
    gold = EvaluationContext("k", {"tier": "gold"})
    flag_file.write_text("{ not json")
    outage = wait_for(lambda: chain.outage)
    assert "malformed flag file" in outage.cause and chain.status is ProviderStatus.STALE
    flag_file.write_text("{ not json")  # touched again, the same problem: no new report
    wait_for(lambda: chain.vendor._stamp == chain.vendor._file_stamp())
    assert len(logs.named("flagwarden.flag_file_unusable")) == 1
    flag_file.unlink()
    flag_file.mkdir()  # unreadable, even for root
    wait_for(lambda: len(logs.named("flagwarden.flag_file_unusable")) == 2)
    assert "Is a directory" in logs.named("flagwarden.flag_file_unusable")[1]["error"]
    assert client.get_boolean_value("tier-gate", False, gold) is True
    time.sleep(0.3)
    assert len(logs.named("flagwarden.flag_file_unusable")) == 2
    flag_file.rmdir()
    flag_file.write_text(json.dumps(FLAGS))
    wait_for(lambda: chain.outage is None)
    assert [w.cause for w in chain.outages] == [outage.cause]
    assert chain.vendor.status is ProviderStatus.READY


def test_malformed_file_at_start_recovers_when_fixed(project: Project):
    client, flag_file = serve(project, "{ not json")
    chain = flagwarden.current().provider
    assert chain.vendor.status is ProviderStatus.ERROR and chain.outage is not None
    d = client.get_boolean_details("tier-gate", False, EvaluationContext("k", {"tier": "gold"}))
    assert (d.value, d.flag_metadata["flagwarden.source"]) == (False, "default")
    flag_file.write_text(json.dumps(FLAGS))
    wait_for(lambda: chain.outage is None)
    assert chain.vendor.status is ProviderStatus.READY and len(chain.outages) == 1
    assert client.get_boolean_value("tier-gate", False, EvaluationContext("k", {"tier": "gold"}))


def test_the_watcher_survives_an_exception(
    project: Project, logs: LogRecorder, monkeypatch: pytest.MonkeyPatch
):
    client, flag_file = setup(project)
    vendor = flagwarden.current().provider.vendor

    def boom(path: Path) -> object:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(file_module, "read_flag_file", boom)
    flag_file.write_text(json.dumps(FLAGS) + "\n")
    # Whatever fails a load is a failed load: STALE, not READY on definitions it lost.
    wait_for(lambda: logs.named("flagwarden.flag_file_unusable"))
    time.sleep(0.2)  # the same failure every poll: logged once
    (unusable,) = logs.named("flagwarden.flag_file_unusable")
    assert "RuntimeError: disk on fire" in unusable["error"]
    assert vendor.status is ProviderStatus.STALE and vendor._watcher.is_alive()
    monkeypatch.setattr(file_module, "read_flag_file", read_flag_file)
    doc = json.loads(json.dumps(FLAGS))
    doc["flags"]["tier-gate"]["defaultVariant"] = "on"
    doc["flags"]["tier-gate"].pop("targeting")
    flag_file.write_text(json.dumps(doc))
    wait_for(lambda: client.get_boolean_value("tier-gate", False, EvaluationContext("k")))


# flagd's own test files (openfeature-provider-flagd's tests/flags, see flagd/README.md):
# file -> (field of the one invalid flag "basic-flag", or None; what basic-flag answers).
FLAGD_FILES = {
    "basic-flag.json": (None, (False, "STATIC", None)),
    "basic-flag.yaml": (None, (False, "STATIC", None)),
    "basic-flag-without-default.json": (None, (True, "DEFAULT", None)),
    "basic-flag-disabled.json": (None, (True, "DISABLED", None)),
    "basic-flag-combined-metadata.json": (None, (False, "STATIC", None)),
    "invalid-flag-set-metadata.json": (None, (False, "STATIC", None)),
    "invalid-flag-set-metadata-list.json": (None, (False, "STATIC", None)),
    "basic-flag-broken-state.json": ("state", None),
    "basic-flag-no-state.json": ("state", None),
    "basic-flag-broken-variants.json": ("variants", None),
    "basic-flag-broken-default.json": ("defaultVariant", None),
    "basic-flag-wrong-variant.json": ("defaultVariant", None),
    "basic-flag-broken-targeting.json": ("targeting", None),
    "invalid-flag-metadata.json": ("metadata", None),
    "invalid-flag-metadata-list.json": ("metadata", None),
}


@pytest.mark.parametrize("name", sorted(FLAGD_FILES))
def test_flagd_provider_flag_files(project: Project, name: str):
    """The flag files of openfeature-provider-flagd 0.6.1 (PyPI sdist, tests/flags).

    Its own tests expect the broken ones to refuse the whole file (FLAG_NOT_FOUND); here only
    the broken flag is refused, with PARSE_ERROR naming the field.
    """
    field, answer = FLAGD_FILES[name]
    source = FLAGD_DATA / name
    client, flag_file = serve(project, source.read_text(), source.suffix)
    vendor = flagwarden.current().provider.vendor
    d = client.get_boolean_details("basic-flag", True, EvaluationContext("k"))
    if field is None:
        assert vendor.invalid_flags == {}
        assert (d.value, d.reason, d.error_code) == answer
    else:
        assert list(vendor.invalid_flags) == ["basic-flag"]
        assert vendor.invalid_flags["basic-flag"].startswith(f"flags.basic-flag.{field}: ")
        assert (d.value, d.reason, d.error_code) == (True, "ERROR", ErrorCode.PARSE_ERROR)
    set_problems = [p for p in read_flag_file(flag_file).problems if p.flag is None]
    assert [p.field for p in set_problems] == (["metadata"] if "set-metadata" in name else [])
    if name == "basic-flag-combined-metadata.json":  # flag metadata wins over the set's
        assert {"string": "a", "integer": 1, "flag-set-string": "c"}.items() <= (
            d.flag_metadata.items()
        )


@pytest.mark.parametrize(
    "name",
    [
        "invalid-fractional-args.json",
        "invalid-fractional-args-wrong-content.json",
        "invalid-fractional-weights-strings.json",
        "invalid-semver-args.json",
        "invalid-semver-op.json",
        "invalid-stringcomp-args.json",
    ],
)
def test_flagd_provider_broken_targeting_rules_fall_back_to_the_default_variant(
    project: Project, name: str
):
    """A JSON Logic error in fractional/sem_ver/starts_with is null: the default variant.

    The same files and expectations as the flagd provider's own test_json_logic_parse_errors.
    """
    client, _ = serve(project, (FLAGD_DATA / name).read_text())
    d = client.get_string_details("basic-flag", "fallback", EvaluationContext("123"))
    assert (d.value, d.reason, d.error_code) == ("default", "DEFAULT", None)


def test_flagd_provider_file_without_flags_is_refused_whole(project: Project):
    with pytest.raises(ConfigError) as caught:
        read_flag_file(FLAGD_DATA / "basic-flag-wrong-structure.json")
    assert caught.value.field == "flags"
    client, _ = serve(project, (FLAGD_DATA / "basic-flag-wrong-structure.json").read_text())
    d = client.get_boolean_details("basic-flag", True, EvaluationContext("k"))
    assert (d.value, d.flag_metadata["flagwarden.source"]) == (True, "default")
    assert flagwarden.current().provider.vendor.status is ProviderStatus.ERROR
