"""``flagwarden check``: every error in every file at once, never a traceback; ``--connect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import POLICY, Project, governed_project
from tests.servers.launchdarkly import free_port

ROOT = Path(__file__).resolve().parents[1]


def check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "check", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("FLAGWARDEN_")},
    )
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
    write_policy(project, "a", on_breach="rolback", stages=[25, 5], soak="forever")
    write_policy(project, "b", guards=[{"name": "g", "metric": "m"}])
    write_policy(project, "c", requires=[{"flag": "nowhere"}])
    (project.root / "policies" / "d.yaml").write_text("flag: d\nexpires: 2099-13-45\n")
    result = check(config)
    assert result.returncode == 1
    found = errors(result)
    a = str(project.root / "policies" / "a.yaml")
    assert f"error: {a}: stages: stages must be strictly ascending (25.0 then 5.0)" in "\n".join(
        found
    )
    assert any(f"{a}: soak: expected a duration" in e and "'forever'" in e for e in found)
    assert any(f"{a}: on_breach: input should be 'rollback' or 'pause'" in e for e in found)
    assert any("b.yaml: guards.0: give a 'max' or a 'min' limit" in e for e in found)
    assert any("d.yaml: malformed YAML: a value cannot be read" in e for e in found)
    assert any("c.yaml: requires[0].flag: 'nowhere' has no policy" in e for e in found)
    assert "ok policy new-scoring-model" in result.stdout  # the good one is still checked
    assert result.stderr.rstrip().endswith("6 errors, 1 warning")  # c is not in the flag file


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
    assert f"warning: profile 'other': path: {project.root / 'nowhere.yaml'} does not exist" in (
        result.stderr
    )
    (project.root / "flags.json").unlink()
    result = check(config)
    assert result.returncode == 1
    assert f"error: profile 'file': path: {project.root / 'flags.json'} does not exist" in (
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
    assert offline.returncode == 0  # without --connect, unreachable stores only warn
    assert "warning: state store unreachable" in offline.stderr
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
