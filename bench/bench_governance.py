"""Governance costs: kill propagation and assign().

Run from the repository root:  python -m bench.bench_governance [--workers 8] [--trials 3]

1. Kill propagation: N worker processes (tests/governance/worker.py) evaluate a governed
   flag in a loop; this process kills it (the same Rollout.kill the CLI calls); each worker
   reports when all its units are back on control. Median and worst over all workers and
   trials, per backend, from the moment the kill is written.
2. assign() over 100,000 keys against a per-key loop through the client, as a ratio.

The governed evaluation against bare OpenFeature, layer by layer and with the exposures
counted and logged, is bench_telemetry's (it was also measured here, with the exposure hook
removed, before the exposures moved into the provider).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import structlog
import yaml
from openfeature.evaluation_context import EvaluationContext
from tests.governance.worker import spawn

import flagwarden
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance

FLAG = "new-scoring-model"
PG = "postgresql://postgres@127.0.0.1:5432/test"

POLICY = {
    "flag": FLAG,
    "owner": "bench@example.com",
    "expires": "2099-01-01",
    "variants": {"control": False, "treatment": True},
    "stages": [1, 5, 25, 50, 100],
    "soak": "0s",
}


def project(root: Path, state: str, audit: str | None = None) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "providers").mkdir(exist_ok=True)
    (root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(POLICY))
    flags = {
        "flags": {
            FLAG: {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": "on",
            }
        }
    }
    (root / "flags.json").write_text(json.dumps(flags))
    (root / "providers" / "file.yaml").write_text("type: file\npath: ../flags.json\n")
    config = {"provider": "file", "fallback": {"snapshot": None}, "state": state}
    if audit:
        config["audit"] = audit
    (root / "flagwarden.yaml").write_text(yaml.safe_dump(config))
    return root / "flagwarden.yaml"


def ready_workers(config: Path, workers: int) -> list[subprocess.Popen[str]]:
    """The flag live at 100% and ``workers`` processes serving the treatment to every unit."""
    gov = Governance.open(load_settings(config))
    rollout = gov.rollout()
    if rollout.state(FLAG).killed:
        rollout.revive(FLAG, actor="bench", reason="next trial")
    if rollout.state(FLAG).stage < 100:
        rollout.advance(FLAG, actor="bench", reason="all in", to=100, force=True)
    gov.close()
    procs = spawn(config, workers)
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", f"a worker never served the treatment to all its units: {line!r}"
    time.sleep(0.5)  # let every worker settle into its loop
    return procs


def kill_propagation(config: Path, workers: int) -> list[float]:
    procs = ready_workers(config, workers)
    # The clock starts when the kill is written, not when a CLI process starts (its imports
    # alone take a second): propagation is what the workers add after the store has it.
    gov = Governance.open(load_settings(config))
    killed_at = time.time()
    gov.rollout().kill(FLAG, actor="bench", reason="bench")
    gov.close()
    seen = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        seen.append(float(line[1]) - killed_at)
        proc.wait(30)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    # Here, not at import: bench_console imports this module.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    work = Path(tempfile.mkdtemp(prefix="flagwarden-bench-gov-"))

    print(f"Kill propagation, {args.workers} worker processes x {args.trials} trials:\n")
    print("| backend    | median (ms) | worst (ms) |")
    print("|------------|------------:|-----------:|")
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    backends = {
        "sqlite": f"sqlite:///{work}/sqlite/.flagwarden/state.db",
        "redis": f"redis://127.0.0.1:6379/0?prefix=bench{uuid.uuid4().hex[:8]}",
        "postgresql": f"{PG}?options=-csearch_path%3D{schema}",
    }
    try:
        for name, url in backends.items():
            config = project(work / name, url)
            samples: list[float] = []
            for _ in range(args.trials):
                samples.extend(kill_propagation(config, args.workers))
            median, worst = statistics.median(samples) * 1000, max(samples) * 1000
            print(f"| {name:<10} | {median:11.0f} | {worst:10.0f} |", flush=True)
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    config = project(work / "eval", f"sqlite:///{work}/eval/state.db")
    gov = Governance.open(load_settings(config))
    gov.rollout().advance(FLAG, actor="bench", reason="bench", to=25, force=True)
    gov.close()
    client = flagwarden.configure(config)
    keys = [f"order-{i}" for i in range(100_000)]
    loop_t, assign_t = [], []
    for _ in range(3):
        start = time.perf_counter()
        looped = [
            client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=k)) for k in keys
        ]
        loop_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        assigned = flagwarden.assign(FLAG, keys, False)
        assign_t.append(time.perf_counter() - start)
        assert assigned == looped
    flagwarden.shutdown()
    loop, batch = statistics.median(loop_t), statistics.median(assign_t)
    print("\nassign() vs a per-key loop through the client, 100,000 keys, stage 25%:\n")
    print("| per-key loop (s) | assign (s) | keys/s (assign) | speed-up |")
    print("|-----------------:|-----------:|----------------:|---------:|")
    print(f"| {loop:16.2f} | {batch:10.3f} | {len(keys) / batch:15,.0f} | {loop / batch:8.0f}x |")


if __name__ == "__main__":
    main()
