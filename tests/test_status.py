"""``flagwarden status`` reads like a person wrote it; ``--json`` carries the same facts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import flagwarden
from tests.conftest import POLICY, Project, governed_project, run_cli

FLAG = POLICY["flag"]
ROOT = Path(__file__).resolve().parents[1]
GUARD = {"name": "null-rate", "metric": "null_rate", "max": {1: 0.05, 25: 0.03}}


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(config, *args, actor="alice")


def test_status_in_words(project: Project):
    config = governed_project(project, policy={"guards": [GUARD]})
    fresh = cli(config, "status").stdout
    assert f"{FLAG}  0% (not started)\n" in fresh
    assert "  guard null-rate: not evaluated at this stage yet\n" in fresh
    assert "  no change recorded yet\n" in fresh
    assert "False" not in fresh and "None" not in fresh and "-:" not in fresh

    cli(config, "advance", FLAG, "--reason", "start [red]now[/red] \x1b[2J")
    flagwarden.configure(config)
    flagwarden.record_metric(FLAG, "null_rate", 0.004, variant="treatment", count=100)
    assert cli(config, "watch", "--once").returncode == 0
    live = cli(config, "status", FLAG).stdout
    assert f"{FLAG}  1% (stage 1 of 5)\n" in live
    # Rounded up: within the advance's first second the whole 30m00s is still left.
    assert re.search(r"\n  soaking: (29m[0-5]\ds|30m00s) left before 5% may follow\n", live)
    assert "  guard null-rate: healthy 0.004 (<= 0.05), " in live
    # The reason is shown as typed: no Rich markup applied, no escape sequence passed through.
    assert "last change: advanced 0% -> 1% by alice at " in live
    assert "start [red]now[/red] \\x1b[2J" in live

    cli(config, "kill", FLAG, "--reason", "nulls")
    killed = cli(config, "status", FLAG).stdout
    assert f"{FLAG}  1% (stage 1 of 5), KILLED: everyone gets control\n" in killed
    assert "  revive it to serve the stage again\n" in killed
    assert "last change: killed by alice at " in killed and killed.rstrip().endswith(": nulls")

    doc = json.loads(cli(config, "status", "--json").stdout)
    (row,) = doc["flags"]
    assert (row["stage"], row["killed"], row["version"]) == (1, True, 2)
    assert row["last_change"]["action"] == "kill" and row["last_change"]["actor"] == "alice"
    assert row["guards"][0]["verdict"] == "healthy" and row["guards"][0]["upper"] == 0.05
    assert doc["provider"]["name"] == "file"


def test_status_of_an_unknown_flag(project: Project):
    config = governed_project(project)
    result = cli(config, "status", "nope")
    assert result.returncode == 1
    assert "'nope' has no policy and no state (governed flags: new-scoring-model)" in result.stderr


def test_status_shows_only_the_current_stages_verdicts_and_why_it_is_paused(project: Project):
    config = governed_project(project, policy={"guards": [GUARD], "soak": "0s"})
    cli(config, "advance", FLAG, "--reason", "go")
    flagwarden.configure(config)
    flagwarden.record_metric(FLAG, "null_rate", 0.5, variant="treatment", count=100)
    assert cli(config, "watch", "--once").returncode == 3  # rolled back
    assert "guard null-rate: breach 0.5" not in cli(config, "status").stdout  # at 0% now
    cli(config, "advance", FLAG, "--reason", "fixed")
    again = cli(config, "status").stdout
    assert "  guard null-rate: not evaluated at this stage yet\n" in again  # old breach: history

    cli(config, "pause", FLAG, "--reason", "waiting for the nightly run")
    cli(config, "kill", FLAG, "--reason", "nulls")
    revived = cli(config, "revive", FLAG, "--reason", "fixed")
    assert "revived: back to stage 1% (still paused)" in revived.stdout
    paused = cli(config, "status").stdout
    assert "  no advance until resumed (paused by alice: waiting for the nightly run)\n" in paused
