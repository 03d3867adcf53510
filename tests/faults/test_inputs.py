"""Fault injection on inputs: a broken or hostile file never blocks a kill, never crashes a
command, never echoes a secret; every refusal names the file, the field and what was expected."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from openfeature.evaluation_context import EvaluationContext

import flagwarden
from flagwarden.config import load_settings
from flagwarden.errors import ConfigError
from flagwarden.governance.policy import load_policy, read_policies
from tests.conftest import POLICY, ROOT, Project, governed_project, run_cli, wait_for

FLAG = POLICY["flag"]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli(config, *args, actor="oncall")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def break_policies(project: Project) -> tuple[Path, Path]:
    """Two broken policies beside the good one: a bad date (flag b) and a bad byte (stem c)."""
    bad_date = project.root / "policies" / "b.yaml"
    bad_date.write_text(
        "flag: b\nowner: me\nexpires: 2099-13-45\n"
        "variants: {control: false, treatment: true}\nstages: [1, 100]\n"
    )
    bad_byte = project.root / "policies" / "c.yaml"
    bad_byte.write_bytes(b"flag: c\nowner: m\xffe\n")
    return bad_date, bad_byte


def test_a_broken_policy_never_blocks_a_kill(project: Project):
    config = governed_project(project)
    bad_date, bad_byte = break_policies(project)
    killed = cli(config, "kill", FLAG, "--reason", "nulls in the output")
    assert killed.returncode == 0, killed.stderr
    assert f"{FLAG} killed" in killed.stdout
    # The broken flag itself can still be switched: the store does not need its policy.
    for action in ("kill", "revive", "pause", "resume"):
        done = cli(config, action, "b", "--reason", "drill")
        assert done.returncode == 0, done.stderr
    refused = cli(config, "advance", "b", "--reason", "go")
    assert refused.returncode == 1
    (said,) = [line for line in refused.stderr.splitlines() if line.startswith("error: refused")]
    assert f"{bad_date}: expires:" in said  # the refusal names the file and the field
    status = cli(config, "status")
    assert status.returncode == 0, status.stderr
    assert f"{FLAG}  0% (control for everyone), KILLED" in status.stdout
    assert "the policy of b cannot be used" in status.stderr
    assert "input should be a valid date" in status.stderr
    assert "the policy of c cannot be used" in status.stderr
    assert "b: its policy cannot be used" in status.stdout  # with its state, in the listing
    one = cli(config, "status", "b", "--json")
    assert one.returncode == 0, one.stderr
    (listed,) = json.loads(one.stdout)["broken_policies"]
    assert listed["flag"] == "b" and "expires" in listed["problem"] and listed["version"] == 4
    # check still fails on them, naming file, field, and the offset of the bad byte.
    checked = cli(config, "check")
    assert checked.returncode == 1
    assert f"error: {bad_date}: expires: input should be a valid date" in checked.stderr
    assert f"error: {bad_byte}: is not UTF-8 text: byte 0xff at offset 16 (line 2)" in (
        checked.stderr
    )
    assert f"ok policy {FLAG}" in checked.stdout


def test_kill_works_without_a_policies_folder(project: Project):
    config = governed_project(project)
    (project.root / "policies" / f"{FLAG}.yaml").unlink()
    (project.root / "policies").rmdir()
    killed = cli(config, "kill", FLAG, "--reason", "policies not deployed here")
    assert killed.returncode == 0, killed.stderr
    revived = cli(config, "revive", FLAG, "--reason", "drill over")
    assert revived.returncode == 0, revived.stderr
    assert cli(config, "status").returncode == 0


def test_a_flag_whose_policy_is_gone_can_be_killed_and_workers_obey(project: Project):
    """The policy file removed (the folder stays): the kill still works, and a worker that
    started without the policy serves the caller's default while the flag is killed."""
    config = governed_project(project)  # the vendor serves True
    assert cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    (project.root / "policies" / f"{FLAG}.yaml").unlink()
    client = flagwarden.configure(config)
    ctx = EvaluationContext("unit-1")
    assert client.get_boolean_value(FLAG, False, ctx) is True  # ungoverned: the vendor's

    killed = cli(config, "kill", FLAG, "--reason", "policy gone, stop it")
    assert killed.returncode == 0, killed.stderr
    assert f"{FLAG} has no policy here" in killed.stderr
    wait_for(lambda: client.get_boolean_value(FLAG, False, ctx) is False)
    details = client.get_boolean_details(FLAG, False, ctx)
    assert (details.value, details.reason) == (False, "DISABLED")
    assert details.flag_metadata["flagwarden.killed"] is True
    shown = cli(config, "status", FLAG)
    assert shown.returncode == 0, shown.stderr
    assert f"{FLAG}: there is no policy for it; workers serve the caller's default" in shown.stdout
    assert "there is no policy for it" in cli(config, "status").stdout  # killed: listed

    # A flag never seen before is killed just as well (no typo check can stand in the way).
    assert client.get_boolean_value("other-flag", False, ctx) is False  # flag not found
    assert cli(config, "kill", "other-flag", "--reason", "drill").returncode == 0
    assert cli(config, "revive", FLAG, "--reason", "back").returncode == 0
    wait_for(lambda: client.get_boolean_value(FLAG, False, ctx) is True)
    other = client.get_boolean_details("other-flag", True, ctx)
    assert (other.value, other.reason) == (True, "DISABLED")
    # Pause and resume still need a policy: without one, a pause means nothing to workers.
    assert cli(config, "pause", "third-flag", "--reason", "x").returncode == 1
    assert cli(config, "pause", FLAG, "--reason", "x").returncode == 1
    assert cli(config, "kill", " ", "--reason", "x").returncode == 1  # a blank key


