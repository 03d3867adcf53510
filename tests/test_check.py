"""``flagwarden check``: every error in every file at once, never a traceback; ``--connect``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.conftest import POLICY, Project, governed_project, run_cli
from tests.servers.launchdarkly import free_port

ROOT = Path(__file__).resolve().parents[1]


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(config, "check", *args)
    assert "Traceback" not in result.stderr, result.stderr
    assert "unexpected" not in result.stderr, result.stderr  # the CLI's safety net: a bug
    return result


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def write_policy(project: Project, name: str, **changes: object) -> Path:
    path = project.root / "policies" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**POLICY, "flag": name, **changes}))
    return path


def test_a_good_project_passes_and_creates_nothing(project: Project):
    config = governed_project(project)
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert "ok policy new-scoring-model" in result.stdout
    assert not (project.root / ".flagwarden").exists()  # checking never creates the stores


def test_every_policy_error_in_every_file_at_once(project: Project):
    config = governed_project(project)
    write_policy(project, "a", on_breach="rolback", stages=[25, 5, 150], soak="forever")
    write_policy(
        project,
        "b",
        owner=" ",
        guards=[
            {"name": "late", "metric": "m", "max": {25: 0.1}},
            {"name": "late", "metric": "n", "max": 0.1},
        ],
        variants={"control": False, "treatment": 1.5},
    )
    write_policy(project, "b2", guards=[{"name": "g", "metric": "m"}])
    write_policy(project, "c", requires=[{"flag": "nowhere", "stage": 75}])
    # Unquoted dates stay text, so a bad one is a field error beside the others.
    (project.root / "policies" / "d.yaml").write_text(
        "flag: d\nexpires: 2099-13-45\nstages: [1]\nstages: [2]\n"
    )
    (project.root / "policies" / "e.yaml").write_text("flag: e\nexpires: 2099-13-45\n")
    result = check(config)
    assert result.returncode == 1
    found = "\n".join(errors(result))
    a = str(project.root / "policies" / "a.yaml")
    assert (
        f"error: {a}: stages: stages must be strictly ascending percents in (0, 100]: "
        "not strictly ascending (25 then 5); outside (0, 100]: 150"
    ) in found
    assert f"{a}: soak: expected a duration like 30s, 30m, 1h or 2d, got 'forever'" in found
    assert f"{a}: on_breach: input should be 'rollback' or 'pause', got 'rolback'" in found
    # Field errors and the checks across fields of one file, together, each naming its field.
    assert "b.yaml: owner: an owner is required (a team or an address)" in found
    assert "b.yaml: variants: control and treatment must have the same type (bool vs float)" in (
        found
    )
    assert "b2.yaml: guards.0: give a 'max' or a 'min' limit" in found
    assert "b.yaml: guards: guard names must be unique (late given twice)" in found
    assert "guard 'late': max has no limit for the first stage (1%)" in found
    assert "{'" not in found  # no model dumped into a message
    assert "c.yaml: requires[0].flag: 'nowhere' has no valid policy" in found
    assert "d.yaml: malformed YAML at line 4, column 1: the key 'stages' is given twice" in found
    assert "e.yaml: expires: input should be a valid date" in found
    assert "e.yaml: owner: is required but missing" in found
    assert "ok policy new-scoring-model" in result.stdout  # the good one is still checked


def test_cycles_of_prerequisites_are_refused(project: Project):
    config = governed_project(project, policy={"requires": [{"flag": "b"}]})
    write_policy(project, "b", requires=[{"flag": "c", "stage": 50}])
    write_policy(project, "c", requires=[{"flag": POLICY["flag"]}])
    found = errors(check(config))
    assert len(found) == 1
    assert "a cycle of prerequisites: b -> c -> new-scoring-model -> b" in found[0]


def test_config_profiles_and_flag_file_problems_are_all_listed(project: Project):
    config = governed_project(project, unregistered="sometimes", telemetry={"prometheus": 9})
    project.profile("split", {"type": "split", "sdk_key": "s3cret-key", "start_wait": -1})
    result = check(config)
    assert result.returncode == 1
    found = "\n".join(errors(result))
    assert "unregistered: input should be 'allow', 'warn' or 'deny'" in found
    assert "telemetry.prometheus:" in found
    # The config could not be read, so nothing else can be checked; fix it and look again.
    config = governed_project(project)
    flags = json.loads((project.root / "flags.json").read_text())
    flags["flags"]["broken"] = {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "z"}
    (project.root / "flags.json").write_text(json.dumps(flags))
    result = check(config)
    found = "\n".join(errors(result))
    assert "split.yaml: start_wait: input should be greater than or equal to 0" in found
    assert "flags.broken.defaultVariant: 'z' is not one of the variants ['a']" in found
    assert "s3cret-key" not in result.stdout + result.stderr


def test_paths_that_do_not_exist(project: Project):
    config = governed_project(project)
    project.profile("other", {"type": "file", "path": "../nowhere.yaml"})
    result = check(config)
    assert result.returncode == 0  # an unused profile's missing file is a warning
    other = project.root / "providers" / "other.yaml"
    assert f"warning: {other}: path: {project.root / 'nowhere.yaml'} does not exist" in (
        result.stderr
    )
    (project.root / "flags.json").unlink()
    result = check(config)
    assert result.returncode == 1
    profile = project.root / "providers" / "file.yaml"
    assert f"error: {profile}: path: {project.root / 'flags.json'} does not exist" in (
        result.stderr
    )


def test_a_policy_whose_arms_the_flag_file_never_serves(project: Project):
    config = governed_project(project, policy={"variants": {"control": "v1", "treatment": "v2"}})
    result = check(config, "--strict")
    assert result.returncode == 1
    assert "variants.treatment: 'v2' is not a value of 'new-scoring-model'" in result.stderr


def test_connect_names_what_is_unreachable_without_secrets(project: Project):
    closed = free_port()
    config = governed_project(
        project,
        state=f"redis://:state-pw@127.0.0.1:{closed}/0",
        audit=f"postgresql://fw:audit-pw@127.0.0.1:{closed}/db",
        telemetry={
            "prometheus": {
                "query_url": f"http://127.0.0.1:{closed}",
                "pushgateway": f"http://127.0.0.1:{closed}",
            }
        },
    )
    offline = check(config)
    assert offline.returncode == 0  # without --connect, no server is reached
    assert "unreachable" not in offline.stderr
    result = check(config, "--connect")
    assert result.returncode == 1
    found = "\n".join(errors(result))
    assert f"state store unreachable: redis://127.0.0.1:{closed}/0" in found
    assert f"audit store unreachable: postgresql://127.0.0.1:{closed}/db" in found
    assert f"Prometheus http://127.0.0.1:{closed} unreachable" in found
    assert f"Pushgateway http://127.0.0.1:{closed} unreachable" in found
    assert "ok provider 'file' (file) is ready" in result.stdout
    for secret in ("state-pw", "audit-pw"):
        assert secret not in result.stdout + result.stderr


def test_connect_starts_the_vendor_sdk(project: Project, ld_server):
    governed_project(project)
    profile = {**ld_server.profile(), "start_wait": 1}
    project.profile("launchdarkly", profile)
    config = project.config("launchdarkly", fallback={"snapshot": None})
    ready = check(config, "--connect")
    assert "ok provider 'launchdarkly' (launchdarkly) is ready" in ready.stdout, ready.stderr
    ld_server.stop()
    down = check(config, "--connect")
    assert down.returncode == 1
    assert "provider 'launchdarkly' (launchdarkly) unreachable" in down.stderr
    assert profile["sdk_key"] not in down.stdout + down.stderr
    # The SDK's own log lines come out structured, as a worker's would; the rest of stderr is
    # check's report (its warnings, errors and the count).
    vendor = [json.loads(line) for line in down.stderr.splitlines() if line.startswith("{")]
    assert any(line["logger"].startswith("ldclient") for line in vendor)
    report = [line for line in down.stderr.splitlines() if not line.startswith("{")]
    assert all(line.startswith(("warning:", "error:", "1 error")) for line in report), report


def test_a_broken_flagwarden_yaml_does_not_hide_the_other_files(project: Project):
    config = governed_project(project, state="mongodb://db/flags", audit="redis://h:6379/0")
    write_policy(project, "a", stages=[5, 1])
    result = check(config)
    found = "\n".join(errors(result))
    assert "flagwarden.yaml: state: expected sqlite:///PATH, redis://HOST:PORT/DB or " in found
    assert "got 'mongodb://...'" in found
    assert (
        "flagwarden.yaml: audit: expected sqlite:///PATH or postgresql://..., got 'redis://...'"
        in (found)
    )
    assert "a.yaml: stages: stages must be strictly ascending" in found


def test_guard_sources_and_prerequisite_stages(project: Project):
    guard = {"name": "rejects", "promql": "sum(rate(x[5m]))", "max": 5}
    config = governed_project(project, policy={"guards": [guard], "requires": [{"flag": "v"}]})
    write_policy(project, "v", stages=[10, 50])
    result = check(config)
    found = "\n".join(errors(result))
    assert "guards.0.promql: guard 'rejects' queries Prometheus, but " in found
    assert "telemetry.prometheus.query_url is not set" in found
    assert "requires[0].stage: 100% is not a stage of v (10%, 50%)" in result.stderr


def test_offline_check_never_creates_a_store(project: Project):
    config = governed_project(project)
    (project.root / ".flagwarden").mkdir()
    import sqlite3

    sqlite3.connect(project.root / ".flagwarden" / "state.db").close()
    assert check(config).returncode == 0
    assert not (project.root / ".flagwarden" / "audit.db").exists()
