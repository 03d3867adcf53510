"""``type: openfeature`` profiles with published providers: OFREP's against a local OFREP server,
flagd's in its in-process file mode; the whole chain (governance, outages, last-known-good)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEvent, ProviderEventDetails
from openfeature.exception import (
    ErrorCode,
    FlagNotFoundError,
    GeneralError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata, ProviderStatus

import flagwarden
from flagwarden.errors import ConfigError
from tests.conftest import POLICY, Project, run_cli, wait_for
from tests.governance.test_assign import stage
from tests.servers.ofrep import OFREPServer

FLAG = POLICY["flag"]
KEYS = [f"order-{i}" for i in range(300)]
FLAGS = {
    "flags": {
        FLAG: {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
        "color": {
            "state": "ENABLED",
            "variants": {"red": "red", "blue": "blue", "green": "green"},
            "defaultVariant": "red",
            "targeting": {"fractional": [["red", 50], ["blue", 30], ["green", 20]]},
        },
        "batch-size": {"state": "ENABLED", "variants": {"s": 10, "l": 500}, "defaultVariant": "l"},
    }
}
FLAGD = "openfeature.contrib.provider.flagd:FlagdProvider"
OFREP = "openfeature.contrib.provider.ofrep:OFREPProvider"


@pytest.fixture
def ofrep() -> Any:
    server = OFREPServer(FLAGS).start()
    yield server
    server.stop()


def governed(project: Project) -> None:
    (project.root / "policies").mkdir(exist_ok=True)
    (project.root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(POLICY))
    (project.root / "flags.json").write_text(json.dumps(FLAGS))


def answers(client: Any) -> dict[str, Any]:
    got: dict[str, Any] = {"flag": [], "color": [], "size": [], "errors": [], "sources": set()}
    for key in KEYS:
        context = EvaluationContext(key)
        for name, details in (
            ("flag", client.get_boolean_details(FLAG, False, context)),
            ("color", client.get_string_details("color", "none", context)),
            ("size", client.get_integer_details("batch-size", 0, context)),
        ):
            got[name].append(details.value)
            if details.error_code is not None:
                got["errors"].append((name, details.error_code, details.error_message))
            got["sources"].add(details.flag_metadata.get("flagwarden.source"))
    got["assigned"] = flagwarden.assign(FLAG, KEYS, False)
    return got


@pytest.mark.slow
def test_the_same_pipeline_answers_the_same_switched_by_config(project: Project, ofrep: Any):
    """The flag file served by flagwarden's file source, by flagd's published provider (in-process)
    and by OFREP's (a remote server evaluating the same definitions): the same answers, governed
    the same way (stage 25 caps the vendor's treatment)."""
    governed(project)
    project.profile("file", {"type": "file", "path": "../flags.json"})
    flags_path = str(project.root / "flags.json")
    project.profile(
        "flagd",
        {
            "type": "openfeature",
            "class": FLAGD,
            "options": {"resolver_type": "in-process", "offline_flag_source_path": flags_path},
        },
    )
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": "${OFREP_URL}"}}
    )
    os.environ["OFREP_URL"] = ofrep.url
    seen = {}
    for name in ("file", "flagd", "ofrep"):
        client = flagwarden.configure(project.config(name))
        stage(25)
        seen[name] = answers(client)
        flagwarden.shutdown()
    for name in ("flagd", "ofrep"):
        for column in ("flag", "color", "size", "assigned"):
            assert seen[name][column] == seen["file"][column], (name, column)
        assert seen[name]["errors"] == []
        assert seen[name]["sources"] == {"vendor"}
    assert 0.15 < sum(seen["file"]["flag"]) / len(KEYS) < 0.35  # capped at 25%
    assert set(seen["file"]["color"]) == {"red", "blue", "green"}


def test_the_provider_class_and_its_options_are_checked(project: Project):
    cases = [
        ({"type": "openfeature"}, "class", "is required for type openfeature"),
        ({"type": "openfeature", "class": "no colon"}, "class", "expected an import path"),
        ({"type": "openfeature", "class": "not_a_module_x:P"}, "class", "cannot import"),
        ({"type": "openfeature", "class": f"{OFREP}Nope"}, "class", "has no"),
        (
            {
                "type": "openfeature",
                "class": OFREP,
                "options": {"base_url": "x", "api_kee": "sk-9f8e7d6c5b4a3f2e1d"},
            },
            "options",
            "does not take api_kee (it takes: base_url, headers_factory, timeout)",
        ),
        ({"type": "unleash"}, "type", "unknown type 'unleash'; expected one of launchdarkly"),
    ]
    for doc, field, message in cases:
        project.profile("of", doc)
        project.config("of")
        with pytest.raises(ConfigError) as info:
            flagwarden.configure(project.root / "flagwarden.yaml")
        assert info.value.field == field, doc
        assert message in info.value.problem, (doc, info.value.problem)
        assert "sk-9f8e7d6c5b4a3f2e1d" not in str(info.value)
    found = run_cli(project.root / "flagwarden.yaml", "check")
    assert found.returncode == 1
    assert "unknown type 'unleash'" in found.stdout + found.stderr


