"""Configuration: loading, interpolation, aliases, and one clear message per bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from tests.conftest import Project

SECRET = "sdk-very-secret-0123456789"


def run_check(project: Project, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flagwarden.cli", "check", *extra],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_embedded_default_when_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.source is None
    assert settings.provider_name == "file"
    client = flagwarden.configure()
    details = client.get_integer_details("batch-size", 1, EvaluationContext("k"))
    assert (details.value, details.flag_metadata["flagwarden.source"]) == (500, "file")


def test_config_env_var_and_provider_override(project, monkeypatch):
    project.profile("file", {"type": "file", "path": "../flags.yaml"})
    project.profile("env", {"type": "env"})
    (project.root / "flags.yaml").write_text(
        "flags:\n  f: {state: ENABLED, variants: {a: 1, b: 2}, defaultVariant: a}\n"
    )
    config = project.config("file")
    monkeypatch.setenv("FLAGWARDEN_CONFIG", str(config))
    assert load_settings().provider_name == "file"
    monkeypatch.setenv("FLAGWARDEN_PROVIDER", "env")
    assert load_settings().provider_name == "env"
    monkeypatch.setenv("FLAGWARDEN_FLAG_F", "7")
    client = flagwarden.configure()
    assert flagwarden.current().profile.type == "env"
    assert client.get_integer_value("f", 0, EvaluationContext("k")) == 7


def test_interpolation_with_fallback_and_secret_handling(project, monkeypatch):
    monkeypatch.setenv("MY_LD_KEY", SECRET)
    project.profile(
        "launchdarkly",
        {
            "type": "launchdarkly",
            "sdk_key": "${MY_LD_KEY}",
            "base_uri": "${LD_BASE:-http://relay:8030}",
        },
    )
    project.config("launchdarkly")
    settings = load_settings(project.root / "flagwarden.yaml")
    profile = settings.load_profile("launchdarkly")
    assert profile.sdk_key.get_secret_value() == SECRET
    assert profile.base_uri == "http://relay:8030"
    assert SECRET not in repr(profile) and SECRET not in str(profile)


def test_flag_key_aliases_by_profile(project):
    project.config("split", flag_keys={"new-scoring-model": {"split": "new_scoring_model"}})
    project.profile("split", {"type": "split", "sdk_key": "x"})
    settings = load_settings(project.root / "flagwarden.yaml")
    profile = settings.load_profile("split")
    assert settings.flag_key_for("new-scoring-model", profile) == "new_scoring_model"
    assert settings.flag_key_for("other", profile) == "other"


def test_relative_paths_resolve_against_their_file(project, tmp_path, monkeypatch):
    project.profile("file", {"type": "file", "path": "../flags/flags.yaml"})
    project.config("file")
    monkeypatch.chdir(Path("/"))
    settings = load_settings(project.root / "flagwarden.yaml")
    assert settings.load_profile("file").path == project.root / "flags" / "flags.yaml"
    assert settings.snapshot_location() == f"file:{project.root}/.flagwarden/snapshot.json"


BAD_PROFILES = [
    ("malformed YAML", "type: launchdarkly\nsdk_key: [unclosed\n", None, "malformed YAML at line"),
    ("unknown type", "type: flagsmith\nsdk_key: x\n", "type", "unknown type 'flagsmith'"),
    ("missing type", "sdk_key: x\n", "type", "is required"),
    ("missing sdk_key", "type: launchdarkly\n", "sdk_key", "is required but missing"),
    (
        "unset variable",
        "type: split\nsdk_key: ${NOT_SET_ANYWHERE}\n",
        "sdk_key",
        "NOT_SET_ANYWHERE is not set",
    ),
    (
        "wrong type",
        "type: launchdarkly\nsdk_key: x\nstart_wait: soon\n",
        "start_wait",
        "got 'soon'",
    ),
    (
        "negative",
        "type: launchdarkly\nsdk_key: x\nstart_wait: -1\n",
        "start_wait",
        "greater than or equal to 0",
    ),
    ("unknown field", "type: env\nprefx: X_\n", "prefx", "is not a known field"),
    ("not a mapping", "- type: env\n", None, "expected a mapping"),
]


@pytest.mark.parametrize(
    ("case", "text", "field", "message"), BAD_PROFILES, ids=[c[0] for c in BAD_PROFILES]
)
def test_bad_profile_gets_one_clear_error(project, case, text, field, message):
    path = project.root / "providers" / "launchdarkly.yaml"
    path.write_text(text)
    project.config("launchdarkly")
    with pytest.raises(ConfigError) as info:
        flagwarden.configure(project.root / "flagwarden.yaml")
    error = info.value
    assert error.file == str(path)
    assert error.field == field
    assert message in str(error)

    result = run_check(project)
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert message.split("'")[0] in " ".join(result.stderr.split())


def test_secret_never_in_messages(project, monkeypatch):
    monkeypatch.setenv("MY_KEY", SECRET)
    # A secret in a line YAML cannot parse, and a secret of the wrong type.
    (project.root / "providers" / "launchdarkly.yaml").write_text(
        f"type: launchdarkly\nsdk_key: {SECRET}: [\n"
    )
    (project.root / "providers" / "split.yaml").write_text(
        "type: split\nsdk_key:\n  nested: ${MY_KEY}\n"
    )
    project.config("launchdarkly")
    result = run_check(project)
    assert result.returncode == 1
    assert "launchdarkly.yaml" in result.stderr and "split.yaml" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_bad_main_config(project):
    (project.root / "flagwarden.yaml").write_text(
        "provider: launchdarkly\nfallback: {snapshot: ftp://x}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_settings(project.root / "flagwarden.yaml")
    assert info.value.field == "fallback.snapshot"
    assert "file:PATH" in str(info.value)
    result = run_check(project)
    assert result.returncode == 1 and "fallback.snapshot" in result.stderr


def test_missing_profile_names_what_exists(project):
    project.profile("env", {"type": "env"})
    project.config("launchdarkly")
    with pytest.raises(ConfigError, match=r"no profile 'launchdarkly'.*found: env"):
        flagwarden.configure(project.root / "flagwarden.yaml")
    assert run_check(project).returncode == 1


def test_check_passes_on_a_good_project(project):
    project.profile("env", {"type": "env"})
    project.config("env")
    result = run_check(project)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_usage_error_exits_2(project):
    result = run_check(project, "--no-such-option")
    assert result.returncode == 2