WORKER = """
import json, sys
from openfeature.evaluation_context import EvaluationContext
import flagwarden
client = flagwarden.configure(sys.argv[1])
ctx = EvaluationContext("unit-1")
out = {}
for flag in ("new-scoring-model", "b", "c"):
    d = client.get_boolean_details(flag, True, ctx)
    out[flag] = {"value": d.value, "reason": d.reason, "metadata": dict(d.flag_metadata)}
print(json.dumps(out))
flagwarden.shutdown()
"""


def test_workers_start_and_serve_the_default_for_a_broken_policy(project: Project):
    config = governed_project(project)
    bad_date, _ = break_policies(project)
    assert cli(config, "kill", "c", "--reason", "drill").returncode == 0
    worker = subprocess.run(
        [sys.executable, "-c", WORKER, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert worker.returncode == 0, worker.stderr
    answers = json.loads(worker.stdout)
    # The good flag is governed as ever: stage 0, control (False) whatever the caller's default.
    assert answers[FLAG]["value"] is False
    assert answers[FLAG]["metadata"]["flagwarden.arm"] == "control"
    # The broken one serves the caller's default (its variants cannot be trusted), and says why.
    b = answers["b"]
    assert (b["value"], b["reason"]) == (True, "DISABLED")
    assert b["metadata"]["flagwarden.source"] == "default"
    assert b["metadata"]["flagwarden.arm"] == "none"
    assert b["metadata"]["flagwarden.policy_error"].startswith(
        "b.yaml: expires: input should be a valid date"
    )
    assert answers["c"]["metadata"]["flagwarden.killed"] is True  # the kill still shows
    assert answers["c"]["metadata"]["flagwarden.policy_error"].startswith("c.yaml: is not UTF-8")
    invalid = [
        json.loads(line)
        for line in worker.stderr.splitlines()
        if "flagwarden.policy_invalid" in line
    ]
    assert sorted(event["flag"] for event in invalid) == ["b", "c"]  # once each, at start
    (event,) = [e for e in invalid if e["flag"] == "b"]
    assert (event["file"], event["field"]) == (str(bad_date), "expires")


def test_a_second_policy_for_a_flag_makes_it_broken_not_the_project(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({**POLICY, "soak": "1m"}))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**POLICY, "flag": "other"}))
    found = read_policies(tmp_path)
    assert list(found.policies) == ["other"]
    assert "already has a policy in" in str(found.broken[FLAG])


# -- hostile YAML ---------------------------------------------------------------------

# Nine levels of nine aliases each: 9**9 (387 million) strings once walked.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in itertools.pairwise("abcdefghi")
)


def test_an_alias_bomb_is_refused_at_once(project: Project):
    assert len(ALIAS_BOMB) < 500
    config = governed_project(project)
    bomb = project.root / "policies" / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    # In a process of its own first: before aliases were refused, this never finished.
    result = run_cli(config, "check", timeout=30)
    assert f"error: {bomb}: refused at line 2, column 8: YAML aliases (*name) are not allowed" in (
        result.stderr
    )
    started = time.monotonic()
    found = read_policies(project.root / "policies")
    assert time.monotonic() - started < 1
    assert "bomb" in found.broken and FLAG in found.policies