@pytest.mark.slow
def test_an_ofrep_outage_mid_run_fails_no_evaluation(project: Project, ofrep: Any):
    """The server killed while a pipeline evaluates: answers go on from the answer cache (the
    same values), an outage window opens and closes, and it is in the audit log."""
    governed(project)
    project.profile(
        "ofrep",
        {
            "type": "openfeature",
            "class": OFREP,
            "options": {"base_url": ofrep.url, "timeout": 1.0},
            "probe_interval": 0.1,
        },
    )
    client = flagwarden.configure(project.config("ofrep"))
    stage(25)
    runtime = flagwarden.current()
    assert runtime is not None
    before = answers(client)
    assert before["errors"] == []
    failures: list[Any] = []
    changed: list[str] = []
    sources: set[str] = set()
    stop = threading.Event()

    def pipeline() -> None:
        i = 0
        while not stop.is_set():
            key = KEYS[i % len(KEYS)]
            details = client.get_boolean_details(FLAG, False, EvaluationContext(key))
            color = client.get_string_details("color", "none", EvaluationContext(key))
            for got in (details, color):
                if got.error_code is not None:
                    failures.append((got.error_code, got.error_message))
                sources.add(got.flag_metadata["flagwarden.source"])
            if details.value != before["flag"][i % len(KEYS)]:
                changed.append(key)
            if color.value != before["color"][i % len(KEYS)]:
                changed.append(key)
            i += 1

    worker = threading.Thread(target=pipeline)
    worker.start()
    try:
        time.sleep(0.3)
        ofrep.stop()
        wait_for(lambda: runtime.provider.outage is not None, timeout=10)
        assert runtime.provider.status is ProviderStatus.ERROR
        wait_for(lambda: "snapshot" in sources, timeout=10)
        time.sleep(0.3)
        ofrep.restart()
        wait_for(lambda: runtime.provider.outage is None, timeout=10)
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    assert failures == []
    assert changed == []
    assert runtime.provider.status is ProviderStatus.READY
    window = runtime.provider.outages[0]
    assert window.served.get("snapshot", 0) > 0
    audited = [r for r in runtime.governance.audit.records() if r.kind == "outage"]
    assert len(audited) == 1 and audited[0].data["served"]["snapshot"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("store", ["file", "redis"])
def test_a_cold_start_during_an_outage_answers_from_the_stored_answers(
    project: Project, ofrep: Any, store: str
):
    """A worker that starts while the OFREP server is down answers the contexts answered
    before from the snapshot store, a file or Redis (fingerprints only: no targeting key is
    stored); a context never answered gets the caller's default and says why."""
    governed(project)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    key = f"flagwarden:test:{uuid.uuid4().hex}"
    if store == "redis":
        location = f"redis://127.0.0.1:6379/0?key={key}"
        config = project.config("ofrep", fallback={"snapshot": location, "snapshot_debounce": 0.05})
    else:
        config = project.config("ofrep")
    client = flagwarden.configure(config)
    before = answers(client)
    flagwarden.shutdown()
    if store == "redis":
        import redis

        stored = redis.Redis().get(key).decode()
        request_cleanup = redis.Redis()
    else:
        stored = project.snapshot_file.read_text()
    assert json.loads(stored)["vendor"] == "openfeature"
    assert "order-1" not in stored
    ofrep.stop()

    client = flagwarden.configure(config)
    after = answers(client)
    assert after["errors"] == []
    for column in ("flag", "color", "size"):
        assert after[column] == before[column]
    assert after["sources"] == {"snapshot"}
    new = client.get_string_details("color", "none", EvaluationContext("never-seen"))
    assert new.value == "none"
    assert new.error_code == ErrorCode.PROVIDER_NOT_READY
    assert "no answer was kept" in (new.error_message or "")
    assert new.flag_metadata["flagwarden.source"] == "default"
    if store == "redis":
        flagwarden.shutdown()
        request_cleanup.delete(key)


@pytest.mark.slow
def test_a_forked_worker_builds_its_own_provider(project: Project, ofrep: Any):
    governed(project)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config("ofrep"))
    before = answers(client)["color"]
    runtime = flagwarden.current()
    assert runtime is not None
    parent = id(runtime.provider.vendor)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new provider (its own HTTP session), the same answers
        try:
            vendor = runtime.provider.vendor
            wait_for(lambda: vendor.status is ProviderStatus.READY, timeout=5)
            child = [
                client.get_string_value("color", "none", EvaluationContext(key)) for key in KEYS
            ]
            fresh = id(vendor) != parent and vendor.provider is not None
            os.write(write, json.dumps({"same": child == before, "fresh": fresh}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        found = json.loads(pipe.read())
    assert found == {"same": True, "fresh": True}


PLUGIN = '''
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider


class Memory(InMemoryProvider):
    """A third party's provider that exports its definitions (flagwarden's snapshot protocol)."""

    def __init__(self, flags, api_key="", fail=False):
        self._defs, self._key, self._fail = flags, api_key, fail
        super().__init__({k: InMemoryFlag(v["default"], v["variants"]) for k, v in flags.items()})

    def initialize(self, evaluation_context):
        if self._fail:
            raise ConnectionError(f"the flag service refused key {self._key}")

    def export_snapshot(self):
        return {"flags": self._defs}

    def restore_snapshot(self, data):
        Memory.__init__(self, data["flags"], self._key)
'''

DRIVER = """
import json, sys
import flagwarden
from openfeature.evaluation_context import EvaluationContext
client = flagwarden.configure(sys.argv[1])
details = client.get_string_details("tier", "none", EvaluationContext("u1"))
runtime = flagwarden.current()
print(json.dumps({"value": details.value, "source": details.flag_metadata["flagwarden.source"],
                  "error": details.error_code, "status": runtime.provider.vendor.status.value,
                  "message": runtime.provider.vendor.status_message}))
flagwarden.shutdown()
"""


@pytest.mark.slow
def test_a_type_registered_by_a_package_with_native_snapshots(project: Project, tmp_path: Path):
    """A package registers ``memory`` under the ``flagwarden.providers`` entry-point group: the
    profile names it by that type; its own export is the snapshot, replayed when it fails."""
    site = tmp_path / "site"
    (site / "fwplug-0.1.dist-info").mkdir(parents=True)
    (site / "fwplug.py").write_text(PLUGIN)
    (site / "fwplug-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fwplug\nVersion: 0.1\n"
    )
    (site / "fwplug-0.1.dist-info" / "entry_points.txt").write_text(
        "[flagwarden.providers]\nmemory = fwplug:Memory\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{root}"}
    secret = "sk-live-0a1b2c3d4e5f6a7b8c9d"
    flags = {"tier": {"default": "gold", "variants": {"gold": "gold", "free": "free"}}}
    profile = {"type": "memory", "options": {"flags": flags, "api_key": secret}}
    project.profile("mem", profile)
    config = project.config("mem")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=project.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = run("-c", DRIVER, str(config))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.splitlines()[-1])["value"] == "gold"
    stored = json.loads(project.snapshot_file.read_text())
    assert stored["vendor"] == "memory" and stored["data"] == {"native": {"flags": flags}}

    project.profile("mem", {**profile, "options": {**profile["options"], "fail": True}})
    second = run("-c", DRIVER, str(config))
    assert second.returncode == 0, second.stderr[-2000:]
    found = json.loads(second.stdout.splitlines()[-1])
    assert found["value"] == "gold" and found["source"] == "snapshot" and found["error"] is None
    assert found["status"] == "ERROR" and "refused key ***" in found["message"]
    assert secret not in second.stdout + second.stderr

    checked = run("-m", "flagwarden.cli", "check", "-c", str(config))
    assert "(memory)" in checked.stdout, checked.stdout + checked.stderr
    project.profile("mem", {"type": "unleash"})
    unknown = run("-m", "flagwarden.cli", "check", "-c", str(config))
    assert "registered by installed packages: memory" in unknown.stdout + unknown.stderr
    project.profile("mem", {**profile, "class": "fwplug:Memory"})
    given = run("-m", "flagwarden.cli", "check", "-c", str(config))
    assert "is given by the package that registered type 'memory'" in given.stdout + given.stderr


def test_enum_options_are_spelled_as_text(tmp_path: Path):
    from openfeature.contrib.provider.flagd.config import ResolverType

    from flagwarden.profiles import OpenFeatureProfile
    from flagwarden.providers.openfeature import OpenFeatureSource

    for spelled in ("in-process", "IN_PROCESS", "in_process"):
        profile = OpenFeatureProfile.model_validate(
            {"class": FLAGD, "options": {"resolver_type": spelled, "offline_flag_source_path": "x"}}
        )
        assert OpenFeatureSource(profile)._options["resolver_type"] is ResolverType.IN_PROCESS
    wrong = OpenFeatureProfile.model_validate(
        {
            "class": FLAGD,
            "options": {"resolver_type": "inprocess", "offline_flag_source_pth": "x", "api": 1},
        }
    )
    with pytest.raises(ConfigError) as info:  # every problem at once
        OpenFeatureSource(wrong)
    said = str(info.value)
    assert "does not take api, offline_flag_source_pth (it takes: host, port," in said
    assert "resolver_type: 'inprocess' is none of ResolverType's (rpc, in-process, file)" in said


@pytest.mark.slow
def test_an_openfeature_provider_shadows_the_primary(project: Project, ofrep: Any):
    """Migrating to an OFREP service: it shadows the flag file, the file's answers are served,
    and the one flag whose definition differs is counted as a mismatch for every unit."""
    governed(project)
    other = json.loads(json.dumps(FLAGS))
    other["flags"]["batch-size"]["defaultVariant"] = "s"
    ofrep.set_flags(other)
    project.profile("file", {"type": "file", "path": "../flags.json"})
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(
        project.config("file", shadow={"provider": "ofrep", "sample_rate": 1.0})
    )
    stage(100)
    served = answers(client)
    assert set(served["size"]) == {500}  # the primary's answer
    runtime = flagwarden.current()
    assert runtime is not None
    shadow = runtime.provider._shadow
    assert shadow is not None and shadow.drain(10)
    # Every evaluation, and assign()'s one question to the source for its plan.
    wait_for(lambda: sum(shadow.counts.values()) == 3 * len(KEYS) + 1)
    assert shadow.counts["mismatch"] == len(KEYS)
    assert shadow.counts["match"] == 2 * len(KEYS) + 1
    assert shadow.counts["error"] == 0


def test_a_flag_problem_is_not_an_outage(project: Project, ofrep: Any):
    """FLAG_NOT_FOUND or a type mismatch says something about one flag, not the provider."""
    governed(project)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config("ofrep"))
    runtime = flagwarden.current()
    assert runtime is not None
    assert client.get_string_value("color", "none", EvaluationContext("u1")) != "none"
    missing = client.get_boolean_details("no-such-flag", False, EvaluationContext("u1"))
    assert missing.error_code == ErrorCode.FLAG_NOT_FOUND
    wrong = client.get_integer_details("color", 0, EvaluationContext("u1"))
    assert wrong.error_code == ErrorCode.TYPE_MISMATCH
    assert runtime.provider.outage is None
    assert runtime.provider.vendor.status is ProviderStatus.READY


