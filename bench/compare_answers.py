"""Answers identical to another checkout's: 100,000 evaluations per provider, compared.

Run from the repository root:

    python -m bench.compare_answers --baseline /path/to/older/checkout [--evals 100000]

For each source (flagd file, environment, LaunchDarkly and Split through the real SDKs
against the local protocol servers of ``tests/servers``) it builds one project, copies it for
each side, and runs the same script in a subprocess with this checkout's ``src`` and then the
baseline's first on ``PYTHONPATH``: ``configure()``, then the flag through seven states
(stage 0, 1, 25 and 100, paused at 25, killed, revived at 50), each evaluated for its share
of the units through the client, plus one ``assign`` over all the units per state. Each side
prints a SHA-256 over every answer (value, variant, reason, error code and the
``flagwarden.*`` metadata) and the number of answers; the script compares them and exits 1
on a difference, printing the first one. The vendors' own answers depend on the key (a 30%
rollout), so the policy's capping, the vendor's and the pass-through at 100 are all in play.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag
from tests.servers.split import SplitServer, split_definition

from bench.bench_governance import POLICY

FLAG = "new-scoring-model"
ROOT = Path(__file__).resolve().parents[1]
STATES = ["stage 0", "stage 1", "stage 25", "stage 100", "paused 25", "killed", "revived 50"]

# What each side runs: prints one JSON line {"digest", "answers", "states"}.
CHILD = """
import hashlib, json, sys
import flagwarden
from openfeature.evaluation_context import EvaluationContext

config, evals, labels = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
FLAG = "new-scoring-model"
client = flagwarden.configure(config)
runtime = flagwarden.current()
rollout = runtime.rollout
digest, answers, states = hashlib.sha256(), 0, {}
per_state = evals // len(labels)
keys = [f"unit-{i}" for i in range(per_state)]

def to_stage(value):
    stage = rollout.state(FLAG).stage
    if value > stage:
        rollout.advance(FLAG, actor="compare", reason="compare", to=value, force=True)
    elif value < stage:
        rollout.rollback(FLAG, actor="compare", reason="compare", to=value)

def move(label):
    kind, _, value = label.partition(" ")
    if kind == "stage":
        to_stage(float(value))
    elif kind == "paused":
        to_stage(float(value))
        rollout.pause(FLAG, actor="compare", reason="compare")
    elif kind == "killed":
        rollout.resume(FLAG, actor="compare", reason="compare")
        rollout.kill(FLAG, actor="compare", reason="compare")
    elif kind == "revived":
        rollout.revive(FLAG, actor="compare", reason="compare")
        to_stage(float(value))

for label in labels:
    move(label)
    state_digest, sample = hashlib.sha256(), []
    for key in keys:
        d = client.get_boolean_details(FLAG, False, EvaluationContext(key))
        meta = {k: v for k, v in sorted(d.flag_metadata.items()) if k.startswith("flagwarden.")}
        error = d.error_code.value if d.error_code else None
        row = json.dumps([label, key, d.value, d.variant, str(d.reason), error, meta])
        digest.update(row.encode())
        state_digest.update(row.encode())
        answers += 1
        if len(sample) < 2:
            sample.append(row)
    batch = json.dumps([label, "assign", list(flagwarden.assign(FLAG, keys, False))])
    digest.update(batch.encode())
    state_digest.update(batch.encode())
    states[label] = [state_digest.hexdigest(), sample]
flagwarden.shutdown()
print(json.dumps({"digest": digest.hexdigest(), "answers": answers, "states": states}))
"""


def write_project(root: Path, provider: str, profile: dict[str, Any]) -> Path:
    (root / "policies").mkdir(parents=True)
    (root / "providers").mkdir()
    (root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(POLICY))
    (root / "providers" / f"{provider}.yaml").write_text(yaml.safe_dump(profile))
    config = {
        "provider": provider,
        "fallback": {"snapshot": None},
        "telemetry": {"exposure_log": {"enabled": False}},
    }
    (root / "flagwarden.yaml").write_text(yaml.safe_dump(config))
    return root


def run(project: Path, src: Path, evals: int, env: dict[str, str]) -> dict[str, Any]:
    """One side: the project copied fresh (its own state and audit), ``src`` first on the path."""
    work = Path(tempfile.mkdtemp(prefix="flagwarden-compare-"))
    shutil.copytree(project, work / "p")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(work / "p" / "flagwarden.yaml"),
            str(evals),
            json.dumps(STATES),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=work,
        env={**os.environ, **env, "PYTHONPATH": f"{src}:{ROOT}", "FLAGWARDEN_LOG_LEVEL": "error"},
    )
    if result.returncode != 0:
        raise SystemExit(f"{src}: the run failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an older checkout")
    parser.add_argument("--evals", type=int, default=100_000)
    args = parser.parse_args()
    baseline_src = args.baseline.resolve() / "src"
    if not (baseline_src / "flagwarden").is_dir():
        raise SystemExit(f"{args.baseline}: no src/flagwarden there")
    work = Path(tempfile.mkdtemp(prefix="flagwarden-compare-"))

    flag = {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", 30], ["off", 70]]},
    }
    file_project = write_project(work / "file", "file", {"type": "file", "path": "../flags.json"})
    (file_project / "flags.json").write_text(json.dumps({"flags": {FLAG: flag}}))
    env_project = write_project(work / "env", "env", {"type": "env", "prefix": "COMPARE_FLAG_"})
    ld = LaunchDarklyServer().start()
    ld.set_flag(boolean_flag(FLAG, rollout_percent=30))
    ld_project = write_project(work / "ld", "launchdarkly", {**ld.profile(), "send_events": False})
    split = SplitServer().start()
    split.set_split(split_definition(FLAG, on_percent=30))
    split_project = write_project(work / "split", "split", split.profile())
    sources = {
        "flagd file": (file_project, {}),
        "env": (env_project, {"COMPARE_FLAG_NEW_SCORING_MODEL": "true"}),
        "launchdarkly": (ld_project, {}),
        "split": (split_project, {}),
    }
    print(
        f"{args.evals:,} evaluations per provider (+ assign per state), this checkout vs "
        f"{args.baseline}:\n"
    )
    print("| provider     | answers | this checkout    | baseline         | same |")
    print("|--------------|--------:|------------------|------------------|------|")
    different = []
    try:
        for name, (project, env) in sources.items():
            ours = run(project, ROOT / "src", args.evals, env)
            theirs = run(project, baseline_src, args.evals, env)
            same = ours["digest"] == theirs["digest"] and ours["answers"] == theirs["answers"]
            print(
                f"| {name:<12} | {ours['answers']:7,} | {ours['digest'][:16]} "
                f"| {theirs['digest'][:16]} | {'yes' if same else 'NO'}  |",
                flush=True,
            )
            if not same:
                different.append((name, ours["states"], theirs["states"]))
    finally:
        ld.stop()
        split.stop()
    for name, ours_states, theirs_states in different:
        for label, (digest, sample) in ours_states.items():
            baseline_digest, baseline_sample = theirs_states.get(label, ("", []))
            if digest != baseline_digest:
                print(f"\n{name}, {label}: first answers here / in the baseline:")
                for row in (*sample, *baseline_sample):
                    print(f"  {row}")
    sys.exit(1 if different else 0)


if __name__ == "__main__":
    main()