@pytest.mark.parametrize(
    "nested",
    ["[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "1" + "}" * 10_000],
    ids=["lists", "mappings"],
)
def test_deep_nesting_is_a_config_error(tmp_path: Path, nested: str):
    config = tmp_path / "flagwarden.yaml"
    config.write_text(f"provider: file\nflag_keys: {nested}\n")
    with pytest.raises(ConfigError, match=r"refused at line 2, column \d+: nested more than 100"):
        load_settings(config)
    policy = tmp_path / "deep.yaml"
    policy.write_text(f"flag: deep\nowner: me\ndescription: {nested}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(policy)
    assert info.value.file == str(policy)


def test_documents_over_a_mebibyte_are_refused(tmp_path: Path):
    config = tmp_path / "flagwarden.yaml"
    config.write_text("provider: file\ndescription: " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        load_settings(config)


# -- values, each refused with its field ------------------------------------------------

BAD_POLICY_VALUES: list[tuple[str, dict[str, Any], str, str]] = [
    ("NaN stage", {"stages": [float("nan"), 5]}, "stages.0", "finite number"),
    ("negative soak", {"soak": -5}, "soak", "between 0s and 3650d"),
    ("huge soak", {"soak": "100000000d"}, "soak", "between 0s and 3650d"),
    ("empty flag key", {"flag": ""}, "flag", "a flag key is needed"),
    ("blank flag key", {"flag": "  "}, "flag", "a flag key is needed"),
    (
        "NaN variant",
        {"variants": {"control": float("nan"), "treatment": 1.0}},
        "variants",
        "must be finite",
    ),
    (
        "NaN guard limit",
        {"guards": [{"name": "g", "metric": "m", "max": float("nan")}]},
        "guards.0.max",
        "expected a finite number, or limits per stage",
    ),
    (
        "infinite per-stage limit",
        {"guards": [{"name": "g", "metric": "m", "min": {1: float("inf")}}]},
        "guards.0.min",
        "per-stage limits must be finite numbers (not at 1)",
    ),
    (
        "guard window too long",
        {"guards": [{"name": "g", "metric": "m", "max": 1, "window": 1e12}]},
        "guards.0.window",
        "between 0s and 3650d",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "field", "message"), BAD_POLICY_VALUES, ids=[b[0] for b in BAD_POLICY_VALUES]
)
def test_bad_policy_values_are_refused_with_their_field(
    tmp_path: Path, case: str, change: dict[str, Any], field: str, message: str
):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**POLICY, **change}))
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert message in info.value.problem


BAD_CONFIG_VALUES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "endless dedup window",
        {"telemetry": {"exposure_log": {"dedup_window": "forever"}}},
        "telemetry.exposure_log.dedup_window",
        "expected a duration like 30s",
    ),
    (
        "busy summary interval",
        {"telemetry": {"exposure_log": {"summary_interval": "500ms"}}},
        "telemetry.exposure_log.summary_interval",
        "at least 1s",
    ),
    (
        "zero summary interval",
        {"telemetry": {"exposure_log": {"summary_interval": "0s"}}},
        "telemetry.exposure_log.summary_interval",
        "at least 1s",
    ),
    (
        "debounce past the end of time",
        {"fallback": {"snapshot": None, "snapshot_debounce": 1e300}},
        "fallback.snapshot_debounce",
        "less than or equal to 315360000",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "field", "message"), BAD_CONFIG_VALUES, ids=[b[0] for b in BAD_CONFIG_VALUES]
)
def test_check_and_configure_refuse_the_same_config_values(
    project: Project, case: str, change: dict[str, Any], field: str, message: str
):
    config = governed_project(project, **change)
    with pytest.raises(ConfigError) as info:
        flagwarden.configure(config)
    assert (info.value.field, message in info.value.problem) == (field, True)
    result = cli(config, "check")
    assert result.returncode == 1
    assert f"error: {config}: {field}: " in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ({"start_wait": float("inf")}, "start_wait", "finite number"),
        ({"start_wait": 1e12}, "start_wait", "less than or equal to 315360000"),
        ({"poll_interval": 0.0001}, "poll_interval", "greater than or equal to 0.01"),
    ],
)
def test_profile_intervals_are_bounded(
    project: Project, profile: dict[str, Any], field: str, message: str
):
    config = governed_project(project)
    if "poll_interval" in profile:
        name, doc = "file", {"type": "file", "path": "../flags.json"}
    else:
        name, doc = "launchdarkly", {"type": "launchdarkly", "sdk_key": "x"}
    project.profile(name, {**doc, **profile})
    with pytest.raises(ConfigError) as info:
        load_settings(config).load_profile(name)
    assert info.value.field == field
    assert message in info.value.problem