@pytest.mark.slow
def test_flagd_events_open_and_close_the_outage(project: Project):
    """flagd's provider says when its file is gone (PROVIDER_ERROR) and back (PROVIDER_READY):
    the outage window follows its events, and the answers go on from the answer cache."""
    governed(project)
    flags_path = project.root / "flags.json"
    project.profile(
        "flagd",
        {
            "type": "openfeature",
            "class": FLAGD,
            "options": {"resolver_type": "IN_PROCESS", "offline_flag_source_path": str(flags_path)},
        },
    )
    client = flagwarden.configure(project.config("flagd"))
    runtime = flagwarden.current()
    assert runtime is not None
    before = answers(client)
    flags_path.unlink()
    wait_for(lambda: runtime.provider.outage is not None, timeout=10)
    assert runtime.provider.vendor.status is ProviderStatus.ERROR
    during = answers(client)
    assert during["errors"] == []
    assert during["sources"] == {"snapshot"}
    for column in ("flag", "color", "size"):
        assert during[column] == before[column]
    flags_path.write_text(json.dumps(FLAGS))
    wait_for(lambda: runtime.provider.outage is None, timeout=10)
    window = runtime.provider.outages[0]
    assert window.served["snapshot"] == 4 * len(KEYS)  # three flags per key, and assign's batch
    assert "file path not valid" in window.cause
    assert answers(client)["sources"] == {"vendor"}


