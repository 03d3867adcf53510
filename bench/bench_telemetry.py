"""The whole governed path (policy + failover + exposure hook) against bare OpenFeature,
and the exposure deduplicator's memory at 10 million distinct keys.

Run from the repository root:  python -m bench.bench_telemetry [--rounds 7] [--keys 10000000]

Exposure events go to stderr as JSON; run with 2>/dev/null to keep the terminal clean (the
rendering cost is still paid, which is the point).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import yaml
from openfeature.evaluation_context import EvaluationContext
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

import flagwarden
from bench.bench_eval import alternate, bare_launchdarkly
from bench.bench_governance import FLAG, project
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from flagwarden.providers.file import FileProvider
from flagwarden.telemetry.exposure import ExposureDeduper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--keys", type=int, default=10_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flagwarden-bench-tel-"))
    config = project(work, f"sqlite:///{work}/state.db")
    gov = Governance.open(load_settings(config))
    gov.rollout().advance(FLAG, actor="bench", reason="bench", to=25, force=True)
    gov.close()

    print("Governed path + exposure hook vs bare OpenFeature with the same provider, µs/eval:\n")
    print("| provider     | workload                         | bare OF | flagwarden | ratio |")
    print("|--------------|----------------------------------|--------:|-----------:|------:|")
    workloads = {
        "1,000 units x 20 evaluations": [
            EvaluationContext(f"unit-{i % 1000}") for i in range(20_000)
        ],
        "20,000 new units (all logged)": [
            EvaluationContext(f"fresh-{time.time_ns()}-{i}") for i in range(20_000)
        ],
    }
    ld = LaunchDarklyServer().start()
    ld.set_flag(boolean_flag(FLAG, serve=True))
    ld_config = project(work / "ld", f"sqlite:///{work}/ld/state.db")
    (work / "ld" / "providers" / "launchdarkly.yaml").write_text(
        yaml.safe_dump({**ld.profile(), "send_events": False})
    )
    doc = yaml.safe_load(ld_config.read_text())
    ld_config.write_text(yaml.safe_dump({**doc, "provider": "launchdarkly"}))
    gov = Governance.open(load_settings(ld_config))
    gov.rollout().advance(FLAG, actor="bench", reason="bench", to=25, force=True)
    gov.close()

    setups = [
        ("flagd file", config, lambda: FileProvider(work / "flags.json")),
        ("launchdarkly", ld_config, bare_launchdarkly(ld.url)),
    ]
    for name, cfg, bare_provider in setups:
        for label, contexts in workloads.items():
            bare, full = alternate(
                bare_provider,
                lambda cfg=cfg: flagwarden.configure(cfg),
                contexts,
                args.rounds,
                flagwarden.shutdown,
            )
            print(
                f"| {name:<12} | {label:<32} | {bare / 1000:7.1f} | {full / 1000:10.1f} "
                f"| {full / bare:5.2f} |",
                flush=True,
            )
    ld.stop()

    print(f"\nExposure dedup memory after {args.keys:,} distinct keys:\n")
    tracemalloc.start()
    deduper = ExposureDeduper(window_seconds=3600)
    start = time.perf_counter()
    for i in range(args.keys):
        deduper.first_in_window(FLAG, f"key-{i}", "treatment")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sample = 1_000_000
    tracemalloc.start()
    naive: dict[tuple[str, str, str], float] = {}
    for i in range(sample):
        naive[(FLAG, f"key-{i}", "treatment")] = 0.0
    naive_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del naive
    print("| structure                          | memory (MB) |")
    print("|------------------------------------|------------:|")
    print(f"| slot table (1,048,576 slots)       | {peak / 1e6:11.1f} |")
    print(
        f"| exact dict, extrapolated from {sample // 1_000_000}M   | "
        f"{naive_bytes * args.keys / sample / 1e6:11.0f} |"
    )
    print(
        f"\nTable size {deduper.memory_bytes / 1e6:.1f} MB; {args.keys / elapsed:,.0f} keys/s "
        "through the deduplicator (under tracemalloc, which slows it several times)."
    )


if __name__ == "__main__":
    main()