def test_report_since_far_past_is_a_usage_error(project: Project):
    config = governed_project(project)
    result = cli(config, "report", "--since", "100000000d", "-o", str(project.root / "r.md"))
    assert result.returncode == 2
    assert "--since 100000000d: that duration is too long (at most 3650d)" in result.stderr


# -- secrets in the wrong place ----------------------------------------------------------

SECRETS = ("sdk-SECRET123", "9876543210123", "hunter2", "ghp_SECRETtoken1234567")


def test_check_never_echoes_a_secret_in_a_wrong_field(project: Project):
    config = governed_project(project, fallback={"snapshot": "ftp://etl:hunter2@files/snap"})
    project.profile("misspelt", {"type": "launchdarkly", "sdk_kye": "sdk-SECRET123"})
    project.profile("wrongtype", {"type": "split", "sdk_key": 9876543210123})
    (project.root / "policies" / "leaky.yaml").write_text(
        yaml.safe_dump({**POLICY, "flag": "leaky", "soak": "ghp_SECRETtoken1234567"})
    )
    result = cli(config, "check")
    assert result.returncode == 1
    said = result.stdout + result.stderr
    for secret in SECRETS:
        assert secret not in said
    # Still actionable: the field and what was expected.
    assert f"{config}: fallback.snapshot: expected 'file:PATH'" in said
    assert "misspelt.yaml: sdk_kye: is not a known field" in said
    assert "wrongtype.yaml: sdk_key: input should be a valid string" in said
    assert "leaky.yaml: soak: expected a duration like 30s" in said


@pytest.mark.parametrize("interval", ["inf", "nan", "1e300", "0"])
def test_watch_refuses_an_unbounded_interval(project: Project, interval: str):
    config = governed_project(project)
    done = cli(config, "watch", "--interval", interval)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--interval" in done.stderr and "a flagwarden bug" not in done.stderr


def test_an_unreadable_state_row_is_a_watch_error_not_a_flag_at_zero(project: Project):
    import sqlite3

    guard = {"name": "null-rate", "metric": "null_rate", "max": 0.02, "min_samples": 10}
    config = governed_project(project, policy={"guards": [guard]})
    assert cli(config, "advance", FLAG, "--reason", "go").returncode == 0
    with sqlite3.connect(project.root / ".flagwarden" / "state.db") as conn:
        conn.execute("UPDATE flagwarden_state SET data = 'not json' WHERE flag = ?", (FLAG,))
    done = cli(config, "watch", "--once", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    (decision,) = [d for d in json.loads(done.stdout) if d["flag"] == FLAG]
    assert decision["action"] == "error" and "stored state cannot be read" in decision["detail"]
    assert "a flagwarden bug" not in done.stderr


def test_a_full_reload_that_began_before_a_kill_does_not_undo_it(tmp_path: Path):
    """A flag without a policy killed while a full reload is reading: the notification's read
    (later) wins over the reload's answer (earlier), as for a governed flag."""
    from flagwarden.governance.cache import StateCache
    from flagwarden.governance.state import FlagState, open_state_store

    url = f"sqlite:///{tmp_path}/state.db"
    store, writer = open_state_store(url), open_state_store(url)
    cache = StateCache(store, ["governed"])
    cache.refresh(None)
    real_load_all = store.load_all

    def slow_load_all() -> dict[str, FlagState]:
        read = real_load_all()  # the reload's read: "orphan" not killed yet
        assert writer.compare_and_set(
            FlagState("orphan").changed(actor="t", reason="k", killed=True)
        )
        cache.refresh("orphan")  # the kill's notification, read and noted meanwhile
        return read

    try:
        store.load_all = slow_load_all  # type: ignore[method-assign]
        cache.refresh(None)
        assert cache.killed_elsewhere("orphan")
        store.load_all = real_load_all  # type: ignore[method-assign]
        cache.refresh(None)
        assert cache.killed_elsewhere("orphan")
        state = writer.load("orphan")
        assert state is not None
        assert writer.compare_and_set(state.changed(actor="t", reason="r", killed=False))
        cache.refresh(None)
        assert not cache.killed_elsewhere("orphan")
    finally:
        store.close()
        writer.close()