def test_a_context_the_provider_cannot_take_is_not_an_outage(project: Project, ofrep: Any):
    """OFREP's client cannot send a datetime attribute (GENERAL, never sent): that context's
    problem, whether it comes first or after good answers; the provider stays in."""
    import datetime

    governed(project)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config("ofrep"))
    runtime = flagwarden.current()
    assert runtime is not None
    odd = EvaluationContext("u1", {"since": datetime.datetime(2026, 1, 1)})
    for _ in range(2):  # first thing asked, then again after a good answer
        bad = client.get_string_details("color", "none", odd)
        assert bad.error_code == ErrorCode.GENERAL
        assert runtime.provider.outage is None
        assert runtime.provider.vendor.status is ProviderStatus.READY
        good = client.get_string_details("color", "none", EvaluationContext("u1"))
        assert good.error_code is None and good.flag_metadata["flagwarden.source"] == "vendor"


def test_the_stored_answers_survive_a_run_that_answered_few(project: Project, ofrep: Any):
    """Each run starts from what earlier runs stored: a run that answers one context does not
    replace the stored answers of three hundred, and the replay of an outage serves them all."""
    governed(project)
    project.profile(
        "ofrep",
        {
            "type": "openfeature",
            "class": OFREP,
            "options": {"base_url": ofrep.url},
            "probe_interval": 0.1,
        },
    )
    config = project.config("ofrep")
    client = flagwarden.configure(config)
    before = answers(client)
    flagwarden.shutdown()
    client = flagwarden.configure(config)
    assert client.get_string_value("color", "none", EvaluationContext(KEYS[0])) != "none"
    flagwarden.shutdown()
    stored = json.loads(project.snapshot_file.read_text())["data"]["answers"]
    assert len(stored) == 3 * len(KEYS)
    client = flagwarden.configure(config)
    client.get_string_value("color", "none", EvaluationContext(KEYS[0]))
    ofrep.stop()
    during = answers(client)
    assert during["errors"] == [] and during["sources"] == {"snapshot"}
    assert during["color"] == before["color"]


def test_odd_contexts_and_disabled_flags_in_the_answer_cache(project: Project, ofrep: Any):
    """A context without a canonical form (keys of mixed types) is answered, not cached; a
    disabled flag's answer is replayed as the caller's default, whatever default is asked."""
    governed(project)
    flags = json.loads(json.dumps(FLAGS))
    flags["flags"]["off-flag"] = {
        "state": "DISABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    }
    ofrep.set_flags(flags)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config("ofrep"))
    mixed = EvaluationContext("u1", {"scores": {1: 0.5, "total": 3}})
    answered = client.get_string_details("color", "none", mixed)
    assert answered.error_code is None and answered.value != "none"
    assert client.get_boolean_value("off-flag", False, EvaluationContext("u1")) is False
    ofrep.stop()
    for default in (False, True):
        details = client.get_boolean_details("off-flag", default, EvaluationContext("u1"))
        assert details.value is default and details.error_code is None
        assert details.flag_metadata["flagwarden.source"] == "snapshot"


