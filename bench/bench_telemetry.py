"""The whole governed path (policy + failover + exposures counted and logged) against bare
OpenFeature with the same provider, counting the exposure lines each round really wrote.

Run from the repository root:  python -m bench.bench_telemetry [--rounds 7] [--evals 20000]

Each round registers the bare provider with OpenFeature and measures it, then calls
``flagwarden.configure()`` on a project whose governed flag is at stage 25% and measures the
client it returns, alternating so drift on this noisy machine hits both; the tables show
medians and the ratio. Exposure events are written as in production (JSON lines on stderr):
this process's stderr is pointed at a file while a round runs, and after ``shutdown()`` the
bench counts the ``feature_flag.evaluation`` lines and asserts they are the ones the
workload must produce (every unit once; a repeated unit once per round). It uses only the
public API, so the same script measures an older checkout (``PYTHONPATH=<old>/src``).

Then, on the current code only, where the time goes: the same flagd-file workload measured
layer by layer (bare, + failover chain, + policy without exposures, + exposures counted, +
exposure lines written).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from tests.servers.launchdarkly import LaunchDarklyServer, boolean_flag

import flagwarden
from bench.bench_eval import bare_launchdarkly, per_eval_ns
from bench.bench_governance import POLICY
from flagwarden.config import load_settings
from flagwarden.governance.project import Governance
from flagwarden.providers.file import FileProvider

FLAG = "new-scoring-model"
STAGE = 25
EXPOSURE = '"event": "feature_flag.evaluation"'
for _name in ("ldclient", "launchdarkly-openfeature-server"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


def write_project(root: Path, provider: str, profile: dict[str, Any], **extra: Any) -> Path:
    """A project whose flag is governed and at stage 25%, served ``True`` by the vendor."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "providers").mkdir(exist_ok=True)
    (root / "policies" / f"{FLAG}.yaml").write_text(yaml.safe_dump(POLICY))
    (root / "providers" / f"{provider}.yaml").write_text(yaml.safe_dump(profile))
    config = {
        "provider": provider,
        "fallback": {"snapshot": None},
        "state": f"sqlite:///{root}/state.db",
        "audit": f"sqlite:///{root}/audit.db",
        **extra,
    }
    (root / "flagwarden.yaml").write_text(yaml.safe_dump(config))
    gov = Governance.open(load_settings(root / "flagwarden.yaml"))
    gov.rollout().advance(FLAG, actor="bench", reason="bench", to=STAGE, force=True)
    gov.close()
    return root / "flagwarden.yaml"


def flag_file(path: Path) -> Path:
    """A flagd flag file serving the treatment (``True``) to everyone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flag = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"}
    path.write_text(json.dumps({"flags": {FLAG: flag}}))
    return path


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """This process's stderr (fd 2, and so ``sys.stderr``) appended to ``path`` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def exposure_lines(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for line in lines if EXPOSURE.encode() in line)


Workload = Callable[[int], list[EvaluationContext]]


def repeated(n: int) -> Workload:
    """1,000 units, each evaluated ``n / 1000`` times: one exposure line per unit per round."""
    return lambda r: [EvaluationContext(f"unit-{r}-{i % 1000}") for i in range(n)]


def fresh(n: int) -> Workload:
    """``n`` units never seen before: every evaluation writes an exposure line."""
    return lambda r: [EvaluationContext(f"fresh-{time.time_ns()}-{r}-{i}") for i in range(n)]


def alternate(
    bare: Callable[[], Any], config: Path, workload: Workload, rounds: int, log: Path
) -> tuple[float, float, float]:
    """Median ns per evaluation, bare and through flagwarden, and the exposure lines written
    per distinct unit (at least 1: every unit is logged; above 1 after dedup collisions)."""
    bare_times, ours, per_unit = [], [], []
    for r in range(rounds):
        contexts = workload(r)
        api.set_provider_and_wait(bare())
        client = api.get_client()
        per_eval_ns(client, contexts[:1000])  # warm up
        bare_times.append(per_eval_ns(client, contexts))
        api.clear_providers()
        before = exposure_lines(log) if log.exists() else 0
        with stderr_to(log):
            governed = flagwarden.configure(config)
            served_by(governed, contexts[0])
            per_eval_ns(governed, contexts[:1000])  # warm up: the first 1000 units logged
            ours.append(per_eval_ns(governed, contexts))
            flagwarden.shutdown()
        written = exposure_lines(log) - before
        units = len({ctx.targeting_key for ctx in contexts})
        assert written >= units, f"round {r}: {written} exposure lines for {units} units"
        per_unit.append(written / units)
    return statistics.median(bare_times), statistics.median(ours), max(per_unit)