def test_a_mixed_key_context_is_answered_through_flagd(project: Project):
    governed(project)
    flags_path = project.root / "flags.json"
    project.profile(
        "flagd",
        {
            "type": "openfeature",
            "class": FLAGD,
            "options": {"resolver_type": "in-process", "offline_flag_source_path": str(flags_path)},
        },
    )
    client = flagwarden.configure(project.config("flagd"))
    for attributes in ({"scores": {1: 0.5, "total": 3}}, {"tags": {("a", "b"): 1}}):
        details = client.get_string_details("color", "none", EvaluationContext("u1", attributes))
        assert details.error_code is None and details.value != "none", attributes


def test_another_profiles_snapshot_is_never_served(project: Project, ofrep: Any):
    """Switching from one OFREP service to another (the migration): a cold start while the new
    one is down does not serve the old one's stored answers."""
    governed(project)
    for name in ("old", "new"):
        project.profile(
            name, {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
        )
    client = flagwarden.configure(project.config("old"))
    assert client.get_integer_value("batch-size", 0, EvaluationContext("u1")) == 500
    flagwarden.shutdown()
    ofrep.stop()
    client = flagwarden.configure(project.config("new"))
    details = client.get_integer_details("batch-size", 0, EvaluationContext("u1"))
    assert details.value == 0 and details.flag_metadata["flagwarden.source"] == "default"


def test_check_connect_asks_the_provider(project: Project, ofrep: Any):
    project.profile(
        "ofrep",
        {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url, "timeout": 1}},
    )
    config = project.config("ofrep")
    assert run_cli(config, "check", "--connect").returncode == 0
    ofrep.stop()
    found = run_cli(config, "check", "--connect")
    assert found.returncode == 1
    assert "provider 'ofrep' (openfeature) unreachable" in found.stdout + found.stderr


FAULTY = """
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

calls = []


class Faulty(InMemoryProvider):
    def __init__(self, api_key, api_token=0, key_prefix="e", fail_export=False):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError(f"service refused {api_key} (token {api_token}) for {key_prefix}")
        self._key, self._fail_export = api_key, fail_export
        super().__init__({"tier": InMemoryFlag("gold", {"gold": "gold", "free": "free"})})

    def export_snapshot(self):
        if self._fail_export:
            raise RuntimeError(f"cannot export with {self._key}")
        return {"tier": "gold"}

    def restore_snapshot(self, data):
        pass
"""


@pytest.fixture
def faulty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    module = f"fwfaulty_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_a_provider_that_cannot_be_built_is_built_again(project: Project, faulty: str):
    """Its constructor fails once (the secrets in its message masked: a string key, a number
    under a secret's name; a one-letter option masks nothing); the probe builds it again."""
    from structlog.testing import capture_logs

    secret = "sk-live-7a6b5c4d3e2f1a0b"
    options = {"api_key": secret, "api_token": 48213957, "key_prefix": "e", "fail_export": True}
    project.profile(
        "faulty",
        {
            "type": "openfeature",
            "class": f"{faulty}:Faulty",
            "options": options,
            "probe_interval": 0.1,
        },
    )
    with capture_logs() as logs:
        client = flagwarden.configure(project.config("faulty"))
        runtime = flagwarden.current()
        assert runtime is not None
        vendor = runtime.provider.vendor
        assert vendor.status is ProviderStatus.ERROR
        assert vendor.status_message == ("ConnectionError: service refused *** (token ***) for e")
        wait_for(lambda: vendor.status is ProviderStatus.READY, timeout=5)
        assert client.get_string_value("tier", "none", EvaluationContext("u1")) == "gold"
        assert runtime.provider.write_snapshot() is None  # export failed: reported, not raised
        flagwarden.shutdown()
    said = json.dumps(logs, default=str)
    assert "cannot export with ***" in said
    assert secret not in said and "48213957" not in said


def test_a_module_that_fails_at_import_is_a_config_error(
    project: Project, tmp_path: Path, monkeypatch
):
    (tmp_path / "fwbroken.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    project.profile("broken", {"type": "openfeature", "class": "fwbroken:Provider"})
    with pytest.raises(ConfigError) as info:
        flagwarden.configure(project.config("broken"))
    assert info.value.field == "class"
    assert "cannot import 'fwbroken' (RuntimeError: no GPU here)" in info.value.problem


@pytest.mark.slow
def test_threads_evaluating_when_the_server_dies_get_no_default(project: Project, ofrep: Any):
    """Four threads evaluate known contexts when the server stops: whichever thread finds the
    outage, every answer in flight or after it comes from the kept answers."""
    governed(project)
    project.profile(
        "ofrep",
        {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url, "timeout": 1.0}},
    )
    client = flagwarden.configure(project.config("ofrep"))
    runtime = flagwarden.current()
    assert runtime is not None
    before = answers(client)["color"]
    failures: list[Any] = []
    stop = threading.Event()

    def pipeline(offset: int) -> None:
        i = offset
        while not stop.is_set():
            got = client.get_string_details("color", "none", EvaluationContext(KEYS[i % len(KEYS)]))
            if got.error_code is not None or got.value != before[i % len(KEYS)]:
                failures.append((got.error_code, got.error_message))
            i += 7

    workers = [threading.Thread(target=pipeline, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.3)
        ofrep.stop()
        wait_for(lambda: runtime.provider.outage is not None, timeout=10)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert runtime.provider.outage.served["snapshot"] > 0


def test_the_version_an_ofrep_answer_carries(project: Project, ofrep: Any):
    """flagd's ``version`` and ``flagSetId`` metadata, carried by OFREP's answers, are the
    definition's version and flag set (OpenTelemetry's feature_flag.version, .set.id)."""
    flags = json.loads(json.dumps(FLAGS))
    flags["metadata"] = {"flagSetId": "orders"}
    flags["flags"]["color"]["metadata"] = {"version": "3"}
    ofrep.set_flags(flags)
    project.profile(
        "ofrep", {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config("ofrep"))
    runtime = flagwarden.current()
    assert runtime is not None
    assert runtime.provider.flag_version("color") == (None, None)  # nothing answered yet
    client.get_string_value("color", "none", EvaluationContext("u1"))
    assert runtime.provider.flag_version("color") == ("3", "orders")


def test_one_snapshot_location_per_profile_for_a_canary(project: Project, ofrep: Any):
    """The migration recipe's canary: with ``{profile}`` in ``fallback.snapshot`` each profile
    keeps its own last-known-good, so a worker of the new profile never replaces the old one's
    (with one shared location it would, and the old profile's cold start would have none)."""
    from flagwarden.config import load_settings
    from flagwarden.governance.status import provider_status
    from flagwarden.providers.snapshot import open_snapshot_store

    governed(project)
    for name in ("old", "new"):
        project.profile(
            name, {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
        )
    fallback = {"snapshot": "file:.flagwarden/snapshot-{profile}.json", "snapshot_debounce": 0.05}
    for name in ("old", "new"):
        client = flagwarden.configure(project.config(name, fallback=fallback))
        assert client.get_integer_value("batch-size", 0, EvaluationContext("u1")) == 500
        flagwarden.shutdown()
    assert (project.root / ".flagwarden" / "snapshot-old.json").exists()
    assert (project.root / ".flagwarden" / "snapshot-new.json").exists()
    ofrep.stop()
    client = flagwarden.configure(project.config("old", fallback=fallback))
    details = client.get_integer_details("batch-size", 0, EvaluationContext("u1"))
    assert details.value == 500 and details.flag_metadata["flagwarden.source"] == "snapshot"
    flagwarden.shutdown()
    # status never shows another profile's snapshot as this provider's
    shared = load_settings(project.config("new"))  # fallback: the shared default location
    (project.root / ".flagwarden" / "snapshot.json").write_text(
        (project.root / ".flagwarden" / "snapshot-old.json").read_text()
    )
    stored = open_snapshot_store(shared.snapshot_location() or "").load()
    assert stored is not None and stored.profile == "old"
    assert provider_status("new", None, stored).snapshot_age_seconds is None
    assert provider_status("old", None, stored).snapshot_age_seconds is not None


def test_a_bad_openfeature_profile_never_blocks_a_kill(project: Project):
    governed(project)
    secret = "sk-live-12345678abcdefgh"
    project.profile(
        "bad", {"type": "openfeature", "class": "nowhere_mod:Prov", "options": {"api_key": secret}}
    )
    config = project.config("bad")
    killed = run_cli(config, "kill", FLAG, "--reason", "bad source", actor="me")
    assert killed.returncode == 0, killed.stderr
    checked = run_cli(config, "check")
    assert checked.returncode == 1 and "cannot import 'nowhere_mod'" in checked.stderr
    assert secret not in killed.stdout + killed.stderr + checked.stdout + checked.stderr


class Staling(AbstractProvider):
    """A provider whose service can fall behind, as a streaming SDK whose connection drops: it
    says PROVIDER_STALE (its definitions may be old) and goes on answering from what it holds,
    then PROVIDER_READY when it has caught up. It answers FLAGS' flags: the flag on, batch-size
    500, and a color that depends on the targeting key."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="staling")

    def _answer(self, flag_key: str, wanted: type, value: Any) -> FlagResolutionDetails[Any]:
        if not isinstance(value, wanted):
            raise TypeMismatchError(f"{flag_key} is not a {wanted.__name__}")
        return FlagResolutionDetails(value=value, variant=str(value), reason=Reason.STATIC)

    def _value(self, flag_key: str, context: EvaluationContext | None) -> Any:
        if flag_key == FLAG:
            return True
        if flag_key == "batch-size":
            return 500
        if flag_key == "color":
            key = (context.targeting_key if context is not None else None) or ""
            return ("red", "blue", "green")[len(key) % 3]
        raise FlagNotFoundError(f"no flag {flag_key}")

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        return self._answer(flag_key, bool, self._value(flag_key, evaluation_context))

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._answer(flag_key, str, self._value(flag_key, evaluation_context))

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        value = self._value(flag_key, evaluation_context)
        return self._answer(flag_key, int, None if isinstance(value, bool) else value)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._answer(flag_key, float, self._value(flag_key, evaluation_context))

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return self._answer(flag_key, dict, self._value(flag_key, evaluation_context))


class StaleThenUnreachable(Staling):
    """As flagd's RPC resolver in its retry grace period: it says PROVIDER_STALE when its
    connection drops, and its evaluations (remote calls) fail until it is back."""

    down = False

    def _value(self, flag_key: str, context: EvaluationContext | None) -> Any:
        if self.down:
            raise GeneralError("connection refused")
        return super()._value(flag_key, context)

    def connection_lost(self) -> None:
        self.down = True
        self.emit(ProviderEvent.PROVIDER_STALE, ProviderEventDetails(message="stream lost"))


def test_a_stale_provider_that_cannot_answer_is_answered_from_its_last_answers(
    project: Project,
):
    governed(project)
    project.profile("stale", {"type": "openfeature", "class": f"{__name__}:StaleThenUnreachable"})
    client = flagwarden.configure(project.config("stale"))
    runtime = flagwarden.current()
    assert runtime is not None
    before = answers(client)
    assert before["errors"] == [] and before["sources"] == {"vendor"}
    runtime.provider.vendor.provider.connection_lost()
    wait_for(lambda: runtime.provider.outage is not None, timeout=5)
    assert runtime.provider.vendor.status is ProviderStatus.STALE
    during = answers(client)
    # Not the caller's default with GENERAL: the answer cache's (the keys were seen before).
    assert during["errors"] == [] and during["sources"] == {"snapshot"}
    for column in ("flag", "color", "size"):
        assert during[column] == before[column], column


def _gauge(name: str, labels: dict[str, str]) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


def test_a_stale_openfeature_provider_opens_and_closes_an_outage_window(project: Project):
    """PROVIDER_STALE from the provider (said from its own thread, while a pipeline evaluates)
    opens an outage window answered from the provider's own memory (source ``vendor``, no
    evaluation fails, no answer changes); PROVIDER_READY closes it. The window reaches the
    outage events, the audit log, the status and the provider's gauges."""
    from flagwarden.governance.status import provider_status

    governed(project)
    project.profile("staling", {"type": "openfeature", "class": f"{__name__}:Staling"})
    client = flagwarden.configure(project.config("staling"))
    stage(25)
    runtime = flagwarden.current()
    assert runtime is not None
    events: list[Any] = []
    runtime.events.subscribe(events.append)
    chain, vendor = runtime.provider, runtime.provider.vendor
    inner = vendor.provider
    assert type(inner).__name__ == "Staling" and isinstance(inner, AbstractProvider)
    assert vendor.status is ProviderStatus.READY and chain.outage is None
    before = answers(client)
    assert before["errors"] == [] and before["sources"] == {"vendor"}
    assert set(before["color"]) == {"red", "blue", "green"}

    failures: list[Any] = []
    changed: list[str] = []
    sources: set[str] = set()
    evaluated = [0]
    stop = threading.Event()

    def pipeline() -> None:
        i = 0
        while not stop.is_set():
            n = i % len(KEYS)
            color = client.get_string_details("color", "none", EvaluationContext(KEYS[n]))
            if color.error_code is not None:
                failures.append((color.error_code, color.error_message))
            if color.value != before["color"][n]:
                changed.append(KEYS[n])
            sources.add(color.flag_metadata["flagwarden.source"])
            evaluated[0] += 1
            i += 1

    def provider_says(event: ProviderEvent, message: str) -> None:
        said = threading.Thread(
            target=inner.emit, args=(event, ProviderEventDetails(message=message))
        )
        said.start()
        said.join()

    cause = "stream interrupted: serving cached definitions"
    worker = threading.Thread(target=pipeline)
    worker.start()
    try:
        wait_for(lambda: evaluated[0] > 50)
        provider_says(ProviderEvent.PROVIDER_STALE, cause)
        wait_for(lambda: chain.outage is not None, timeout=5)
        assert vendor.status is ProviderStatus.STALE and vendor.status_message == cause
        assert chain.status is ProviderStatus.STALE
        assert client.get_provider_status() is ProviderStatus.STALE
        gauge = {"feature_flag_provider_name": "staling"}
        assert _gauge("flagwarden_provider_state", {**gauge, "state": "STALE"}) == 1
        assert _gauge("flagwarden_fallback_active", gauge) == 1
        during = answers(client)
        seen = evaluated[0]
        wait_for(lambda: evaluated[0] > seen + 50)  # the pipeline went on inside the window
        provider_says(ProviderEvent.PROVIDER_READY, "caught up")
        wait_for(lambda: chain.outage is None, timeout=5)
        assert vendor.status is ProviderStatus.READY and chain.status is ProviderStatus.READY
        assert client.get_provider_status() is ProviderStatus.READY
        assert _gauge("flagwarden_provider_state", {**gauge, "state": "READY"}) == 1
        assert _gauge("flagwarden_fallback_active", gauge) == 0
        seen = evaluated[0]
        wait_for(lambda: evaluated[0] > seen + 50)
    finally:
        stop.set()
        worker.join()

    assert failures == [] and changed == [] and sources == {"vendor"}
    assert during["errors"] == [] and during["sources"] == {"vendor"}
    for column in ("flag", "color", "size", "assigned"):
        assert during[column] == before[column], column
    (window,) = chain.outages
    assert window.cause == cause and window.started_at < window.ended_at
    # Every answer in the window came from the provider's memory: three flags per key and
    # assign's batch, and the pipeline's.
    assert set(window.served) == {"vendor"} and window.served["vendor"] > 4 * len(KEYS) + 50
    started = [e for e in events if e.name == "flagwarden.outage_started"]
    ended = [e for e in events if e.name == "flagwarden.outage"]
    assert len(started) == 1 and len(ended) == 1
    assert started[0].fields["cause"] == cause
    assert started[0].fields["fallback"] == "vendor_cache"
    assert ended[0].fields["ended_by"] == "vendor_ready" and ended[0].fields["ended_at"]
    statuses = [e.fields["status"] for e in events if e.name == "flagwarden.provider_status"]
    assert statuses == ["STALE", "READY"]
    audited = wait_for(
        lambda: [r for r in runtime.governance.audit.records() if r.kind == "outage"]
    )
    assert len(audited) == 1
    assert audited[0].data["cause"] == cause and audited[0].data["ended_at"]
    assert audited[0].data["started_at"] == ended[0].fields["started_at"]
    assert set(audited[0].data["served"]) == {"vendor"}
    last = provider_status("staling", runtime.governance.audit, None).last_outage
    assert last is not None and last["cause"] == cause and last["ended_at"]


def _evaluations(flag: str, provider: str, source: str) -> float:
    """``feature_flag_evaluations_total`` for the flag, provider name and source (a collection
    of the default registry folds what the recorders counted first)."""
    from prometheus_client import REGISTRY

    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "feature_flag_evaluations":
            continue
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels["feature_flag_key"] == flag
                and labels["feature_flag_provider_name"] == provider
                and labels["flagwarden_source"] == source
            ):
                total += sample.value
    return total


def test_env_overrides_beat_an_openfeature_provider_and_are_counted(
    project: Project, ofrep: Any, monkeypatch: pytest.MonkeyPatch
):
    """``FLAGWARDEN_FLAG_<KEY>`` (the key upper-cased, ``-`` as ``_``) wins over an OFREP
    provider for a governed flag and for flags without a policy: the provider is not even
    asked. Every answer, the provider's and the environment's, is counted in the exposure
    summary and in ``feature_flag_evaluations_total`` under the profile's name."""
    from tests.conftest import counted

    governed(project)
    name = "ofrep-env"  # the profile's name, not its type, names the provider
    project.profile(
        name, {"type": "openfeature", "class": OFREP, "options": {"base_url": ofrep.url}}
    )
    client = flagwarden.configure(project.config(name))
    stage(100)
    keys = KEYS[:40]

    def evaluate() -> list[tuple[Any, ...]]:
        got = []
        for key in keys:
            context = EvaluationContext(key)
            for details in (
                client.get_boolean_details(FLAG, False, context),
                client.get_string_details("color", "none", context),
                client.get_integer_details("batch-size", 0, context),
            ):
                got.append((details.value, details.flag_metadata["flagwarden.source"]))
                assert details.error_code is None, details
        return got

    found: dict[str, Any] = {}
    vendor_before = _evaluations(FLAG, name, "vendor")
    summary, _ = counted(lambda: found.update(vendor=evaluate()))
    assert {source for _, source in found["vendor"]} == {"vendor"}
    assert {value for value, _ in found["vendor"][0::3]} == {True}
    assert {value for value, _ in found["vendor"][2::3]} == {500}
    assert summary[(FLAG, "on", "STATIC", "vendor", "treatment", False)] == len(keys)
    assert _evaluations(FLAG, name, "vendor") - vendor_before == len(keys)
    assert len(ofrep.requests) == 3 * len(keys)

    monkeypatch.setenv("FLAGWARDEN_FLAG_NEW_SCORING_MODEL", "off")
    monkeypatch.setenv("FLAGWARDEN_FLAG_COLOR", "purple")
    monkeypatch.setenv("FLAGWARDEN_FLAG_BATCH_SIZE", "7")
    ofrep.clear_requests()
    env_before = _evaluations(FLAG, name, "env")
    color_before = _evaluations("color", name, "env")

    def overridden() -> None:
        found["env"] = evaluate()
        found["assigned"] = flagwarden.assign(FLAG, KEYS, True)

    summary, _ = counted(overridden)
    assert found["env"] == [(False, "env"), ("purple", "env"), (7, "env")] * len(keys)
    assert found["assigned"] == [False] * len(KEYS)
    assert ofrep.requests == []  # the provider was never asked
    env_counts = {k: n for k, n in summary.items() if k[0] == FLAG}
    assert set(env_counts) == {(FLAG, "false", "STATIC", "env", "control", False)}
    assert sum(env_counts.values()) == len(keys) + len(KEYS)  # evaluations, and assign's records
    assert summary[("color", "", "STATIC", "env", "", False)] == len(keys)
    assert _evaluations(FLAG, name, "env") - env_before == len(keys) + len(KEYS)
    assert _evaluations("color", name, "env") - color_before == len(keys)
    assert _evaluations(FLAG, "openfeature", "env") == 0