def served_by(client: Any, context: EvaluationContext) -> None:
    """Asserts the vendor answers (an outage would measure the defaults instead)."""
    details = client.get_boolean_details(FLAG, False, context)
    source = details.flag_metadata.get("flagwarden.source")
    assert details.error_code is None and source != "default", (source, details.error_message)


def row(provider: str, label: str, bare: float, ours: float, lines: float) -> None:
    print(
        f"| {provider:<12} | {label:<30} | {bare / 1000:7.1f} | {ours / 1000:10.1f} "
        f"| {ours / bare:5.2f} | {lines:10.3f} |",
        flush=True,
    )


def layers(work: Path, contexts: list[EvaluationContext], rounds: int, log: Path) -> None:
    """Where the microseconds go on the flagd-file path, layer by layer (current code)."""
    from flagwarden.events import EventSink
    from flagwarden.providers.failover import FailoverProvider

    flags = work / "flags.json"
    steps: dict[str, Callable[[], Any]] = {}

    def bare() -> Any:
        api.set_provider_and_wait(FileProvider(flags))
        return api.get_client()

    def failover() -> Any:
        api.set_provider_and_wait(FailoverProvider(FileProvider(flags), events=EventSink()))
        return api.get_client()

    def configured(name: str, exposure_log: dict[str, Any]) -> Callable[[], Any]:
        root = work / name
        root.mkdir(exist_ok=True)
        (root / "flags.json").write_text(flags.read_text())
        config = write_project(
            root,
            "file",
            {"type": "file", "path": "../flags.json"},
            telemetry={"exposure_log": exposure_log},
        )
        return lambda: flagwarden.configure(config)

    steps["bare OpenFeature, flagd file"] = bare
    steps["+ failover chain"] = failover
    steps["+ policy, exposures off"] = configured("off", {"enabled": False})
    steps["+ exposures counted, deduplicated"] = configured("dedup", {"enabled": True})
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, build in steps.items():
            with stderr_to(log):
                client = build()
                served_by(client, contexts[0])
                per_eval_ns(client, contexts[:1000])
                times[name].append(per_eval_ns(client, contexts))
                flagwarden.shutdown()
                api.clear_providers()
    print("| layer                              | µs/eval | added µs |")
    print("|------------------------------------|--------:|---------:|")
    previous = None
    for name, samples in times.items():
        median = statistics.median(samples) / 1000
        added = "" if previous is None else f"{median - previous:+8.2f}"
        print(f"| {name:<34} | {median:7.2f} | {added:>8} |", flush=True)
        previous = median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--evals", type=int, default=20_000)
    parser.add_argument("--skip-layers", action="store_true", help="old code: no layer table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flagwarden-bench-tel-"))
    log = work / "stderr.log"

    flags = flag_file(work / "file" / "flags.json")
    file_config = write_project(work / "file", "file", {"type": "file", "path": "../flags.json"})
    ld = LaunchDarklyServer().start()
    ld.set_flag(boolean_flag(FLAG, serve=True))
    ld_config = write_project(work / "ld", "launchdarkly", {**ld.profile(), "send_events": False})
    workloads = {
        f"1,000 units x {args.evals // 1000} evaluations": repeated(args.evals),
        f"{args.evals:,} new units (each logged)": fresh(args.evals),
    }
    setups = [
        ("flagd file", file_config, lambda: FileProvider(flags)),
        ("launchdarkly", ld_config, bare_launchdarkly(ld.url)),
    ]
    print(
        f"Governed path (stage {STAGE}%) vs bare OpenFeature, same provider, "
        f"{args.evals:,} evaluations x {args.rounds} rounds, medians, µs/eval:\n"
    )
    print(
        "| provider     | workload                       | bare OF | flagwarden | ratio "
        "| lines/unit |"
    )
    print(
        "|--------------|--------------------------------|--------:|-----------:|------:"
        "|-----------:|"
    )
    for name, config, bare in setups:
        for label, workload in workloads.items():
            row(name, label, *alternate(bare, config, workload, args.rounds, log))
    ld.stop()
    print(f"\n({exposure_lines(log):,} exposure lines written and counted in all.)\n")
    if not args.skip_layers:
        layers(work / "file", repeated(args.evals)(0), args.rounds, log)


if __name__ == "__main__":
    main()
